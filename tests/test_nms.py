import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from utils import DEVICES, random_boxes, requires_extension

from retinaface_ext import ops, reference

pytestmark = requires_extension


def clustered_boxes(n, num_centres=50, generator=None, dtype=torch.float32):
    """Jittered copies of boxes around a few centres: heavy overlap, like detector output."""
    centres = random_boxes(num_centres, generator, min_size=0.02, max_size=0.2)
    which = torch.randint(0, num_centres, (n,), generator=generator)
    base = centres[which]
    size = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    jitter = 0.15 * size * torch.randn(n, 4, generator=generator)
    return (base + jitter).to(dtype)


def disjoint_boxes(n, device="cpu"):
    x = torch.arange(n, dtype=torch.float32, device=device) * 2
    zeros = torch.zeros_like(x)
    return torch.stack([x, zeros, x + 1, zeros + 1], dim=1)


# ---------------------------------------------------------------- nms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1, 2, 17, 500, 2000])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_reference(device, n, threshold):
    g = torch.Generator().manual_seed(n)
    boxes = clustered_boxes(n, generator=g).to(device)
    scores = torch.rand(n, generator=g).to(device)
    kept = ops.nms(boxes, scores, threshold)
    assert kept.dtype == torch.int64 and kept.device == boxes.device
    assert torch.equal(kept, reference.nms(boxes, scores, threshold))


@pytest.mark.parametrize("device", DEVICES)
def test_nms_empty_and_single(device):
    assert ops.nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5).shape == (0,)
    one = torch.tensor([[0.1, 0.1, 0.2, 0.2]], device=device)
    assert ops.nms(one, torch.tensor([0.3], device=device), 0.5).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "other,iou",
    [([0.0, 0.0, 2.0, 1.0], 0.5), ([0.0, 0.0, 1.0, 1.0], 0.25), ([3.0, 0.0, 7.0, 1.0], 1 / 7)],
)
def test_nms_iou_exactly_at_threshold_is_kept(device, other, iou):
    # box 0 = [0, 0, 4, 1] (area 4) and `other` overlap by exactly `iou` in float32.
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], other], device=device)
    scores = torch.tensor([0.9, 0.8], device=device)
    exact = float(ops.box_iou(boxes[:1], boxes[1:]).item())
    assert exact == pytest.approx(iou, rel=1e-7)
    below = torch.nextafter(torch.tensor(exact), torch.tensor(0.0)).item()
    above = torch.nextafter(torch.tensor(exact), torch.tensor(1.0)).item()
    assert ops.nms(boxes, scores, exact).tolist() == [0, 1]  # IoU == threshold: kept
    assert ops.nms(boxes, scores, above).tolist() == [0, 1]
    assert ops.nms(boxes, scores, below).tolist() == [0]  # IoU > threshold: suppressed
    for t in (exact, above, below):
        assert torch.equal(ops.nms(boxes, scores, t), reference.nms(boxes, scores, t))


@pytest.mark.parametrize("device", DEVICES)
def test_nms_threshold_is_rounded_to_float32(device):
    # float32(0.4) > 0.4: an IoU of exactly float32(0.4) equals the rounded threshold, so it is kept.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.4, 1.0]], device=device)
    iou = ops.box_iou(boxes[:1], boxes[1:]).item()
    assert iou == torch.tensor(0.4).item()
    assert ops.nms(boxes, torch.tensor([0.9, 0.8], device=device), 0.4).tolist() == [0, 1]
    assert reference.nms(boxes, torch.tensor([0.9, 0.8], device=device), 0.4).tolist() == [0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_nms_score_ties_keep_lower_index_first(device):
    boxes = disjoint_boxes(6, device)
    scores = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.1, 0.5], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [1, 3, 0, 2, 5, 4]
    # Identical boxes with equal scores: the lowest index survives.
    same = torch.tensor([[0.1, 0.1, 0.3, 0.3]] * 4, device=device)
    assert ops.nms(same, torch.full((4,), 0.7, device=device), 0.5).tolist() == [0]
    tied = torch.tensor([0.2, 0.7, 0.7, 0.7], device=device)
    assert ops.nms(same, tied, 0.5).tolist() == [1]


