"""biubug6's training augmentation (data/data_augment.py ``preproc``), driven by a numpy Generator.

Per sample: a random square crop (scale 1.0 with probability 0.2, otherwise
uniform in [0.3, 1.0) of the short side; up to 250 tries) keeping the faces
whose centre lies strictly inside; photometric distortion (brightness,
contrast, saturation, hue in biubug6's two orders); padding to a square with
the mean colour when no crop was found; a horizontal mirror with the landmark
swap (eyes, mouth corners); a resize to ``image_size`` with a random one of five
interpolations; BGR mean subtraction; coordinates normalised to [0, 1].

The random draws mirror biubug6's (``random.uniform`` -> ``rng.uniform``,
``random.randrange(n)`` -> ``rng.integers(n)``) but come from the Generator the
dataset passes in, so a sample's augmentation is reproducible.
Where we differ: faces without landmarks keep landmarks -1 (biubug6 shifts and
clips the -1 placeholders with the crop; the loss ignores them either way).
"""
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import defaults

#: biubug6's per-channel mean (B, G, R).
BGR_MEAN = defaults.BGR_MEAN

#: biubug6's interpolations, in the order of its list (AugmentParams.interpolation indexes it).
INTERPOLATIONS = ("linear", "cubic", "area", "nearest", "lanczos4")


def matrix_iof(boxes, rois):
    """Intersection over the area of each box ([N, 4] x [M, 4] -> [N, M]), biubug6's matrix_iof."""
    lt = np.maximum(boxes[:, None, :2], rois[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], rois[None, :, 2:])
    area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area_a = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return area_i / np.maximum(area_a[:, None], 1)


def choose_crop(height, width, boxes, labels, landmarks, image_size, rng, tries=250):
    """biubug6's ``_crop`` without the pixels: -> (roi, boxes, labels, landmarks).

    ``roi`` is ``(left, top, size)`` of the square crop, or None when no crop
    was found in ``tries`` draws (the image is then padded to a square).
    """
    short_side = min(width, height)
    for _ in range(tries):
        scale = 1.0 if rng.random() <= 0.2 else rng.uniform(0.3, 1.0)
        size = int(scale * short_side)
        left = 0 if width == size else int(rng.integers(width - size))
        top = 0 if height == size else int(rng.integers(height - size))
        roi = np.array((left, top, left + size, top + size))
        if len(boxes) == 0 or not (matrix_iof(boxes, roi[None]) >= 1).any():
            continue
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.logical_and(roi[:2] < centers, centers < roi[2:]).all(axis=1)
        boxes_t = boxes[inside].copy()
        labels_t = labels[inside].copy()
        landmarks_t = landmarks[inside].reshape(-1, 5, 2).copy()
        if len(boxes_t) == 0:
            continue
        boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2]) - roi[:2]
        boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:]) - roi[:2]
        landmarks_t = np.clip(landmarks_t - roi[:2], 0, roi[2:] - roi[:2]).reshape(-1, 10)
        # biubug6 keeps faces wider than 0 px at training scale (its comment says 16 px).
        widths = (boxes_t[:, 2] - boxes_t[:, 0] + 1) / size * image_size
        heights = (boxes_t[:, 3] - boxes_t[:, 1] + 1) / size * image_size
        keep = np.minimum(widths, heights) > 0.0
        if not keep.any():
            continue
        return (left, top, size), boxes_t[keep], labels_t[keep], landmarks_t[keep]
    return None, boxes, labels, landmarks


def random_crop(image, boxes, labels, landmarks, image_size, rng, tries=250):
    """biubug6's ``_crop``: -> (image, boxes, labels, landmarks, needs_padding)."""
    roi, boxes, labels, landmarks = choose_crop(image.shape[0], image.shape[1], boxes, labels, landmarks,
                                                image_size, rng, tries)
    if roi is None:
        return image, boxes, labels, landmarks, True
    left, top, size = roi
    return image[top:top + size, left:left + size], boxes, labels, landmarks, False


class Distortion(NamedTuple):
    """The values biubug6's ``_distort`` drew; steps not drawn hold the identity."""

    contrast_last: bool = False  # biubug6's second branch: brightness, HSV, contrast
    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: int = 0


