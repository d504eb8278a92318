import math

import pytest
import torch
from utils import DEVICES, requires_extension

from retinaface_ext import defaults, ops, reference

pytestmark = requires_extension


def expected_count(height, width, min_sizes=defaults.MIN_SIZES, steps=defaults.STEPS):
    return sum(math.ceil(height / s) * math.ceil(width / s) * len(m) for s, m in zip(steps, min_sizes))


def flat_args(height, width, min_sizes=defaults.MIN_SIZES, steps=defaults.STEPS, clip=False):
    """The schema's arguments: (height, width, flat min_sizes, sizes per level, steps, clip)."""
    return (height, width, [s for level in min_sizes for s in level], [len(m) for m in min_sizes],
            list(steps), clip)


@pytest.mark.parametrize(
    "image_size",
    [(640, 640), (1024, 624), (624, 1024), (37, 101), (101, 37), (1, 1), (7, 9), (8, 8), (33, 65), (1080, 1920)],
)
@pytest.mark.parametrize("clip", [False, True])
def test_equals_reference_bit_for_bit(image_size, clip):
    priors = ops.prior_box(image_size, clip=clip)
    expected = reference.prior_box(image_size, clip=clip)
    assert priors.dtype == torch.float32 and priors.is_contiguous()
    assert priors.shape == (expected_count(*image_size), 4)
    assert torch.equal(priors, expected)


def test_640_gives_16800_priors():
    priors = ops.prior_box((640, 640))
    assert priors.shape == (16800, 4)
    # First level, first cell: both min sizes at the same centre.
    torch.testing.assert_close(
        priors[:2], torch.tensor([[4 / 640, 4 / 640, 16 / 640, 16 / 640], [4 / 640, 4 / 640, 32 / 640, 32 / 640]]),
        rtol=0, atol=0,
    )
    # Last prior: last level (step 32, 20 x 20 cells), last cell, min size 512.
    torch.testing.assert_close(priors[-1], torch.tensor([624 / 640, 624 / 640, 512 / 640, 512 / 640]), rtol=0, atol=0)


def test_order_is_level_row_column_size():
    height, width = 48, 80  # a non-square grid, so rows and columns differ
    priors = ops.prior_box((height, width))
    offset = 0
    for step, sizes in zip(defaults.STEPS, defaults.MIN_SIZES):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        level = priors[offset : offset + rows * cols * len(sizes)].view(rows, cols, len(sizes), 4)
        offset += rows * cols * len(sizes)
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step / width
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step / height
        assert torch.equal(level[..., 0], cx.float()[None, :, None].expand(rows, cols, len(sizes)))
        assert torch.equal(level[..., 1], cy.float()[:, None, None].expand(rows, cols, len(sizes)))
        sizes_t = torch.tensor(sizes, dtype=torch.float64)
        assert torch.equal(level[..., 2], (sizes_t / width).float().expand(rows, cols, len(sizes)))
        assert torch.equal(level[..., 3], (sizes_t / height).float().expand(rows, cols, len(sizes)))
    assert offset == priors.shape[0]


@pytest.mark.parametrize(
    "min_sizes,steps",
    [
        (((10, 20, 30),), (4,)),
        (((16,), (32, 48), (64, 96, 128), (256,)), (8, 16, 32, 64)),
        (((12, 24), (48, 96)), (6, 17)),  # a step that does not divide the size
    ],
)
@pytest.mark.parametrize("clip", [False, True])
def test_custom_min_sizes_and_steps(min_sizes, steps, clip):
    for image_size in [(640, 480), (37, 101)]:
        priors = ops.prior_box(image_size, min_sizes, steps, clip=clip)
        assert priors.shape == (expected_count(*image_size, min_sizes, steps), 4)
        assert torch.equal(priors, reference.prior_box(image_size, min_sizes, steps, clip=clip))


