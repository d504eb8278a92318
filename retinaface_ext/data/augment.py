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
import numpy as np

#: biubug6's per-channel mean (B, G, R).
BGR_MEAN = (104.0, 117.0, 123.0)

_INTERPOLATIONS = None


def _interpolations():
    global _INTERPOLATIONS
    if _INTERPOLATIONS is None:
        import cv2

        _INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST,
                           cv2.INTER_LANCZOS4)
    return _INTERPOLATIONS


def matrix_iof(boxes, rois):
    """Intersection over the area of each box ([N, 4] x [M, 4] -> [N, M]), biubug6's matrix_iof."""
    lt = np.maximum(boxes[:, None, :2], rois[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], rois[None, :, 2:])
    area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area_a = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return area_i / np.maximum(area_a[:, None], 1)


def random_crop(image, boxes, labels, landmarks, image_size, rng, tries=250):
    """biubug6's ``_crop``: -> (image, boxes, labels, landmarks, needs_padding)."""
    height, width = image.shape[:2]
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
        crop = image[roi[1]:roi[3], roi[0]:roi[2]]
        return crop, boxes_t[keep], labels_t[keep], landmarks_t[keep], False
    return image, boxes, labels, landmarks, True


def _convert(channel, alpha=1.0, beta=0.0):
    # In place, as biubug6: float maths, clip to 0..255, truncate back to uint8.
    channel[:] = np.clip(channel.astype(np.float64) * alpha + beta, 0, 255)


def distort(image, rng):
    """biubug6's ``_distort``: photometric distortion of a BGR uint8 image (returns a copy)."""
    import cv2

    image = image.copy()

    def brightness():
        if rng.integers(2):
            _convert(image, beta=rng.uniform(-32, 32))

    def contrast():
        if rng.integers(2):
            _convert(image, alpha=rng.uniform(0.5, 1.5))

    def saturation_and_hue(hsv):
        if rng.integers(2):
            _convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
        if rng.integers(2):
            hue = hsv[:, :, 0].astype(np.int64) + int(rng.integers(-18, 19))
            hsv[:, :, 0] = hue % 180

    if rng.integers(2):
        brightness()
        contrast()
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        saturation_and_hue(hsv)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    else:
        brightness()
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        saturation_and_hue(hsv)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        contrast()
    return image


def pad_to_square(image, fill):
    height, width = image.shape[:2]
    side = max(height, width)
    square = np.empty((side, side, 3), dtype=image.dtype)
    square[:, :] = fill
    square[:height, :width] = image
    return square


def mirror(image, boxes, landmarks, rng):
    """biubug6's ``_mirror``: with probability 1/2 flip horizontally and swap left/right landmarks."""
    width = image.shape[1]
    if not rng.integers(2):
        return image, boxes, landmarks
    image = image[:, ::-1]
    boxes = boxes.copy()
    boxes[:, 0::2] = width - boxes[:, 2::-2]
    points = landmarks.reshape(-1, 5, 2).copy()
    points[:, :, 0] = width - points[:, :, 0]
    points = points[:, [1, 0, 2, 4, 3]]
    return image, boxes, points.reshape(-1, 10)


class TrainTransform:
    """biubug6's ``preproc(img_dim, rgb_means)``: ``(image, annotations, rng) -> (image, targets)``.

    ``image`` is BGR uint8 [H, W, 3] and ``annotations`` [n, 15] in pixels; the
    result is a float32 [3, image_size, image_size] array (BGR minus
    ``bgr_mean``) and float32 targets [m, 15] normalised to [0, 1].
    """

    def __init__(self, image_size=640, bgr_mean=BGR_MEAN):
        self.image_size = int(image_size)
        self.bgr_mean = np.asarray(bgr_mean, dtype=np.float32)

    def __call__(self, image, annotations, rng):
        import cv2

        annotations = np.asarray(annotations, dtype=np.float32).reshape(-1, 15)
        boxes = annotations[:, :4].copy()
        landmarks = annotations[:, 4:14].copy()
        labels = annotations[:, 14].copy()
        image, boxes, labels, landmarks, needs_padding = random_crop(
            image, boxes, labels, landmarks, self.image_size, rng)
        image = distort(image, rng)
        if needs_padding:
            image = pad_to_square(image, self.bgr_mean)
        image, boxes, landmarks = mirror(image, boxes, landmarks, rng)
        height, width = image.shape[:2]
        interpolation = _interpolations()[int(rng.integers(5))]
        image = cv2.resize(np.ascontiguousarray(image), (self.image_size, self.image_size),
                           interpolation=interpolation)
        image = (image.astype(np.float32) - self.bgr_mean).transpose(2, 0, 1)
        scale = np.array([width, height], dtype=np.float32)
        boxes = (boxes.reshape(-1, 2, 2) / scale).reshape(-1, 4)
        landmarks = (landmarks.reshape(-1, 5, 2) / scale).reshape(-1, 10)
        landmarks[labels < 0] = -1.0
        targets = np.concatenate([boxes, landmarks, labels[:, None]], axis=1).astype(np.float32)
        return np.ascontiguousarray(image), targets


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
