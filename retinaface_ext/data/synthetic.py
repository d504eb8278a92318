"""Synthetic WIDER-style training data: real faces pasted on random backgrounds, exact labels.

Faces come from scikit-image's bundled photos, so nothing is downloaded:
``skimage.data.astronaut()`` (a 512x512 colour portrait; its face box and five
landmarks were measured once by hand and are the constants below) and the 100
face images of ``skimage.data.lfw_subset()`` (25x25 grayscale, aligned, so one
set of box and landmark positions fits all of them; they are upscaled and
tinted). The 100 non-face images of ``lfw_subset`` and non-face parts of the
astronaut photo serve as background clutter.

Each face is pasted with a soft elliptical mask at a random size, position and
mirror (landmarks swapped like the training augmentation), with random
brightness / contrast / tint. Boxes and landmarks follow the same affine map
as the pixels, so the labels are exact up to the hand measurement.
"""
import functools
import os

import numpy as np
from torch.utils.data import Dataset

from .widerface import write_label_file

# Astronaut photo (skimage.data.astronaut, 512x512 RGB), measured by hand:
# face box x1, y1, x2, y2 (hairline to chin, cheek to cheek) and landmarks
# left eye, right eye, nose tip, left / right mouth corner (x, y).
ASTRONAUT_BOX = (178.0, 70.0, 270.0, 180.0)
ASTRONAUT_LANDMARKS = ((203.0, 101.0), (246.0, 103.0), (225.0, 126.0), (204.0, 141.0), (244.0, 141.0))
ASTRONAUT_CROP = (158, 48, 290, 202)  # the face with some hair / neck around it
# lfw_subset faces (25x25, aligned): the mean face gives these positions.
LFW_BOX = (2.5, 0.5, 22.5, 24.5)
LFW_LANDMARKS = ((7.8, 8.8), (17.2, 8.8), (12.5, 13.6), (8.8, 17.9), (16.2, 17.9))
# Non-face regions of the astronaut photo usable as background texture (x1, y1, x2, y2).
ASTRONAUT_CLUTTER = ((0, 0, 120, 250), (340, 0, 512, 280), (20, 260, 300, 512), (280, 330, 512, 512))


class _FaceSource:
    def __init__(self, patch, box, landmarks, mask):
        self.patch = patch  # BGR uint8 [h, w, 3]
        self.box = np.asarray(box, dtype=np.float64)  # in patch pixels
        self.landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        self.mask = mask  # float32 [h, w] in 0..1


