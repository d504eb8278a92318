import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from utils import DEVICES, random_boxes, random_landmarks, requires_extension

import retinaface_ext
from retinaface_ext import defaults, ops, reference
from retinaface_ext.reference.multibox_loss import multibox_loss_with_assignment

pytestmark = requires_extension

NAN = float("nan")
VARIANCES = list(defaults.VARIANCES)


def make_problem(batch, image_size=(640, 640), max_faces=20, seed=0, dtype=torch.float32,
                 device="cpu", counts=None, num_classes=2):
    """Priors, padded ground truth (some faces without landmarks: label -1, landmarks -1)
    and random predictions with requires_grad."""
    g = torch.Generator().manual_seed(seed)
    priors = ops.prior_box(image_size)
    num_priors = priors.shape[0]
    boxes = torch.stack([random_boxes(max_faces, g, min_size=0.02, max_size=0.4)
                         for _ in range(batch)]) if batch else torch.zeros(0, max_faces, 4)
    landms = random_landmarks(boxes, g)
    labels = torch.where(torch.rand(batch, max_faces, generator=g) < 0.3, -1.0, 1.0)
    landms[labels < 0] = -1.0
    if counts is None:
        counts = torch.randint(0, max_faces + 1, (batch,), generator=g)
    counts = torch.as_tensor(counts, dtype=torch.int64)
    loc = torch.randn(batch, num_priors, 4, generator=g)
    conf = torch.randn(batch, num_priors, num_classes, generator=g)
    landm_pred = torch.randn(batch, num_priors, 10, generator=g)
    preds = [t.to(device=device, dtype=dtype).requires_grad_() for t in (loc, conf, landm_pred)]
    truth = [t.to(device) for t in (priors, boxes, landms, labels, counts)]
    return preds, truth


def fused_with_assignment(preds, truth, threshold=defaults.MATCH_THRESHOLD,
                          ratio=defaults.NEG_POS_RATIO, min_best_iou=defaults.MIN_BEST_IOU):
    return torch.ops.retinaface.multibox_loss(*preds, *truth, threshold, min_best_iou, ratio,
                                              VARIANCES)


def grads(losses, preds, weights=(1.0, 1.0, 1.0)):
    total = sum(w * loss for w, loss in zip(weights, losses))
    return torch.autograd.grad(total, preds, allow_unused=True)


def assert_losses_close(actual, expected, rtol=1e-5, atol=1e-7):
    for a, e in zip(actual, expected):
        assert a.shape == () and a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,seed", [(1, 0), (3, 1), (8, 2)])
def test_matches_reference(device, batch, seed):
    preds, truth = make_problem(batch, seed=seed, device=device)
    truth[4][0] = 20  # at least one image with faces
    *fused, assignment = fused_with_assignment(preds, truth)
    *expected, expected_assignment = multibox_loss_with_assignment(*preds, *truth)
    assert_losses_close(fused, expected)
    assert assignment.dtype == torch.int64 and assignment.shape == preds[0].shape[:2]
    assert torch.equal(assignment, expected_assignment)
    assert (assignment >= 0).any() and (assignment == -2).any()

    weights = (2.0, 1.0, 0.5)  # biubug6's 2 * loss_l, and a distinct weight per loss
    fused_grads = grads(ops.multibox_loss(*preds, *truth), preds, weights)
    expected_grads = grads(reference.multibox_loss(*preds, *truth), preds, weights)
    for a, e in zip(fused_grads, expected_grads):
        assert a.dtype == e.dtype and a.is_contiguous()
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)


def test_prior_assignment_semantics():
    preds, truth = make_problem(4, seed=3, counts=[20, 0, 5, 12])
    _, _, _, assignment = fused_with_assignment(preds, truth)
    priors, boxes, landms, labels, counts = truth
    assert not (assignment[1] != -1).any()  # no faces: no positives and no negatives
    for b in range(4):
        num_pos = int((assignment[b] >= 0).sum())
        num_neg = int((assignment[b] == -2).sum())
        assert num_neg == min(7 * num_pos, priors.shape[0] - 1)
        assert assignment[b].max() < counts[b]
    # Positives are exactly the priors matching assigns to a (nonzero-label) face.
    matched = ops.match(boxes, counts, priors)
    assert torch.equal(assignment >= 0, matched >= 0)
    assert torch.equal(assignment[assignment >= 0], matched[assignment >= 0])


@pytest.mark.parametrize("device", DEVICES)
def test_two_class_mining_ranks_by_logit_difference(device):
    """Two classes: the kernels rank by conf[1] - conf[0], the exact order of its softplus.

    One 16 px face on a 64 x 64 image matches exactly one prior, so k = 7: six
    priors with a large loss, then the 7th pick among three whose logit
    differences 0, 1e-8 and 2e-8 all round to the same float32 loss, log 2.
    The largest difference wins (the reference, ranking the rounded loss, takes
    the lowest index); the loss is the same either way.
    """
    priors = ops.prior_box((64, 64))
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0]]]) / 64
    landms = torch.full((1, 1, 10), 0.15)
    labels = torch.ones(1, 1)
    counts = torch.ones(1, dtype=torch.int64)
    num_priors = priors.shape[0]
    conf = torch.zeros(1, num_priors, 2)
    conf[..., 1] = -10.0  # confident background everywhere
    high, ties = [100, 101, 102, 103, 104, 105], [150, 160, 167]
    conf[0, high, 1] = 5.0
    conf[0, ties, 1] = torch.tensor([0.0, 1e-8, 2e-8])
    assert torch.unique(torch.nn.functional.softplus(conf[0, ties, 1])).numel() == 1
    preds = [torch.zeros(1, num_priors, 4), conf, torch.zeros(1, num_priors, 10)]
    truth = [priors, boxes, landms, labels, counts]
    preds, truth = [t.to(device) for t in preds], [t.to(device) for t in truth]

    *fused, assignment = fused_with_assignment(preds, truth)
    *expected, expected_assignment = multibox_loss_with_assignment(*preds, *truth)
    assert int((assignment >= 0).sum()) == 1 and int((assignment == -2).sum()) == 7
    hard = (assignment[0] == -2).nonzero().flatten().tolist()
    assert hard == high + [167]
    assert (expected_assignment[0] == -2).nonzero().flatten().tolist() == high + [150]
    assert_losses_close(fused, expected)


