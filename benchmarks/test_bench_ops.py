"""Fused ops vs their pure-PyTorch references (and biubug6's code where users run it), on realistic sizes.

Run ``python -m benchmarks.table`` for the summary table, or
``python -m pytest benchmarks/test_bench_ops.py`` for pytest-benchmark's
report (one group per op and size). Every entry is described in
benchmarks/README.md.
"""
import pytest
import torch

from benchmarks import harness, inputs
from benchmarks.baselines import biubug6
from benchmarks.widerface import pad_targets
from retinaface_ext import ops, reference

QUICK = harness.quick()
TRAIN_BATCHES = (2, 4) if QUICK else (32, 256)
DETECT_BATCHES = (2,) if QUICK else (16, 64)
NMS_SIZES = (500, 2000) if QUICK else (1000, 5000, 10000, 20000)
PRIOR_SIZES = ((640, 640),) if QUICK else ((640, 640), (1024, 1024), (1600, 2144))
IOU_SIZES = ((50, 4200),) if QUICK else ((50, 16800), (709, 16800))

# The pytest-benchmark group tells the implementations of one op apart; biubug6 only where it exists.
IMPLS = ("fused", "reference")
IMPLS_WITH_BIUBUG6 = ("fused", "reference", "biubug6")

LOSS_ARGS = (2, 0.35, True, 0, True, 7, 0.35, False)  # how biubug6's train.py builds MultiBoxLoss
LOC_WEIGHT = 2.0  # biubug6's cfg['loc_weight']


def _lib(impl):
    return ops if impl == "fused" else reference


def _batch_label(batch_size):
    gt = inputs.ground_truth(batch_size)
    height, width = inputs.IMAGE_SIZE
    return f"B={batch_size} {height}x{width}", {"faces": gt.num_faces, "priors": int(inputs.priors().shape[0])}


# ---------------------------------------------------------------------------- priors and IoU


