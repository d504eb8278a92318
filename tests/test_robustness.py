"""Every op under misuse: mixed devices, NaN / inf / out-of-range parameters, degenerate inputs, gradients.

The fused op and the pure-PyTorch reference give the same result or both
raise; a fake (meta) kernel raises like the real one when a call mixes the
meta device with real tensors; an output either has a gradient or asking for
one raises.
"""
import itertools

import pytest
import torch
from utils import random_boxes, random_landmarks, requires_extension

from retinaface_ext import ops, reference

NAN, INF = float("nan"), float("inf")


def _cases():
    """name -> (call(impl, tensors, params), CPU tensors, scalar params): one valid call of every op."""
    g = torch.Generator().manual_seed(0)
    priors = ops.prior_box((32, 32))
    num_priors = priors.shape[0]
    gt_boxes = random_boxes(6, g, min_size=0.1).view(2, 3, 4)
    targets = dict(priors=priors, gt_boxes=gt_boxes, gt_landms=random_landmarks(gt_boxes, g),
                   gt_labels=torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, 0.0]]), gt_counts=torch.tensor([3, 2]))
    outputs = dict(loc=torch.randn(2, num_priors, 4, generator=g) * 0.1,
                   conf=torch.randn(2, num_priors, 2, generator=g),
                   landms=torch.randn(2, num_priors, 10, generator=g) * 0.1)
    boxes = random_boxes(20, g)
    coding = dict(variances=(0.1, 0.2))
    multibox = dict(threshold=0.35, min_best_iou=0.2, neg_pos_ratio=7, variances=(0.1, 0.2))

    def multibox_call(conf_loss):
        return lambda m, t, p: m.multibox_loss(t["loc"], t["conf"], t["landms"], t["priors"], t["gt_boxes"],
                                               t["gt_landms"], t["gt_labels"], t["gt_counts"],
                                               conf_loss=conf_loss, **p)

    return {
        "box_iou": (lambda m, t, p: m.box_iou(t["boxes1"], t["boxes2"]),
                    dict(boxes1=boxes[:7], boxes2=boxes[7:]), {}),
        "match": (lambda m, t, p: m.match(t["gt_boxes"], t["gt_counts"], t["priors"], **p),
                  {k: targets[k] for k in ("gt_boxes", "gt_counts", "priors")},
                  dict(threshold=0.35, min_best_iou=0.2)),
        "encode": (lambda m, t, p: m.encode(t["boxes"], t["priors"], **p),
                   dict(boxes=random_boxes(num_priors, g), priors=priors), coding),
        "decode": (lambda m, t, p: m.decode(t["loc"], t["priors"], **p),
                   dict(loc=outputs["loc"], priors=priors), coding),
        "encode_landmarks": (lambda m, t, p: m.encode_landmarks(t["landmarks"], t["priors"], **p),
                             dict(landmarks=torch.rand(num_priors, 10, generator=g), priors=priors), coding),
        "decode_landmarks": (lambda m, t, p: m.decode_landmarks(t["landmarks"], t["priors"], **p),
                             dict(landmarks=outputs["landms"], priors=priors), coding),
        "hard_negative_mask": (lambda m, t, p: m.hard_negative_mask(t["conf_loss"], t["positive"], **p),
                               dict(conf_loss=torch.rand(2, 30, generator=g),
                                    positive=torch.rand(2, 30, generator=g) > 0.8), dict(neg_pos_ratio=3)),
        "nms": (lambda m, t, p: m.nms(t["boxes"], t["scores"], **p),
                dict(boxes=boxes, scores=torch.rand(20, generator=g)), dict(iou_threshold=0.4)),
        "batched_nms": (lambda m, t, p: m.batched_nms(t["boxes"], t["scores"], t["idxs"], **p),
                        dict(boxes=boxes, scores=torch.rand(20, generator=g),
                             idxs=torch.randint(0, 3, (20,), generator=g)), dict(iou_threshold=0.4)),
        "detect_postprocess": (
            lambda m, t, p: m.detect_postprocess(t["loc"], t["conf"], t["landms"], t["priors"], **p),
            dict(outputs, conf=outputs["conf"].softmax(-1), priors=priors),
            dict(score_threshold=0.02, nms_threshold=0.4, variances=(0.1, 0.2))),
        "multibox_loss": (multibox_call("ce"), dict(outputs, **targets), multibox),
        "multibox_loss_focal": (multibox_call("focal"), dict(outputs, **targets),
                                dict(multibox, focal_alpha=0.25, focal_gamma=2.0)),
        "sigmoid_focal_loss": (
            lambda m, t, p: m.sigmoid_focal_loss(t["inputs"], t["targets"], reduction="sum",
                                                 normalizer=t["normalizer"], **p),
            dict(inputs=torch.randn(4, 3, generator=g), targets=torch.rand(4, 3, generator=g),
                 normalizer=torch.tensor(2.0)), dict(alpha=0.25, gamma=2.0)),
        "softmax_focal_loss": (
            lambda m, t, p: m.softmax_focal_loss(t["logits"], t["labels"], **p),
            dict(logits=torch.randn(4, 3, generator=g), labels=torch.tensor([0, 1, 2, -1])),
            dict(alpha=0.25, gamma=2.0)),
        "margin_cross_entropy": (
            lambda m, t, p: m.margin_cross_entropy(t["cos_logits"], t["labels"], **p),
            dict(cos_logits=torch.rand(4, 5, generator=g) * 2 - 1, labels=torch.tensor([0, 1, -1, 4])),
            dict(s=64.0, m1=1.0, m2=0.5, m3=0.0)),
    }