@pytest.mark.parametrize("ratio,threshold", [(0, 0.35), (3, 0.5), (100000, 0.35)])
def test_options_match_reference(ratio, threshold):
    # ratio 100000 on 168 priors: k = P - 1, so some positives are also "mined".
    preds, truth = make_problem(3, image_size=(64, 64), max_faces=4, seed=4, counts=[4, 2, 1])
    *fused, assignment = fused_with_assignment(preds, truth, threshold=threshold, ratio=ratio)
    *expected, expected_assignment = multibox_loss_with_assignment(
        *preds, *truth, threshold=threshold, neg_pos_ratio=ratio)
    assert_losses_close(fused, expected)
    assert torch.equal(assignment, expected_assignment)
    fused_grads = grads(fused, preds)
    expected_grads = grads(expected, preds)
    for a, e in zip(fused_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)


def test_more_classes_and_label_zero_faces():
    # C = 3 (class 1 is still the face class) and a face labelled 0, which
    # matching assigns but which counts as background, like biubug6's conf_t.
    preds, truth = make_problem(2, image_size=(128, 128), max_faces=6, seed=5, counts=[6, 6],
                                num_classes=3)
    truth[3][0, :3] = 0.0
    *fused, assignment = fused_with_assignment(preds, truth)
    *expected, expected_assignment = multibox_loss_with_assignment(*preds, *truth)
    assert_losses_close(fused, expected)
    assert torch.equal(assignment, expected_assignment)
    for a, e in zip(grads(fused, preds), grads(expected, preds)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)


@pytest.fixture
def single_thread():
    # Thousands of tiny forwards: intra-op threads only add synchronisation
    # (badly so on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gradcheck_float64(single_thread):
    # Small problem (32 x 48: 63 priors). Matching depends only on the ground
    # truth, and the random conf keeps the mining losses far apart compared
    # with gradcheck's eps, so the perturbations do not change the selection.
    preds, truth = make_problem(2, image_size=(32, 48), max_faces=3, seed=6,
                                dtype=torch.float64, counts=[3, 2])
    loc, conf, landms = preds
    *_, assignment = fused_with_assignment(preds, truth)
    assert (assignment >= 0).any() and (assignment == -2).any()

    def fn(loc, conf, landms):
        return ops.multibox_loss(loc, conf, landms, *truth)

    assert torch.autograd.gradcheck(fn, (loc, conf, landms), eps=1e-6, atol=1e-7)


def test_float64_losses():
    preds, truth = make_problem(2, image_size=(128, 128), seed=7, dtype=torch.float64)
    fused = ops.multibox_loss(*preds, *truth)
    assert all(loss.dtype == torch.float64 for loss in fused)
    assert_losses_close(fused, reference.multibox_loss(*preds, *truth), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_predictions(dtype):
    preds, truth = make_problem(3, seed=8, dtype=dtype, counts=[20, 3, 9])
    *fused, assignment = fused_with_assignment(preds, truth)
    *expected, expected_assignment = multibox_loss_with_assignment(*preds, *truth)
    assert all(loss.dtype == torch.float32 for loss in fused)
    assert_losses_close(fused, expected, rtol=1e-4, atol=1e-6)
    # Positives are exact; quantised conf gives near-ties among the mined
    # negatives that float rounding may order either way, so compare counts.
    assert torch.equal(assignment >= 0, expected_assignment >= 0)
    assert torch.equal((assignment == -2).sum(1), (expected_assignment == -2).sum(1))
    fused_grads = grads(ops.multibox_loss(*preds, *truth), preds)
    expected_grads = grads(reference.multibox_loss(*preds, *truth), preds)
    for a, e in zip(fused_grads, expected_grads):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e.float(), rtol=1e-2, atol=1e-5)


def test_empty_batch():
    preds, truth = make_problem(0, image_size=(64, 64))
    losses = ops.multibox_loss(*preds, *truth)
    for loss in losses:
        assert loss.shape == () and loss.item() == 0.0
    for grad, pred in zip(grads(losses, preds), preds):
        assert grad.shape == pred.shape


def test_no_faces():
    # No image has a face: zero losses, no positives, no negatives, zero gradients.
    preds, truth = make_problem(3, image_size=(128, 128), counts=[0, 0, 0], seed=9)
    *losses, assignment = fused_with_assignment(preds, truth)
    assert [loss.item() for loss in losses] == [0.0, 0.0, 0.0]
    assert (assignment == -1).all()
    for grad in grads(losses, preds):
        assert not grad.any()
    # G = 0: no ground truth tensors at all.
    preds, truth = make_problem(2, image_size=(128, 128), max_faces=0, seed=9)
    losses = ops.multibox_loss(*preds, *truth)
    assert [loss.item() for loss in losses] == [0.0, 0.0, 0.0]
    assert_losses_close(losses, reference.multibox_loss(*preds, *truth))


