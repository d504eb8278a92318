"""Pure-PyTorch mobilenet_stem: uint8 BGR images through MobileNetV1-0.25's stage1[:4] (BatchNorm folded)."""
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import defaults

# (out channels, in channels per group, kernel, stride) of conv, then depthwise / pointwise x 3.
STEM_LAYERS = ((8, 3, 3, 2), (8, 1, 3, 1), (16, 8, 1, 1), (16, 1, 3, 2), (32, 16, 1, 1), (32, 1, 3, 1),
               (32, 32, 1, 1))
STEM_LAYER_NAMES = ("conv 3x3/2", "depthwise 3x3/1", "pointwise", "depthwise 3x3/2", "pointwise",
                    "depthwise 3x3/1", "pointwise")


def check_mobilenet_stem_args(images, weights, biases, mean, negative_slope):
    """The checks of the fused op (csrc/common/mobilenet_stem_checks.h), with the same messages."""
    def fail(message):
        raise RuntimeError(f"mobilenet_stem(): {message}")

    if images.dim() != 4 or images.shape[3] != 3:
        fail(f"images must have shape [B, H, W, 3], got {list(images.shape)}")
    if images.dtype != torch.uint8:
        fail(f"images must be Byte, got {images.dtype}")
    for name, tensors in (("weights", weights), ("biases", biases)):
        if len(tensors) != len(STEM_LAYERS):
            fail(f"{name} must hold {len(STEM_LAYERS)} tensors, got {len(tensors)}")
    for k, ((out, inp, size, _), layer) in enumerate(zip(STEM_LAYERS, STEM_LAYER_NAMES)):
        for name, tensor, shape in ((f"weights[{k}]", weights[k], [out, inp, size, size]),
                                    (f"biases[{k}]", biases[k], [out])):
            if list(tensor.shape) != shape:
                fail(f"{name} must have shape {shape} ({layer}), got {list(tensor.shape)}")
            if tensor.dtype != torch.float32:
                fail(f"{name} must be Float, got {tensor.dtype}")
            if tensor.device != images.device:
                fail(f"{name} must be on the same device as images ({images.device}), got {tensor.device}")
    if len(mean) != 3:
        fail(f"mean must have 3 values (one per channel), got {len(mean)}")
    if not all(math.isfinite(m) for m in mean):
        fail(f"mean must be finite, got {list(mean)}")
    if not math.isfinite(negative_slope):
        fail(f"negative_slope must be finite, got {negative_slope}")


def mobilenet_stem(images: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                   mean: Sequence[float] = defaults.BGR_MEAN,
                   negative_slope: float = defaults.MOBILENET_LEAKY) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> float32 [B, 32, ceil(H / 4), ceil(W / 4)]: conv + LeakyReLU, seven times."""
    check_mobilenet_stem_args(images, weights, biases, mean, negative_slope)
    x = images.permute(0, 3, 1, 2).float() - torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    for (out, inp, size, stride), weight, bias in zip(STEM_LAYERS, weights, biases):
        groups = x.shape[1] // inp
        x = F.leaky_relu(F.conv2d(x, weight, bias, stride=stride, padding=size // 2, groups=groups), negative_slope)
    return x.contiguous()