@pytest.mark.parametrize("device", DEVICES)
def test_nms_degenerate_boxes(device):
    # Zero-area boxes have IoU 0/0 = NaN with each other: they never suppress.
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 3 + [[0.0, 0.0, 1.0, 1.0]], device=device)
    scores = torch.tensor([0.4, 0.3, 0.2, 0.1], device=device)
    kept = ops.nms(boxes, scores, 0.1)
    assert kept.tolist() == [0, 1, 2, 3]
    assert torch.equal(kept, reference.nms(boxes, scores, 0.1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_nms_other_dtypes(device, dtype):
    g = torch.Generator().manual_seed(3)
    boxes = clustered_boxes(400, generator=g).to(device, dtype)
    scores = torch.rand(400, generator=g).to(device, dtype)  # half: many ties
    kept = ops.nms(boxes, scores, 0.4)
    assert torch.equal(kept, reference.nms(boxes, scores, 0.4))


def test_nms_float64_is_computed_in_float64():
    # IoU = 0.1 / (1 + 0.1 - 0.1) exactly in float64 only; float32 would round 0.1.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.1, 1.0]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8], dtype=torch.float64)
    assert ops.nms(boxes, scores, 0.1).tolist() == [0, 1]
    assert ops.nms(boxes, scores, 0.09999999999).tolist() == [0]


def test_nms_non_contiguous():
    g = torch.Generator().manual_seed(4)
    boxes = clustered_boxes(300, generator=g).t().contiguous().t()
    scores = torch.rand(600, generator=g)[::2]
    assert not boxes.is_contiguous() and not scores.is_contiguous()
    assert torch.equal(ops.nms(boxes, scores, 0.5), reference.nms(boxes, scores, 0.5))


# ---------------------------------------------------------------- batched_nms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,num_classes", [(0, 1), (1, 1), (50, 1), (500, 3), (3000, 40), (1000, 700)])
def test_batched_nms_matches_per_class_nms(device, n, num_classes):
    g = torch.Generator().manual_seed(n + num_classes)
    boxes = clustered_boxes(n, generator=g).to(device)
    scores = torch.rand(n, generator=g).to(device)
    idxs = torch.randint(0, num_classes, (n,), generator=g).to(device)
    kept = ops.batched_nms(boxes, scores, idxs, 0.5)
    assert kept.dtype == torch.int64
    assert torch.equal(kept, reference.batched_nms(boxes, scores, idxs, 0.5))
    # Per class, exactly what nms keeps.
    for c in torch.unique(idxs):
        members = torch.nonzero(idxs == c).flatten()
        in_class = kept[idxs[kept] == c]
        assert torch.equal(in_class, members[ops.nms(boxes[members], scores[members], 0.5)])


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_classes_do_not_suppress_each_other(device):
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4, device=device)
    scores = torch.tensor([0.1, 0.4, 0.3, 0.4], device=device)
    idxs = torch.tensor([7, -3, 7, 1 << 40], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 3, 2]
    assert ops.batched_nms(boxes, scores, idxs.int(), 0.5).tolist() == [1, 3, 2]
    assert ops.batched_nms(boxes, scores, torch.zeros(4, dtype=torch.uint8), 0.5).tolist() == [1]


def test_batched_nms_non_contiguous():
    g = torch.Generator().manual_seed(5)
    boxes = clustered_boxes(400, generator=g).t().contiguous().t()
    scores = torch.rand(800, generator=g)[::2]
    idxs = torch.randint(0, 4, (800,), generator=g)[1::2]
    expected = reference.batched_nms(boxes, scores, idxs, 0.3)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.3), expected)


# ---------------------------------------------------------------- property tests


