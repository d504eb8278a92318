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


def test_non_contiguous():
    g = torch.Generator().manual_seed(1)
    a = random_boxes(20, g).t().contiguous().t()
    b = random_boxes(40, g)[::2]
    assert not a.is_contiguous() and not b.is_contiguous()
    torch.testing.assert_close(ops.box_iou(a, b), reference.box_iou(a, b), rtol=1e-5, atol=0)


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