def test_faces_without_landmarks_only():
    preds, truth = make_problem(2, image_size=(128, 128), seed=10, counts=[5, 5])
    truth[3].fill_(-1.0)
    truth[2].fill_(-1.0)
    losses = ops.multibox_loss(*preds, *truth)
    assert losses[0] > 0 and losses[1] > 0 and losses[2].item() == 0.0
    assert_losses_close(losses, reference.multibox_loss(*preds, *truth))
    assert not grads(losses, preds)[2].any()


def test_degenerate_and_nan_boxes_give_finite_losses():
    preds, truth = make_problem(2, image_size=(128, 128), max_faces=6, seed=11, counts=[6, 6])
    boxes = truth[1]
    boxes[0, 0, 2] = boxes[0, 0, 0]  # zero width
    boxes[0, 1, 3] = boxes[0, 1, 1] - 0.1  # negative height
    boxes[0, 2] = NAN
    boxes[1, :] = 0.0  # every box of image 1 is degenerate: no positives there
    *losses, assignment = fused_with_assignment(preds, truth)
    assert all(torch.isfinite(loss) for loss in losses)
    assert (assignment[1] == -1).all()
    assert not torch.isin(assignment[0], torch.tensor([0, 1, 2])).any()
    assert_losses_close(losses, reference.multibox_loss(*preds, *truth))
    assert all(torch.isfinite(g).all() for g in grads(losses, preds))


def test_tiny_box_encodes_finite():
    # A valid but extremely thin box: the log in the encoding is clamped.
    preds, truth = make_problem(1, image_size=(64, 64), max_faces=1, seed=12, counts=[1])
    truth[1][0, 0] = torch.tensor([0.3, 0.3, 0.3 + 1e-9, 0.7])
    losses = ops.multibox_loss(*preds, *truth, min_best_iou=0.0)
    assert all(torch.isfinite(loss) for loss in losses)
    assert_losses_close(losses, reference.multibox_loss(*preds, *truth, min_best_iou=0.0))


def test_non_contiguous_inputs():
    preds, truth = make_problem(3, image_size=(128, 128), seed=13)
    loc, conf, landms = preds
    priors, boxes, gt_landms, labels, counts = truth
    # Predictions as views of a [B, P, 16] head output, ground truth as views
    # of a [B, G, 15] target tensor (what MultiBoxLoss passes), priors strided.
    head = torch.cat([loc, conf, landms], dim=-1).detach().requires_grad_()
    target = torch.cat([boxes, gt_landms, labels[..., None]], dim=-1)
    priors_nc = priors.t().contiguous().t()
    nc_preds = (head[..., :4], head[..., 4:6], head[..., 6:])
    nc_truth = (priors_nc, target[..., :4], target[..., 4:14], target[..., 14], counts[:, None][:, 0])
    assert not any(t.is_contiguous() for t in nc_preds + nc_truth[:4])
    fused = ops.multibox_loss(*nc_preds, *nc_truth)
    expected = ops.multibox_loss(*preds, *truth)
    for a, e in zip(fused, expected):
        assert torch.equal(a, e)
    (head_grad,) = torch.autograd.grad(sum(fused), head)
    expected_grads = grads(expected, preds)
    assert torch.equal(head_grad, torch.cat(expected_grads, dim=-1))


def test_integer_labels_and_counts():
    preds, truth = make_problem(2, image_size=(128, 128), seed=14)
    int_truth = list(truth)
    int_truth[3] = truth[3].to(torch.int64)
    int_truth[4] = truth[4].to(torch.int32)
    for a, e in zip(ops.multibox_loss(*preds, *int_truth), ops.multibox_loss(*preds, *truth)):
        assert torch.equal(a, e)


def test_deterministic_across_thread_counts():
    preds, truth = make_problem(6, seed=15)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = fused_with_assignment(preds, truth)
        single_grads = grads(single[:3], preds)
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(max(threads, 2))
    try:
        multi = fused_with_assignment(preds, truth)
        multi_grads = grads(multi[:3], preds)
    finally:
        torch.set_num_threads(threads)
    for a, e in zip(single + single_grads, multi + multi_grads):
        assert torch.equal(a, e)


def test_single_loss_backward():
    # Only loss_c is used: the other losses' gradients arrive as zeros/None.
    preds, truth = make_problem(2, image_size=(128, 128), seed=16, counts=[5, 5])
    fused = grads(ops.multibox_loss(*preds, *truth)[1:2], preds)
    expected = grads(reference.multibox_loss(*preds, *truth)[1:2], preds)
    torch.testing.assert_close(fused[1], expected[1], rtol=1e-5, atol=1e-8)
    assert not fused[0].any() and not fused[2].any()



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("used", [(0,), (2,), (0, 2), (1, 2)])
def test_backward_with_some_losses_unused(device, used):
    # Unused losses reach the backward as None (set_materialize_grads(False)):
    # their terms must contribute nothing, the used ones their full gradient.
    preds, truth = make_problem(2, image_size=(128, 128), seed=21, counts=[5, 3], device=device)
    weights = (2.0, 1.0, 0.5)

    def picked(losses):
        return [losses[i] for i in used]

    picked_weights = [weights[i] for i in used]
    fused = grads(picked(ops.multibox_loss(*preds, *truth)), preds, picked_weights)
    expected = grads(picked(reference.multibox_loss(*preds, *truth)), preds, picked_weights)
    for a, e in zip(fused, expected):
        if e is None:  # the reference's graph does not reach this input
            assert not a.any()
        else:
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)
    if 1 not in used:
        assert not fused[1].any()