@st.composite
def grid_problems(draw):
    """Boxes on a coarse integer grid: many exact IoU ties with thresholds like 0.5, many score ties."""
    n = draw(st.integers(0, 2500))
    seed = draw(st.integers(0, 2**31 - 1))
    grid = draw(st.sampled_from([4, 16, 1000]))
    g = torch.Generator().manual_seed(seed)
    x1y1 = torch.randint(0, grid, (n, 2), generator=g)
    wh = torch.randint(0, grid // 2 + 1, (n, 2), generator=g)
    boxes = torch.cat([x1y1, x1y1 + wh], dim=1).float()
    score_levels = draw(st.sampled_from([3, 100, 2**24]))
    scores = torch.randint(0, score_levels, (n,), generator=g).float() / score_levels
    idxs = torch.randint(0, draw(st.integers(1, 20)), (n,), generator=g)
    threshold = draw(st.sampled_from([0.0, 0.25, 0.5, 1 / 3, 0.7, 1.0]) | st.floats(0.0, 1.0))
    return boxes, scores, idxs, threshold


@settings(max_examples=25, deadline=None)
@given(grid_problems())
def test_nms_property(problem):
    boxes, scores, _, threshold = problem
    assert torch.equal(ops.nms(boxes, scores, threshold), reference.nms(boxes, scores, threshold))


@settings(max_examples=20, deadline=None)
@given(grid_problems())
def test_batched_nms_property(problem):
    boxes, scores, idxs, threshold = problem
    kept = ops.batched_nms(boxes, scores, idxs, threshold)
    assert torch.equal(kept, reference.batched_nms(boxes, scores, idxs, threshold))


# ---------------------------------------------------------------- torch.library


def test_opcheck():
    g = torch.Generator().manual_seed(6)
    for n in (0, 1, 40):
        boxes = clustered_boxes(n, generator=g)
        scores = torch.rand(n, generator=g)
        idxs = torch.randint(0, 3, (n,), generator=g)
        torch.library.opcheck(torch.ops.retinaface.nms.default, (boxes, scores, 0.5))
        torch.library.opcheck(torch.ops.retinaface.batched_nms.default, (boxes, scores, idxs, 0.5))


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "boxes,scores,message",
    [
        (torch.zeros(3, 5), torch.zeros(3), r"nms\(\): boxes must have shape \[N, 4\], got \[3, 5\]"),
        (torch.zeros(3, 4), torch.zeros(2), r"scores must have shape \[N\] \(N = 3 from boxes\), got \[2\]"),
        (torch.zeros(3, 4), torch.zeros(3, 1), r"scores must have shape \[N\] .*got \[3, 1\]"),
        (torch.zeros(3, 4, dtype=torch.int32), torch.zeros(3), r"boxes must be a floating tensor"),
        (torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), r"scores must be a floating tensor"),
        (
            torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [0, float("nan"), 1, 1]]),
            torch.zeros(3),
            r"nms\(\): boxes must be finite, got nan in row 2",
        ),
        (
            torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, float("inf")]]),
            torch.zeros(2),
            r"boxes must be finite, got inf in row 1",
        ),
        (torch.zeros(2, 4), torch.tensor([0.5, float("-inf")]), r"scores must be finite, got -inf in row 1"),
        (torch.zeros(2, 4), torch.tensor([float("nan"), 0.5]), r"scores must be finite, got nan in row 0"),
    ],
)
def test_nms_bad_input(boxes, scores, message):
    with pytest.raises(RuntimeError, match=message):
        ops.nms(boxes, scores, 0.5)
    with pytest.raises(RuntimeError, match=message.replace(r"nms\(\)", r"batched_nms\(\)")):
        ops.batched_nms(boxes, scores, torch.zeros(boxes.shape[0], dtype=torch.int64), 0.5)


@pytest.mark.parametrize(
    "idxs,message",
    [
        (torch.zeros(2, dtype=torch.int64), r"batched_nms\(\): idxs must have shape \[N\] \(N = 3 from boxes\), got \[2\]"),
        (torch.zeros(3, 1, dtype=torch.int64), r"idxs must have shape \[N\] .*got \[3, 1\]"),
        (torch.zeros(3), r"idxs must be an integer tensor, got Float"),
        (torch.zeros(3, dtype=torch.bool), r"idxs must be an integer tensor, got Bool"),
    ],
)
def test_batched_nms_bad_idxs(idxs, message):
    with pytest.raises(RuntimeError, match=message):
        ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), idxs, 0.5)


