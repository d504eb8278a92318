"""match: the fused op against the pure-PyTorch reference (biubug6's match) and
against the kernel's own brute-force path.

The CPU kernel takes a grid-window path when the priors are regular grids
(prior_box output) and a brute-force path otherwise. Appending one prior with
a NaN centre forces the brute-force path without changing any result (that
prior's IoU is NaN, which never wins a comparison), so `with_sentinel` lets the
tests compare the two paths on the same priors.
"""
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from utils import DEVICES, random_boxes, requires_extension, shared_data

from retinaface_ext import defaults, ops, reference

pytestmark = requires_extension

IMAGE_SIZES = [(640, 640), (624, 1024), (480, 320)]
UNIT = 1.0 / 128  # hand-made grids below use multiples of this: every value is exact


def with_sentinel(priors):
    """priors plus one NaN prior at the end: rejected by the grid detection."""
    sentinel = torch.tensor([[float("nan"), 0.5, 0.1, 0.1]], dtype=priors.dtype, device=priors.device)
    return torch.cat([priors, sentinel])


def match_brute_force(gt_boxes, gt_counts, priors, *args):
    out = ops.match(gt_boxes, gt_counts, with_sentinel(priors), *args)
    threshold = args[0] if args else defaults.MATCH_THRESHOLD
    if threshold > 0:  # (with threshold <= 0 even a prior of IoU 0 is positive)
        assert (out[:, -1] == -1).all()
    return out[:, :-1]


def point_form(priors):
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)


def unit_grid(cols, rows, step, sizes):
    """One grid level in UNITs: cell (r, c) centred at ((c + .5) * step, (r + .5) * step), anchors
    of the given (w, h) sizes; ordered row -> col -> anchor like prior_box."""
    priors = [[(c + 0.5) * step, (r + 0.5) * step, w, h]
              for r in range(rows) for c in range(cols) for w, h in sizes]
    return torch.tensor(priors, dtype=torch.float32) * UNIT


def unit_boxes(*boxes):
    """[1, G, 4] xyxy boxes given in UNITs."""
    return torch.tensor([boxes], dtype=torch.float32) * UNIT


def faces(n, generator, min_size=0.005, max_size=0.5):
    """n face-like boxes: log-uniform sizes, aspect 0.8-1.4, inside the image."""
    lo, hi = math.log(min_size), math.log(max_size)
    size = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))
    wh = torch.stack([size, size * (0.8 + 0.6 * torch.rand(n, generator=generator))], 1).clamp(max=1)
    xy = torch.rand(n, 2, generator=generator) * (1 - wh)
    return torch.cat([xy, xy + wh], 1)


def padded_batch(counts, generator, max_gt=None, garbage=True):
    """[B, G, 4] boxes with counts[b] faces per image and garbage (or zeros) in the padding."""
    max_gt = max(counts, default=0) if max_gt is None else max_gt
    if garbage:
        gt = torch.randn(len(counts), max_gt, 4, generator=generator) * 3
    else:
        gt = torch.zeros(len(counts), max_gt, 4)
    for b, n in enumerate(counts):
        gt[b, :n] = faces(n, generator)
    return gt, torch.tensor(counts, dtype=torch.int64)


def check_all_paths(gt, counts, priors, *args):
    """fused == reference == brute force, exactly; returns the result."""
    fused = ops.match(gt, counts, priors, *args)
    assert fused.dtype == torch.int64 and fused.shape == (gt.shape[0], priors.shape[0])
    assert torch.equal(fused, reference.match(gt, counts, priors, *args))
    assert torch.equal(fused, match_brute_force(gt, counts, priors, *args))
    return fused


