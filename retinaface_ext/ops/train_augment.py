import math

import torch

from .. import defaults, reference
from .._extension import check_same_device, fused_op, register_fake

_COLUMNS = 12
_DTYPES = (torch.uint8, torch.float32, torch.float16, torch.bfloat16)


def train_augment(images, params, size=640, mean=defaults.BGR_MEAN, dtype=torch.float32):
    """biubug6's training augmentation (``preproc``) of a batch of images, in one pass.

    Args:
        images: uint8 [B, H, W, 3] BGR (or one [H, W, 3] image). Images of
            different sizes go in one tensor padded to the largest: only each
            image's region is read.
        params: float64 [B, 12] (a tensor, or a list of rows such as
            ``AugmentParams.row()``), what biubug6's ``preproc`` drew per image
            (see :func:`retinaface_ext.data.draw_augmentation`): the region
            (left, top, width, height) placed at the top-left of a side x side
            canvas (the rest is the mean colour), mirror, interpolation (0..4:
            linear, cubic, area, nearest, lanczos4 as in biubug6's list),
            contrast_last, brightness, contrast, saturation, hue.
        size: output side (biubug6's img_dim).
        mean: BGR mean; subtracted for float outputs, and the pad colour
            (truncated to uint8, as biubug6's assignment into a uint8 array).
        dtype: torch.uint8 -> [B, size, size, 3] BGR uint8; float32 / float16
            / bfloat16 -> [B, 3, size, size] BGR minus ``mean``.

    The pixels equal biubug6's numpy / cv2 steps (``_distort``, ``_pad_to_square``,
    ``_mirror``, ``cv2.resize``) bit for bit, except INTER_CUBIC, which the
    opencv-python wheels hand to Intel IPP: there we compute OpenCV's own cubic
    (equal to cv2 with ``cv2.ipp.setUseIPP(False)``), within 1 gray level of
    IPP's (mean difference about 0.05), and INTER_AREA shrinking by an integer
    factor of 2902 or more, where cv2's int32 block sums wrap (a white image
    comes out black) and ours do not. Not differentiable (uint8 input).
    Params are checked on the host; CUDA images take params on any device.
    """
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if not isinstance(params, torch.Tensor):
        params = torch.tensor(params, dtype=torch.float64).reshape(-1, _COLUMNS)
    if dtype not in _DTYPES:
        raise ValueError(f"train_augment(): dtype must be one of {_DTYPES}, got {dtype}")
    mean = [float(m) for m in mean]
    op = fused_op("train_augment")
    if op is None:
        _check_rows_on_host(images, params)  # the cv2 reference checks nothing (a negative left wraps around)
        return reference.train_augment(images, params, size, mean, dtype)
    if images.device.type != "cpu" and params.device.type == "cpu":
        # Checked here, where the values are on the host; the CUDA kernel cannot
        # check them without a synchronisation (it clamps every read instead).
        _check_rows_on_host(images, params)
        params = params.to(images.device, non_blocking=True)
    return op(images, params, int(size), mean, dtype)


# The columns of a params row that hold integers (csrc/common/train_augment_math.h, ParamColumn).
_INTEGER_COLUMNS = (0, 1, 2, 3, 4, 5, 6, 7, 11)


def _check_rows_on_host(images, params):
    """check_train_augment_row (csrc/common/train_augment_checks.h) with its messages.

    The CPU kernel checks every row itself; the CUDA kernel cannot without a
    synchronisation, and the cv2 reference (the fallback without the
    extension) does not, so for those the rows are checked here, on the host:
    a row that the CPU kernel refuses is refused everywhere. A wrong shape or
    dtype is left to the op's own checks.
    """
    if params.dtype != torch.float64 or params.shape != (images.shape[0], _COLUMNS):
        return
    height, width = images.shape[1], images.shape[2]
    for image, row in enumerate(params.tolist()):
        def fail(message):
            raise RuntimeError(f"train_augment(): {message}")

        for column, value in enumerate(row):
            if not math.isfinite(value):
                fail(f"params[{image}, {column}] must be finite, got {value}")
        for column in _INTEGER_COLUMNS:
            if row[column] != math.floor(row[column]) or abs(row[column]) >= 2 ** 24:
                fail(f"params[{image}, {column}] must be an integer, got {row[column]}")
        left, top, rw, rh, side, mirror, interpolation, contrast_last = row[:8]
        if not (rw >= 1 and rh >= 1 and left >= 0 and top >= 0 and left + rw <= width and top + rh <= height):
            fail(f"image {image}: the region (left {left}, top {top}, width {rw}, height {rh}) must lie "
                 f"inside the {height} x {width} image")
        if not max(rw, rh) <= side <= 65536:
            fail(f"image {image}: side must be in [max(region width, height), 65536], got {side}")
        if not 0 <= interpolation <= 4:
            fail(f"image {image}: interpolation must be 0..4 (linear, cubic, area, nearest, lanczos4), "
                 f"got {interpolation}")
        if mirror not in (0, 1) or contrast_last not in (0, 1):
            fail(f"image {image}: mirror and contrast_last must be 0 or 1")


@register_fake("train_augment")
def _train_augment_fake(images, params, size, mean, dtype=None):
    torch._check(images.dim() == 4 and images.shape[-1] == 3,
                 lambda: f"train_augment(): images must have shape [B, H, W, 3], got {list(images.shape)}")
    torch._check(images.dtype == torch.uint8,
                 lambda: f"train_augment(): images must be torch.uint8, got {images.dtype}")
    torch._check(params.dim() == 2 and params.shape[0] == images.shape[0] and params.shape[1] == _COLUMNS,
                 lambda: f"train_augment(): params must have shape [B, 12] (one row per image), "
                 f"got {list(params.shape)}")
    torch._check(params.dtype == torch.float64,
                 lambda: f"train_augment(): params must be torch.float64, got {params.dtype}")
    check_same_device("train_augment", "images", images, params=params)
    torch._check(0 < size <= 16384, lambda: f"train_augment(): size must be in [1, 16384], got {size}")
    torch._check(len(mean) == 3, lambda: f"train_augment(): mean must have 3 values (B, G, R), got {len(mean)}")
    for m in mean:
        torch._check(math.isfinite(m), lambda: f"train_augment(): mean must be finite, got {m}")
    dtype = torch.uint8 if dtype is None else dtype
    torch._check(dtype in _DTYPES, lambda: f"train_augment(): dtype must be uint8, float32, float16 or bfloat16, "
                 f"got {dtype}")
    if dtype == torch.uint8:
        return images.new_empty((images.shape[0], size, size, 3))
    return images.new_empty((images.shape[0], 3, size, size), dtype=dtype)