def test_reference_rejects_non_finite_too():
    with pytest.raises(RuntimeError, match=r"boxes must be finite.*in row 1"):
        reference.nms(torch.tensor([[0.0, 0, 1, 1], [0, 0, float("nan"), 1]]), torch.zeros(2), 0.5)


# ---------------------------------------------------------------- CUDA vs CPU

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@requires_cuda
@pytest.mark.parametrize("n", [1000, 4097, 20000])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_cuda_matches_cpu_large(n, threshold):
    # Jittered detector-like boxes; sizes straddle the 64-box words (4097 = 64 * 64 + 1).
    g = torch.Generator().manual_seed(n)
    boxes = clustered_boxes(n, num_centres=max(n // 40, 1), generator=g)
    scores = torch.rand(n, generator=g)
    expected = ops.nms(boxes, scores, threshold)
    kept = ops.nms(boxes.cuda(), scores.cuda(), threshold)
    assert kept.device.type == "cuda" and kept.dtype == torch.int64
    assert torch.equal(kept.cpu(), expected)


@requires_cuda
@pytest.mark.parametrize("n,num_classes", [(3000, 1), (5000, 7), (20000, 80), (2000, 2000)])
def test_batched_nms_cuda_matches_cpu_large(n, num_classes):
    g = torch.Generator().manual_seed(n + num_classes)
    boxes = clustered_boxes(n, num_centres=max(n // 40, 1), generator=g)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    expected = ops.batched_nms(boxes, scores, idxs, 0.5)
    kept = ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    assert torch.equal(kept.cpu(), expected)


@requires_cuda
@pytest.mark.parametrize("levels", [3, 50, 1000])
def test_nms_cuda_score_ties(levels):
    # Few distinct scores: the order among equal scores (lower index first) decides.
    g = torch.Generator().manual_seed(levels)
    boxes = clustered_boxes(3000, num_centres=60, generator=g)
    scores = torch.randint(0, levels, (3000,), generator=g).float() / levels
    for threshold in (0.0, 0.4, 1.0):
        assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), threshold).cpu(),
                           ops.nms(boxes, scores, threshold))
    idxs = torch.randint(0, 5, (3000,), generator=g)
    assert torch.equal(ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.4).cpu(),
                       ops.batched_nms(boxes, scores, idxs, 0.4))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("score_dtype", [torch.float16, torch.float32, torch.float64])
def test_nms_cuda_dtypes_match_cpu(dtype, score_dtype):
    g = torch.Generator().manual_seed(7)
    boxes = clustered_boxes(5000, num_centres=100, generator=g).to(dtype)
    scores = torch.rand(5000, generator=g).to(score_dtype)
    assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), 0.4).cpu(), ops.nms(boxes, scores, 0.4))
    idxs = torch.randint(0, 3, (5000,), generator=g)
    assert torch.equal(ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.4).cpu(),
                       ops.batched_nms(boxes, scores, idxs, 0.4))


@pytest.mark.parametrize("device", DEVICES)
def test_nms_negative_zero_ties_with_zero(device):
    # -0.0 == 0.0: the two scores tie, so the lower index ranks first.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2, device=device)
    scores = torch.tensor([0.0, -0.0], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [0]
    assert ops.nms(boxes, scores.flip(0), 0.5).tolist() == [0]


@requires_cuda
def test_nms_cuda_empty_and_threshold_boundary():
    empty = ops.nms(torch.zeros(0, 4, device="cuda"), torch.zeros(0, device="cuda"), 0.5)
    assert empty.shape == (0,) and empty.device.type == "cuda"
    empty = ops.batched_nms(torch.zeros(0, 4, device="cuda"), torch.zeros(0, device="cuda"),
                            torch.zeros(0, dtype=torch.int64, device="cuda"), 0.5)
    assert empty.shape == (0,)
    # Grid boxes: many IoUs exactly equal to simple thresholds.
    g = torch.Generator().manual_seed(8)
    x1y1 = torch.randint(0, 16, (2000, 2), generator=g)
    wh = torch.randint(1, 9, (2000, 2), generator=g)
    boxes = torch.cat([x1y1, x1y1 + wh], dim=1).float()
    scores = torch.randint(0, 100, (2000,), generator=g).float()
    for threshold in (0.25, 1 / 3, 0.5, 0.4):
        assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), threshold).cpu(),
                           ops.nms(boxes, scores, threshold))