def test_gradcheck_single_loss(single_thread):
    # gradcheck also runs the backward with undefined (None) output gradients.
    preds, truth = make_problem(1, image_size=(32, 32), max_faces=2, seed=22,
                                dtype=torch.float64, counts=[2])
    for index in range(3):
        def fn(loc, conf, landms, index=index):
            return ops.multibox_loss(loc, conf, landms, *truth)[index]

        assert torch.autograd.gradcheck(fn, tuple(preds), eps=1e-6, atol=1e-7)


def test_torch_compile_with_one_loss_used():
    preds, truth = make_problem(2, image_size=(64, 64), max_faces=3, seed=23, counts=[3, 1])

    def conf_only(loc, conf, landms):
        return ops.multibox_loss(loc, conf, landms, *truth)[1]

    torch._dynamo.reset()
    compiled = torch.compile(conf_only, backend="aot_eager", fullgraph=True)
    out = compiled(*preds)
    eager = conf_only(*preds)
    assert torch.equal(out, eager)
    for a, e in zip(torch.autograd.grad(out, preds), torch.autograd.grad(eager, preds)):
        assert torch.equal(a, e)
    *_, assignment = fused_with_assignment(preds, truth)
    assert not assignment.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_background_with_infinite_logits(device):
    """Documented: the two-class rank is conf[1] - conf[0], the loss its softplus.

    conf = [+inf, x]: difference -inf, mining loss 0 (the reference: inf - inf =
    NaN, ranked first). conf = [x, +inf]: loss +inf, ranked first (both agree).
    conf = [+inf, +inf]: NaN, ranked first (both agree).
    """
    preds, truth = make_problem(1, image_size=(64, 64), max_faces=2, seed=24, counts=[2],
                                device=device)
    loc, conf, landms = [p.detach() for p in preds]
    *_, base = fused_with_assignment([loc, conf, landms], truth)
    background = (base[0] < 0).nonzero().flatten().tolist()
    low, high, nan = background[:3]
    inf = float("inf")
    conf[0, low] = torch.tensor([inf, 0.0])
    *losses, assignment = fused_with_assignment([loc, conf, landms], truth)
    assert assignment[0, low] == -1 and torch.isfinite(losses[1])
    conf[0, high] = torch.tensor([0.0, inf])
    *losses, assignment = fused_with_assignment([loc, conf, landms], truth)
    assert assignment[0, high] == -2 and losses[1] == inf
    conf[0, nan] = torch.tensor([inf, inf])
    *losses, assignment = fused_with_assignment([loc, conf, landms], truth)
    assert assignment[0, nan] == -2 and torch.isnan(losses[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_backward_zeroes_every_unused_gradient(dtype, num_classes):
    # Odd row sizes (3 classes in half: 6 bytes) put the images' gradient rows
    # at any alignment, so the streaming zeroing has a head, full 16-byte
    # blocks and a tail per image. Freed NaN buffers of the same sizes make
    # uninitialised memory likely to hold NaN, so a missed byte shows.
    preds, truth = make_problem(5, image_size=(40, 72), max_faces=4, seed=25, dtype=dtype,
                                counts=[4, 0, 2, 1, 3], num_classes=num_classes)
    detached = [p.detach() for p in preds]
    *_, assignment = fused_with_assignment(detached, truth)
    labels = truth[3].gather(1, assignment.clamp(min=0))
    one = torch.ones((), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    for _ in range(3):
        junk = [torch.full_like(p, NAN) for p in detached]
        del junk
        d_loc, d_conf, d_landms = torch.ops.retinaface.multibox_loss_backward(
            one, one, one, *detached, *truth[:4], assignment, VARIANCES)
        assert not d_conf[assignment == -1].any()
        assert not d_loc[assignment < 0].any()
        assert not d_landms[(assignment < 0) | (labels <= 0)].any()
        for d in (d_loc, d_conf, d_landms):
            assert torch.isfinite(d).all()
    expected = grads(reference.multibox_loss(*preds, *truth), preds)
    for a, e in zip((d_loc, d_conf, d_landms), expected):
        torch.testing.assert_close(a.double(), e.double(), rtol=1e-2 if dtype == torch.float16
                                   else 1e-5, atol=1e-5 if dtype == torch.float16 else 1e-8)

@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 3),
    faces=st.integers(0, 6),
    seed=st.integers(0, 2**16),
    ratio=st.integers(0, 10),
)
def test_property_matches_reference(batch, faces, seed, ratio):
    preds, truth = make_problem(batch, image_size=(96, 128), max_faces=faces, seed=seed)
    *fused, assignment = fused_with_assignment(preds, truth, ratio=ratio)
    *expected, expected_assignment = multibox_loss_with_assignment(*preds, *truth,
                                                                   neg_pos_ratio=ratio)
    assert_losses_close(fused, expected)
    assert torch.equal(assignment, expected_assignment)


def _bad(**changes):
    preds, truth = make_problem(2, image_size=(64, 64), max_faces=3, seed=17)
    args = dict(zip(["loc", "conf", "landms"], [p.detach() for p in preds]))
    args.update(zip(["priors", "gt_boxes", "gt_landms", "gt_labels", "gt_counts"], truth))
    for name, change in changes.items():
        args[name] = change(args[name])
    return args


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(loc=lambda t: t[..., :3]), r"loc must have shape \[B, P, 4\], got \[2, 168, 3\]"),
        (dict(conf=lambda t: t[:, :100]), r"conf must have shape \[2, 168, C\], got \[2, 100, 2\]"),
        (dict(conf=lambda t: t[..., :1]), r"conf must have at least 2 classes"),
        (dict(landms=lambda t: t[:1]), r"landms must have shape \[2, 168, 10\], got \[1, 168, 10\]"),
        (dict(priors=lambda t: t[:10]), r"priors must have shape \[168, 4\], got \[10, 4\]"),
        (dict(gt_boxes=lambda t: t[..., :2]), r"gt_boxes must have shape \[2, G, 4\], got \[2, 3, 2\]"),
        (dict(gt_landms=lambda t: t[:, :2]), r"gt_landms must have shape \[2, 3, 10\], got \[2, 2, 10\]"),
        (dict(gt_labels=lambda t: t[:, None]), r"gt_labels must have shape \[2, 3\], got \[2, 1, 3\]"),
        (dict(gt_counts=lambda t: t[:1]), r"gt_counts must have shape \[2\], got \[1\]"),
        (dict(gt_counts=lambda t: t.float()), r"gt_counts must be an integer tensor, got Float"),
        (dict(gt_counts=lambda t: t + 5), r"gt_counts\[0\] must be in \[0, 3\]"),
        (dict(conf=lambda t: t.double()), r"conf must be Float, got Double"),
        (dict(loc=lambda t: t.long()), r"loc must be a floating tensor"),
        (dict(gt_boxes=lambda t: t.long()), r"gt_boxes must be a floating tensor"),
        (dict(gt_labels=lambda t: t.bool()), r"gt_labels must be a floating or integer tensor, got Bool"),
    ],
)
def test_bad_input(changes, message):
    args = _bad(**changes)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.retinaface.multibox_loss(*args.values(), 0.35, 0.2, 7, VARIANCES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch():
    args = _bad(gt_boxes=lambda t: t.cuda())
    with pytest.raises(RuntimeError, match=r"gt_boxes must be on the same device as loc"):
        torch.ops.retinaface.multibox_loss(*args.values(), 0.35, 0.2, 7, VARIANCES)


def test_bad_options():
    args = _bad()
    with pytest.raises(RuntimeError, match=r"neg_pos_ratio must be >= 0, got -1"):
        torch.ops.retinaface.multibox_loss(*args.values(), 0.35, 0.2, -1, VARIANCES)
    with pytest.raises(RuntimeError, match=r"variances must have 2 values, got 3"):
        torch.ops.retinaface.multibox_loss(*args.values(), 0.35, 0.2, 7, [0.1, 0.2, 0.3])


def test_backward_bad_input():
    preds, truth = make_problem(2, image_size=(64, 64), max_faces=3, seed=18)
    preds = [p.detach() for p in preds]
    *_, assignment = fused_with_assignment(preds, truth)
    priors, boxes, landms, labels, _ = truth
    one = torch.ones(())
    backward = torch.ops.retinaface.multibox_loss_backward
    with pytest.raises(RuntimeError, match=r"prior_assignment must have shape \[2, 168\], got \[2, 10\]"):
        backward(one, one, one, *preds, priors, boxes, landms, labels, assignment[:, :10], VARIANCES)
    with pytest.raises(RuntimeError, match=r"prior_assignment must be Long, got Int"):
        backward(one, one, one, *preds, priors, boxes, landms, labels, assignment.int(), VARIANCES)
    with pytest.raises(RuntimeError, match=r"prior_assignment must hold -2, -1 or a ground truth index below G = 3, got 3"):
        backward(one, one, one, *preds, priors, boxes, landms, labels, assignment.clamp(min=3), VARIANCES)
    with pytest.raises(RuntimeError, match=r"grad_loss_c must have one element"):
        backward(one, torch.ones(2), one, *preds, priors, boxes, landms, labels, assignment, VARIANCES)


def test_opcheck():
    preds, truth = make_problem(2, image_size=(64, 64), max_faces=3, seed=19, counts=[3, 1])
    options = (0.35, 0.2, 7, VARIANCES)
    torch.library.opcheck(torch.ops.retinaface.multibox_loss.default, (*preds, *truth, *options))
    empty_preds, empty_truth = make_problem(0, image_size=(64, 64), max_faces=3)
    torch.library.opcheck(torch.ops.retinaface.multibox_loss.default,
                          (*empty_preds, *empty_truth, *options))

    detached = [p.detach() for p in preds]
    *_, assignment = fused_with_assignment(detached, truth)
    grad_outputs = (torch.tensor(2.0), torch.tensor(1.0), torch.tensor(0.5))
    torch.library.opcheck(
        torch.ops.retinaface.multibox_loss_backward.default,
        (*grad_outputs, *detached, *truth[:4], assignment, VARIANCES))


# --------------------------------------------------------------- MultiBoxLoss

def biubug6_criterion():
    # biubug6 train.py: MultiBoxLoss(num_classes, 0.35, True, 0, True, 7, 0.35, False)
    return retinaface_ext.MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False)


