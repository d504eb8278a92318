import itertools
from typing import Optional, Sequence, Tuple, Union

import torch

from .. import defaults, reference
from .._extension import fused_op, register_fake
from ..reference.prior_box import check_prior_box_args, check_types


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

    The priors are computed on ``device`` (CPU and CUDA kernels, bit-identical),
    so no host-to-device copy is needed and a CUDA-graph capture may build them.
    They are computed in float32 and converted to ``dtype``.
    """
    if any(isinstance(s, torch.SymInt) for s in image_size):
        return _prior_box_of_symbolic_size(*image_size, min_sizes, steps, clip, device, dtype)
    check_types(image_size, min_sizes, steps, dtype)
    height, width = (int(s) for s in image_size)
    op = fused_op("prior_box")
    if op is None:
        return reference.prior_box(image_size, min_sizes, steps, clip, device, dtype)
    flat_sizes = [int(s) for level in min_sizes for s in level]
    per_level = [len(level) for level in min_sizes]
    device = torch.device(device) if device is not None else None
    priors = op(height, width, flat_sizes, per_level, [int(s) for s in steps], clip, device)
    return priors if dtype == torch.float32 else priors.to(dtype)


def _prior_box_of_symbolic_size(height, width, min_sizes, steps, clip, device, dtype):
    """The same priors from tensor operations, for a size only known symbolically.

    Inside ``torch.export`` (e.g. the ONNX export with dynamic height and width)
    or ``torch.compile(dynamic=True)`` the image size is a SymInt: the compiled
    op would fix it to the example's size, this graph keeps it symbolic. Equal
    bit for bit: (j + 0.5) * step and each min_size are exact in float32, and a
    single float32 division gives biubug6's double quotient rounded to float32
    (double rounding is exact for a quotient: 53 >= 2 * 24 + 2 bits).
    """
    levels = []
    for step, sizes in zip(steps, min_sizes):
        rows, cols = (height + step - 1) // step, (width + step - 1) // step
        # One flat index per prior (row -> column -> min_size), so that no
        # broadcast makes torch.export guard on a grid dimension being 1.
        index = torch.arange(rows * cols * len(sizes), device=device)
        cell = index // len(sizes)
        row = cell // cols
        col = cell - row * cols  # not cell % cols: the ONNX exporter has no remainder by a symbolic size
        size_index = index - cell * len(sizes)
        row, col = row.float(), col.float()
        anchor = torch.tensor([float(s) for s in sizes], dtype=torch.float32, device=device)[size_index]
        levels.append(torch.stack([(col + 0.5) * step / width, (row + 0.5) * step / height,
                                   anchor / width, anchor / height], dim=1))
    priors = torch.cat(levels)
    if clip:
        priors = priors.clamp(min=0, max=1)
    return priors.to(dtype=dtype)


@register_fake("prior_box")
def _prior_box_fake(height, width, min_sizes, sizes_per_level, steps, clip, device=None):
    torch._check(all(n > 0 for n in sizes_per_level),
                 lambda: "prior_box(): every level needs at least one min_size")
    torch._check(sum(sizes_per_level) == len(min_sizes),
                 lambda: f"prior_box(): sizes_per_level adds up to {sum(sizes_per_level)} "
                         f"but min_sizes has {len(min_sizes)} values")
    ends = list(itertools.accumulate(sizes_per_level))
    levels = [min_sizes[end - n:end] for end, n in zip(ends, sizes_per_level)]
    count = check_prior_box_args(height, width, levels, steps)
    return torch.empty((count, 4), dtype=torch.float32, device=device)