@requires_cuda
@pytest.mark.parametrize(
    "boxes,scores,message",
    [
        ([[0.0, 0, 1, 1], [0, 0, 1, 1], [0, float("nan"), 1, 1]], [0.0, 0, 0],
         r"boxes must be finite, got nan in row 2"),
        ([[0.0, 0, 1, 1], [0, 0, 1, float("inf")], [0, float("nan"), 1, 1]], [0.0, 0, 0],
         r"boxes must be finite, got inf in row 1"),
        ([[0.0, 0, 1, 1], [0, 0, 1, 1]], [0.5, float("-inf")], r"scores must be finite, got -inf in row 1"),
        ([[0.0, 0, 1, 1], [0, 0, 1, 1]], [float("nan"), float("nan")], r"scores must be finite, got nan in row 0"),
    ],
)
def test_nms_cuda_non_finite_raises(boxes, scores, message):
    boxes = torch.tensor(boxes, device="cuda")
    scores = torch.tensor(scores, device="cuda")
    with pytest.raises(RuntimeError, match=r"nms\(\): " + message):
        ops.nms(boxes, scores, 0.5)
    with pytest.raises(RuntimeError, match=r"batched_nms\(\): " + message):
        ops.batched_nms(boxes, scores, torch.zeros(len(scores), dtype=torch.int64, device="cuda"), 0.5)
    # A large input with one bad box far into the score order.
    big = clustered_boxes(5000, generator=torch.Generator().manual_seed(9)).cuda()
    big[4321, 2] = float("nan")
    with pytest.raises(RuntimeError, match=r"nms\(\): boxes must be finite, got nan in row 4321"):
        ops.nms(big, torch.rand(5000, device="cuda"), 0.5)


@requires_cuda
def test_nms_cuda_non_contiguous_and_opcheck():
    g = torch.Generator().manual_seed(10)
    boxes = clustered_boxes(700, generator=g).t().contiguous().t().cuda()
    scores = torch.rand(1400, generator=g).cuda()[::2]
    idxs = torch.randint(0, 4, (1400,), generator=g).int().cuda()[1::2]
    assert torch.equal(ops.nms(boxes, scores, 0.5).cpu(), ops.nms(boxes.cpu(), scores.cpu(), 0.5))
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5).cpu(),
                       ops.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5))
    torch.library.opcheck(torch.ops.retinaface.nms.default, (boxes.contiguous(), scores.contiguous(), 0.5))
    torch.library.opcheck(torch.ops.retinaface.batched_nms.default,
                          (boxes.contiguous(), scores.contiguous(), idxs.long().contiguous(), 0.5))


@requires_cuda
@pytest.mark.parametrize("op", ["nms", "batched_nms"])
def test_nms_cuda_too_many_boxes_is_an_error_before_any_allocation(op):
    """65535 * 64 boxes is the mask kernel's grid limit; one more must be refused up front, not after
    trying to allocate its n x n/64 mask (2.2 TB)."""
    n = 65535 * 64 + 1
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device="cuda").expand(n, 4).contiguous()
    scores = torch.rand(n, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with pytest.raises(RuntimeError, match=rf"{op}\(\): the CUDA kernel takes at most 4194240 boxes.*got 4194241"):
        if op == "nms":
            ops.nms(boxes, scores, 0.5)
        else:
            ops.batched_nms(boxes, scores, torch.zeros(n, dtype=torch.int64, device="cuda"), 0.5)
    assert torch.cuda.max_memory_allocated() - before < 2**30
