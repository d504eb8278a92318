"""Face detection with a RetinaFace model: preprocessing, one network call and one fused post-processing call per batch.

Images follow biubug6's (and OpenCV's) convention: BGR ``uint8`` arrays of shape
[H, W, 3], as ``cv2.imread`` returns them. Conversions that are unambiguous are
done for you and documented in :func:`prepare_images`; anything else raises.
"""
import os

import numpy as np
import torch

from . import defaults
from .inference.backends import get_runner
from .inference.runners import PostprocessOptions, network_input
from .inference.runners import cached_priors  # noqa: F401  (public here since before the backends)

#: biubug6's per-channel mean (B, G, R) subtracted from every image.
BGR_MEAN = defaults.BGR_MEAN


def prepare_images(images, caller="detect()"):
    """Validates ``images`` and returns ``(list of [H, W, 3] uint8 BGR arrays, single)``.

    Accepted, per image: a BGR ``uint8`` numpy array [H, W, 3]; a grayscale
    [H, W] or [H, W, 1] array (replicated to three channels); a BGRA [H, W, 4]
    array (``cv2.IMREAD_UNCHANGED``; the alpha channel is dropped); a path
    (read with ``cv2.imread``). ``images`` is one image, a list/tuple of images,
    or an [N, H, W, C] array (N images). ``single`` says whether one image was
    given. Empty images, other dtypes (float images are ambiguous: 0..1 or
    0..255?) and other channel counts raise ``ValueError`` / ``TypeError``
    whose message starts with ``caller``.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [_as_bgr_uint8(image, i, caller) for i, image in enumerate(images)], False
    if isinstance(images, (list, tuple)):
        return [_as_bgr_uint8(image, i, caller) for i, image in enumerate(images)], False
    return [_as_bgr_uint8(images, None, caller)], True


def _as_bgr_uint8(image, index, caller):
    where = f"{caller}: image" if index is None else f"{caller}: images[{index}]"
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, torch.Tensor):
        raise TypeError(f"{where} is a torch.Tensor; pass a numpy [H, W, 3] BGR uint8 array "
                        "(e.g. tensor.cpu().numpy())")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where} must be a numpy array (BGR uint8, [H, W, 3]), got {type(image).__name__}")
    if image.dtype != np.uint8:
        example = ("(image >> 8).astype(np.uint8) for a 16-bit image" if image.dtype == np.uint16 else
                   "(image * 255).round().astype(np.uint8) for a 0..1 float image")
        raise TypeError(f"{where} must have dtype uint8 (BGR 0..255, as cv2.imread returns), got {image.dtype}; "
                        f"convert explicitly, e.g. {example}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"{where} must have shape [H, W, 3] (or [H, W] grayscale), got {list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where} is empty: shape {list(image.shape)}")
    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    elif channels != 3:
        raise ValueError(f"{where} must have 1, 3 or 4 channels (gray, BGR, BGRA), got {channels}")
    return image


def read_image(path):
    """The image file at ``path`` as BGR uint8 [H, W, 3], as ``cv2.imread`` decodes it, or a ValueError saying why not.

    Python reads the file and ``cv2.imdecode`` decodes it (same pixels, EXIF
    rotation included): ``cv2.imread`` crashes the process on a file name
    that is not valid UTF-8, as files unpacked from other systems' archives
    have. A truncated JPEG is an error too: OpenCV decodes it with the missing
    part filled in grey and only prints a warning.
    """
    cv2 = import_cv2()
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else (error.strerror or str(error)).lower()
        raise ValueError(f"cannot read an image from {path!r} ({reason})") from None
    if jpeg_data_is_truncated(data):
        raise ValueError(f"cannot read an image from {path!r} (truncated JPEG: it ends before its "
                         "end-of-image marker)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    except cv2.error:
        image = None
    if image is None:
        raise ValueError(f"cannot read an image from {path!r} (not an image OpenCV can decode)")
    return image


def jpeg_data_is_truncated(data):
    """Whether ``data`` is a JPEG that ends before its end-of-image marker (FF D9).

    The marker is looked for after the first start-of-scan (FF DA): inside the
    compressed data an FF byte is always followed by 00 or a restart marker,
    so an FF D9 there is the real end, while the headers before it may hold
    a complete thumbnail (EXIF) with its own.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    scan = data.find(b"\xff\xda")
    return scan < 0 or data.find(b"\xff\xd9", scan) < 0


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError('Reading and drawing images needs OpenCV: pip install "retinaface-ext[cli]" '
                          "(or pip install opencv-python)") from None
    return cv2


def make_batch(images, device=None, channels_last=False):
    """[B, 3, H, W] float32 network input (BGR minus ``BGR_MEAN``) for a list of BGR uint8 images.

    Images of different sizes are padded at the bottom/right to the largest
    height and width with the mean colour, i.e. with zeros after the mean is
    subtracted -- the value the network's own zero padding uses. The uint8
    batch is moved to ``device`` before the float conversion (4x less to copy).
    """
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    batch = np.empty((len(images), height, width, 3), dtype=np.uint8)
    batch[...] = np.asarray(BGR_MEAN, dtype=np.uint8)
    for slot, image in zip(batch, images):
        slot[: image.shape[0], : image.shape[1]] = image
    return network_input(torch.from_numpy(batch), device, channels_last=channels_last)