def draw_distortion(rng):
    """biubug6's ``_distort`` draws, in its order, without touching pixels."""
    def maybe(draw, identity):
        return draw() if rng.integers(2) else identity

    if rng.integers(2):
        brightness = maybe(lambda: rng.uniform(-32, 32), 0.0)
        contrast = maybe(lambda: rng.uniform(0.5, 1.5), 1.0)
        saturation = maybe(lambda: rng.uniform(0.5, 1.5), 1.0)
        hue = maybe(lambda: int(rng.integers(-18, 19)), 0)
        return Distortion(False, float(brightness), float(contrast), float(saturation), hue)
    brightness = maybe(lambda: rng.uniform(-32, 32), 0.0)
    saturation = maybe(lambda: rng.uniform(0.5, 1.5), 1.0)
    hue = maybe(lambda: int(rng.integers(-18, 19)), 0)
    contrast = maybe(lambda: rng.uniform(0.5, 1.5), 1.0)
    return Distortion(True, float(brightness), float(contrast), float(saturation), hue)


def _convert(channel, alpha=1.0, beta=0.0):
    # In place, as biubug6: float maths, clip to 0..255, truncate back to uint8.
    channel[:] = np.clip(channel.astype(np.float64) * alpha + beta, 0, 255)


def apply_distortion(image, distortion):
    """biubug6's ``_distort`` pixels (numpy float64 and cv2's 8-bit HSV) for drawn values; a copy."""
    import cv2

    image = image.copy()
    if distortion.brightness != 0.0:
        _convert(image, beta=distortion.brightness)
    if not distortion.contrast_last and distortion.contrast != 1.0:
        _convert(image, alpha=distortion.contrast)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if distortion.saturation != 1.0:
        _convert(hsv[:, :, 1], alpha=distortion.saturation)
    if distortion.hue != 0:
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + distortion.hue) % 180
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if distortion.contrast_last and distortion.contrast != 1.0:
        _convert(image, alpha=distortion.contrast)
    return image


def distort(image, rng):
    """biubug6's ``_distort``: photometric distortion of a BGR uint8 image (returns a copy)."""
    return apply_distortion(image, draw_distortion(rng))


def pad_to_square(image, fill):
    height, width = image.shape[:2]
    side = max(height, width)
    square = np.empty((side, side, 3), dtype=image.dtype)
    square[:, :] = fill
    square[:height, :width] = image
    return square


def mirror_targets(width, boxes, landmarks, rng):
    """biubug6's ``_mirror`` draw and coordinates: -> (boxes, landmarks, flipped)."""
    if not rng.integers(2):
        return boxes, landmarks, False
    boxes = boxes.copy()
    boxes[:, 0::2] = width - boxes[:, 2::-2]
    points = landmarks.reshape(-1, 5, 2).copy()
    points[:, :, 0] = width - points[:, :, 0]
    points = points[:, [1, 0, 2, 4, 3]]
    return boxes, points.reshape(-1, 10), True


def mirror(image, boxes, landmarks, rng):
    """biubug6's ``_mirror``: with probability 1/2 flip horizontally and swap left/right landmarks."""
    boxes, landmarks, flipped = mirror_targets(image.shape[1], boxes, landmarks, rng)
    return (image[:, ::-1] if flipped else image), boxes, landmarks


@dataclass(frozen=True)
class AugmentParams:
    """Everything biubug6's ``preproc`` draws for one image: what ``ops.train_augment`` takes.

    The source region ``(left, top, region_width, region_height)`` is placed
    at the top-left of a ``side`` x ``side`` canvas (a crop fills it; an
    uncropped image is padded with the mean colour), distorted, mirrored and
    resized with ``INTERPOLATIONS[interpolation]``.
    """

    left: int
    top: int
    region_width: int
    region_height: int
    side: int
    mirror: bool
    interpolation: int
    distortion: Distortion = Distortion()

    def row(self):
        """The op's params row (12 numbers, the column order of csrc/common/train_augment_math.h)."""
        d = self.distortion
        return [float(v) for v in (self.left, self.top, self.region_width, self.region_height, self.side,
                                   self.mirror, self.interpolation, d.contrast_last, d.brightness, d.contrast,
                                   d.saturation, d.hue)]


