import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from utils import DEVICES, requires_extension

from retinaface_ext import ops, reference
from retinaface_ext.recognition.heads import (
    MARGIN_PRESETS,
    ArcFaceHead,
    CosFaceHead,
    MarginSoftmaxHead,
    NormalizedLinear,
    SphereFaceHead,
)
from retinaface_ext.reference.margin_cross_entropy import cos_limit, margin_cosine, margin_cosine_grad

pytestmark = requires_extension

PRESETS = [MARGIN_PRESETS["arcface"], MARGIN_PRESETS["cosface"], MARGIN_PRESETS["sphereface"]]
PRESET_IDS = ["arcface", "cosface", "sphereface"]
GRADIENTS = ["straight_through", "exact"]
# Float32 gradients at s = 64: a softmax of ~1 leaves 1 - p at float32
# resolution (6e-8), times s and an upstream of up to 1.5.
GRAD_ATOL = 2.5e-5


def make_problem(rows, cols, seed=0, dtype=torch.float32, device="cpu", ignored=0.2, requires_grad=True):
    """Cosines like a face-recognition head's: non-targets around 0 (+-0.5), targets anywhere in
    (-0.95, 0.95) (so some have theta + 0.5 > pi), ~20% of the labels -1."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, cols, generator=g, dtype=torch.float64) - 0.5)
    labels = torch.randint(0, max(cols, 1), (rows,), generator=g)
    if cols:
        x[torch.arange(rows), labels] = (torch.rand(rows, generator=g, dtype=torch.float64) * 2 - 1) * 0.95
    labels[torch.rand(rows, generator=g) < ignored] = -1
    x = x.to(dtype=dtype, device=device).requires_grad_(requires_grad)
    return x, labels.to(device)


def loss_and_grad(fn, x, labels, *args, upstream=None, **kwargs):
    loss = fn(x, labels, *args, **kwargs)
    if upstream is None:
        upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    (grad,) = torch.autograd.grad(loss, x, upstream)
    return loss.detach(), grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("margins", PRESETS, ids=PRESET_IDS)
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_reference(device, margins, gradient, reduction):
    x, labels = make_problem(16, 700, seed=1, device=device)
    fused, fused_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, 64.0, *margins,
                                      reduction=reduction, gradient=gradient)
    expected, expected_grad = loss_and_grad(reference.margin_cross_entropy, x, labels, 64.0, *margins,
                                            reduction=reduction, gradient=gradient)
    assert fused.dtype == torch.float32 and fused.shape == expected.shape
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    assert fused_grad.dtype == x.dtype and fused_grad.device == x.device
    torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-5, atol=GRAD_ATOL)


@pytest.mark.parametrize("cols", [1, 4095, 4097, 9000])
def test_matches_reference_across_chunks(cols):
    # The CPU kernel walks rows in chunks of 4096 columns: targets in the
    # first, a middle and the last chunk, and on the chunk boundaries.
    x, labels = make_problem(6, cols, seed=2, ignored=0.0)
    labels = torch.tensor([0, cols - 1, min(4095, cols - 1), min(4096, cols - 1), cols // 2, -1])
    for gradient in GRADIENTS:
        fused, fused_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, reduction="none",
                                          gradient=gradient)
        expected, expected_grad = loss_and_grad(reference.margin_cross_entropy, x, labels,
                                                reduction="none", gradient=gradient)
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-5, atol=GRAD_ATOL)


def test_exact_gradient_against_float64_autograd():
    # Float32 kernel vs autograd through the float64 reference (whose target
    # derivative is the clamped formula), for every preset.
    x, labels = make_problem(12, 500, seed=3)
    x64 = x.detach().double().requires_grad_()
    for margins in PRESETS:
        _, fused_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, 64.0, *margins, gradient="exact")
        _, expected_grad = loss_and_grad(reference.margin_cross_entropy, x64, labels, 64.0, *margins,
                                         gradient="exact")
        torch.testing.assert_close(fused_grad.double(), expected_grad, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("margins", PRESETS, ids=PRESET_IDS)
def test_exact_derivative_is_the_derivative(margins):
    # The clamped formula equals plain autograd of cos(m1 acos(c) + m2) (and of
    # the linear continuation) wherever the clamps are inactive.
    m1, m2, _ = margins
    limit = cos_limit(m1, m2)
    c = torch.linspace(-0.999, 0.999, 2001, dtype=torch.float64)
    c = c[(c - limit).abs() > 1e-3].requires_grad_()
    (autograd,) = torch.autograd.grad(margin_cosine(c, m1, m2).sum(), c)
    torch.testing.assert_close(margin_cosine_grad(c.detach(), m1, m2), autograd, rtol=1e-10, atol=1e-12)


def test_straight_through_is_insightface():
    # insightface's CombinedMarginLoss (m1 = 1, m3 = 0): arccos, + m2 on the
    # target, cos, all under no_grad, then * s and cross-entropy. Its gradient
    # is s * (softmax - onehot): ours in straight-through mode, wherever
    # theta + m2 <= pi (beyond, we continue monotonically; insightface does not).
    x, labels = make_problem(10, 300, seed=4, ignored=0.3)
    with torch.no_grad():
        rows = torch.arange(10)[labels >= 0]
        x[rows, labels[rows]] = x[rows, labels[rows]].clamp(min=-0.8)  # theta + 0.5 < pi
    s, m2 = 64.0, 0.5

    logits = x.clone()
    with torch.no_grad():
        logits.arccos_()
        logits[rows, labels[rows]] += m2
        logits.cos_()
    expected = F.cross_entropy(logits * s, labels, ignore_index=-1)
    (expected_grad,) = torch.autograd.grad(expected, x)

    fused, fused_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, s, 1.0, m2, 0.0,
                                      upstream=torch.tensor(1.0))
    # insightface also rounds every non-target through cos(acos(x)).
    torch.testing.assert_close(fused, expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_gradcheck_float64():
    # The exact mode is the true derivative: gradcheck it, with targets away
    # from the clamps and the branch point. Straight-through is not a
    # derivative unless the margin has slope 1 (CosFace), where both agree.
    x, labels = make_problem(4, 9, seed=5, dtype=torch.float64, ignored=0.0)
    labels[1] = -1
    for margins in PRESETS:
        def fn(x):
            return ops.margin_cross_entropy(x, labels, 4.0, *margins, reduction="none", gradient="exact")
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8)

    def cosface(x):
        return ops.margin_cross_entropy(x, labels, 4.0, 1.0, 0.0, 0.35, gradient="straight_through")
    assert torch.autograd.gradcheck(cosface, (x,), eps=1e-6, atol=1e-8)


def test_gradcheck_stats_combination():
    # Two shards combined through their stats (row_max is a shift with no
    # gradient, so only shift-invariant functions of the stats are checked).
    x, labels = make_problem(5, 8, seed=6, dtype=torch.float64, ignored=0.2)

    def fn(x):
        stats = [ops.margin_cross_entropy(part, labels, 4.0, gradient="exact", return_stats=True,
                                          class_offset=offset, num_classes=8)[1]
                 for part, offset in ((x[:, :3], 0), (x[:, 3:], 3))]
        return ops.combine_margin_stats(stats, labels, reduction="sum")

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8)


def test_float64():
    x, labels = make_problem(6, 50, seed=7, dtype=torch.float64)
    for gradient in GRADIENTS:
        fused, fused_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, gradient=gradient)
        expected, expected_grad = loss_and_grad(reference.margin_cross_entropy, x, labels, gradient=gradient)
        assert fused.dtype == torch.float64 and fused_grad.dtype == torch.float64
        torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(device, dtype):
    x, labels = make_problem(8, 600, seed=8, dtype=dtype, device=device)
    for gradient in GRADIENTS:
        fused, fused_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, gradient=gradient,
                                          reduction="none")
        expected, expected_grad = loss_and_grad(reference.margin_cross_entropy, x, labels,
                                                gradient=gradient, reduction="none")
        assert fused.dtype == torch.float32 and fused_grad.dtype == dtype
        # Both compute in float32 from the same half values.
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused_grad.float(), expected_grad.float(), rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_all_labels_ignored(device):
    x, labels = make_problem(5, 40, seed=9, device=device)
    labels = torch.full_like(labels, -1)
    for gradient in GRADIENTS:
        for reduction in ("mean", "sum", "none"):
            loss, grad = loss_and_grad(ops.margin_cross_entropy, x, labels, reduction=reduction,
                                       gradient=gradient)
            assert torch.equal(loss, torch.zeros_like(loss))
            assert torch.equal(grad, torch.zeros_like(grad))
    # F.cross_entropy's mean would be NaN here: ours is defined as 0.
    assert reference.margin_cross_entropy(x, labels).item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("margins", PRESETS + [(1.0, 0.5, 0.2), (2.0, 0.3, 0.1), (0.8, 0.0, 0.0)],
                         ids=PRESET_IDS + ["combined", "m1=2", "m1<1"])
def test_cos_plus_minus_one_and_past_pi_are_finite(device, margins):
    rows = torch.tensor([1.0, -1.0, 1.0 + 1e-6, -1.0 - 1e-6, -0.99, -0.9, 0.0, 0.999999])
    x = torch.full((rows.numel(), 5), 0.1)
    x[:, 2] = rows
    x[0, 0] = 1.0  # a non-target at +1 too
    x = x.to(device).requires_grad_()
    labels = torch.full((rows.numel(),), 2, device=device)
    for gradient in GRADIENTS:
        fused, fused_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, 64.0, *margins,
                                          reduction="none", gradient=gradient)
        expected, expected_grad = loss_and_grad(reference.margin_cross_entropy, x, labels, 64.0, *margins,
                                                reduction="none", gradient=gradient)
        assert torch.isfinite(fused).all() and torch.isfinite(fused_grad).all()
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-5, atol=1e-5)
    # At cos = 1 with m2 = 0 the exact derivative is the limit m1^2.
    m1, m2, _ = margins
    if m2 == 0.0:
        limit = margin_cosine_grad(torch.tensor([1.0], dtype=torch.float64), m1, m2).item()
        assert limit == pytest.approx(m1 * m1, rel=1e-5)


@pytest.mark.parametrize("margins", PRESETS + [(1.0, 0.5, 0.2), (2.0, 0.3, 0.1)],
                         ids=PRESET_IDS + ["combined", "m1=2"])
def test_target_logit_is_monotone_and_continuous(margins):
    # The target logit as a function of its cosine, read from the stats:
    # non-decreasing over [-1, 1] (also past theta + m2 = pi), no jumps.
    cos = torch.linspace(-1, 1, 40001, dtype=torch.float64)
    x = torch.stack([cos, torch.zeros_like(cos)], dim=1)
    labels = torch.zeros(cos.numel(), dtype=torch.int64)
    _, stats = ops.margin_cross_entropy(x, labels, 1.0, *margins, return_stats=True)
    target = stats.target_logit
    steps = target[1:] - target[:-1]
    assert (steps >= 0).all()
    # No jump (insightface's original ArcFace fallback jumps by 0.117 at m = 0.5);
    # next to cos = 1 g falls like sin(m2) sqrt(2 (1 - cos)): 0.005 over one step.
    assert steps.max() < 0.01
    m1, m2, m3 = margins
    assert target[-1].item() == pytest.approx(math.cos(m2) - m3, abs=1e-12)
    limit = cos_limit(m1, m2)
    if limit > -1:  # the join with the linear continuation: both sides at -1
        around = torch.tensor([limit - 1e-9, limit + 1e-9], dtype=torch.float64)
        assert margin_cosine(around, m1, m2).tolist() == pytest.approx([-1.0, -1.0], abs=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    for rows, cols in ((0, 10), (0, 0), (3, 0)):
        x = torch.zeros(rows, cols, device=device, requires_grad=True)
        labels = torch.full((rows,), -1, dtype=torch.int64, device=device)
        for reduction in ("mean", "sum", "none"):
            loss, stats = ops.margin_cross_entropy(x, labels, reduction=reduction, return_stats=True)
            assert loss.shape == ((rows,) if reduction == "none" else ())
            assert torch.equal(loss, torch.zeros_like(loss))
            (grad,) = torch.autograd.grad(loss.sum() + stats.row_sumexp.sum(), x)
            assert grad.shape == x.shape
        assert stats.row_max.shape == (rows,)
        if rows:  # no class at all: max -inf, sum-exp 0
            assert (stats.row_max == -math.inf).all() and (stats.row_sumexp == 0).all()


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("bounds", [(0, 300, 700), (0, 250, 251, 700), (0, 700)], ids=["2", "3", "1"])
def test_partial_fc_shards_combine_to_the_full_loss(gradient, bounds):
    x, labels = make_problem(12, 700, seed=10, ignored=0.25)
    full, full_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, gradient=gradient,
                                    upstream=torch.tensor(1.0))

    def sharded(lib):
        stats = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            shard_loss, shard_stats = lib.margin_cross_entropy(
                x[:, lo:hi], labels, gradient=gradient, return_stats=True, class_offset=lo,
                num_classes=700, reduction="none")
            # The shard's own loss only covers the rows whose class it holds.
            holds = (labels >= lo) & (labels < hi)
            assert (shard_loss[~holds] == 0).all()
            assert (shard_stats.target_logit[~holds] == 0).all()
            stats.append(shard_stats)
        return ops.combine_margin_stats(stats, labels)

    for lib in (ops, reference):
        combined = sharded(lib)
        (combined_grad,) = torch.autograd.grad(combined, x)
        torch.testing.assert_close(combined.detach(), full, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(combined_grad, full_grad, rtol=1e-5, atol=GRAD_ATOL)


def test_stats_semantics():
    x, labels = make_problem(6, 30, seed=11)
    loss, stats = ops.margin_cross_entropy(x, labels, 64.0, return_stats=True, reduction="none")
    expected_loss, expected = reference.margin_cross_entropy(x, labels, 64.0, return_stats=True,
                                                             reduction="none")
    assert not stats.row_max.requires_grad and stats.row_sumexp.requires_grad
    for a, e in zip(stats, expected):
        torch.testing.assert_close(a, e.detach(), rtol=1e-5, atol=1e-6)
    # loss = max + log(sum-exp) - target on the rows with a label.
    labelled = labels >= 0
    lse = stats.row_max + stats.row_sumexp.log()
    torch.testing.assert_close(loss[labelled], (lse - stats.target_logit)[labelled], rtol=1e-6, atol=1e-5)
    # Gradients of the stats match the reference's (row_max held fixed).
    upstream = [torch.rand(6, generator=torch.Generator().manual_seed(0)) for _ in range(3)]

    def total(result):
        loss, stats = result
        return (loss * upstream[0]).sum() + (stats.row_sumexp * upstream[1]).sum() + (
            stats.target_logit * upstream[2]).sum()

    for gradient in GRADIENTS:
        (fused_grad,) = torch.autograd.grad(total(ops.margin_cross_entropy(
            x, labels, return_stats=True, reduction="none", gradient=gradient)), x)
        (expected_grad,) = torch.autograd.grad(total(reference.margin_cross_entropy(
            x, labels, return_stats=True, reduction="none", gradient=gradient)), x)
        torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-5, atol=GRAD_ATOL)


def test_non_contiguous_and_integer_labels():
    x, labels = make_problem(40, 12, seed=12)
    xt = x.detach().t().contiguous().t().requires_grad_()  # column-major
    strided = torch.zeros(12, 80)[:, ::2].t()  # [40, 12] with strides (2, 80)
    strided.copy_(x.detach())
    for cos in (xt, strided.requires_grad_()):
        assert not cos.is_contiguous()
        for label_dtype in (torch.int64, torch.int32, torch.int16):
            fused, fused_grad = loss_and_grad(ops.margin_cross_entropy, cos, labels.to(label_dtype))
            expected, expected_grad = loss_and_grad(reference.margin_cross_entropy, x, labels)
            torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-5, atol=GRAD_ATOL)


def test_deterministic_across_thread_counts():
    x, labels = make_problem(64, 3000, seed=13)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(loss_and_grad(ops.margin_cross_entropy, x, labels, reduction="none"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(0, 6), cols=st.integers(1, 50), seed=st.integers(0, 2**16),
       m1=st.sampled_from([0.7, 1.0, 1.35, 2.5]), m2=st.sampled_from([0.0, 0.2, 0.5, 1.2]),
       m3=st.sampled_from([0.0, 0.35, -0.1]), s=st.sampled_from([1.0, 30.0, 64.0]),
       gradient=st.sampled_from(GRADIENTS))
@example(rows=6, cols=4, seed=4303, m1=1.35, m2=0.0, m3=0.0, s=64.0, gradient="straight_through")
def test_property_matches_reference(rows, cols, seed, m1, m2, m3, s, gradient):
    x, labels = make_problem(rows, cols, seed=seed)
    fused, fused_grad = loss_and_grad(ops.margin_cross_entropy, x, labels, s, m1, m2, m3,
                                      gradient=gradient, reduction="none")
    expected, expected_grad = loss_and_grad(reference.margin_cross_entropy, x, labels, s, m1, m2, m3,
                                            gradient=gradient, reduction="none")
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    # The gradient is s (softmax - one-hot): float32 softmax probabilities of
    # logits as large as s differ by a few 1e-6 between two correct
    # implementations (each is that far from float64), so the gradients by s
    # times that (seed 4303, m1 1.35, s 64: 1.6e-4 apart, the float32
    # reference 3.5e-5 from float64).
    torch.testing.assert_close(fused_grad, expected_grad, rtol=1e-5, atol=max(GRAD_ATOL, 1e-5 * s))


# ------------------------------------------------------------- bad inputs

GOOD = dict(cos_logits=torch.zeros(3, 5), labels=torch.tensor([0, -1, 4]))


@pytest.mark.parametrize("changes,message", [
    (dict(cos_logits=torch.zeros(15)), r"cos_logits must have shape \[N, C\], got \[15\]"),
    (dict(labels=torch.tensor([0, 1])), r"labels must have shape \[3\], got \[2\]"),
    (dict(labels=torch.zeros(3, 1, dtype=torch.int64)), r"labels must have shape \[3\], got \[3, 1\]"),
    (dict(cos_logits=torch.zeros(3, 5, dtype=torch.int32)), r"cos_logits must be a floating tensor"),
    (dict(labels=torch.zeros(3)), r"labels must be an integer tensor, got "),
    (dict(labels=torch.tensor([0, 5, 1])), r"labels must be -1 \(ignored\) or a class in \[0, 5\), got 5 at row 1"),
    (dict(labels=torch.tensor([0, -2, 1])), r"labels must be -1 \(ignored\) or a class in \[0, 5\), got -2"),
    (dict(s=0.0), r"s must be a positive finite scale, got 0"),
    (dict(s=math.inf), r"s must be a positive finite scale, got inf"),
    (dict(m1=0.0), r"m1 must be positive and finite, got 0"),
    (dict(m2=-0.1), r"m2 must be in \[0, pi\), got -0.1"),
    (dict(m2=3.2), r"m2 must be in \[0, pi\), got 3.2"),
    (dict(m3=math.nan), r"m3 must be finite, got nan"),
    (dict(class_offset=-1), r"class_offset must be >= 0, got -1"),
    (dict(class_offset=2, num_classes=6), r"num_classes must be >= class_offset \+ C = 2 \+ 5, got 6"),
    # class_offset + C beyond int64: an error, not a wrapped-around sum that passes the check.
    (dict(class_offset=2**63 - 3, num_classes=2**63 - 1), r"num_classes must be >= class_offset \+ C"),
    (dict(reduction="avg"), r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"),
    (dict(gradient="ste"), r"gradient must be one of \('straight_through', 'exact'\), got 'ste'"),
])
@pytest.mark.parametrize("lib", [ops, reference], ids=["fused", "reference"])
def test_bad_input(lib, changes, message):
    args = {**GOOD, **changes}
    with pytest.raises(RuntimeError, match=message):
        lib.margin_cross_entropy(**args)


def test_labels_of_other_shards_are_valid_with_num_classes():
    x, _ = make_problem(3, 5, seed=14)
    labels = torch.tensor([2, -1, 12])  # classes of other shards (this one holds 5..9)
    loss = ops.margin_cross_entropy(x, labels, class_offset=5, num_classes=13, reduction="none")
    assert torch.equal(loss.detach(), torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"got 13 at row 2"):
        ops.margin_cross_entropy(x, torch.tensor([2, -1, 13]), class_offset=5, num_classes=13)


def test_combine_margin_stats_bad_input():
    x, labels = make_problem(3, 5, seed=15)
    _, stats = ops.margin_cross_entropy(x, labels, return_stats=True)
    with pytest.raises(RuntimeError, match=r"combine_margin_stats\(\): stats must hold .* at least one shard"):
        ops.combine_margin_stats([], labels)
    with pytest.raises(RuntimeError, match=r"stats\[1\]\.row_sumexp must have the shape of labels \[3\], got \[2\]"):
        ops.combine_margin_stats([stats, stats._replace(row_sumexp=stats.row_sumexp[:2])], labels)
    with pytest.raises(RuntimeError, match=r"combine_margin_stats\(\): reduction must be one of"):
        ops.combine_margin_stats([stats], labels, reduction="avg")


def test_backward_bad_input():
    x, labels = make_problem(3, 5, seed=15, requires_grad=False)
    loss, row_max, row_sumexp, _ = torch.ops.retinaface.margin_cross_entropy(
        x, labels, 64.0, 1.0, 0.5, 0.0, 0, 5, False)
    ones = torch.ones(3)
    backward = torch.ops.retinaface.margin_cross_entropy_backward
    options = (64.0, 1.0, 0.5, 0.0, 0, False)
    with pytest.raises(RuntimeError, match=r"row_max must have shape \[3\], got \[2\]"):
        backward(ones, ones, ones, x, labels, row_max[:2], row_sumexp, *options)
    with pytest.raises(RuntimeError, match=r"row_sumexp must be Float, got Double"):
        backward(ones, ones, ones, x, labels, row_max, row_sumexp.double(), *options)
    with pytest.raises(RuntimeError, match=r"grad_loss must have shape \[3\], got \[\]"):
        backward(torch.tensor(1.0), ones, ones, x, labels, row_max, row_sumexp, *options)
    with pytest.raises(RuntimeError, match=r"margin_cross_entropy_backward\(\): m1 must be positive"):
        backward(ones, ones, ones, x, labels, row_max, row_sumexp, 64.0, -1.0, 0.5, 0.0, 0, False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch():
    with pytest.raises(RuntimeError, match=r"labels must be on the same device as cos_logits"):
        ops.margin_cross_entropy(torch.zeros(3, 5, device="cuda"), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, labels = make_problem(4, 37, seed=16, device=device)
    for exact in (False, True):
        args = (x, labels, 64.0, 1.0, 0.5, 0.1, 0, 37, exact)
        torch.library.opcheck(torch.ops.retinaface.margin_cross_entropy.default, args)
        # A shard of a larger class space.
        torch.library.opcheck(torch.ops.retinaface.margin_cross_entropy.default,
                              (x, labels + 30 * (labels >= 0), 64.0, 1.35, 0.0, 0.0, 30, 80, exact))
    empty = torch.zeros(0, 37, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.retinaface.margin_cross_entropy.default,
                          (empty, labels[:0], 64.0, 1.0, 0.5, 0.0, 0, 37, False))

    detached = x.detach()
    _, row_max, row_sumexp, _ = torch.ops.retinaface.margin_cross_entropy(
        detached, labels, 64.0, 1.0, 0.5, 0.1, 0, 37, True)
    grads = [torch.rand(4, device=device) for _ in range(3)]
    for exact in (False, True):
        torch.library.opcheck(torch.ops.retinaface.margin_cross_entropy_backward.default,
                              (*grads, detached, labels, row_max, row_sumexp, 64.0, 1.0, 0.5, 0.1, 0, exact))


def test_torch_compile_fullgraph_cpu():
    # Dynamo traces the wrapper and AOT autograd the registered backward
    # (aot_eager: no C++ compile on the CPU; CUDA runs inductor below).
    x, labels = make_problem(8, 100, seed=17)

    def step(x, labels):
        loss, stats = ops.margin_cross_entropy(x, labels, 64.0, 1.35, 0.0, 0.0, gradient="exact",
                                               return_stats=True)
        return loss + stats.row_sumexp.mean()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, grad = loss_and_grad(compiled, x, labels, upstream=torch.tensor(1.0))
    expected, expected_grad = loss_and_grad(step, x, labels, upstream=torch.tensor(1.0))
    assert torch.equal(loss, expected) and torch.equal(grad, expected_grad)


# ------------------------------------------------------------------ heads


def test_normalized_linear():
    torch.manual_seed(0)
    layer = NormalizedLinear(16, 40)
    features = torch.randn(5, 16) * 7
    cos = layer(features)
    assert cos.shape == (5, 40)
    expected = (features / features.norm(dim=1, keepdim=True)) @ (
        layer.weight / layer.weight.norm(dim=1, keepdim=True)).t()
    torch.testing.assert_close(cos, expected, rtol=1e-5, atol=1e-6)
    assert cos.abs().max() <= 1 + 1e-6
    assert "in_features=16, num_classes=40" in repr(layer)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_margin_heads(gradient):
    torch.manual_seed(1)
    features = torch.randn(8, 16, requires_grad=True)
    labels = torch.tensor([0, 3, -1, 39, 5, 5, 12, 0])
    heads = [ArcFaceHead(16, 40, gradient=gradient), CosFaceHead(16, 40, gradient=gradient),
             SphereFaceHead(16, 40, gradient=gradient)]
    for head, name in zip(heads, ("arcface", "cosface", "sphereface")):
        assert (head.m1, head.m2, head.m3) == MARGIN_PRESETS[name] and head.s == 64.0
        preset = MarginSoftmaxHead.from_preset(name, 16, 40, gradient=gradient)
        preset.load_state_dict(head.state_dict())
        loss = head(features, labels)
        cos = head.cosines(features)
        expected = reference.margin_cross_entropy(cos, labels, 64.0, *MARGIN_PRESETS[name], gradient=gradient)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(preset(features, labels), loss)
        weight_grad, feature_grad = torch.autograd.grad(loss, [head.weight, features])
        expected_grads = torch.autograd.grad(expected, [head.weight, features])
        torch.testing.assert_close(weight_grad, expected_grads[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(feature_grad, expected_grads[1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(head.logits(features), cos * 64.0)
    with pytest.raises(ValueError, match=r"unknown margin preset 'nope'"):
        MarginSoftmaxHead.from_preset("nope", 16, 40)
    with pytest.raises(ValueError, match=r"MarginSoftmaxHead\(\): m2 must be in \[0, pi\), got 4.0"):
        MarginSoftmaxHead(16, 40, m2=4.0)
    # Options are checked when the head is built, not at its first forward.
    with pytest.raises(ValueError, match=r"ArcFaceHead\(\): reduction must be one of .*, got 'avg'"):
        ArcFaceHead(16, 40, reduction="avg")
    with pytest.raises(ValueError, match=r"CosFaceHead\(\): gradient must be one of .*, got 'ste'"):
        CosFaceHead(16, 40, gradient="ste")
    with pytest.raises(ValueError, match=r"m3 must be finite, got nan"):
        MarginSoftmaxHead(16, 40, m3=math.nan)


def test_head_trains():
    # A few SGD steps of an ArcFace head on separable features lower the loss.
    torch.manual_seed(2)
    centers = torch.randn(10, 32)
    labels = torch.arange(10).repeat(6)
    features = centers[labels] + 0.1 * torch.randn(60, 32)
    head = ArcFaceHead(32, 10, s=16.0, m=0.3)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        loss = head(features, labels)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


# ------------------------------------------------------------------- CUDA
# The CUDA kernels against the CPU kernels on the same inputs (the CPU is
# checked against the reference above). Sums differ in order, so values
# agree to float rounding, not bit for bit.

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def cuda_vs_cpu(x, labels, rtol=1e-5, atol=1e-6, grad_rtol=1e-5, grad_atol=GRAD_ATOL, **kwargs):
    xc = x.detach().cuda().requires_grad_()
    for gradient in GRADIENTS:
        cpu_loss, cpu_stats = ops.margin_cross_entropy(x, labels, gradient=gradient, return_stats=True,
                                                       reduction="none", **kwargs)
        cuda_loss, cuda_stats = ops.margin_cross_entropy(xc, labels.cuda(), gradient=gradient,
                                                         return_stats=True, reduction="none", **kwargs)
        torch.testing.assert_close(cuda_loss.cpu(), cpu_loss, rtol=rtol, atol=atol)
        for a, e in zip(cuda_stats, cpu_stats):
            torch.testing.assert_close(a.cpu(), e, rtol=rtol, atol=atol)
        upstream = torch.linspace(0.5, 1.5, x.shape[0])
        (cpu_grad,) = torch.autograd.grad(cpu_loss, x, upstream)
        (cuda_grad,) = torch.autograd.grad(cuda_loss, xc, upstream.cuda())
        assert cuda_grad.dtype == x.dtype
        torch.testing.assert_close(cuda_grad.cpu(), cpu_grad, rtol=grad_rtol, atol=grad_atol)


def minus_inf_problem():
    """Masked classes (-inf cosines), among them the first column each CUDA thread reads, so a thread's
    running max is still -inf when it meets one (exp(-inf - -inf) would be NaN)."""
    x, labels = make_problem(6, 700, seed=24)
    x = x.detach()
    x[:, :300] = -math.inf  # every thread's first column (256 threads per row on CUDA)
    x[2, 300:690] = -math.inf
    x[4] = -math.inf  # a whole row masked but its target
    x[4, 5] = 0.3
    labels = torch.tensor([310, 600, 695, -1, 5, 699])
    return x.requires_grad_(), labels


def test_minus_inf_logits_are_masked_classes():
    x, labels = minus_inf_problem()
    loss = ops.margin_cross_entropy(x, labels, reduction="none")
    expected = reference.margin_cross_entropy(x, labels, reduction="none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    assert torch.isfinite(grad).all() and (grad[:, :300] == 0).all()
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=GRAD_ATOL)


@requires_cuda
def test_cuda_minus_inf_logits():
    x, labels = minus_inf_problem()
    cuda_vs_cpu(x, labels)


@requires_cuda
@pytest.mark.parametrize("margins", PRESETS, ids=PRESET_IDS)
def test_cuda_matches_cpu_realistic(margins):
    x, labels = make_problem(512, 20000, seed=20)
    cuda_vs_cpu(x, labels, s=64.0, m1=margins[0], m2=margins[1], m3=margins[2])


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes(dtype):
    x, labels = make_problem(64, 3000, seed=21, dtype=dtype)
    tight = dtype == torch.float64
    cuda_vs_cpu(x, labels, rtol=1e-10 if tight else 1e-5, atol=1e-10 if tight else 1e-5,
                grad_rtol=1e-10 if tight else 1e-2, grad_atol=1e-12 if tight else 1e-4)


@requires_cuda
def test_cuda_edge_cases():
    x, labels = make_problem(8, 5, seed=22)
    x.data[:, 2] = torch.tensor([1.0, -1.0, 1.0 + 1e-6, -1.0 - 1e-6, -0.99, -0.9, 0.0, 0.999999])
    labels = torch.full((8,), 2)
    cuda_vs_cpu(x, labels, atol=1e-5, grad_atol=1e-5)
    cuda_vs_cpu(x, torch.full((8,), -1))
    cuda_vs_cpu(x[:0], labels[:0])
    cuda_vs_cpu(torch.zeros(3, 0, requires_grad=True), torch.full((3,), -1))
    # Shards and labels of other shards.
    x, labels = make_problem(32, 900, seed=23)
    cuda_vs_cpu(x[:, 300:600], labels, class_offset=300, num_classes=900)


@requires_cuda
def test_cuda_invalid_label_gives_nan():
    x = torch.zeros(3, 5, device="cuda")
    loss = ops.margin_cross_entropy(x, torch.tensor([0, 5, -3], device="cuda"), reduction="none")
    assert loss[0].isfinite() and loss[1].isnan() and loss[2].isnan()


@requires_cuda
def test_cuda_deterministic():
    x, labels = make_problem(256, 10000, seed=24, device="cuda")
    first = loss_and_grad(ops.margin_cross_entropy, x, labels, reduction="none")
    second = loss_and_grad(ops.margin_cross_entropy, x, labels, reduction="none")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@requires_cuda
def test_cuda_no_host_sync():
    x, labels = make_problem(64, 5000, seed=25, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for gradient in GRADIENTS:
            loss, stats = ops.margin_cross_entropy(x, labels, gradient=gradient, return_stats=True)
            (loss + stats.row_sumexp.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@requires_cuda
def test_cuda_torch_compile_fullgraph():
    x, labels = make_problem(32, 2000, seed=26, device="cuda")

    def step(x, labels):
        return ops.margin_cross_entropy(x, labels, 64.0, 1.0, 0.5, 0.0, gradient="exact")

    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(x, labels)
    (grad,) = torch.autograd.grad(loss, x)
    eager = step(x, labels)
    (eager_grad,) = torch.autograd.grad(eager, x)
    # Inductor may sum the rows in another order than eager: float rounding, not bit equality.
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=GRAD_ATOL)


@requires_cuda
def test_cuda_graph_capture_forward_backward():
    x, labels = make_problem(128, 4000, seed=27, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x.grad = None
            ops.margin_cross_entropy(x, labels).backward()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        static_loss = ops.margin_cross_entropy(x, labels)
        static_loss.backward()

    new_x, new_labels = make_problem(128, 4000, seed=28, requires_grad=False)
    with torch.no_grad():
        x.copy_(new_x)
        labels.copy_(new_labels)
    graph.replay()
    torch.cuda.synchronize()
    expected, expected_grad = loss_and_grad(ops.margin_cross_entropy, new_x.requires_grad_(), new_labels,
                                            upstream=torch.tensor(1.0))
    torch.testing.assert_close(static_loss.cpu(), expected, rtol=1e-5, atol=1e-6)
    # CUDA vs CPU kernel (different summation order), as in cuda_vs_cpu.
    torch.testing.assert_close(x.grad.cpu(), expected_grad, rtol=1e-5, atol=GRAD_ATOL)