@pytest.mark.parametrize("image_size", PRIOR_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_prior_box(bench, impl, image_size):
    lib = _lib(impl)
    priors = bench(lambda: lib.prior_box(image_size), op="prior_box", size=f"{image_size[0]}x{image_size[1]}",
                   impl=impl)
    assert priors.shape[1] == 4


@pytest.mark.parametrize("shape", IOU_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_box_iou(bench, impl, shape):
    num_gt, num_priors = shape
    boxes, _, _ = inputs.nms_boxes(num_gt, seed=1)
    priors = biubug6.point_form(inputs.priors()[:num_priors])
    lib = _lib(impl)
    iou = bench(lambda: lib.box_iou(boxes, priors), op="box_iou", size=f"{num_gt} x {num_priors}", impl=impl)
    assert iou.shape == (num_gt, num_priors)


# ---------------------------------------------------------------------------- training-side ops


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
@pytest.mark.parametrize("impl", IMPLS)
def test_match(bench, wider_available, impl, batch_size):
    gt = inputs.ground_truth(batch_size)
    priors = inputs.priors()
    size, info = _batch_label(batch_size)
    lib = _lib(impl)
    assigned = bench(lambda: lib.match(gt.gt_boxes, gt.gt_counts, priors), op="match", size=size, impl=impl,
                     **info)
    assert assigned.shape == (batch_size, priors.shape[0])


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
@pytest.mark.parametrize("impl", IMPLS)
def test_encode(bench, wider_available, impl, batch_size):
    boxes, _ = inputs.matched_boxes_and_landmarks(batch_size)
    priors = inputs.priors()
    size, info = _batch_label(batch_size)
    lib = _lib(impl)
    loc = bench(lambda: lib.encode(boxes, priors), op="encode", size=size, impl=impl, **info)
    assert loc.shape == boxes.shape


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
@pytest.mark.parametrize("impl", IMPLS)
def test_encode_landmarks(bench, wider_available, impl, batch_size):
    _, landmarks = inputs.matched_boxes_and_landmarks(batch_size)
    priors = inputs.priors()
    size, info = _batch_label(batch_size)
    lib = _lib(impl)
    out = bench(lambda: lib.encode_landmarks(landmarks, priors), op="encode_landmarks", size=size, impl=impl,
                **info)
    assert out.shape == landmarks.shape


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
@pytest.mark.parametrize("impl", IMPLS)
def test_decode(bench, impl, batch_size):
    priors = inputs.priors()
    loc = inputs.predictions(batch_size, priors.shape[0]).loc
    lib = _lib(impl)
    boxes = bench(lambda: lib.decode(loc, priors), op="decode", size=f"B={batch_size} 640x640", impl=impl)
    assert boxes.shape == loc.shape


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
@pytest.mark.parametrize("impl", IMPLS)
def test_decode_landmarks(bench, impl, batch_size):
    priors = inputs.priors()
    landms = inputs.predictions(batch_size, priors.shape[0]).landms
    lib = _lib(impl)
    points = bench(lambda: lib.decode_landmarks(landms, priors), op="decode_landmarks",
                   size=f"B={batch_size} 640x640", impl=impl)
    assert points.shape == landms.shape


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
@pytest.mark.parametrize("impl", IMPLS)
def test_hard_negative_mask(bench, wider_available, impl, batch_size):
    conf_loss, positive = inputs.hard_negative_inputs(batch_size)
    size, info = _batch_label(batch_size)
    lib = _lib(impl)
    mask = bench(lambda: lib.hard_negative_mask(conf_loss, positive), op="hard_negative_mask", size=size,
                 impl=impl, positives=int(positive.sum()), **info)
    assert mask.shape == positive.shape


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
@pytest.mark.parametrize("impl", IMPLS)
def test_multibox_loss(bench, wider_available, impl, batch_size):
    """Forward + backward of the padded-batch loss (a training step's loss cost)."""
    gt = inputs.ground_truth(batch_size)
    priors = inputs.priors()
    leaves = inputs.predictions(batch_size, priors.shape[0]).with_grad()
    size, info = _batch_label(batch_size)
    lib = _lib(impl)

    def step():
        loss_l, loss_c, loss_landm = lib.multibox_loss(*leaves, priors, gt.gt_boxes, gt.gt_landms, gt.gt_labels,
                                                       gt.gt_counts)
        total = LOC_WEIGHT * loss_l + loss_c + loss_landm
        return torch.autograd.grad(total, leaves)

    grads = bench(step, op="multibox_loss fwd+bwd", size=size, impl=impl, **info)
    assert all(torch.isfinite(g).all() for g in grads)


def _reference_multibox_module():
    """The pure-PyTorch MultiBoxLoss: reference.MultiBoxLoss if the package has one, else the same adaptor over reference.multibox_loss."""
    module_cls = getattr(reference, "MultiBoxLoss", None)
    if module_cls is not None:
        return module_cls(*LOSS_ARGS)

    def forward(predictions, priors, targets):
        gt_boxes, gt_landms, gt_labels, gt_counts = pad_targets(targets)
        return reference.multibox_loss(*predictions, priors, gt_boxes, gt_landms, gt_labels, gt_counts)

    return forward


def _multibox_module(impl):
    if impl == "fused":
        from retinaface_ext import MultiBoxLoss

        return MultiBoxLoss(*LOSS_ARGS)
    if impl == "reference":
        return _reference_multibox_module()
    return biubug6.MultiBoxLoss(*LOSS_ARGS)


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
@pytest.mark.parametrize("impl", IMPLS_WITH_BIUBUG6)
def test_MultiBoxLoss(bench, wider_available, impl, batch_size):
    """The drop-in module, forward + backward on biubug6's list-of-targets input; the key line vs biubug6."""
    gt = inputs.ground_truth(batch_size)
    priors = inputs.priors()
    leaves = inputs.predictions(batch_size, priors.shape[0]).with_grad()
    size, info = _batch_label(batch_size)

    criterion = _multibox_module(impl)

    def step():
        loss_l, loss_c, loss_landm = criterion(leaves, priors, gt.targets)
        total = LOC_WEIGHT * loss_l + loss_c + loss_landm
        return torch.autograd.grad(total, leaves)

    grads = bench(step, op="MultiBoxLoss fwd+bwd", size=size, impl=impl, **info)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES[:1])
@pytest.mark.parametrize("impl", IMPLS_WITH_BIUBUG6)
def test_MultiBoxLoss_forward(bench, wider_available, impl, batch_size):
    """The drop-in module's forward alone (no graph kept): where biubug6 spends its time (matching loop, sorts)."""
    gt = inputs.ground_truth(batch_size)
    priors = inputs.priors()
    predictions = inputs.predictions(batch_size, priors.shape[0])
    size, info = _batch_label(batch_size)
    criterion = []

    def forward():
        if not criterion:
            criterion.append(_multibox_module(impl))
        with torch.no_grad():
            return criterion[0]((predictions.loc, predictions.conf, predictions.landms), priors, gt.targets)

    losses = bench(forward, op="MultiBoxLoss forward", size=size, impl=impl, **info)
    assert all(torch.isfinite(v) for v in losses)


# ---------------------------------------------------------------------------- inference-side ops


@pytest.mark.parametrize("num_boxes", NMS_SIZES)
@pytest.mark.parametrize("impl", IMPLS_WITH_BIUBUG6)
def test_nms(bench, impl, num_boxes):
    boxes, scores, _ = inputs.nms_boxes(num_boxes)
    size = f"N={num_boxes}"
    if impl == "biubug6":
        # py_cpu_nms works in pixels (its +1); 640 px images, as in training.
        dets = torch.cat([boxes * 640, scores[:, None]], dim=1).numpy()
        keep = bench(lambda: biubug6.py_cpu_nms(dets, 0.4), op="nms", size=size, impl=impl)
    else:
        lib = _lib(impl)
        keep = bench(lambda: lib.nms(boxes, scores, 0.4), op="nms", size=size, impl=impl)
    assert 0 < len(keep) <= num_boxes


@pytest.mark.parametrize("num_boxes", NMS_SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_batched_nms(bench, impl, num_boxes):
    boxes, scores, idxs = inputs.nms_boxes(num_boxes)
    lib = _lib(impl)
    keep = bench(lambda: lib.batched_nms(boxes, scores, idxs, 0.4), op="batched_nms",
                 size=f"N={num_boxes}, 8 groups", impl=impl)
    assert 0 < len(keep) <= num_boxes


@pytest.mark.parametrize("batch_size", DETECT_BATCHES)
@pytest.mark.parametrize("impl", IMPLS_WITH_BIUBUG6)
def test_detect_postprocess(bench, wider_available, impl, batch_size):
    loc, conf, landms = inputs.detection_inputs(batch_size)
    priors = inputs.priors()
    height, width = inputs.IMAGE_SIZE
    size = f"B={batch_size} {height}x{width}"
    candidates = int((conf[..., 1] > 0.02).sum()) // batch_size
    if impl == "biubug6":
        dets = bench(lambda: biubug6.detect(loc, conf, landms, priors, inputs.IMAGE_SIZE), op="detect_postprocess",
                     size=size, impl=impl, candidates_per_image=candidates)
        assert len(dets) == batch_size
        return
    lib = _lib(impl)
    detections, counts = bench(lambda: lib.detect_postprocess(loc, conf, landms, priors), op="detect_postprocess",
                               size=size, impl=impl, candidates_per_image=candidates)
    assert detections.shape[0] == batch_size and counts.shape == (batch_size,)


# ---------------------------------------------------------------------------- mobilenet_stem

STEM_SIZES = ((96, 128),) if QUICK else ((512, 512), (1080, 1920))


@pytest.mark.parametrize("size", STEM_SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_mobilenet_stem(bench, impl, size):
    """uint8 images -> MobileNetV1-0.25's stage1[:4]; the reference is the mean subtraction and 7 F.conv2d calls."""
    height, width = size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, height, width, 3), generator=g, dtype=torch.uint8)
    shapes = ((8, 3, 3), (8, 1, 3), (16, 8, 1), (16, 1, 3), (32, 16, 1), (32, 1, 3), (32, 32, 1))
    weights = [torch.randn(o, i, k, k, generator=g) / (i * k * k) ** 0.5 for o, i, k in shapes]
    biases = [0.1 * torch.randn(o, generator=g) for o, _, _ in shapes]
    lib = _lib(impl)
    out = bench(lambda: lib.mobilenet_stem(images, weights, biases), op="mobilenet_stem", size=f"B=1 {width}x{height}",
                impl=impl)
    assert out.shape == (1, 32, (height + 3) // 4, (width + 3) // 4)