CASES = _cases()


def _run(call, impl, tensors, params):
    try:
        return call(impl, tensors, params)
    except Exception as error:  # noqa: BLE001 -- which exception is compared below
        return error


def _what_was_wrong(error):
    # The message up to the offending value, which the kernels and the references format differently
    # (e.g. "got nan" / "got (nan, 0.2)").
    return str(error).split(", got")[0]


def _same(a, b):
    if isinstance(a, Exception) or isinstance(b, Exception):
        return (isinstance(a, Exception) and isinstance(b, Exception) and type(a) is type(b)
                and _what_was_wrong(a) == _what_was_wrong(b))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return (a.shape == b.shape and a.dtype == b.dtype
            and torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6, equal_nan=True))


def _describe(result):
    return f"{type(result).__name__}: {result}" if isinstance(result, Exception) else f"{result}"


def assert_fused_matches_reference(call, tensors, params):
    fused, expected = _run(call, ops, tensors, params), _run(call, reference, tensors, params)
    assert _same(fused, expected), f"fused {_describe(fused)}\nreference {_describe(expected)}"
    return fused


# ----------------------------------------------------------------- devices

MIXED = [(name, arg) for name, (_, tensors, _) in CASES.items() for arg in tensors]


@requires_extension
@pytest.mark.parametrize("name,arg", MIXED, ids=[f"{n}-{a}" for n, a in MIXED])
def test_one_argument_on_meta_raises(name, arg):
    # The meta tensor sends the call to the fake kernel, which must check devices as the kernels do
    # (it used to return uninitialised CPU memory, e.g. counts of -6e18).
    call, tensors, params = CASES[name]
    mixed = dict(tensors, **{arg: tensors[arg].to("meta")})
    with pytest.raises(RuntimeError, match="must be on the same device as"):
        call(ops, mixed, params)


@requires_extension
@pytest.mark.parametrize("name", [n for n in CASES if n not in ("nms", "batched_nms")])
def test_all_arguments_on_meta_run_the_fake(name):
    call, tensors, params = CASES[name]
    result = call(ops, {k: v.to("meta") for k, v in tensors.items()}, params)
    for tensor in result if isinstance(result, (tuple, list)) else [result]:
        assert tensor.device.type == "meta"


# ----------------------------------------------------------------- parameters

THRESHOLDS = [("match", "threshold"), ("match", "min_best_iou"), ("nms", "iou_threshold"),
              ("batched_nms", "iou_threshold"), ("detect_postprocess", "score_threshold"),
              ("detect_postprocess", "nms_threshold"), ("multibox_loss", "threshold"),
              ("multibox_loss", "min_best_iou")]