def _ellipse_mask(height, width, box, grow=1.15, feather=0.12):
    """Soft elliptical mask covering ``box`` grown by ``grow`` (1 inside, ramps to 0)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = (box[2] - box[0]) / 2 * grow, (box[3] - box[1]) / 2 * grow
    r = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    return np.clip((1.0 + feather - r) / feather, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def face_sources():
    """The face sources and clutter patches (loaded once per process)."""
    import cv2
    from skimage import data

    sources = []
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    x1, y1, x2, y2 = ASTRONAUT_CROP
    patch = np.ascontiguousarray(astronaut[y1:y2, x1:x2])
    offset = np.array([x1, y1], dtype=np.float64)
    box = np.asarray(ASTRONAUT_BOX) - np.tile(offset, 2)
    landmarks = np.asarray(ASTRONAUT_LANDMARKS) - offset
    sources.append(_FaceSource(patch, box, landmarks, _ellipse_mask(*patch.shape[:2], box)))

    lfw = data.lfw_subset()
    lfw_mask = _ellipse_mask(25, 25, LFW_BOX, grow=1.08, feather=0.1)
    for face in lfw[:100]:
        gray = np.clip(face * 255.0, 0, 255).astype(np.uint8)
        sources.append(_FaceSource(np.repeat(gray[:, :, None], 3, axis=2), LFW_BOX, LFW_LANDMARKS,
                                   lfw_mask))
    clutter = [np.ascontiguousarray(astronaut[b:d, a:c]) for a, b, c, d in ASTRONAUT_CLUTTER]
    clutter += [np.repeat(np.clip(x * 255.0, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
                for x in lfw[100:]]
    return sources, clutter


def _background(rng, height, width, clutter):
    import cv2

    grid = rng.uniform(0, 255, size=(int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3))
    image = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, rng.uniform(2, 20), size=image.shape).astype(np.float32)
    for _ in range(int(rng.integers(2, 8))):
        kind = rng.integers(3)
        color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        if kind == 0:
            p = rng.integers(0, [width, height, width, height])
            cv2.rectangle(image, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), color, -1)
        elif kind == 1:
            center = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.circle(image, center, int(rng.integers(4, max(5, min(width, height) // 4))), color, -1)
        else:
            patch = clutter[int(rng.integers(len(clutter)))]
            size = int(rng.integers(max(8, min(width, height) // 8), max(9, min(width, height) // 2)))
            resized = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            x, y = int(rng.integers(0, max(1, width - size))), int(rng.integers(0, max(1, height - size)))
            h, w = min(size, height - y), min(size, width - x)
            image[y:y + h, x:x + w] = resized[:h, :w]
    return image


def render_scene(rng, height=256, width=256, max_faces=4, face_size=(0.08, 0.5), no_landmark_rate=0.1):
    """One synthetic image: -> (BGR uint8 [height, width, 3], annotations float32 [n, 15]).

    ``face_size`` bounds the face box width as a fraction of the short side.
    Faces do not overlap. A fraction ``no_landmark_rate`` of faces is labelled
    without landmarks (label -1, landmarks -1), as in WIDER FACE.
    """
    import cv2

    sources, clutter = face_sources()
    image = _background(rng, height, width, clutter)
    short = min(height, width)
    boxes, annotations = [], []
    for _ in range(int(rng.integers(1, max_faces + 1))):
        source = sources[0] if rng.random() < 0.35 else sources[1 + int(rng.integers(len(sources) - 1))]
        box_w = rng.uniform(*face_size) * short
        scale = box_w / (source.box[2] - source.box[0])
        patch_h = max(1, int(round(source.patch.shape[0] * scale)))
        patch_w = max(1, int(round(source.patch.shape[1] * scale)))
        # Exact scale factors of the resized patch (rounding changes them slightly).
        sx, sy = patch_w / source.patch.shape[1], patch_h / source.patch.shape[0]
        box = source.box * np.array([sx, sy, sx, sy])
        if box[2] - box[0] > width or box[3] - box[1] > height:
            continue
        for _attempt in range(20):
            # Place so that the face box is inside the image.
            ox = rng.uniform(-box[0], width - box[2])
            oy = rng.uniform(-box[1], height - box[3])
            ox, oy = int(np.floor(ox)), int(np.floor(oy))
            placed = box + np.array([ox, oy, ox, oy])
            if placed[0] < 0 or placed[1] < 0 or placed[2] > width or placed[3] > height:
                continue
            if all(_disjoint(placed, other) for other in boxes):
                break
        else:
            continue
        patch = cv2.resize(source.patch, (patch_w, patch_h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        mask = cv2.resize(source.mask, (patch_w, patch_h), interpolation=cv2.INTER_LINEAR)
        landmarks = source.landmarks * np.array([sx, sy])
        local_box = box.copy()
        if rng.integers(2):
            patch, mask = patch[:, ::-1], mask[:, ::-1]
            local_box = np.array([patch_w - box[2], box[1], patch_w - box[0], box[3]])
            landmarks = landmarks.copy()
            landmarks[:, 0] = patch_w - landmarks[:, 0]
            landmarks = landmarks[[1, 0, 2, 4, 3]]
        tint = rng.uniform(0.6, 1.3, size=3) if rng.random() < 0.7 else np.ones(3)
        patch = patch * rng.uniform(0.7, 1.2) * tint + rng.uniform(-30, 30)
        # Paste the part of the patch that falls inside the image.
        x0, y0 = max(ox, 0), max(oy, 0)
        x1, y1 = min(ox + patch_w, width), min(oy + patch_h, height)
        region = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
        alpha = mask[region][:, :, None]
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - alpha) + patch[region] * alpha
        offset = np.array([ox, oy], dtype=np.float64)
        placed = local_box + np.tile(offset, 2)
        points = landmarks + offset
        label = 1.0
        if rng.random() < no_landmark_rate:
            points, label = np.full((5, 2), -1.0), -1.0
        boxes.append(placed)
        annotations.append(np.concatenate([placed, points.reshape(-1), [label]]))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, np.asarray(annotations, dtype=np.float32).reshape(-1, 15)


def _disjoint(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


class SyntheticFaces(Dataset):
    """An in-memory synthetic dataset: ``size`` fixed scenes, optionally augmented.

    Scene ``i`` is rendered from ``(seed, i)`` (so the dataset is the same every
    epoch, like a real one); the augmentation ``transform(image, annotations,
    rng)`` gets a Generator of ``(seed, epoch, i)``, as :class:`WiderFaceDataset`.
    Indexable by ``i`` or ``(epoch, i)``.
    """

    def __init__(self, size=512, image_size=256, seed=0, transform=None, max_faces=4,
                 face_size=(0.08, 0.5)):
        self.size = int(size)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.transform = transform
        self.max_faces = max_faces
        self.face_size = face_size

    def __len__(self):
        return self.size

    def scene(self, index):
        rng = np.random.default_rng((self.seed, 0x5EED, int(index)))
        return render_scene(rng, self.image_size, self.image_size, self.max_faces, self.face_size)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < self.size:
            raise IndexError(f"SyntheticFaces index {index} out of range [0, {self.size})")
        image, annotations = self.scene(index)
        if self.transform is None:
            return image, annotations
        return self.transform(image, annotations, np.random.default_rng((self.seed, int(epoch), int(index))))


def generate_synthetic_dataset(out_dir, num_images=64, image_size=256, seed=0, **scene_kwargs):
    """Writes ``out_dir/images/synthetic/NNNNN.jpg`` and ``out_dir/label.txt``; returns the label path.

    The label file is in the retinaface_gt format, so it trains through the
    same :class:`WiderFaceDataset` path as the real WIDER FACE.
    """
    import cv2

    dataset = SyntheticFaces(num_images, image_size, seed, **scene_kwargs)
    image_dir = os.path.join(out_dir, "images", "synthetic")
    os.makedirs(image_dir, exist_ok=True)
    samples = []
    for index in range(num_images):
        image, annotations = dataset.scene(index)
        name = f"synthetic/{index:05d}.png"
        if not cv2.imwrite(os.path.join(out_dir, "images", name), image):
            raise OSError(f"cannot write {os.path.join(out_dir, 'images', name)}")
        samples.append((name, annotations))
    label_file = os.path.join(out_dir, "label.txt")
    write_label_file(label_file, samples)
    return label_file


#: scikit-image's bundled colour photos used by generate_jpeg_dataset.
JPEG_DATASET_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def generate_jpeg_dataset(out_dir, num_images=8, width=1024, seed=0, photos=(), faces=(5, 25), quality=90):
    """A WIDER-like set of ~``width``-wide JPEGs with synthetic faces: -> the label.txt path.

    Writes ``out_dir/images/jpeg/NNNNN.jpg`` and ``out_dir/label.txt``
    (retinaface_gt format). Image ``i`` is the i-th of ``photos`` (paths of
    your own pictures, e.g. a crowd photo) followed by scikit-image's bundled
    photos, cycled, resized to ``width`` (aspect kept) and JPEG-encoded, so
    decoding costs what a WIDER FACE image costs. The faces are random boxes
    (``faces`` = min, max count; 10-120 px) with five landmarks inside, one in
    five without landmarks (label -1). The labels are for timing and
    augmentation tests, not for learning.
    """
    import cv2
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [cv2.imread(os.fspath(p), cv2.IMREAD_COLOR) for p in photos]
    if any(image is None for image in sources):
        raise FileNotFoundError(f"cannot read one of {list(photos)}")
    sources += [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR) for name in JPEG_DATASET_PHOTOS]
    image_dir = os.path.join(out_dir, "images", "jpeg")
    os.makedirs(image_dir, exist_ok=True)
    samples = []
    for index in range(num_images):
        source = sources[index % len(sources)]
        height = max(1, round(source.shape[0] * width / source.shape[1]))
        image = cv2.resize(source, (width, height), interpolation=cv2.INTER_AREA if width < source.shape[1]
                           else cv2.INTER_CUBIC)
        name = f"jpeg/{index:05d}.jpg"
        if not cv2.imwrite(os.path.join(out_dir, "images", name), image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cannot write {os.path.join(out_dir, 'images', name)}")
        count = int(rng.integers(faces[0], faces[1] + 1))
        size = rng.uniform(10, 120, size=count)
        x1 = rng.uniform(0, width - size)
        y1 = rng.uniform(0, np.maximum(height - size * 1.2, 1))
        boxes = np.stack([x1, y1, x1 + size, y1 + size * 1.2], axis=1)
        points = boxes[:, None, :2] + rng.uniform(0.2, 0.8, size=(count, 5, 2)) * (boxes[:, None, 2:] - boxes[:, None, :2])
        labels = np.where(rng.random(count) < 0.2, -1.0, 1.0)
        points[labels < 0] = -1.0
        samples.append((name, np.concatenate([boxes, points.reshape(count, 10), labels[:, None]], axis=1)))
    label_file = os.path.join(out_dir, "label.txt")
    write_label_file(label_file, samples)
    return label_file