def test_clip():
    # Small images: large priors and the centres of the coarse level leave [0, 1].
    unclipped = ops.prior_box((37, 101))
    assert unclipped.max() > 1
    clipped = ops.prior_box((37, 101), clip=True)
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert torch.equal(clipped, unclipped.clamp(0, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_device_and_dtype(device, dtype):
    priors = ops.prior_box((64, 96), device=device, dtype=dtype)
    assert priors.device.type == device and priors.dtype == dtype
    # Computed in float32 as biubug6, then converted.
    assert torch.equal(priors.cpu(), reference.prior_box((64, 96)).to(dtype))
    assert torch.equal(priors, reference.prior_box((64, 96), device=device, dtype=dtype))


def test_accepts_sequences_and_tuples_alike():
    expected = ops.prior_box((64, 96))
    assert torch.equal(ops.prior_box([64, 96]), expected)
    assert torch.equal(ops.prior_box(torch.Size([64, 96])), expected)
    assert torch.equal(ops.prior_box((64, 96), [[16, 32], [64, 128], [256, 512]], [8, 16, 32]), expected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(image_size=(0, 640)), r"prior_box\(\): image_size must be positive, got \(0, 640\)"),
        (dict(image_size=(640, -3)), r"image_size must be positive, got \(640, -3\)"),
        (dict(image_size=(640, 640), steps=(8, 16)), r"min_sizes has 3 levels but steps has 2"),
        (dict(image_size=(640, 640), min_sizes=((16, 32),)), r"min_sizes has 1 levels but steps has 3"),
        (dict(image_size=(640, 640), min_sizes=((16,), (), (256,))), r"every level needs at least one min_size"),
        (dict(image_size=(640, 640), steps=(8, 0, 32)), r"steps must be positive, got 0"),
        (dict(image_size=(640, 640), min_sizes=((16,), (-64,), (256,))), r"min_sizes must be positive, got -64"),
    ],
)
@pytest.mark.parametrize("prior_box", [ops.prior_box, reference.prior_box], ids=["op", "reference"])
def test_bad_arguments(prior_box, kwargs, message):
    # The reference (the fallback without the extension) raises the same errors.
    with pytest.raises(RuntimeError, match=message):
        prior_box(**kwargs)


def test_inconsistent_flat_arguments():
    # The schema's own consistency check (the wrapper always passes consistent ones).
    with pytest.raises(RuntimeError, match=r"sizes_per_level adds up to 3 but min_sizes has 4 values"):
        torch.ops.retinaface.prior_box(64, 64, [16, 32, 64, 128], [1, 2], [8, 16], False)


@pytest.mark.parametrize("image_size", [(640, 640), (37, 101), (1, 1)])
def test_opcheck(image_size):
    torch.library.opcheck(torch.ops.retinaface.prior_box.default, flat_args(*image_size))
    torch.library.opcheck(torch.ops.retinaface.prior_box.default, flat_args(*image_size, clip=True))
    torch.library.opcheck(
        torch.ops.retinaface.prior_box.default, flat_args(*image_size, ((10, 20, 30),), (7,))
    )


def test_torch_compile_fullgraph():
    def decode_centres(loc):
        priors = ops.prior_box((64, 96))
        return priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:]

    loc = torch.randn(expected_count(64, 96), 4)
    compiled = torch.compile(decode_centres, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(loc), decode_centres(loc))


# Inductor itself still calls torch.jit.script_method, deprecated in torch 2.13.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_fullgraph_inductor():
    @torch.compile(fullgraph=True)
    def priors_for(x):
        return ops.prior_box((37, 101), clip=True) + x

    assert torch.equal(priors_for(torch.zeros(())), reference.prior_box((37, 101), clip=True))


def test_meta_device_gives_the_shape_without_computing():
    priors = ops.prior_box((1080, 1920), device="meta")
    assert priors.device.type == "meta" and priors.shape == (expected_count(1080, 1920), 4)
    assert priors.dtype == torch.float32
    assert ops.prior_box((64, 64), device="meta", dtype=torch.float16).dtype == torch.float16


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), None])
def test_device_argument_forms(device):
    assert torch.equal(ops.prior_box((37, 101), device=device), reference.prior_box((37, 101)))


@pytest.mark.parametrize("image_size,min_sizes,steps", [
    ((2**35, 2**35), [[16]], [8]),  # 2^64 cells: the count itself overflows
    ((2**30, 2**30), [[16]], [1]),  # 2^60 priors of 16 bytes: their size overflows int64
    ((2**62, 3), [[16, 32]], [1]),
])
def test_overflowing_prior_count_is_an_error(image_size, min_sizes, steps):
    message = r"prior_box\(\): image_size \(\d+, \d+\) gives too many priors: their size in bytes"
    for prior_box in (ops.prior_box, reference.prior_box):
        with pytest.raises(RuntimeError, match=message):
            prior_box(image_size, min_sizes, steps)
    with pytest.raises(RuntimeError, match=message):  # the fake kernel agrees
        ops.prior_box(image_size, min_sizes, steps, device="meta")


