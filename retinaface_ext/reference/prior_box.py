import math
from itertools import product

import torch

from .. import defaults


def prior_box(image_size, min_sizes=defaults.MIN_SIZES, steps=defaults.STEPS, clip=False,
              device=None, dtype=torch.float32):
    """Pure-Python priors, written as biubug6's PriorBox.forward (Python floats, one rounding)."""
    height, width = image_size
    anchors = []
    for step, sizes in zip(steps, min_sizes):
        for i, j in product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for size in sizes:
                anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height,
                            size / width, size / height]
    priors = torch.tensor(anchors, dtype=torch.float32).view(-1, 4)
    if clip:
        priors.clamp_(min=0, max=1)
    return priors.to(device=device, dtype=dtype)