def detect(
    model,
    images,
    score_threshold=0.5,
    nms_threshold=defaults.NMS_THRESHOLD,
    pre_nms_top_k=defaults.PRE_NMS_TOP_K,
    max_detections=defaults.MAX_DETECTIONS,
    half=None,
    backend="auto",
    cuda_graph=False,
):
    """Detects faces in one image or a list of images.

    Args:
        model: a :class:`retinaface_ext.RetinaFace` on any device. It is not
            modified (its training flag does not matter: detection runs the
            eval-mode network).
        images: one BGR uint8 image [H, W, 3], or a list of images of any
            sizes (see :func:`prepare_images` for the accepted forms).
        score_threshold: keep faces whose score (softmax probability of
            "face") is > this. biubug6's detect.py uses 0.02 for evaluation and
            0.6 for display; 0.5 is a good default for applications.
        nms_threshold, pre_nms_top_k, max_detections: as ``ops.detect_postprocess``
            (biubug6's 0.4, 5000, 750).
        half: the network's precision: None (default) float16 on CUDA and
            float32 on the CPU; True float16; False float32; or a dtype
            (``torch.bfloat16``, ...).
        backend: what runs the network. ``"auto"`` (default): onnxruntime on
            the CPU when ``onnx`` and ``onnxruntime`` are installed (``pip
            install "retinaface-ext[onnxruntime]"``), else ``"torch"``.
            ``"onnxruntime"``: the model as an ONNX graph (built once from its
            weights, BatchNorm folded) in onnxruntime on the CPU, with the
            fused ``ops.mobilenet_stem`` for mobilenet0.25. ``"torch"``: a copy
            of the model with BatchNorm folded, channels_last (and half
            precision on CUDA). ``"eager"``: the model itself, as given.
            :func:`retinaface_ext.inference.describe_backend` says what runs.
        cuda_graph: on CUDA with the "torch" backend, capture network and
            post-processing as a CUDA graph per input shape (and options) on
            first use and replay it afterwards (up to 4 shapes are kept).

    Returns:
        For one image, a float32 array [n, 15]; for a list, a list of them.
        Columns: x1, y1, x2, y2, score, then the five landmarks x, y (left eye,
        right eye, nose, left and right mouth corner) in pixels of the input
        image, sorted by score. Boxes are not clipped to the image (biubug6
        does not clip either).

    Images of the same size go through the network as one batch and are
    post-processed by one ``ops.detect_postprocess`` call; images of other
    sizes form their own batches (no padding), so every image gets exactly
    the detections it gets alone. The backends' state (the onnxruntime
    session, the folded copy) is built on the first call and cached for the
    model; changing the model's weights in place rebuilds it (see
    :mod:`retinaface_ext.inference.backends`).
    """
    image_list, single = prepare_images(images)
    if not image_list:
        return []
    runner = get_runner(model, backend, half)
    options = PostprocessOptions(score_threshold, nms_threshold, pre_nms_top_k, max_detections)
    groups = {}
    for index, image in enumerate(image_list):
        groups.setdefault(image.shape[:2], []).append(index)
    results = [None] * len(image_list)
    with torch.inference_mode():
        for indices in groups.values():
            if len(indices) == 1:
                batch = np.ascontiguousarray(image_list[indices[0]])[None]
            else:
                batch = np.stack([image_list[i] for i in indices])
            detections, counts = runner.detect(torch.from_numpy(batch), options, cuda_graph=cuda_graph)
            for i, rows, count in zip(indices, detections, counts):
                results[i] = np.ascontiguousarray(rows[:count], dtype=np.float32)
    return results[0] if single else results


# biubug6's landmark colours (BGR): left eye, right eye, nose, left and right mouth corner.
LANDMARK_COLORS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def draw_detections(image, detections, color=(0, 0, 255)):
    """A copy of the BGR ``image`` with each detection's box, score and landmarks drawn (biubug6 style)."""
    cv2 = import_cv2()
    canvas = np.ascontiguousarray(image).copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    for row in detections:
        x1, y1, x2, y2 = (int(round(float(v))) for v in row[:4])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        cv2.putText(canvas, f"{row[4]:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_DUPLEX,
                    0.4 * thickness, (255, 255, 255), 1, cv2.LINE_AA)
        radius = max(1, (x2 - x1) // 25)
        for k, landmark_color in enumerate(LANDMARK_COLORS):
            point = (int(round(float(row[5 + 2 * k]))), int(round(float(row[6 + 2 * k]))))
            cv2.circle(canvas, point, radius, landmark_color, -1)
    return canvas


def detections_to_dicts(detections):
    """JSON-ready dicts: ``{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] * 5]}``."""
    faces = []
    for row in np.asarray(detections, dtype=np.float64):
        faces.append({
            "box": [round(v, 2) for v in row[:4].tolist()],
            "score": round(float(row[4]), 5),
            "landmarks": [[round(x, 2), round(y, 2)] for x, y in row[5:15].reshape(5, 2).tolist()],
        })
    return faces
