from typing import Sequence

import torch

from .. import defaults, reference
from .._extension import fused_op, register_fake, register_no_gradient
from ..reference.mobilenet_stem import check_mobilenet_stem_args


def mobilenet_stem(images: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                   mean: Sequence[float] = defaults.BGR_MEAN,
                   negative_slope: float = defaults.MOBILENET_LEAKY) -> torch.Tensor:
    """MobileNetV1-0.25's first four layers, fused, straight from uint8 images.

    Computes ``stage1[:4]`` of biubug6's MobileNetV1-0.25 (a 3x3 stride-2
    conv, 3 -> 8 channels, then depthwise-separable blocks 8 -> 16 (stride 1),
    16 -> 32 (stride 2), 32 -> 32 (stride 1)), each convolution followed by
    LeakyReLU(negative_slope), on ``images - mean``.

    Args:
        images: uint8 [B, H, W, 3] in the network's channel order (BGR for
            biubug6's weights), as ``cv2.imread`` gives them.
        weights, biases: the 7 convolutions' weights (OIHW float32: [8, 3, 3, 3],
            [8, 1, 3, 3], [16, 8, 1, 1], [16, 1, 3, 3], [32, 16, 1, 1],
            [32, 1, 3, 3], [32, 32, 1, 1]) and biases, with BatchNorm folded in
            (``retinaface_ext.inference.stem_parameters(model)`` extracts them).
        mean: subtracted from the pixel values, per channel.
        negative_slope: the LeakyReLU slope (0.1 in biubug6's MobileNetV1).

    Returns:
        float32 [B, 32, ceil(H / 4), ceil(W / 4)], contiguous: what
        ``model.body.stage1[:4]`` returns for ``make_batch(images)``, to float
        rounding (the sums run in another order).

    On the CPU the seven layers run tile by tile with every intermediate row in
    the cache and the image read once as uint8 (several times faster than the
    layers one by one, which are memory-bound at these resolutions). Not
    differentiable (inference only): a gradient asked of it raises.
    """
    op = fused_op("mobilenet_stem")
    if op is None:
        return reference.mobilenet_stem(images, weights, biases, mean, negative_slope)
    return op(images, list(weights), list(biases), [float(m) for m in mean], float(negative_slope))


@register_fake("mobilenet_stem")
def _mobilenet_stem_fake(images, weights, biases, mean, negative_slope):
    check_mobilenet_stem_args(images, weights, biases, mean, negative_slope)
    batch, height, width, _ = images.shape
    return images.new_empty((batch, 32, (height + 3) // 4, (width + 3) // 4), dtype=torch.float32)


register_no_gradient("mobilenet_stem", "it is an inference kernel. Train through model.body.stage1 instead.")