def draw_augmentation(height, width, annotations, rng, image_size=640):
    """biubug6's ``preproc`` draws for an image of height x width and its faces.

    -> (:class:`AugmentParams`, targets float32 [m, 15] normalised to [0, 1]).
    The Generator is used exactly as biubug6 uses ``random`` (crop, distortion,
    mirror, interpolation), so the result is a function of its state.
    """
    annotations = np.asarray(annotations, dtype=np.float32).reshape(-1, 15)
    boxes = annotations[:, :4].copy()
    landmarks = annotations[:, 4:14].copy()
    labels = annotations[:, 14].copy()
    roi, boxes, labels, landmarks = choose_crop(height, width, boxes, labels, landmarks, image_size, rng)
    distortion = draw_distortion(rng)
    if roi is None:
        left, top, region_width, region_height, side = 0, 0, width, height, max(height, width)
    else:
        left, top, side = roi
        region_width = region_height = side
    boxes, landmarks, flipped = mirror_targets(side, boxes, landmarks, rng)
    interpolation = int(rng.integers(5))
    params = AugmentParams(left, top, region_width, region_height, side, flipped, interpolation, distortion)
    scale = np.array([side, side], dtype=np.float32)
    boxes = (boxes.reshape(-1, 2, 2) / scale).reshape(-1, 4)
    landmarks = (landmarks.reshape(-1, 5, 2) / scale).reshape(-1, 10)
    landmarks[labels < 0] = -1.0
    targets = np.concatenate([boxes, landmarks, labels[:, None]], axis=1).astype(np.float32)
    return params, targets


_OUTPUT_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "uint8": "uint8"}


class TrainTransform:
    """biubug6's ``preproc(img_dim, rgb_means)``: ``(image, annotations, rng) -> (image, targets)``.

    ``image`` is BGR uint8 [H, W, 3] (or a :class:`~retinaface_ext.data.decode.JpegFile`,
    of which only the crop is decoded) and ``annotations`` [n, 15] in pixels;
    targets come back float32 [m, 15] normalised to [0, 1]. The image comes
    back as ``output``: "float32" (default, biubug6's [3, S, S] BGR minus
    ``bgr_mean``), "float16" / "bfloat16" (torch tensors, the same values), or
    "uint8" ([S, S, 3] BGR, 4x fewer bytes to batch and move; normalise on the
    device with :func:`~retinaface_ext.data.normalize_images`).

    The pixels are made by the fused ``ops.train_augment`` (one pass, C++);
    ``fused=False`` runs biubug6's numpy / cv2 steps instead (also the
    fallback without the compiled extension). Both give the same targets; the
    pixels agree exactly except for cv2's INTER_CUBIC, which opencv-python
    hands to Intel IPP (see README.md, "Training data").
    """

    #: WiderFaceDataset hands JPEGs over undecoded: only the crop is decoded (decode.JpegFile).
    decodes_regions = True

    def __init__(self, image_size=640, bgr_mean=BGR_MEAN, output="float32", fused=True):
        if output not in _OUTPUT_DTYPES:
            raise ValueError(f"output must be one of {sorted(_OUTPUT_DTYPES)}, got {output!r}")
        self.image_size = int(image_size)
        self.bgr_mean = np.asarray(bgr_mean, dtype=np.float32)
        self.output = output
        self.fused = bool(fused)

    def __call__(self, image, annotations, rng):
        import torch

        from .. import ops, reference

        params, targets = draw_augmentation(image.shape[0], image.shape[1], annotations, rng, self.image_size)
        if not isinstance(image, np.ndarray):  # a JpegFile: decode the region the crop reads
            image = image.decode_region(params.left, params.top, params.region_width, params.region_height)
            params = dataclasses.replace(params, left=0, top=0)
        augment = ops.train_augment if self.fused else reference.train_augment
        dtype = getattr(torch, _OUTPUT_DTYPES[self.output])
        out = augment(torch.from_numpy(np.ascontiguousarray(image))[None], [params.row()], self.image_size,
                      self.bgr_mean.tolist(), dtype=dtype)[0]
        if dtype in (torch.float32, torch.uint8):
            out = out.numpy()
        return out, targets


class EvalTransform:
    """Resize to ``image_size`` (no augmentation), mean subtraction, normalised targets."""

    def __init__(self, image_size=640, bgr_mean=BGR_MEAN):
        self.image_size = int(image_size)
        self.bgr_mean = np.asarray(bgr_mean, dtype=np.float32)

    def __call__(self, image, annotations, rng=None):
        import cv2

        annotations = np.asarray(annotations, dtype=np.float32).reshape(-1, 15).copy()
        height, width = image.shape[:2]
        image = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_LINEAR)
        image = (image.astype(np.float32) - self.bgr_mean).transpose(2, 0, 1)
        scale = np.array([width, height] * 7, dtype=np.float32)
        annotations[:, :14] /= scale
        annotations[annotations[:, 14] < 0, 4:14] = -1.0
        return np.ascontiguousarray(image), annotations