def targets_list(truth):
    _, boxes, landms, labels, counts = truth
    return [torch.cat([boxes[b, :n], landms[b, :n], labels[b, :n, None]], dim=1)
            for b, n in enumerate(counts.tolist())]


@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_reference(device):
    preds, truth = make_problem(4, seed=20, counts=[7, 0, 20, 1], device=device)
    targets = targets_list(truth)
    assert targets[1].shape == (0, 15)
    criterion = biubug6_criterion()
    losses = criterion(tuple(preds), truth[0], targets)
    expected = reference.multibox_loss(*preds, *truth)
    assert_losses_close(losses, expected)
    for a, e in zip(grads(losses, preds, (2.0, 1.0, 1.0)), grads(expected, preds, (2.0, 1.0, 1.0))):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)


def test_module_edge_cases():
    criterion = biubug6_criterion()
    assert isinstance(criterion, torch.nn.Module)
    preds, truth = make_problem(2, image_size=(64, 64), seed=21, counts=[0, 0])
    losses = criterion(tuple(preds), truth[0], [torch.zeros(0, 15), torch.zeros(0, 15)])
    assert [loss.item() for loss in losses] == [0.0, 0.0, 0.0]
    preds, truth = make_problem(0, image_size=(64, 64))
    losses = criterion(tuple(preds), truth[0], [])
    assert [loss.item() for loss in losses] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"targets\[0\] must have shape \[n, 15\], got \[3, 14\]"):
        preds, truth = make_problem(1, image_size=(64, 64))
        criterion(tuple(preds), truth[0], [torch.zeros(3, 14)])
    with pytest.raises(ValueError, match=r"got 2 targets for a batch of 1 images"):
        criterion(tuple(preds), truth[0], [torch.zeros(3, 15)] * 2)
    with pytest.raises(ValueError, match=r"conf has 2 classes, expected num_classes = 3"):
        retinaface_ext.MultiBoxLoss(3, 0.35, True, 0, True, 7, 0.35, False)(
            tuple(preds), truth[0], [torch.zeros(3, 15)])