# --- against the reference, real priors ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("image_size", IMAGE_SIZES)
def test_real_priors_match_reference(device, image_size):
    g = torch.Generator().manual_seed(image_size[0] + image_size[1])
    gt, counts = padded_batch([0, 1, 5, 17, 40, 3], g)
    priors = ops.prior_box(image_size)
    out = check_all_paths(gt.to(device), counts.to(device), priors.to(device))
    # real faces do get matched, and only to real (unpadded) boxes
    assert (out >= 0).any()
    assert (out < counts.to(device)[:, None]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_other_prior_layouts(device):
    # one anchor per level, three per level, a single level, clipped priors
    g = torch.Generator().manual_seed(3)
    gt, counts = padded_batch([30, 2, 11], g)
    layouts = [
        ops.prior_box((320, 320), min_sizes=((16,), (64,), (256,))),
        ops.prior_box((320, 320), min_sizes=((16, 24, 32), (64, 96, 128), (256, 384, 512))),
        ops.prior_box((200, 300), min_sizes=((20, 40),), steps=(10,)),
        ops.prior_box((100, 150), clip=True),
    ]
    for priors in layouts:
        check_all_paths(gt.to(device), counts.to(device), priors.to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold,min_best_iou", [(0.5, 0.1), (0.1, 0.5), (1.0, 0.0), (0.0, 0.2), (1.0, 0.2)])
def test_other_thresholds(device, threshold, min_best_iou):
    g = torch.Generator().manual_seed(4)
    gt, counts = padded_batch([25, 0, 8], g)
    priors = ops.prior_box((320, 480)).to(device)
    check_all_paths(gt.to(device), counts.to(device), priors, threshold, min_best_iou)


@pytest.mark.parametrize("device", DEVICES)
def test_brute_force_on_permuted_priors(device):
    # A shuffled priors tensor is no grid: the brute-force path, against the reference.
    g = torch.Generator().manual_seed(5)
    gt, counts = padded_batch([12, 30], g)
    priors = ops.prior_box((320, 320))
    priors = priors[torch.randperm(priors.shape[0], generator=g)]
    fused = ops.match(gt.to(device), counts.to(device), priors.to(device))
    assert torch.equal(fused, reference.match(gt, counts, priors).to(device))
    assert (fused >= 0).any()


@pytest.mark.parametrize("device", DEVICES)
def test_arbitrary_priors(device):
    # random priors, random order: brute force; with ties between identical priors
    g = torch.Generator().manual_seed(6)
    xyxy = random_boxes(300, g)
    priors = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
    priors = torch.cat([priors, priors[:50]])
    gt, counts = padded_batch([20, 7], g)
    fused = ops.match(gt.to(device), counts.to(device), priors.to(device))
    assert torch.equal(fused, reference.match(gt, counts, priors).to(device))


def widerface_boxes():
    """Face boxes of WIDER FACE val images, normalised by 1024 (their width), if the data is here."""
    scipy_io = pytest.importorskip("scipy.io")
    for folder in [os.environ.get("RETINAFACE_TEST_DATA", ""), os.path.dirname(shared_data("widerface_val_gt"))]:
        path = os.path.join(folder, "widerface_val_gt", "wider_face_val.mat")
        if folder and os.path.exists(path):
            break
    else:
        pytest.skip("WIDER FACE validation ground truth not found")
    mat = scipy_io.loadmat(path)
    images = [img for event in mat["face_bbx_list"][:, 0] for img in event[:, 0]]
    return [torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(-1, 4)) for b in images]


def test_widerface_ground_truth():
    # real face statistics: many tiny faces, crowds (the 709-face image), 0-width boxes
    images = widerface_boxes()
    crowd = max(range(len(images)), key=lambda i: images[i].shape[0])
    zero_width = next(i for i, b in enumerate(images) if (b[:, 2] == 0).any())
    picked = [crowd, zero_width] + list(range(0, len(images), 400))
    boxes = [images[i] for i in picked]
    gt = torch.zeros(len(boxes), max(b.shape[0] for b in boxes), 4)
    for k, b in enumerate(boxes):
        gt[k, : b.shape[0], :2] = b[:, :2] / 1024
        gt[k, : b.shape[0], 2:] = (b[:, :2] + b[:, 2:]) / 1024
    counts = torch.tensor([b.shape[0] for b in boxes])
    out = check_all_paths(gt, counts, ops.prior_box((640, 640)))
    assert counts[0] > 700 and (out >= 0).sum() > 100
    degenerate = torch.nonzero(boxes[1][:, 2] == 0).flatten()
    assert not torch.isin(out[1], degenerate).any()


# --- empty inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,max_gt,num_priors", [(0, 5, 100), (0, 0, 0), (3, 0, 100), (2, 4, 0)])
def test_empty(device, batch, max_gt, num_priors):
    gt = torch.rand(batch, max_gt, 4, device=device)
    counts = torch.full((batch,), max_gt, dtype=torch.int64, device=device)
    priors = ops.prior_box((640, 640))[:num_priors].to(device)
    out = ops.match(gt, counts, priors)
    assert out.shape == (batch, num_priors) and out.dtype == torch.int64
    assert (out == -1).all()
    assert torch.equal(out, reference.match(gt, counts, priors))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_counts_ignore_padding(device):
    g = torch.Generator().manual_seed(7)
    gt, _ = padded_batch([10, 10], g)
    out = ops.match(gt.to(device), torch.zeros(2, dtype=torch.int64, device=device),
                    ops.prior_box((640, 640)).to(device))
    assert (out == -1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_padding_is_never_read(device):
    g = torch.Generator().manual_seed(8)
    gt, counts = padded_batch([3, 9, 0, 14], g, max_gt=20)
    priors = ops.prior_box((640, 640)).to(device)
    out = ops.match(gt.to(device), counts.to(device), priors)
    garbage = gt.clone()
    for b, n in enumerate(counts.tolist()):
        garbage[b, n:] = torch.tensor([float("nan"), -5.0, 1e30, float("inf")])
    assert torch.equal(out, ops.match(garbage.to(device), counts.to(device), priors))
    assert torch.equal(out, ops.match(gt[:, :14].to(device), counts.to(device), priors))


# --- exact threshold boundaries (hand-made grids, every value exactly representable) ----------


def exact_iou(box, prior):
    iou = ops.box_iou(box.view(1, 4), point_form(prior.view(1, 4)))
    return iou.item()


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_exactly_at_iou(device):
    # cell 0: anchor 0 (12 x 12) is the face's best prior (IoU 120 / 164), anchor 1 (20 x 20)
    # contains the 14 x 10 face: IoU 140 / 400 = 0.35 exactly, which is not < 0.35.
    priors = unit_grid(cols=3, rows=3, step=32, sizes=[(12, 12), (20, 20)])
    gt = unit_boxes((9, 11, 23, 21))
    assert exact_iou(gt[0, 0], priors[1]) == np.float32(0.35)
    assert exact_iou(gt[0, 0], priors[0]) == np.float32(120 / 164)
    counts = torch.tensor([1])
    args = (gt.to(device), counts.to(device), priors.to(device))
    at_threshold = check_all_paths(*args, 0.35, 0.2)
    assert at_threshold[0, :2].tolist() == [0, 0] and (at_threshold[0, 2:] == -1).all()
    just_above = float(np.nextafter(np.float32(0.35), np.float32(1)))
    above = check_all_paths(*args, just_above, 0.2)
    assert above[0, :2].tolist() == [0, -1] and (above[0, 2:] == -1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_min_best_iou_exactly_at_iou(device):
    # a 5 x 4 face inside a 10 x 10 prior: best IoU 20 / 100 = 0.2 exactly, which is >= 0.2
    priors = unit_grid(cols=4, rows=2, step=16, sizes=[(10, 10)])
    gt = unit_boxes((20, 4, 25, 8))
    assert exact_iou(gt[0, 0], priors[1]) == np.float32(0.2)
    counts = torch.tensor([1])
    args = (gt.to(device), counts.to(device), priors.to(device))
    at_min = check_all_paths(*args, 0.35, 0.2)
    assert at_min[0].tolist() == [-1, 0, -1, -1, -1, -1, -1, -1]
    just_above = float(np.nextafter(np.float32(0.2), np.float32(1)))
    assert (check_all_paths(*args, 0.35, just_above) == -1).all()


# --- ties and biubug6's step-4 quirks ---------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_tie_between_priors_takes_lowest_index(device):
    # a face halfway between two 40 x 40 priors: IoU 560 / 1840 with both (< 0.35, >= 0.2);
    # only the forced best prior is positive, and it is the first one
    priors = unit_grid(cols=3, rows=1, step=32, sizes=[(40, 40)])
    gt = unit_boxes((22, -4, 42, 36))
    assert exact_iou(gt[0, 0], priors[0]) == exact_iou(gt[0, 0], priors[1]) == np.float32(560 / 1840)
    out = check_all_paths(gt.to(device), torch.tensor([1], device=device), priors.to(device))
    assert out[0].tolist() == [0, -1, -1]
    # the mirror image: the tie now sits between priors 1 and 2
    out = check_all_paths(unit_boxes((54, -4, 74, 36)).to(device), torch.tensor([1], device=device),
                          priors.to(device))
    assert out[0].tolist() == [-1, 0, -1]


@pytest.mark.parametrize("device", DEVICES)
def test_tie_between_faces_takes_lowest_index(device):
    # faces 0 and 1 are mirror images around prior 1 (IoU 880 / 2320 >= 0.35 with both);
    # each has its own better prior (0 and 2), so prior 1 goes to the first face reaching its max
    priors = unit_grid(cols=3, rows=1, step=32, sizes=[(40, 40)])
    gt = unit_boxes((10, -4, 50, 36), (46, -4, 86, 36))
    assert exact_iou(gt[0, 0], priors[1]) == exact_iou(gt[0, 1], priors[1]) == np.float32(880 / 2320)
    args = (torch.tensor([2], device=device), priors.to(device))
    assert check_all_paths(gt.to(device), *args)[0].tolist() == [0, 0, 1]
    assert check_all_paths(gt.flip(1).to(device), *args)[0].tolist() == [1, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_same_best_prior_last_face_wins(device):
    # both faces' best prior is prior 0; face 0 has the higher IoU there (1.0) but step 4
    # assigns in face order, so face 1 ends up with it (biubug6 behaviour)
    priors = unit_grid(cols=3, rows=1, step=32, sizes=[(40, 40)])
    gt = unit_boxes((-4, -4, 36, 36), (-2, -4, 34, 36))
    out = check_all_paths(gt.to(device), torch.tensor([2], device=device), priors.to(device))
    assert out[0].tolist() == [1, -1, -1]


@pytest.mark.parametrize("device", DEVICES)
def test_face_overlapping_nothing_takes_prior_zero(device):
    # a face outside the image overlaps no prior: its best prior is prior 0 at IoU 0 (torch.max
    # of zeros); it is not forced, but step 4 still hands it prior 0 (biubug6 behaviour)
    priors = ops.prior_box((640, 640)).to(device)
    corner = point_form(priors[:1])  # exactly prior 0: IoU 1
    outside = torch.tensor([[3.0, 3.0, 3.2, 3.2]])
    gt = torch.cat([corner.cpu(), outside])[None].to(device)
    out = check_all_paths(gt, torch.tensor([2], device=device), priors)
    assert out[0, 0] == 1
    alone = check_all_paths(outside[None].to(device), torch.tensor([1], device=device), priors)
    assert (alone == -1).all()
    # with min_best_iou = 0 the lone outside face does force prior 0
    forced = check_all_paths(outside[None].to(device), torch.tensor([1], device=device), priors, 0.35, 0.0)
    assert forced[0, 0] == 0 and (forced[0, 1:] == -1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_faces_outside_large_and_tiny(device):
    g = torch.Generator().manual_seed(9)
    gt = torch.tensor([[
        [-0.5, -0.5, 1.5, 1.5],  # larger than the image
        [-2.0, -2.0, 3.0, 3.0],  # much larger
        [0.0, 0.0, 1.0, 1.0],  # the whole image
        [-0.3, 0.2, -0.1, 0.4],  # outside, left
        [1.05, 1.05, 1.2, 1.3],  # outside, bottom right, still overlapping large priors
        [0.5, 0.5, 0.5005, 0.5004],  # tiny
        [0.2, 0.7, 0.2 + 1e-6, 0.7 + 1e-6],  # tinier
        [1e6, 1e6, 1e6 + 1, 1e6 + 1],  # far away
        [-1e30, -1e30, 1e30, 1e30],  # huge: its area overflows to inf
    ]])
    gt = torch.cat([gt, faces(9, g)[None]], 1)
    for image_size in IMAGE_SIZES:
        priors = ops.prior_box(image_size).to(device)
        out = check_all_paths(gt.to(device), torch.tensor([18], device=device), priors)
        assert (out == 2).any()  # the whole-image face gets the largest priors


@pytest.mark.parametrize("device", DEVICES)
def test_degenerate_boxes_are_ignored(device):
    g = torch.Generator().manual_seed(10)
    real = faces(6, g)
    nan, inf = float("nan"), float("inf")
    degenerate = torch.tensor([
        [0.3, 0.3, 0.3, 0.5],  # zero width
        [0.3, 0.3, 0.5, 0.3],  # zero height
        [0.5, 0.5, 0.3, 0.7],  # negative width
        [nan, 0.1, 0.2, 0.2],
        [0.1, 0.1, 0.2, nan],
        [0.1, 0.1, inf, 0.2],
        [-inf, 0.1, 0.2, 0.2],
    ])
    # interleave: degenerate boxes at even positions from 0, real ones in between
    gt = torch.stack([degenerate[0], real[0], degenerate[1], real[1], degenerate[2], real[2],
                      degenerate[3], real[3], degenerate[4], real[4], degenerate[5], real[5],
                      degenerate[6]])[None]
    real_index = torch.tensor([1, 3, 5, 7, 9, 11])
    priors = ops.prior_box((640, 640)).to(device)
    out = check_all_paths(gt.to(device), torch.tensor([13], device=device), priors)
    assert torch.isin(out, real_index.to(device)).logical_or(out == -1).all()
    assert (out >= 0).any()
    # the same as matching the real boxes alone, with indices mapped back
    alone = ops.match(real[None].to(device), torch.tensor([6], device=device), priors)
    mapped = torch.where(alone >= 0, real_index.to(device)[alone.clamp(min=0)], -1)
    assert torch.equal(out, mapped)
    # only degenerate boxes: no positives at all, also with threshold 0
    only = ops.match(degenerate[None].to(device), torch.tensor([7], device=device), priors, 0.0, 0.0)
    assert (only == -1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_zero_never_assigns_degenerate_boxes(device):
    # With threshold 0 every prior is positive; priors that overlap no face go to the first
    # valid face (torch.max over an all-zero column), never to a degenerate one.
    g = torch.Generator().manual_seed(11)
    gt = torch.cat([torch.tensor([[0.4, 0.4, 0.4, 0.6]]), faces(3, g)])[None]
    priors = ops.prior_box((320, 320)).to(device)
    out = check_all_paths(gt.to(device), torch.tensor([4], device=device), priors, 0.0, 0.2)
    assert (out >= 1).all()


# --- dtypes, layouts, threads -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(device, dtype):
    g = torch.Generator().manual_seed(12)
    gt, counts = padded_batch([15, 4, 30], g)
    gt = gt.to(device, dtype)
    priors = ops.prior_box((640, 640)).to(device)
    out = check_all_paths(gt, counts.to(device), priors)
    # the same as the float32 values of those boxes
    assert torch.equal(out, ops.match(gt.float(), counts.to(device), priors))
    assert (out >= 0).any()
    # priors in another dtype are computed in float32 too
    assert torch.equal(ops.match(gt, counts.to(device), priors.to(dtype)),
                       reference.match(gt, counts.to(device), priors.to(dtype)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("count_dtype", [torch.int32, torch.int16, torch.uint8])
def test_count_dtypes(device, count_dtype):
    g = torch.Generator().manual_seed(13)
    gt, counts = padded_batch([5, 0, 12], g)
    priors = ops.prior_box((320, 320)).to(device)
    expected = ops.match(gt.to(device), counts.to(device), priors)
    assert torch.equal(ops.match(gt.to(device), counts.to(device, count_dtype), priors), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous(device):
    g = torch.Generator().manual_seed(14)
    gt, counts = padded_batch([7, 20, 3, 11], g)
    priors = ops.prior_box((640, 640))
    gt_nc = gt.permute(1, 0, 2).contiguous().permute(1, 0, 2)  # [B, G, 4], batch-strided
    priors_nc = torch.stack([priors, priors], 1)[:, 0]  # [P, 4], row stride 8
    counts_nc = torch.stack([counts, counts], 1)[:, 1]
    assert not (gt_nc.is_contiguous() or priors_nc.is_contiguous() or counts_nc.is_contiguous())
    out = ops.match(gt_nc.to(device), counts_nc.to(device), priors_nc.to(device))
    assert torch.equal(out, ops.match(gt.to(device), counts.to(device), priors.to(device)))
    assert torch.equal(out, reference.match(gt_nc, counts_nc, priors_nc).to(device))


def test_result_does_not_depend_on_threads():
    # B = 1 splits one image over the threads, B = 8 takes one image per thread
    g = torch.Generator().manual_seed(15)
    priors = ops.prior_box((640, 640))
    crowd, crowd_counts = padded_batch([800], g)
    small, small_counts = padded_batch([3, 50, 0, 9, 200, 1, 17, 5], g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in [1, 2, 3, 7]:
            torch.set_num_threads(n)
            results.append((ops.match(crowd, crowd_counts, priors), ops.match(small, small_counts, priors),
                            match_brute_force(crowd, crowd_counts, priors)))
    finally:
        torch.set_num_threads(threads)
    for crowd_out, small_out, brute_out in results:
        assert torch.equal(crowd_out, results[0][0])
        assert torch.equal(small_out, results[0][1])
        assert torch.equal(brute_out, results[0][0])
    assert torch.equal(results[0][0], reference.match(crowd, crowd_counts, priors))


# --- property tests ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    counts=st.lists(st.integers(0, 40), min_size=0, max_size=5),
    image_size=st.sampled_from([(640, 640), (624, 1024), (480, 320), (64, 96), (8, 8)]),
    threshold=st.sampled_from([0.35, 0.5, 0.2, 0.0, 1.0]),
    min_best_iou=st.sampled_from([0.2, 0.0, 0.5]),
    garbage=st.booleans(),
)
def test_property_random_batches(seed, counts, image_size, threshold, min_best_iou, garbage):
    g = torch.Generator().manual_seed(seed)
    gt, count_tensor = padded_batch(counts, g, max_gt=max(counts, default=0) + 2, garbage=garbage)
    # move some faces partly outside and snap some onto prior corners (exact ties, touching edges)
    gt = gt * (0.5 + torch.rand(1, generator=g)) - 0.25 * torch.rand(1, generator=g)
    priors = ops.prior_box(image_size)
    corners = point_form(priors)
    snap = torch.rand(gt.shape[:2], generator=g) < 0.2
    if snap.any():
        gt[snap] = corners[torch.randint(0, priors.shape[0], (int(snap.sum()),), generator=g)]
    check_all_paths(gt, count_tensor, priors, threshold, min_best_iou)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), crowd=st.integers(300, 1000))
def test_property_crowds(seed, crowd):
    g = torch.Generator().manual_seed(seed)
    gt, counts = padded_batch([crowd, 20], g)
    gt[0, :crowd] = faces(crowd, g, min_size=0.003, max_size=0.08)  # a crowd of small faces
    check_all_paths(gt, counts, ops.prior_box((640, 640)))


# --- opcheck and bad inputs -------------------------------------------------------------------


def test_opcheck():
    g = torch.Generator().manual_seed(16)
    gt, counts = padded_batch([4, 0, 2], g)
    priors = ops.prior_box((64, 64))
    for args in [(gt, counts, priors), (gt.half(), counts.int(), priors), (gt[:0], counts[:0], priors[:0])]:
        torch.library.opcheck(torch.ops.retinaface.match.default,
                              (*args, defaults.MATCH_THRESHOLD, defaults.MIN_BEST_IOU))


def test_torch_compile():
    g = torch.Generator().manual_seed(17)
    gt, counts = padded_batch([4, 9], g)
    priors = ops.prior_box((320, 320))
    compiled = torch.compile(ops.match, fullgraph=True, backend="eager")
    assert torch.equal(compiled(gt, counts, priors), ops.match(gt, counts, priors))


@pytest.mark.parametrize(
    "gt,counts,priors,message",
    [
        (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(5, 4),
         r"gt_boxes must have shape \[B, G, 4\], got \[2, 3\]"),
        (torch.zeros(2, 3, 5), torch.zeros(2, dtype=torch.long), torch.zeros(5, 4),
         r"gt_boxes must have shape \[B, G, 4\], got \[2, 3, 5\]"),
        (torch.zeros(2, 3, 4), torch.zeros(3, dtype=torch.long), torch.zeros(5, 4),
         r"gt_counts must have shape \[B\], got \[3\]"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 1, dtype=torch.long), torch.zeros(5, 4),
         r"gt_counts must have shape \[B\], got \[2, 1\]"),
        (torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(5, 2),
         r"priors must have shape \[P, 4\], got \[5, 2\]"),
        (torch.zeros(2, 3, 4, dtype=torch.int32), torch.zeros(2, dtype=torch.long), torch.zeros(5, 4),
         r"gt_boxes must be a floating tensor"),
        (torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(5, 4, dtype=torch.int64),
         r"priors must be a floating tensor"),
        (torch.zeros(2, 3, 4), torch.zeros(2), torch.zeros(5, 4),
         r"gt_counts must be an integer tensor"),
        (torch.zeros(2, 3, 4), torch.tensor([1, 4]), torch.zeros(5, 4),
         r"gt_counts\[1\] must be in \[0, 3\] \(the padded G of gt_boxes\), got 4"),
        (torch.zeros(2, 3, 4), torch.tensor([-1, 0], dtype=torch.int32), torch.zeros(5, 4),
         r"gt_counts\[0\] must be in \[0, 3\] \(the padded G of gt_boxes\), got -1"),
        (torch.zeros(0, 3, 4), torch.zeros(0, dtype=torch.long), torch.zeros(5, 4, 1),
         r"priors must have shape \[P, 4\], got \[5, 4, 1\]"),
    ],
)
def test_bad_input(gt, counts, priors, message):
    with pytest.raises(RuntimeError, match=message):
        ops.match(gt, counts, priors)
    with pytest.raises(RuntimeError, match=message):
        reference.match(gt, counts, priors)


@pytest.mark.parametrize(
    "name,gt_device,counts_device,priors_device",
    [("gt_counts", "cpu", "meta", "cpu"), ("priors", "cpu", "cpu", "meta")],
)
def test_bad_device(name, gt_device, counts_device, priors_device):
    gt = torch.zeros(2, 3, 4, device=gt_device)
    counts = torch.zeros(2, dtype=torch.long, device=counts_device)
    priors = torch.zeros(5, 4, device=priors_device)
    with pytest.raises(RuntimeError, match=rf"{name} must be on the same device as gt_boxes \(cpu\), got meta"):
        ops.match(gt, counts, priors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_bad_device_cuda():
    gt = torch.zeros(2, 3, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"gt_counts must be on the same device as gt_boxes"):
        ops.match(gt, torch.zeros(2, dtype=torch.long), torch.zeros(5, 4, device="cuda"))
    with pytest.raises(RuntimeError, match=r"priors must be on the same device as gt_boxes"):
        ops.match(gt, torch.zeros(2, dtype=torch.long, device="cuda"), torch.zeros(5, 4))


# --- CUDA against CPU (skipped without a GPU) -------------------------------------------------
#
# The CUDA kernel (csrc/cuda/match_kernel.cu) must give the CPU kernel's result exactly: same float32
# IoUs (-fmad=false), ties to the lowest prior / face index, last face wins in step 4.

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def cuda_matches_cpu(gt, counts, priors, *args):
    """ops.match on CUDA equals ops.match on the CPU exactly; returns the CPU result."""
    expected = ops.match(gt.cpu(), counts.cpu(), priors.cpu(), *args)
    out = ops.match(gt.cuda(), counts.cuda(), priors.cuda(), *args)
    assert out.device.type == "cuda" and out.dtype == torch.int64 and out.shape == expected.shape
    assert torch.equal(out.cpu(), expected)
    return expected


def wider_like_counts(batch, generator):
    """Faces per image with WIDER FACE's spread: mostly 1-10, a tail of crowds up to ~700."""
    counts = torch.exp(torch.rand(batch, generator=generator) ** 3 * math.log(700)).long()
    counts[torch.rand(batch, generator=generator) < 0.02] = 0
    return counts.tolist()


@requires_cuda
@pytest.mark.parametrize("image_size", IMAGE_SIZES)
def test_cuda_wider_like_batch(image_size):
    g = torch.Generator().manual_seed(100 + image_size[1])
    gt, counts = padded_batch(wider_like_counts(64, g), g)
    expected = cuda_matches_cpu(gt, counts, ops.prior_box(image_size))
    assert (expected >= 0).any()


@requires_cuda
@pytest.mark.parametrize("crowd", [257, 709, 1000])
def test_cuda_crowds(crowd):
    # crowds of small faces (several staged chunks of 256), next to a large-face image and an
    # empty one; priors of 640 x 640 (16800: 66 tiles, the last one partial) and 624 x 1024
    g = torch.Generator().manual_seed(crowd)
    gt, counts = padded_batch([crowd, 3, 0, crowd // 2], g)
    gt[0, :crowd] = faces(crowd, g, min_size=0.003, max_size=0.08)
    gt[3, : crowd // 2] = faces(crowd // 2, g, min_size=0.01, max_size=0.2)
    for image_size in [(640, 640), (624, 1024)]:
        expected = cuda_matches_cpu(gt, counts, ops.prior_box(image_size))
        assert (expected[0] >= 0).sum() > crowd // 2


@requires_cuda
def test_cuda_widerface_ground_truth():
    # the real val ground truth, 128 images at a time, including the 709-face one and 0-width boxes
    images = widerface_boxes()
    crowd = max(range(len(images)), key=lambda i: images[i].shape[0])
    zero_width = next(i for i, b in enumerate(images) if (b[:, 2] == 0).any())
    picked = [crowd, zero_width] + list(range(0, len(images), 25))
    priors = ops.prior_box((640, 640))
    for start in range(0, len(picked), 128):
        boxes = [images[i] for i in picked[start:start + 128]]
        gt = torch.zeros(len(boxes), max(b.shape[0] for b in boxes), 4)
        for k, b in enumerate(boxes):
            gt[k, : b.shape[0], :2] = b[:, :2] / 1024
            gt[k, : b.shape[0], 2:] = (b[:, :2] + b[:, 2:]) / 1024
        counts = torch.tensor([b.shape[0] for b in boxes])
        cuda_matches_cpu(gt, counts, priors)


@requires_cuda
@pytest.mark.parametrize("threshold,min_best_iou", [(0.35, 0.2), (0.0, 0.2), (0.35, 0.0), (1.0, 0.5), (1.0, 0.2)])
def test_cuda_random_batches_and_thresholds(threshold, min_best_iou):
    # faces partly outside the image, snapped onto prior corners (exact ties), garbage padding
    g = torch.Generator().manual_seed(int(threshold * 10 + min_best_iou * 100))
    for image_size in [(640, 640), (480, 320), (64, 96), (8, 8)]:
        gt, counts = padded_batch([0, 1, 7, 40, 120, 3], g, max_gt=130)
        gt = gt * 1.3 - 0.15
        priors = ops.prior_box(image_size)
        snap = torch.rand(gt.shape[:2], generator=g) < 0.2
        gt[snap] = point_form(priors)[torch.randint(0, priors.shape[0], (int(snap.sum()),), generator=g)]
        cuda_matches_cpu(gt, counts, priors, threshold, min_best_iou)


@requires_cuda
def test_cuda_ties_across_tiles():
    # identical priors far apart (different blocks): a face's best prior is the lower index;
    # identical faces: a prior's best face is the lower index, the shared best prior goes to the
    # last of them (step 4)
    g = torch.Generator().manual_seed(101)
    base = ops.prior_box((320, 320))
    priors = torch.cat([base, base[:1000], base])
    gt, counts = padded_batch([20, 9], g)
    gt[0, 3] = point_form(base[2000:2001])[0]  # IoU 1 with priors 2000 and 2000 + 5200 only
    gt[0, 15:20] = gt[0, 3]  # faces 3, 15..19 identical
    gt[1, 8] = gt[1, 0]
    expected = cuda_matches_cpu(gt, counts, priors)
    assert torch.equal(expected, reference.match(gt, counts, priors))
    assert expected[0, 2000] == 19  # the faces' shared best prior (the lower copy): last face
    assert expected[0, 2000 + 5200] == 3  # its copy: the best face by IoU, the first one
    assert not torch.isin(expected[0], torch.tensor([15, 16, 17, 18])).any()


@requires_cuda
def test_cuda_exact_boundaries():
    # the hand-made grids of the CPU boundary tests: IoU exactly 0.35 and 0.2, and just above
    priors = unit_grid(cols=3, rows=3, step=32, sizes=[(12, 12), (20, 20)])
    gt = unit_boxes((9, 11, 23, 21))
    just_above = float(np.nextafter(np.float32(0.35), np.float32(1)))
    assert cuda_matches_cpu(gt, torch.tensor([1]), priors, 0.35, 0.2)[0, :2].tolist() == [0, 0]
    assert cuda_matches_cpu(gt, torch.tensor([1]), priors, just_above, 0.2)[0, :2].tolist() == [0, -1]
    priors = unit_grid(cols=4, rows=2, step=16, sizes=[(10, 10)])
    gt = unit_boxes((20, 4, 25, 8))
    just_above = float(np.nextafter(np.float32(0.2), np.float32(1)))
    assert cuda_matches_cpu(gt, torch.tensor([1]), priors, 0.35, 0.2)[0, 1] == 0
    assert (cuda_matches_cpu(gt, torch.tensor([1]), priors, 0.35, just_above) == -1).all()


@requires_cuda
def test_cuda_degenerate_and_outside_faces():
    g = torch.Generator().manual_seed(102)
    nan, inf = float("nan"), float("inf")
    odd = torch.tensor([
        [0.3, 0.3, 0.3, 0.5], [0.5, 0.5, 0.3, 0.7], [nan, 0.1, 0.2, 0.2], [0.1, 0.1, inf, 0.2],
        [3.0, 3.0, 3.2, 3.2], [-1e30, -1e30, 1e30, 1e30], [0.5, 0.5, 0.5005, 0.5004],
        [0.0, 0.0, 1.0, 1.0], [-0.3, 0.2, -0.1, 0.4],
    ])
    gt = torch.stack([torch.cat([odd, faces(5, g)]), torch.cat([faces(5, g), odd]),
                      torch.cat([odd, odd[:5]])])
    counts = torch.tensor([14, 14, 9])
    priors = ops.prior_box((640, 640))
    for threshold, min_best_iou in [(0.35, 0.2), (0.0, 0.0), (0.35, 0.0)]:
        cuda_matches_cpu(gt, counts, priors, threshold, min_best_iou)
    # only degenerate faces, or one face overlapping nothing: no positives
    assert (cuda_matches_cpu(odd[None, :4], torch.tensor([4]), priors, 0.0, 0.0) == -1).all()
    assert (cuda_matches_cpu(odd[None, 4:5], torch.tensor([1]), priors) == -1).all()
    # with min_best_iou 0 that face forces prior 0 (its best prior at IoU 0)
    forced = cuda_matches_cpu(odd[None, 4:5], torch.tensor([1]), priors, 0.35, 0.0)
    assert forced[0, 0] == 0 and (forced[0, 1:] == -1).all()


@requires_cuda
def test_cuda_nan_and_arbitrary_priors():
    # random priors in random order, some with a NaN coordinate or zero size
    g = torch.Generator().manual_seed(103)
    xyxy = random_boxes(3000, g)
    priors = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
    priors[::97, 0] = float("nan")
    priors[::89, 2:] = 0.0
    gt, counts = padded_batch([30, 5, 0], g)
    for threshold in [0.35, 0.0]:
        cuda_matches_cpu(gt, counts, priors, threshold, 0.2)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes(dtype):
    g = torch.Generator().manual_seed(104)
    gt, counts = padded_batch([15, 4, 200, 0], g)  # uint8 counts below
    priors = ops.prior_box((640, 640))
    expected = cuda_matches_cpu(gt.to(dtype), counts.int(), priors)
    assert (expected >= 0).any()
    cuda_matches_cpu(gt.to(dtype), counts.to(torch.uint8), priors.to(dtype))


@requires_cuda
def test_cuda_non_contiguous_and_many_images():
    g = torch.Generator().manual_seed(105)
    gt, counts = padded_batch([7, 20, 3, 11], g)
    priors = ops.prior_box((640, 640))
    gt_nc = gt.cuda().permute(1, 0, 2).contiguous().permute(1, 0, 2)
    priors_nc = torch.stack([priors, priors], 1).cuda()[:, 0]
    out = ops.match(gt_nc, counts.cuda(), priors_nc)
    assert torch.equal(out.cpu(), ops.match(gt, counts, priors))
    # more images than a grid's y dimension holds (65535): the kernels loop over images
    gt = faces(2 * 70000, g).view(70000, 2, 4)
    counts = torch.randint(0, 3, (70000,), generator=g)
    cuda_matches_cpu(gt, counts, ops.prior_box((8, 8)))


@requires_cuda
@pytest.mark.parametrize("batch,max_gt,num_priors", [(0, 5, 100), (0, 0, 0), (3, 0, 100), (2, 4, 0), (2, 4, 1)])
def test_cuda_empty(batch, max_gt, num_priors):
    gt = torch.rand(batch, max_gt, 4)
    counts = torch.full((batch,), max_gt, dtype=torch.int64)
    priors = ops.prior_box((640, 640))[:num_priors]
    out = ops.match(gt.cuda(), counts.cuda(), priors.cuda())
    assert out.shape == (batch, num_priors) and out.device.type == "cuda"
    assert torch.equal(out.cpu(), ops.match(gt, counts, priors))


@requires_cuda
def test_cuda_counts_out_of_range_are_clamped():
    # The CPU raises (it reads the counts anyway); CUDA must not synchronise to check, so it
    # clamps each count into [0, G] on the device.
    g = torch.Generator().manual_seed(106)
    gt, _ = padded_batch([6, 6, 6], g)
    priors = ops.prior_box((320, 320))
    out = ops.match(gt.cuda(), torch.tensor([-3, 100, 4], device="cuda"), priors.cuda())
    assert torch.equal(out.cpu(), ops.match(gt, torch.tensor([0, 6, 4]), priors))


@requires_cuda
def test_cuda_bad_input():
    gt = torch.zeros(2, 3, 4, device="cuda")
    counts = torch.zeros(2, dtype=torch.long, device="cuda")
    with pytest.raises(RuntimeError, match=r"gt_boxes must have shape \[B, G, 4\], got \[2, 3\]"):
        ops.match(gt[..., 0], counts, torch.zeros(5, 4, device="cuda"))
    with pytest.raises(RuntimeError, match=r"priors must have shape \[P, 4\], got \[5, 2\]"):
        ops.match(gt, counts, torch.zeros(5, 2, device="cuda"))
    with pytest.raises(RuntimeError, match=r"gt_counts must be an integer tensor"):
        ops.match(gt, counts.float(), torch.zeros(5, 4, device="cuda"))


@requires_cuda
def test_cuda_opcheck():
    g = torch.Generator().manual_seed(107)
    gt, counts = padded_batch([4, 0, 2], g)
    priors = ops.prior_box((64, 64))
    for args in [(gt, counts, priors), (gt.half(), counts.int(), priors), (gt[:0], counts[:0], priors)]:
        args = tuple(a.cuda() for a in args)
        torch.library.opcheck(torch.ops.retinaface.match.default,
                              (*args, defaults.MATCH_THRESHOLD, defaults.MIN_BEST_IOU))


@requires_cuda
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_cuda_torch_compile(backend):
    g = torch.Generator().manual_seed(108)
    gt, counts = padded_batch([4, 9, 30], g)
    priors = ops.prior_box((640, 640)).cuda()
    torch._dynamo.reset()
    compiled = torch.compile(ops.match, fullgraph=True, backend=backend)
    out = compiled(gt.cuda(), counts.cuda(), priors)
    assert torch.equal(out, ops.match(gt.cuda(), counts.cuda(), priors))
    assert torch.equal(out.cpu(), ops.match(gt, counts, ops.prior_box((640, 640))))


@requires_cuda
def test_cuda_graph_capture():
    # no host synchronisation and no allocation outside the caching allocator: the op can be
    # captured once and replayed on new ground truth written into the same buffers
    g = torch.Generator().manual_seed(109)
    priors = ops.prior_box((640, 640)).cuda()
    gt, counts = padded_batch([5, 30, 0, 12], g, max_gt=40)
    static_gt, static_counts = gt.cuda(), counts.cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.match(static_gt, static_counts, priors)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.match(static_gt, static_counts, priors)
    for seed in range(3):
        gt, counts = padded_batch([seed * 7, 40, 3, 1 + seed], torch.Generator().manual_seed(seed), max_gt=40)
        static_gt.copy_(gt)
        static_counts.copy_(counts)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out.cpu(), ops.match(gt, counts, ops.prior_box((640, 640))))
