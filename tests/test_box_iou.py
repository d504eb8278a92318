import pytest
import torch
from utils import DEVICES, random_boxes, requires_extension

from retinaface_ext import ops, reference

pytestmark = requires_extension


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m", [(0, 0), (0, 5), (7, 0), (1, 1), (33, 57)])
def test_matches_reference(device, n, m):
    g = torch.Generator().manual_seed(n * 100 + m)
    a = random_boxes(n, g).to(device)
    b = random_boxes(m, g).to(device)
    torch.testing.assert_close(ops.box_iou(a, b), reference.box_iou(a, b), rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_exact_values(device):
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device)
    b = torch.tensor(
        [[1.0, 0.0, 3.0, 2.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]],
        device=device,
    )
    expected = torch.tensor([[1 / 3, 0.0, 1.0, 0.0]], device=device)
    torch.testing.assert_close(ops.box_iou(a, b), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(device, dtype):
    g = torch.Generator().manual_seed(0)
    a = random_boxes(20, g).to(device, dtype)
    b = random_boxes(30, g).to(device, dtype)
    out = ops.box_iou(a, b)
    assert out.dtype == dtype
    torch.testing.assert_close(out, reference.box_iou(a, b))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous(device):
    g = torch.Generator().manual_seed(1)
    a = random_boxes(20, g).to(device).t().contiguous().t()
    b = random_boxes(40, g).to(device)[::2]
    assert not a.is_contiguous() and not b.is_contiguous()
    torch.testing.assert_close(ops.box_iou(a, b), reference.box_iou(a, b), rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes(device):
    # Both are read in float32; the result has boxes1's dtype, as the reference.
    g = torch.Generator().manual_seed(3)
    a = random_boxes(9, g).to(device, torch.float16)
    b = random_boxes(11, g).to(device, torch.float64)
    out = ops.box_iou(a, b)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, reference.box_iou(a, b))
    assert ops.box_iou(b, a).dtype == torch.float64


@pytest.mark.parametrize(
    "a,b,message",
    [
        (torch.zeros(3, 5), torch.zeros(2, 4), r"boxes1 must have shape \[N, 4\], got \[3, 5\]"),
        (torch.zeros(3, 4), torch.zeros(2, 4, 1), r"boxes2 must have shape \[M, 4\], got \[2, 4, 1\]"),
        (torch.zeros(3, 4, dtype=torch.int64), torch.zeros(2, 4), r"boxes1 must be a floating tensor"),
    ],
)
def test_bad_input(a, b, message):
    with pytest.raises(RuntimeError, match=message):
        ops.box_iou(a, b)


def test_opcheck():
    g = torch.Generator().manual_seed(2)
    torch.library.opcheck(torch.ops.retinaface.box_iou.default, (random_boxes(5, g), random_boxes(6, g)))
    torch.library.opcheck(torch.ops.retinaface.box_iou.default, (random_boxes(0, g), random_boxes(6, g)))


# ------------------------------------------------------------------- CUDA
# Skipped without a GPU. csrc/cuda/box_iou_kernel.cu computes with the same
# box_math.h function, in float32, without FMA contraction (-fmad=false) and
# with IEEE division, so its results equal the CPU's bit for bit.

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def assert_cuda_equals_cpu(a, b):
    out = ops.box_iou(a.cuda(), b.cuda())
    expected = ops.box_iou(a, b)
    assert out.device.type == "cuda" and out.dtype == expected.dtype and out.shape == expected.shape
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0, equal_nan=True)


@requires_cuda
@pytest.mark.parametrize("n,m", [(1, 1), (31, 33), (32, 32), (1000, 3000), (16800, 70)])
def test_cuda_equals_cpu(n, m):
    # Sizes around and across the 32 x 32 tiles, and a prior-sized one.
    g = torch.Generator().manual_seed(n + m)
    assert_cuda_equals_cpu(random_boxes(n, g), random_boxes(m, g))


@requires_cuda
def test_cuda_more_row_tiles_than_grid_rows():
    # N > 65535 * 32: the kernel loops over row tiles beyond gridDim.y.
    g = torch.Generator().manual_seed(4)
    assert_cuda_equals_cpu(random_boxes(65535 * 32 + 77, g), random_boxes(3, g))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes_equal_cpu(dtype):
    g = torch.Generator().manual_seed(5)
    assert_cuda_equals_cpu(random_boxes(100, g).to(dtype), random_boxes(70, g).to(dtype))
    assert_cuda_equals_cpu(random_boxes(10, g).to(dtype), random_boxes(7, g))


@requires_cuda
def test_cuda_degenerate_boxes_equal_cpu():
    # Zero-area pairs give 0 / 0 = NaN on both devices, identical boxes 1.
    a = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.4, 0.4], [0.5, 0.5, 0.3, 0.3]])
    assert_cuda_equals_cpu(a, a)


@requires_cuda
def test_cuda_bad_input_and_devices():
    with pytest.raises(RuntimeError, match=r"boxes1 must have shape \[N, 4\], got \[3, 5\]"):
        ops.box_iou(torch.zeros(3, 5, device="cuda"), torch.zeros(2, 4, device="cuda"))
    with pytest.raises(RuntimeError, match=r"boxes2 must be on the same device as boxes1 \(cuda:0\), got cpu"):
        ops.box_iou(torch.zeros(3, 4, device="cuda"), torch.zeros(2, 4))


@requires_cuda
def test_cuda_opcheck():
    g = torch.Generator().manual_seed(6)
    for n, m in [(5, 6), (0, 6), (40, 0)]:
        args = (random_boxes(n, g).cuda(), random_boxes(m, g).cuda())
        torch.library.opcheck(torch.ops.retinaface.box_iou.default, args)


@requires_cuda
def test_cuda_compile_fullgraph_and_graph_capture():
    g = torch.Generator().manual_seed(7)
    a, b = random_boxes(50, g).cuda(), random_boxes(60, g).cuda()

    def best_overlap(a, b):
        return ops.box_iou(a, b).max(dim=1).values

    compiled = torch.compile(best_overlap, fullgraph=True)
    assert torch.equal(compiled(a, b), best_overlap(a, b))

    ops.box_iou(a, b)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        iou = ops.box_iou(a, b)
    a.copy_(random_boxes(50, g).cuda())
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(iou, ops.box_iou(a, b))
