from itertools import product

import torch

from .. import defaults


def check_types(image_size, min_sizes, steps, dtype):
    """What both implementations require before converting: whole-number sizes and steps (16.5 would
    be truncated by the compiled op's int[] and used as is by this one) and a floating dtype."""
    for name, values in (("image_size", image_size), ("min_sizes", [s for level in min_sizes for s in level]),
                         ("steps", steps)):
        for value in values:
            torch._check(not isinstance(value, bool) and float(value).is_integer(),
                         lambda: f"prior_box(): {name} must be whole numbers, got {value!r}")
    torch._check(dtype.is_floating_point,
                 lambda: f"prior_box(): dtype must be a floating dtype, got {dtype}")


def check_prior_box_args(height, width, min_sizes, steps):
    """The compiled op's checks (csrc/common/prior_box_checks.h), same messages; returns the prior count."""
    torch._check(
        height > 0 and width > 0,
        lambda: f"prior_box(): image_size must be positive, got ({height}, {width})",
    )
    torch._check(
        len(min_sizes) == len(steps),
        lambda: f"prior_box(): min_sizes has {len(min_sizes)} levels but steps has {len(steps)}",
    )
    for sizes in min_sizes:
        torch._check(len(sizes) > 0, lambda: "prior_box(): every level needs at least one min_size")
    for step in steps:
        torch._check(step > 0, lambda: f"prior_box(): steps must be positive, got {step}")
    for size in (s for sizes in min_sizes for s in sizes):
        torch._check(size > 0, lambda: f"prior_box(): min_sizes must be positive, got {size}")
    count = sum(_cells(height, step) * _cells(width, step) * len(sizes) for step, sizes in zip(steps, min_sizes))
    torch._check(16 * count < 2**63, lambda: f"prior_box(): image_size ({height}, {width}) gives too many "
                                             "priors: their size in bytes (16 per prior) overflows int64")
    return count


def _cells(size, step):
    """ceil(size / step) in integers (a float division rounds for sizes near 2^53 and beyond)."""
    return -(-size // step)


def prior_box(image_size, min_sizes=defaults.MIN_SIZES, steps=defaults.STEPS, clip=False,
              device=None, dtype=torch.float32):
    """Pure-Python priors, written as biubug6's PriorBox.forward (Python floats, one rounding).

    Arguments are checked as the compiled op checks them (same messages), so the
    fallback never silently drops a level (zip would) or returns no priors.
    """
    check_types(image_size, min_sizes, steps, dtype)
    # Whole numbers from here on, as the compiled op's int[] arguments.
    height, width = (int(s) for s in image_size)
    min_sizes = [[int(s) for s in level] for level in min_sizes]
    steps = [int(s) for s in steps]
    check_prior_box_args(height, width, min_sizes, steps)
    anchors = []
    for step, sizes in zip(steps, min_sizes):
        for i, j in product(range(_cells(height, step)), range(_cells(width, step))):
            for size in sizes:
                anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height,
                            size / width, size / height]
    priors = torch.tensor(anchors, dtype=torch.float32).view(-1, 4)
    if clip:
        priors.clamp_(min=0, max=1)
    return priors.to(device=device, dtype=dtype)
