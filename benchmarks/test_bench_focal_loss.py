"""Focal losses: the fused ops vs the pure-PyTorch references (torchvision's sigmoid_focal_loss
formula; log_softmax + autograd), forward + backward, and multibox_loss with conf_loss="focal".

Run ``python -m benchmarks.table -k focal`` for the table (``--threads 1`` for steadier
numbers on a busy machine).
"""
import pytest
import torch

from benchmarks import harness, inputs
from retinaface_ext import ops, reference

QUICK = harness.quick()
IMPLS = ("fused", "reference")
LOC_WEIGHT = 2.0

# (label, rows, classes): RetinaFace's batch of 32 at 640 x 640 (16800 priors, 2 classes) and a
# RetinaNet-like image batch (about 100k anchors, 80 COCO classes).
RETINAFACE = ("B=32 x 16800 x 2", 32 * 16800, 2) if not QUICK else ("B=2 x 4200 x 2", 2 * 4200, 2)
RETINANET = ("100000 x 80", 100000, 80) if not QUICK else ("2000 x 80", 2000, 80)
MULTIBOX_BATCH = 2 if QUICK else 32


def _lib(impl):
    return ops if impl == "fused" else reference


def _logits(rows, classes, seed=0):
    """Logits of a detector a few epochs in: background-leaning (RetinaNet's prior is P = 0.01)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, classes, generator=g) - 3.0
    return x.requires_grad_()


def _labels(rows, classes, seed=0, positive_fraction=0.01, ignored_fraction=0.02):
    """Integer labels: ~1% positives (a random class), ~2% ignored (-1), the rest background."""
    g = torch.Generator().manual_seed(seed + 1)
    draw = torch.rand(rows, generator=g)
    labels = torch.full((rows,), classes, dtype=torch.int64)  # background: C
    positive = draw < positive_fraction
    labels[positive] = torch.randint(0, classes, (int(positive.sum()),), generator=g)
    labels[(draw >= positive_fraction) & (draw < positive_fraction + ignored_fraction)] = -1
    return labels


def _one_hot(labels, classes):
    """torchvision's float targets for the same labels (background and ignored rows all 0)."""
    return torch.nn.functional.one_hot(labels.clamp(min=0), classes + 1)[:, :classes].float()


def _step(loss_fn, x):
    def step():
        loss = loss_fn(x)
        return torch.autograd.grad(loss, x)[0]
    return step


@pytest.mark.parametrize("case", [RETINAFACE, RETINANET], ids=lambda c: c[0])
@pytest.mark.parametrize("impl", IMPLS)
def test_sigmoid_focal_loss(bench, impl, case):
    """Float targets (torchvision's interface), sum / number of positives."""
    size, rows, classes = case
    x = _logits(rows, classes)
    labels = _labels(rows, classes)
    targets = _one_hot(labels, classes)
    num_pos = (labels >= 0).logical_and(labels < classes).sum().clamp(min=1)
    lib = _lib(impl)
    grad = bench(_step(lambda z: lib.sigmoid_focal_loss(z, targets, reduction="sum", normalizer=num_pos), x),
                 op="sigmoid_focal_loss fwd+bwd", size=size, impl=impl)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_sigmoid_focal_loss_labels(bench, impl):
    """Integer labels with background C and ignored -1 (RetinaNet's / detectron2's targets)."""
    size, rows, classes = RETINANET
    x = _logits(rows, classes, seed=1)
    labels = _labels(rows, classes, seed=1)
    lib = _lib(impl)
    grad = bench(_step(lambda z: lib.sigmoid_focal_loss(z, labels, reduction="mean"), x),
                 op="sigmoid_focal_loss labels fwd+bwd", size=size, impl=impl)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("case", [RETINAFACE, RETINANET], ids=lambda c: c[0])
@pytest.mark.parametrize("impl", IMPLS)
def test_softmax_focal_loss(bench, impl, case):
    size, rows, classes = case
    x = _logits(rows, classes, seed=2)
    # Class 0 is the background, 1..C-1 the objects; ~2% ignored (-1).
    raw = _labels(rows, classes - 1, seed=2)
    labels = torch.where(raw == classes - 1, 0, torch.where(raw >= 0, raw + 1, -1))
    num_pos = (labels > 0).sum().clamp(min=1)
    lib = _lib(impl)
    grad = bench(_step(lambda z: lib.softmax_focal_loss(z, labels, reduction="sum", normalizer=num_pos), x),
                 op="softmax_focal_loss fwd+bwd", size=size, impl=impl)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_multibox_loss_focal(bench, wider_available, impl):
    """multibox_loss(conf_loss="focal"): the fused op (no mining) + the fused focal loss vs the reference pieces."""
    gt = inputs.ground_truth(MULTIBOX_BATCH)
    priors = inputs.priors()
    leaves = inputs.predictions(MULTIBOX_BATCH, priors.shape[0]).with_grad()
    height, width = inputs.IMAGE_SIZE
    lib = _lib(impl)

    def step():
        loss_l, loss_c, loss_landm = lib.multibox_loss(*leaves, priors, gt.gt_boxes, gt.gt_landms, gt.gt_labels,
                                                       gt.gt_counts, conf_loss="focal")
        return torch.autograd.grad(LOC_WEIGHT * loss_l + loss_c + loss_landm, leaves)

    grads = bench(step, op="multibox_loss focal fwd+bwd", size=f"B={MULTIBOX_BATCH} {height}x{width}", impl=impl,
                  faces=gt.num_faces, priors=int(priors.shape[0]))
    assert all(torch.isfinite(g).all() for g in grads)