def test_largest_count_that_fits_is_not_an_overflow():
    # (2^63 - 1) // 16 priors pass the count check (allocating them is what fails then).
    largest = (2**63 - 1) // 16
    assert ops.prior_box((1, largest), [[16]], [1], device="meta").shape == (largest, 4)
    with pytest.raises(RuntimeError, match="gives too many priors"):
        ops.prior_box((1, largest + 1), [[16]], [1], device="meta")


def test_huge_image_with_a_huge_step():
    # ceil(size / step) in integers: (size + step - 1) would overflow int64, a float division would round.
    size, step = 2**62, 2**62 - 1
    priors = ops.prior_box((size, size), [[16]], [step])
    assert priors.shape == (4, 4)
    assert torch.equal(priors, reference.prior_box((size, size), [[16]], [step]))
    assert ops.prior_box((size, size), [[16]], [step], device="meta").shape == (4, 4)


def test_opcheck_with_a_device():
    args = flat_args(37, 101)
    torch.library.opcheck(torch.ops.retinaface.prior_box.default, args, {"device": torch.device("cpu")})
    torch.library.opcheck(torch.ops.retinaface.prior_box.default, args, {"device": None})


def test_many_levels_and_sizes():
    # Beyond the CUDA kernel's parameter table (8 levels, 32 sizes), which falls back to the CPU there.
    min_sizes = [[4 * (k + 1), 4 * (k + 1) + 2, 4 * (k + 1) + 3, 4 * (k + 1) + 5] for k in range(10)]
    steps = list(range(2, 12))
    priors = ops.prior_box((45, 67), min_sizes, steps)
    assert torch.equal(priors, reference.prior_box((45, 67), min_sizes, steps))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("image_size", [(640, 640), (1024, 624), (37, 101), (1080, 1920), (1, 1)])
@pytest.mark.parametrize("clip", [False, True])
def test_cuda_kernel_equals_cpu_bit_for_bit(image_size, clip):
    priors = ops.prior_box(image_size, clip=clip, device="cuda")
    assert priors.device.type == "cuda" and priors.dtype == torch.float32 and priors.is_contiguous()
    assert torch.equal(priors.cpu(), ops.prior_box(image_size, clip=clip))
    assert torch.equal(priors.cpu(), reference.prior_box(image_size, clip=clip))
    half = ops.prior_box(image_size, clip=clip, device=torch.device("cuda", 0), dtype=torch.float16)
    assert half.device == torch.device("cuda", 0) and torch.equal(half, priors.half())


@cuda
@pytest.mark.parametrize("min_sizes,steps", [
    (((10, 20, 30),), (4,)),
    (((12, 24), (48, 96)), (6, 17)),
    ([[4 * (k + 1), 4 * (k + 1) + 2, 4 * (k + 1) + 3, 4 * (k + 1) + 5] for k in range(10)], list(range(2, 12))),
])
def test_cuda_custom_levels(min_sizes, steps):
    for image_size in [(640, 480), (37, 101)]:
        priors = ops.prior_box(image_size, min_sizes, steps, device="cuda")
        assert priors.is_cuda
        assert torch.equal(priors.cpu(), reference.prior_box(image_size, min_sizes, steps))


@cuda
def test_cuda_kernel_is_registered_for_the_cuda_key():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("retinaface::prior_box", "CUDA")


@cuda
def test_cuda_graph_capture_of_a_new_size():
    """No host-to-device copy: priors of a size never seen before can be built inside a capture."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            priors = ops.prior_box((72, 136), device="cuda")
    priors.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(priors.cpu(), reference.prior_box((72, 136)))


@cuda
def test_cuda_opcheck_and_compile():
    torch.library.opcheck(torch.ops.retinaface.prior_box.default, flat_args(64, 96),
                          {"device": torch.device("cuda")})

    @torch.compile(fullgraph=True)
    def priors_plus(x):
        return ops.prior_box((37, 101), device="cuda") + x

    assert torch.equal(priors_plus(torch.zeros((), device="cuda")).cpu(), reference.prior_box((37, 101)))
