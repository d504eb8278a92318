"""biubug6's training augmentation pixels with its own numpy / cv2 steps, for given draws.

The oracle of ``ops.train_augment`` (same signature) and its fallback when the
compiled extension is missing: crop (a numpy view), ``_distort`` (numpy
float64 and ``cv2.cvtColor``), ``_pad_to_square``, ``_mirror``,
``cv2.resize`` and the mean subtraction, one image at a time. Needs
opencv-python (the ``train`` extra).
"""
import numpy as np
import torch

from .. import defaults
from ..data.augment import Distortion, apply_distortion

_COLUMNS = 12


def _cv2_interpolation(index):
    import cv2

    return (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)[index]


def augment_image(image, row, size, fill):
    """One image: BGR uint8 [H, W, 3] numpy + a params row -> uint8 [size, size, 3]."""
    import cv2

    left, top, region_width, region_height, side, mirror, interpolation = (int(v) for v in row[:7])
    distortion = Distortion(bool(row[7]), float(row[8]), float(row[9]), float(row[10]), int(row[11]))
    region = image[top:top + region_height, left:left + region_width]
    canvas = apply_distortion(region, distortion)
    if canvas.shape[:2] != (side, side):
        square = np.empty((side, side, 3), dtype=np.uint8)
        square[:, :] = fill
        square[:region_height, :region_width] = canvas
        canvas = square
    if mirror:
        canvas = canvas[:, ::-1]
    return cv2.resize(np.ascontiguousarray(canvas), (size, size), interpolation=_cv2_interpolation(interpolation))


def train_augment(images, params, size=640, mean=defaults.BGR_MEAN, dtype=None):
    """Same contract as ``retinaface_ext.ops.train_augment``, computed with cv2 per image."""
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images[None]
    params = torch.as_tensor(params, dtype=torch.float64).reshape(-1, _COLUMNS)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"train_augment(): images must be uint8 [B, H, W, 3], got {images.dtype} "
                         f"{list(images.shape)}")
    if params.shape[0] != images.shape[0]:
        raise ValueError(f"train_augment(): params must have one row per image ({images.shape[0]}), "
                         f"got {params.shape[0]}")
    dtype = torch.uint8 if dtype is None else dtype
    fill = np.clip(np.asarray(mean, dtype=np.float64), 0, 255).astype(np.uint8)
    outputs = [augment_image(image.cpu().numpy(), row.tolist(), int(size), fill)
               for image, row in zip(images, params)]
    out = torch.from_numpy(np.stack(outputs)) if outputs else torch.empty((0, size, size, 3), dtype=torch.uint8)
    if dtype == torch.uint8:
        return out.to(images.device)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    return (out.permute(0, 3, 1, 2).float() - mean_t).contiguous().to(device=images.device, dtype=dtype)