# ------------------------------------------------------------------- CUDA
# The CUDA kernels against the CPU kernels on the same inputs (the CPU is
# itself checked against the reference above): prior_assignment exact, losses
# and gradients to float rounding.

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def wider_like_problem(batch, seed, max_faces=None, dtype=torch.float32, num_classes=2):
    """640x640 priors and WIDER FACE-like ground truth: most images hold a few
    faces, a few hold hundreds, some none; many faces are tiny (some too small
    for any prior to reach IoU 0.2); ~30% have no landmarks (label -1)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.exp(torch.randn(batch, generator=g) * 1.4 + 1.0).long().clamp(max=400)
    counts[torch.rand(batch, generator=g) < 0.1] = 0
    max_faces = max(int(counts.max()), 1) if max_faces is None else max_faces
    counts = counts.clamp(max=max_faces)
    priors = ops.prior_box((640, 640))
    boxes = torch.stack([random_boxes(max_faces, g, min_size=0.004, max_size=0.6)
                         for _ in range(batch)])
    landms = random_landmarks(boxes, g)
    labels = torch.where(torch.rand(batch, max_faces, generator=g) < 0.3, -1.0, 1.0)
    landms[labels < 0] = -1.0
    num_priors = priors.shape[0]
    # Predictions around a trained detector's range (confident background).
    loc = torch.randn(batch, num_priors, 4, generator=g)
    conf = torch.randn(batch, num_priors, num_classes, generator=g) * 2
    conf[..., 0] += 2
    landm_pred = torch.randn(batch, num_priors, 10, generator=g)
    preds = [t.to(dtype).requires_grad_() for t in (loc, conf, landm_pred)]
    return preds, [priors, boxes, landms, labels, counts]


def to_cuda(preds, truth):
    return ([p.detach().cuda().requires_grad_() for p in preds], [t.cuda() for t in truth])


def assert_cuda_matches_cpu(preds, truth, threshold=defaults.MATCH_THRESHOLD,
                            ratio=defaults.NEG_POS_RATIO, min_best_iou=defaults.MIN_BEST_IOU,
                            rtol=1e-5, grad_rtol=1e-5, grad_atol=1e-8, weights=(2.0, 1.0, 0.5)):
    cuda_preds, cuda_truth = to_cuda(preds, truth)
    options = dict(threshold=threshold, ratio=ratio, min_best_iou=min_best_iou)
    *expected, expected_assignment = fused_with_assignment(preds, truth, **options)
    *losses, assignment = fused_with_assignment(cuda_preds, cuda_truth, **options)
    assert assignment.device.type == "cuda" and all(loss.is_cuda for loss in losses)
    assert torch.equal(assignment.cpu(), expected_assignment)
    for a, e in zip(losses, expected):
        assert a.shape == () and a.dtype == e.dtype
        torch.testing.assert_close(a.cpu(), e, rtol=rtol, atol=1e-7)
    cuda_grads = grads(losses, cuda_preds, weights)
    cpu_grads = grads(expected, preds, weights)
    for a, e, p in zip(cuda_grads, cpu_grads, preds):
        assert a.dtype == p.dtype and a.shape == p.shape and a.is_contiguous()
        torch.testing.assert_close(a.cpu().double(), e.double(), rtol=grad_rtol, atol=grad_atol)
    return losses, assignment


def confidence_gradient_of_extreme_logits(device):
    """d loss_c / d conf for two classes whose logits differ by up to 1e4 (softmax saturates to 0 and 1)."""
    preds, truth = make_problem(2, (64, 64), max_faces=5, seed=40, counts=[5, 3], device=device)
    conf = preds[1].detach()
    conf[..., 1] = conf[..., 0] + torch.linspace(-1e4, 1e4, conf[..., 0].numel(),
                                                 device=device).view_as(conf[..., 0])
    preds[1] = conf.requires_grad_()
    losses = ops.multibox_loss(*preds, *truth)
    return torch.autograd.grad(losses[1], preds[1])[0], preds, truth


def test_two_class_confidence_gradient_is_the_softmax_minus_target():
    grad, preds, truth = confidence_gradient_of_extreme_logits("cpu")
    assert torch.isfinite(grad).all()
    assignment = fused_with_assignment(preds, truth)[-1]
    used = assignment != -1  # positives (>= 0) and mined negatives (-2)
    conf = preds[1].detach().double()
    expected = conf.softmax(-1)
    expected[..., 1] -= (assignment >= 0).double()
    expected[..., 0] -= (assignment == -2).double()
    expected = expected * used[..., None] / max(int((assignment >= 0).sum()), 1)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-6, atol=1e-12)


@requires_cuda
def test_cuda_two_class_confidence_gradient_equals_cpu_bit_for_bit():
    """One formula (common/two_class_softmax.h) on both devices: the same float32 gradient, not just close."""
    cpu_grad, preds, truth = confidence_gradient_of_extreme_logits("cpu")
    cuda_preds, cuda_truth = to_cuda(preds, truth)
    cuda_grad = torch.autograd.grad(ops.multibox_loss(*cuda_preds, *cuda_truth)[1], cuda_preds[1])[0]
    assert torch.equal(cuda_grad.cpu(), cpu_grad)
    preds, truth = wider_like_problem(8, seed=41)
    cuda_preds, cuda_truth = to_cuda(preds, truth)
    cpu_grad = torch.autograd.grad(ops.multibox_loss(*preds, *truth)[1], preds[1])[0]
    cuda_grad = torch.autograd.grad(ops.multibox_loss(*cuda_preds, *cuda_truth)[1], cuda_preds[1])[0]
    assert torch.equal(cuda_grad.cpu(), cpu_grad)


@requires_cuda
@pytest.mark.parametrize("batch,seed", [(8, 30), (32, 31)])
def test_cuda_matches_cpu_realistic(batch, seed):
    preds, truth = wider_like_problem(batch, seed)
    _, assignment = assert_cuda_matches_cpu(preds, truth)
    assert (assignment >= 0).any() and (assignment == -2).any()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_predictions(dtype):
    # Both devices compute in float32 from the same half values: the same
    # selection and losses; the gradients are rounded to the half type, so
    # a last-bit float difference may move them by one half ulp.
    preds, truth = wider_like_problem(8, seed=32, dtype=dtype)
    eps = torch.finfo(dtype).eps
    assert_cuda_matches_cpu(preds, truth, grad_rtol=eps, grad_atol=1e-6)


@requires_cuda
def test_cuda_float64():
    preds, truth = wider_like_problem(4, seed=33, dtype=torch.float64)
    losses, _ = assert_cuda_matches_cpu(preds, truth, rtol=1e-10, grad_rtol=1e-10, grad_atol=1e-14)
    assert all(loss.dtype == torch.float64 for loss in losses)


@requires_cuda
@pytest.mark.parametrize("ratio,threshold", [(0, 0.35), (3, 0.5), (100000, 0.35)])
def test_cuda_options(ratio, threshold):
    # ratio 100000 on 168 priors: k = P - 1, positives rank among the "mined".
    preds, truth = make_problem(3, image_size=(64, 64), max_faces=4, seed=4, counts=[4, 2, 1])
    assert_cuda_matches_cpu(preds, truth, threshold=threshold, ratio=ratio)


@requires_cuda
def test_cuda_more_classes_label_zero_and_degenerate_boxes():
    preds, truth = make_problem(2, image_size=(128, 128), max_faces=6, seed=5, counts=[6, 6],
                                num_classes=3)
    truth[3][0, :3] = 0.0
    assert_cuda_matches_cpu(preds, truth)
    preds, truth = make_problem(2, image_size=(128, 128), max_faces=6, seed=11, counts=[6, 6])
    boxes = truth[1]
    boxes[0, 0, 2] = boxes[0, 0, 0]
    boxes[0, 1, 3] = boxes[0, 1, 1] - 0.1
    boxes[0, 2] = NAN
    boxes[1, :] = 0.0
    losses, _ = assert_cuda_matches_cpu(preds, truth)
    assert all(torch.isfinite(loss) for loss in losses)


@requires_cuda
def test_cuda_empty_and_without_faces():
    for preds, truth in [make_problem(0, image_size=(64, 64)),
                         make_problem(3, image_size=(128, 128), counts=[0, 0, 0], seed=9),
                         make_problem(2, image_size=(128, 128), max_faces=0, seed=9)]:
        losses, assignment = assert_cuda_matches_cpu(preds, truth)
        assert [loss.item() for loss in losses] == [0.0, 0.0, 0.0]
        assert (assignment == -1).all()
    # Faces without landmarks only: loss_landm 0 and no landmark gradient.
    preds, truth = make_problem(2, image_size=(128, 128), seed=10, counts=[5, 5])
    truth[3].fill_(-1.0)
    truth[2].fill_(-1.0)
    losses, _ = assert_cuda_matches_cpu(preds, truth)
    assert losses[2].item() == 0.0


@requires_cuda
def test_cuda_non_contiguous_and_integer_truth():
    preds, truth = make_problem(3, image_size=(128, 128), seed=13, device="cuda")
    loc, conf, landms = preds
    priors, boxes, gt_landms, labels, counts = truth
    head = torch.cat([loc, conf, landms], dim=-1).detach().requires_grad_()
    target = torch.cat([boxes, gt_landms, labels[..., None]], dim=-1)
    nc_preds = (head[..., :4], head[..., 4:6], head[..., 6:])
    nc_truth = (priors.t().contiguous().t(), target[..., :4], target[..., 4:14],
                target[..., 14].long(), counts.int())
    fused = ops.multibox_loss(*nc_preds, *nc_truth)
    expected = ops.multibox_loss(*preds, *truth)
    for a, e in zip(fused, expected):
        assert torch.equal(a, e)
    (head_grad,) = torch.autograd.grad(sum(fused), head)
    assert torch.equal(head_grad, torch.cat(grads(expected, preds), dim=-1))


@requires_cuda
def test_cuda_deterministic():
    preds, truth = to_cuda(*wider_like_problem(16, seed=34))
    first = fused_with_assignment(preds, truth)
    first_grads = grads(first[:3], preds)
    for _ in range(3):
        again = fused_with_assignment(preds, truth)
        for a, e in zip(again + grads(again[:3], preds), first + first_grads):
            assert torch.equal(a, e)


@requires_cuda
def test_cuda_single_loss_backward():
    preds, truth = to_cuda(*make_problem(2, image_size=(128, 128), seed=16, counts=[5, 5]))
    fused = grads(ops.multibox_loss(*preds, *truth)[1:2], preds)
    cpu_preds = [p.detach().cpu().requires_grad_() for p in preds]
    expected = grads(ops.multibox_loss(*cpu_preds, *[t.cpu() for t in truth])[1:2], cpu_preds)
    torch.testing.assert_close(fused[1].cpu(), expected[1], rtol=1e-5, atol=1e-8)
    assert not fused[0].any() and not fused[2].any()


@requires_cuda
def test_cuda_opcheck():
    preds, truth = to_cuda(*make_problem(2, image_size=(64, 64), max_faces=3, seed=19,
                                         counts=[3, 1]))
    options = (0.35, 0.2, 7, VARIANCES)
    torch.library.opcheck(torch.ops.retinaface.multibox_loss.default, (*preds, *truth, *options))
    detached = [p.detach() for p in preds]
    *_, assignment = fused_with_assignment(detached, truth)
    grad_outputs = tuple(torch.tensor(v, device="cuda") for v in (2.0, 1.0, 0.5))
    torch.library.opcheck(
        torch.ops.retinaface.multibox_loss_backward.default,
        (*grad_outputs, *detached, *truth[:4], assignment, VARIANCES))


@requires_cuda
def test_cuda_backward_reads_any_grad_dtype():
    preds, truth = to_cuda(*make_problem(2, image_size=(64, 64), max_faces=3, seed=18,
                                         counts=[3, 2]))
    detached = [p.detach() for p in preds]
    *_, assignment = fused_with_assignment(detached, truth)
    backward = torch.ops.retinaface.multibox_loss_backward
    args = (*detached, *truth[:4], assignment, VARIANCES)
    expected = backward(*(torch.tensor(v, device="cuda") for v in (2.0, 1.0, 0.5)), *args)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        grads_in = [torch.tensor(v, device="cuda", dtype=dtype) for v in (2.0, 1.0, 0.5)]
        for a, e in zip(backward(*grads_in, *args), expected):
            assert torch.equal(a, e)
    with pytest.raises(RuntimeError, match=r"grad_loss_l must be on the same device as loc"):
        backward(torch.tensor(2.0), *grads_in[1:], *args)


def _training_step(loc, conf, landms, priors, boxes, gt_landms, labels, counts):
    loss_l, loss_c, loss_landm = ops.multibox_loss(loc, conf, landms, priors, boxes, gt_landms,
                                                   labels, counts)
    return 2.0 * loss_l + loss_c + loss_landm


@requires_cuda
def test_cuda_no_host_sync():
    preds, truth = to_cuda(*wider_like_problem(8, seed=35))
    targets = targets_list(truth)  # .tolist() on the counts: before sync checking starts
    cpu_targets = [t.cpu() for t in targets]
    criterion = biubug6_criterion()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _training_step(*preds, *truth).backward()
        for t in (targets, cpu_targets):  # targets on the GPU, or as the DataLoader gives them
            loss_l, loss_c, loss_landm = criterion(tuple(preds), truth[0], t)
            (2.0 * loss_l + loss_c + loss_landm).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@requires_cuda
def test_cuda_module_with_cpu_targets():
    preds, truth = to_cuda(*wider_like_problem(4, seed=36))
    targets = targets_list(truth)
    criterion = biubug6_criterion()
    on_gpu = criterion(tuple(preds), truth[0], targets)
    on_cpu = criterion(tuple(preds), truth[0], [t.cpu() for t in targets])
    expected = ops.multibox_loss(*preds, *truth)
    for a, b, e in zip(on_gpu, on_cpu, expected):
        assert torch.equal(a, e) and torch.equal(b, e)


@requires_cuda
def test_cuda_torch_compile_fullgraph():
    preds, truth = to_cuda(*wider_like_problem(4, seed=37))
    compiled = torch.compile(_training_step, fullgraph=True)
    total = compiled(*preds, *truth)
    compiled_grads = torch.autograd.grad(total, preds)
    eager = _training_step(*preds, *truth)
    eager_grads = torch.autograd.grad(eager, preds)
    torch.testing.assert_close(total, eager, rtol=1e-6, atol=0)
    for a, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=0)


@requires_cuda
def test_cuda_graph_capture_forward_backward():
    preds, truth = to_cuda(*wider_like_problem(8, seed=38, max_faces=64))
    # Warm-up on a side stream (allocator, lazy init), as torch.cuda.graphs asks.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for p in preds:
                p.grad = None
            _training_step(*preds, *truth).backward()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    for p in preds:
        p.grad = None  # .grad is then allocated from the graph's pool
    with torch.cuda.graph(graph):
        static_total = _training_step(*preds, *truth)
        static_total.backward()

    # New data in the captured input tensors, then replay.
    new_preds, new_truth = wider_like_problem(8, seed=39, max_faces=64)
    with torch.no_grad():
        for p, new in zip(preds, new_preds):
            p.copy_(new)
        for t, new in zip(truth, new_truth):
            t.copy_(new)
    graph.replay()
    torch.cuda.synchronize()

    eager_preds = [p.detach().clone().requires_grad_() for p in preds]
    eager_total = _training_step(*eager_preds, *truth)
    eager_total.backward()
    assert torch.equal(static_total, eager_total.detach())
    for p, e in zip(preds, eager_preds):
        assert torch.equal(p.grad, e.grad)
    # And the replay saw the new data, not the captured one.
    cpu_total = _training_step(*new_preds, *new_truth)
    torch.testing.assert_close(static_total.cpu(), cpu_total.detach(), rtol=1e-5, atol=1e-7)
