import math
from typing import Optional, Sequence, Tuple, Union

import torch

from .. import defaults, reference
from .._extension import fused_op, register_fake
from ..reference.prior_box import check_types


def prior_box(
    image_size: Tuple[int, int],
    min_sizes: Sequence[Sequence[int]] = defaults.MIN_SIZES,
    steps: Sequence[int] = defaults.STEPS,
    clip: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RetinaFace priors for an image of ``image_size = (height, width)``: [P, 4] (cx, cy, w, h).

    Level k has a ceil(H / steps[k]) x ceil(W / steps[k]) grid; priors are ordered
    level -> row -> column -> min_size, normalised by the image size and not
    clipped unless ``clip``. Equal to biubug6's PriorBox bit for bit
    (640 x 640 gives 16800 priors).
    """
    check_types(image_size, min_sizes, steps, dtype)
    height, width = (int(s) for s in image_size)
    op = fused_op("prior_box")
    if op is None:
        return reference.prior_box(image_size, min_sizes, steps, clip, device, dtype)
    flat_sizes = [int(s) for level in min_sizes for s in level]
    per_level = [len(level) for level in min_sizes]
    priors = op(height, width, flat_sizes, per_level, [int(s) for s in steps], clip)
    return priors.to(device=device, dtype=dtype)


@register_fake("prior_box")
def _prior_box_fake(height, width, min_sizes, sizes_per_level, steps, clip):
    count = sum(
        math.ceil(height / step) * math.ceil(width / step) * n
        for step, n in zip(steps, sizes_per_level)
    )
    return torch.empty((count, 4), dtype=torch.float32)