@pytest.mark.parametrize("name,param", THRESHOLDS, ids=[f"{n}-{p}" for n, p in THRESHOLDS])
@pytest.mark.parametrize("value", [NAN, INF, -INF, -0.5, 1.5])
@pytest.mark.parametrize("impl", [ops, reference], ids=["fused", "reference"])
def test_thresholds_outside_0_1_are_rejected(name, param, value, impl):
    # NaN made every prior positive (match), suppressed nothing (nms) or kept no face (score).
    call, tensors, params = CASES[name]
    with pytest.raises(RuntimeError, match=rf"^{name}\(\): {param} must be in \[0, 1\], got"):
        call(impl, tensors, dict(params, **{param: value}))


PARAMETERS = [(name, param) for name, (_, _, params) in CASES.items() for param in params]


@pytest.mark.parametrize("name,param", PARAMETERS, ids=[f"{n}-{p}" for n, p in PARAMETERS])
def test_any_parameter_value_gives_the_same_result_or_error_on_both(name, param):
    call, tensors, params = CASES[name]
    if isinstance(params[param], tuple):  # variances
        values = [(NAN, 0.2), (0.1, INF), (-0.1, 0.2), (0.1, 0.0)]
    else:
        values = [NAN, INF, -INF, -0.5, 0.0, 1.0, 1.5, 2.5, 2 ** 62]
    for value in values:
        assert_fused_matches_reference(call, tensors, dict(params, **{param: value}))


@pytest.mark.parametrize("impl", [ops, reference], ids=["fused", "reference"])
@pytest.mark.parametrize("ratio", [2.5, NAN, INF, -1, True])
def test_neg_pos_ratio_must_be_a_whole_number(impl, ratio):
    # 2.5 was truncated to 2 by the fused op and used as 2.5 by the reference.
    for name in ("hard_negative_mask", "multibox_loss", "multibox_loss_focal"):
        call, tensors, params = CASES[name]
        with pytest.raises(RuntimeError, match="neg_pos_ratio must be (a whole number )?>= 0"):
            call(impl, tensors, dict(params, neg_pos_ratio=ratio))
    call, tensors, params = CASES["hard_negative_mask"]
    assert torch.equal(call(impl, tensors, dict(neg_pos_ratio=3.0)), call(impl, tensors, dict(neg_pos_ratio=3)))


@pytest.mark.parametrize("impl", [ops, reference], ids=["fused", "reference"])
@pytest.mark.parametrize("kwargs,message", [
    (dict(min_sizes=((16.5, 32), (64, 128), (256, 512))), "min_sizes must be whole numbers"),
    (dict(steps=(8, 16.5, 32)), "steps must be whole numbers"),
    (dict(dtype=torch.int64), "dtype must be a floating dtype"),
    (dict(dtype=torch.uint8), "dtype must be a floating dtype"),
])
def test_prior_box_rejects_fractional_sizes_and_integer_dtypes(impl, kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        impl.prior_box((64, 64), **kwargs)
    assert torch.equal(impl.prior_box((64, 64), steps=(8.0, 16, 32)), impl.prior_box((64, 64)))


# ----------------------------------------------------------------- degenerate inputs

@pytest.mark.parametrize("seed", range(4))
def test_non_finite_priors_give_the_same_result_on_both(seed):
    # A prior with a NaN or infinite coordinate has NaN IoUs: it never matches, in the kernels and
    # (now) in the reference, where torch's NaN-propagating max used to make it everyone's best prior.
    g = torch.Generator().manual_seed(seed)
    for name in ("match", "multibox_loss", "multibox_loss_focal", "encode", "decode", "encode_landmarks",
                 "decode_landmarks", "detect_postprocess"):
        call, tensors, params = CASES[name]
        priors = tensors["priors"].clone()
        rows = torch.randperm(priors.shape[0], generator=g)[:4]
        priors[rows[0]] = NAN
        priors[rows[1], 2] = NAN
        priors[rows[2], 0] = INF
        priors[rows[3], 3] = -INF
        assert_fused_matches_reference(call, dict(tensors, priors=priors), params)


def test_infinite_focal_logits_give_the_limits_on_both():
    values = [INF, -INF, 0.0, 3.0]
    for dtype, gamma in itertools.product((torch.float32, torch.float64), (0.0, 0.5, 2.0)):
        x = torch.tensor([v for v in values for _ in range(3)], dtype=dtype)
        t = torch.tensor([0.0, 1.0, 0.5] * len(values), dtype=dtype)
        loss = assert_fused_matches_reference(
            lambda m, ts, p: m.sigmoid_focal_loss(ts["x"], ts["t"], **p), dict(x=x, t=t), dict(gamma=gamma))
        # +inf: 0 against target 1, inf otherwise; -inf: 0 against target 0, inf otherwise.
        assert loss[:6].tolist() == [INF, 0.0, INF, 0.0, INF, INF]
        for classes in (2, 3):
            rows = torch.tensor(list(itertools.product(values, repeat=2)), dtype=dtype)
            rows = torch.cat([rows, torch.zeros(len(rows), classes - 2, dtype=dtype)], dim=1)
            rows = torch.cat([rows, torch.full((1, classes), -INF, dtype=dtype)])
            for label in (0, 1):
                labels = torch.full((len(rows),), label)
                loss = assert_fused_matches_reference(
                    lambda m, ts, p: m.softmax_focal_loss(ts["x"], ts["y"], **p),
                    dict(x=rows, y=labels), dict(gamma=gamma))
                assert not loss[:-1].isnan().any()
                # One +inf logit: the target's (loss 0) or another class's (loss inf).
                first_inf = rows[:, 0] == INF
                only_inf = first_inf & (rows[:, 1] != INF)
                assert (loss[only_inf] == (0.0 if label == 0 else INF)).all()


# ----------------------------------------------------------------- gradients

@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_gradient_is_the_references(dtype):
    # It used to return requires_grad=True and leave .grad None (the fallback was differentiable).
    g = torch.Generator().manual_seed(1)
    a, b = random_boxes(7, g).to(dtype), random_boxes(5, g).to(dtype)
    b[0] = a[0]  # ties of the min / max: half the gradient each way
    b[1, :2] = a[1, :2]
    b[2, 2] = a[2, 0]  # touching: zero intersection
    weight = torch.randn(7, 5, generator=g, dtype=dtype)
    grads = []
    for impl in (ops, reference):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        first = torch.autograd.grad((impl.box_iou(x, y) * weight).sum(), (x, y), create_graph=True)
        second = torch.autograd.grad(sum(g.sum() for g in first), (x, y))
        grads.append(first + second)
    for ours, expected in zip(*grads):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    torch.library.opcheck(torch.ops.retinaface.box_iou, (a.clone().requires_grad_(), b.clone().requires_grad_()))


@requires_extension
def test_detect_postprocess_has_no_gradient_and_says_so():
    call, tensors, params = CASES["detect_postprocess"]
    loc = tensors["loc"].clone().requires_grad_()
    detections, _ = call(ops, dict(tensors, loc=loc), params)
    with pytest.raises(RuntimeError, match="detect_postprocess\\(\\) has no gradient"):
        detections.sum().backward()


@requires_extension
@pytest.mark.parametrize("name,differentiable", [
    ("multibox_loss", "loc"), ("multibox_loss_focal", "conf"), ("sigmoid_focal_loss", "inputs"),
    ("softmax_focal_loss", "logits"), ("margin_cross_entropy", "cos_logits")])
def test_second_order_gradients_raise_instead_of_vanishing(name, differentiable):
    # Their backward is a fused kernel without a derivative: create_graph=True used to give a
    # gradient that silently had no graph (zero second derivatives).
    call, tensors, params = CASES[name]
    x = tensors[differentiable].clone().requires_grad_()

    def loss():
        result = call(ops, dict(tensors, **{differentiable: x}), params)
        return sum(r.sum() for r in (result if isinstance(result, tuple) else (result,)) if r.is_floating_point())

    (first,) = torch.autograd.grad(loss(), x)
    assert first.abs().sum() > 0
    with pytest.raises(RuntimeError, match="second-order gradients"):
        torch.autograd.grad(loss(), x, create_graph=True)
