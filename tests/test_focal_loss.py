"""sigmoid_focal_loss / softmax_focal_loss (fused forward and backward) against the references
(torchvision's formula, log_softmax + autograd), and conf_loss="focal" in multibox_loss,
MultiBoxLoss and the trainer."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from utils import DEVICES, requires_extension

import retinaface_ext
from retinaface_ext import ops, reference
from retinaface_ext.reference.focal_loss import torchvision_sigmoid_focal_loss

pytestmark = requires_extension

REDUCTIONS = ("none", "sum", "mean")
GAMMAS = (0.0, 0.5, 1.0, 2.0, 3.5)


def randn(shape, seed, scale=3.0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


def hard_targets(shape, seed, device="cpu", fraction=0.3):
    g = torch.Generator().manual_seed(seed + 1000)
    return (torch.rand(shape, generator=g) < fraction).float().to(device)


def random_labels(shape, low, high, seed, device="cpu"):
    """Integers in [low, high] (inclusive)."""
    g = torch.Generator().manual_seed(seed + 2000)
    return torch.randint(low, high + 1, shape, generator=g).to(device)


def value_and_grad(fn, x, *args, upstream_seed=0, **kwargs):
    """fn(x, ...) and d(sum(w * loss))/dx, with random weights w for reduction='none'
    (so every element's incoming gradient differs)."""
    x = x.detach().requires_grad_()
    loss = fn(x, *args, **kwargs)
    weights = torch.ones_like(loss) if loss.dim() == 0 else \
        randn(loss.shape, upstream_seed, scale=1.0, dtype=loss.dtype, device=loss.device)
    (grad,) = torch.autograd.grad((loss * weights).sum(), x)
    return loss.detach(), grad


def assert_matches_float64_reference(fused_fn, reference_fn, x, *args, rtol=1e-5, atol=1e-7, **kwargs):
    """The fused op on x against the reference on x in float64 (exact semantics; the
    reference's own float32 rounding loses 1 - p_t for confident predictions)."""
    loss, grad = value_and_grad(fused_fn, x, *args, **kwargs)
    expected_loss, expected_grad = value_and_grad(reference_fn, x.double(), *args, **kwargs)
    expected_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert loss.dtype == expected_dtype and grad.dtype == x.dtype and grad.shape == x.shape
    torch.testing.assert_close(loss.double(), expected_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)
    return loss, grad


# ---------------------------------------------------------------- sigmoid vs torchvision

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", [0.25, 0.8, -1.0])
def test_sigmoid_float_targets_match_torchvision(device, reduction, gamma, alpha):
    x = randn((64, 5), seed=1, device=device)
    t = hard_targets((64, 5), seed=1, device=device)
    assert_matches_float64_reference(ops.sigmoid_focal_loss, reference.sigmoid_focal_loss, x, t,
                                     alpha=alpha, gamma=gamma, reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
def test_sigmoid_soft_targets_and_any_shape(device):
    # Soft targets (label smoothing, quality scores), a 3-d input and a 0-d one.
    x = randn((3, 7, 4), seed=2, device=device)
    g = torch.Generator().manual_seed(2)
    t = torch.rand((3, 7, 4), generator=g).to(device)
    for reduction in REDUCTIONS:
        assert_matches_float64_reference(ops.sigmoid_focal_loss, reference.sigmoid_focal_loss, x, t,
                                         gamma=1.5, reduction=reduction, atol=1e-6)
    scalar = torch.tensor(0.7, device=device)
    loss = ops.sigmoid_focal_loss(scalar, torch.tensor(1.0, device=device))
    torch.testing.assert_close(loss, torchvision_sigmoid_focal_loss(scalar, torch.tensor(1.0, device=device)))


def test_sigmoid_equals_torchvision_float32_formula():
    # Moderate logits, where torchvision's float32 formula is itself accurate:
    # the same numbers as torchvision.ops.sigmoid_focal_loss would give.
    x = randn((256, 3), seed=3, scale=1.5)
    t = hard_targets((256, 3), seed=3)
    expected = torchvision_sigmoid_focal_loss(x, t, 0.25, 2.0)
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, t), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, t, reduction="mean"), expected.mean(),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_integer_labels(device, reduction):
    # inputs [B, A, C], labels [B, A]: classes 0..C-1, background C, ignored -1.
    classes = 4
    x = randn((2, 40, classes), seed=4, device=device)
    labels = random_labels((2, 40), -1, classes, seed=4, device=device)
    assert (labels == -1).any() and (labels == classes).any()
    loss, _ = assert_matches_float64_reference(ops.sigmoid_focal_loss, reference.sigmoid_focal_loss,
                                               x, labels, gamma=2.0, reduction=reduction)
    # Same as explicit one-hot float targets, with the ignored rows dropped.
    valid = labels >= 0
    one_hot = F.one_hot(labels.clamp(min=0), classes + 1)[..., :classes].float()
    dense = ops.sigmoid_focal_loss(x, one_hot, reduction="none")
    expected = torch.where(valid[..., None], dense, torch.zeros_like(dense))
    if reduction == "sum":
        expected = expected.sum()
    elif reduction == "mean":
        expected = expected.sum() / (valid.sum() * classes)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_sigmoid_custom_background_and_ignore_index(device):
    x = randn((30, 3), seed=5, device=device)
    labels = random_labels((30,), 0, 4, seed=5, device=device)  # 3 = background, 4 = ignored
    for reduction in REDUCTIONS:
        assert_matches_float64_reference(ops.sigmoid_focal_loss, reference.sigmoid_focal_loss, x,
                                         labels.to(torch.int32), background_index=3, ignore_index=4,
                                         reduction=reduction)
    # background_index = -1 (some codebases' convention) with ignore -2.
    shifted = torch.where(labels == 3, -1, torch.where(labels == 4, -2, labels))
    a = ops.sigmoid_focal_loss(x, shifted, background_index=-1, ignore_index=-2, reduction="sum")
    b = ops.sigmoid_focal_loss(x, labels, background_index=3, ignore_index=4, reduction="sum")
    assert torch.equal(a, b)


# ---------------------------------------------------------------- softmax

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("classes", [1, 2, 5])
def test_softmax_matches_reference(device, reduction, gamma, classes):
    x = randn((3, 30, classes), seed=6, device=device)
    labels = random_labels((3, 30), -1, classes - 1, seed=6, device=device)
    assert_matches_float64_reference(ops.softmax_focal_loss, reference.softmax_focal_loss, x, labels,
                                     alpha=0.25, gamma=gamma, reduction=reduction)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, -1.0])
def test_softmax_alpha_weights_background_class_zero(alpha):
    x = randn((50, 3), seed=7)
    labels = random_labels((50,), 0, 2, seed=7)
    loss = ops.softmax_focal_loss(x, labels, alpha=alpha, gamma=2.0)
    unweighted = ops.softmax_focal_loss(x, labels, alpha=-1.0, gamma=2.0)
    weight = torch.where(labels == 0, 1 - alpha, alpha) if alpha >= 0 else torch.ones(50)
    torch.testing.assert_close(loss, weight * unweighted, rtol=1e-6, atol=0)
    assert_matches_float64_reference(ops.softmax_focal_loss, reference.softmax_focal_loss, x, labels,
                                     alpha=alpha, reduction="sum")


def test_softmax_ignore_index_and_int32_labels():
    x = randn((40, 4), seed=8)
    labels = random_labels((40,), 0, 4, seed=8).to(torch.int32)  # 4 = ignored
    for reduction in REDUCTIONS:
        assert_matches_float64_reference(ops.softmax_focal_loss, reference.softmax_focal_loss, x, labels,
                                         ignore_index=4, reduction=reduction)


# ---------------------------------------------------------------- gamma = 0 is cross-entropy

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gamma_zero_is_bce(device, dtype):
    # Against torch's BCE in float64 (its float32 formula, log(exp(..) + exp(..)),
    # loses the small values that log1p keeps).
    x = randn((100, 3), seed=9, device=device, dtype=dtype)
    t = hard_targets((100, 3), seed=9, device=device).to(dtype)
    rtol, atol = (1e-12, 1e-15) if dtype == torch.float64 else (1e-5, 1e-7)
    for reduction in REDUCTIONS:
        loss, grad = value_and_grad(ops.sigmoid_focal_loss, x, t, alpha=-1, gamma=0.0, reduction=reduction)
        bce, bce_grad = value_and_grad(F.binary_cross_entropy_with_logits, x.double(), t.double(),
                                       reduction=reduction)
        torch.testing.assert_close(loss.double(), bce, rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), bce_grad, rtol=rtol, atol=atol)
    # With alpha: exactly alpha_t * BCE.
    loss = ops.sigmoid_focal_loss(x, t, alpha=0.25, gamma=0.0)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    torch.testing.assert_close(loss, alpha_t * ops.sigmoid_focal_loss(x, t, alpha=-1, gamma=0.0), rtol=1e-6,
                               atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gamma_zero_is_cross_entropy(device, dtype):
    x = randn((4, 25, 3), seed=10, device=device, dtype=dtype)
    labels = random_labels((4, 25), -1, 2, seed=10, device=device)
    rtol, atol = (1e-12, 1e-15) if dtype == torch.float64 else (1e-5, 1e-7)
    for reduction in REDUCTIONS:
        loss, grad = value_and_grad(ops.softmax_focal_loss, x, labels, alpha=-1, gamma=0.0,
                                    reduction=reduction)
        ce, ce_grad = value_and_grad(
            lambda z: F.cross_entropy(z.reshape(-1, 3), labels.reshape(-1), ignore_index=-1,
                                      reduction=reduction).reshape(loss.shape), x.double())
        torch.testing.assert_close(loss.double(), ce, rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), ce_grad, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- numerics: gamma < 1, saturation

EXTREME_LOGITS = [-1e4, -200.0, -104.0, -90.0, -30.0, -17.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 17.0, 30.0, 90.0,
                  104.0, 200.0, 1e4]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0])
def test_no_nan_at_saturation(device, dtype, gamma):
    x = torch.tensor(EXTREME_LOGITS, dtype=torch.float64).clamp(-6e4, 6e4).to(device=device, dtype=dtype)
    for target in (0.0, 1.0):
        t = torch.full(x.shape, target, device=device)
        loss, grad = value_and_grad(ops.sigmoid_focal_loss, x, t, gamma=gamma, reduction="sum")
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        per_element, _ = value_and_grad(ops.sigmoid_focal_loss, x, t, gamma=gamma)
        assert torch.isfinite(per_element).all() and (per_element >= 0).all()
    # Softmax rows with the same logit differences, against class 0 and class 1.
    rows = torch.stack([torch.zeros_like(x), x], dim=-1)
    for label in (0, 1):
        labels = torch.full(x.shape, label, dtype=torch.int64, device=device)
        loss, grad = value_and_grad(ops.softmax_focal_loss, rows, labels, gamma=gamma, reduction="none")
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and (loss >= 0).all()


@pytest.mark.parametrize("gamma", [0.25, 0.5, 2.0])
def test_confident_predictions_stay_accurate_in_float32(gamma):
    # 1 - p_t down to ~1e-26: torchvision's formula rounds it to 0 (loss and
    # gradient 0) beyond x ~ 17 in float32 and x ~ 37 in float64; the fused op in
    # float32 keeps the exact value. For target 1 (and a softmax row (0, x) with
    # label 1) the exact loss is alpha * softplus(-x) * sigmoid(-x) ** gamma.
    x = torch.tensor([8.0, 12.0, 17.0, 25.0, 40.0, 60.0])
    TINY = 1e-37  # float32's normal range: smaller values may underflow (gamma = 2, x = 40: 1e-53)

    def exact_loss(z):
        return 0.25 * F.softplus(-z) * torch.sigmoid(-z) ** gamma

    exact, exact_grad = value_and_grad(exact_loss, x.double())
    assert (exact > 0).all() and (exact_grad != 0).all()
    loss, grad = value_and_grad(ops.sigmoid_focal_loss, x, torch.ones_like(x), gamma=gamma)
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=TINY)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-5, atol=TINY)
    rows = torch.stack([torch.zeros_like(x), x], dim=-1)
    loss, grad = value_and_grad(ops.softmax_focal_loss, rows, torch.ones(x.shape, dtype=torch.int64),
                                gamma=gamma)
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=TINY)
    torch.testing.assert_close(grad[:, 1].double(), exact_grad, rtol=1e-5, atol=TINY)
    torch.testing.assert_close(grad[:, 0], -grad[:, 1], rtol=1e-6, atol=0)


def test_gamma_below_one_gradient_near_the_limit():
    # Where 1 - p_t underflows the gradient is its limit, 0; just before, it is
    # tiny and of the right sign (finite differences in float64 agree).
    x = torch.tensor([30.0, 300.0, 760.0], dtype=torch.float64)
    t = torch.ones_like(x)
    _, grad = value_and_grad(ops.sigmoid_focal_loss, x, t, gamma=0.5, reduction="sum")
    assert -1e-10 < grad[0] < 0 and -1e-150 < grad[1] < 0  # ~ -(1 - p_t)^1.5
    assert grad[2] == 0.0 and torch.isfinite(grad).all()
    eps = 1e-4
    numeric = (ops.sigmoid_focal_loss(x[:1] + eps, t[:1], gamma=0.5)
               - ops.sigmoid_focal_loss(x[:1] - eps, t[:1], gamma=0.5)) / (2 * eps)
    torch.testing.assert_close(grad[:1], numeric, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- gradcheck

@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("reduction,normalizer", [("none", None), ("sum", None), ("mean", None),
                                                  ("sum", "tensor"), ("none", 3.0)])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradcheck_sigmoid(single_thread, reduction, normalizer, gamma):
    x = randn((6, 3), seed=11, dtype=torch.float64).requires_grad_()
    t = hard_targets((6, 3), seed=11).double()
    labels = torch.tensor([0, 2, 3, -1, 1, 3])
    norm = torch.tensor(4, dtype=torch.int64) if normalizer == "tensor" else normalizer
    for targets in (t, labels):
        assert torch.autograd.gradcheck(
            lambda z: ops.sigmoid_focal_loss(z, targets, 0.25, gamma, reduction, norm), (x,))


@pytest.mark.parametrize("reduction,normalizer", [("none", None), ("sum", None), ("mean", None),
                                                  ("sum", "tensor"), ("none", 3.0)])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradcheck_softmax(single_thread, reduction, normalizer, gamma):
    x = randn((2, 4, 3), seed=12, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([[0, 2, -1, 1], [1, 1, 0, 2]])
    norm = torch.tensor(2.5, dtype=torch.float64) if normalizer == "tensor" else normalizer
    assert torch.autograd.gradcheck(
        lambda z: ops.softmax_focal_loss(z, labels, 0.25, gamma, reduction, norm), (x,))


def test_float64_matches_autograd_of_reference_tightly():
    x = randn((200, 4), seed=13, dtype=torch.float64)
    t = hard_targets((200, 4), seed=13).double()
    labels = random_labels((200,), -1, 3, seed=13)
    for gamma in (0.5, 2.0):
        for fused, ref, target in ((ops.sigmoid_focal_loss, reference.sigmoid_focal_loss, t),
                                   (ops.sigmoid_focal_loss, reference.sigmoid_focal_loss, labels),
                                   (ops.softmax_focal_loss, reference.softmax_focal_loss, labels)):
            loss, grad = value_and_grad(fused, x, target, gamma=gamma, reduction="sum")
            expected, expected_grad = value_and_grad(ref, x, target, gamma=gamma, reduction="sum")
            torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- half precision

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_inputs_computed_in_float32(device, dtype, reduction):
    x = randn((4, 50, 2), seed=14, dtype=dtype, device=device)
    labels = random_labels((4, 50), -1, 1, seed=14, device=device)
    t = hard_targets((4, 50, 2), seed=14, device=device).to(dtype)
    cases = ((ops.sigmoid_focal_loss, reference.sigmoid_focal_loss, t),
             (ops.sigmoid_focal_loss, reference.sigmoid_focal_loss, labels),
             (ops.softmax_focal_loss, reference.softmax_focal_loss, labels))
    for fused, ref, target in cases:
        loss, grad = value_and_grad(fused, x, target, reduction=reduction)
        # The half values, upcast: the float32 maths the kernels do.
        expected, expected_grad = value_and_grad(ref, x.float(), target, reduction=reduction)
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad.to(dtype), rtol=1e-2, atol=1e-5)


# ---------------------------------------------------------------- reductions, normalizer, layout

@pytest.mark.parametrize("device", DEVICES)
def test_normalizer_forms(device):
    x = randn((3, 20, 2), seed=15, device=device)
    labels = random_labels((3, 20), -1, 1, seed=15, device=device)
    for fn, target in ((ops.sigmoid_focal_loss, labels), (ops.softmax_focal_loss, labels)):
        total = fn(x, target, reduction="sum")
        for normalizer in (7, 7.0, torch.tensor(7, device=device), torch.tensor([7.0], device=device),
                           torch.tensor(7.0, dtype=torch.float64), torch.tensor(7, dtype=torch.int32)):
            loss, grad = value_and_grad(fn, x, target, reduction="sum", normalizer=normalizer)
            torch.testing.assert_close(loss, total / 7, rtol=1e-6, atol=0)
            _, grad_sum = value_and_grad(fn, x, target, reduction="sum")
            torch.testing.assert_close(grad, grad_sum / 7, rtol=1e-6, atol=1e-12)
        per_element = fn(x, target, reduction="none", normalizer=torch.tensor(4.0, device=device))
        torch.testing.assert_close(per_element, fn(x, target, reduction="none") / 4, rtol=1e-6, atol=0)
        assert torch.equal(fn(x, target, reduction="none", normalizer=None), fn(x, target))


def test_mean_counts_only_what_is_not_ignored():
    x = randn((10, 3), seed=16)
    labels = torch.tensor([0, 1, 2, 3, -1, -1, 0, 3, 1, -1])  # 3 = background (counts), -1 ignored
    total = ops.sigmoid_focal_loss(x, labels, reduction="sum")
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, labels, reduction="mean"), total / (7 * 3))
    softmax_labels = torch.where(labels == 3, 2, labels)
    total = ops.softmax_focal_loss(x, softmax_labels, reduction="sum")
    torch.testing.assert_close(ops.softmax_focal_loss(x, softmax_labels, reduction="mean"), total / 7)


@pytest.mark.parametrize("device", DEVICES)
def test_all_labels_ignored(device):
    x = randn((5, 8, 3), seed=17, device=device)
    labels = torch.full((5, 8), -1, device=device)
    for fn in (ops.sigmoid_focal_loss, ops.softmax_focal_loss):
        for reduction in REDUCTIONS:
            loss, grad = value_and_grad(fn, x, labels, reduction=reduction)
            assert not loss.any() and not grad.any()
            expected, _ = value_and_grad(getattr(reference, fn.__name__), x, labels, reduction=reduction)
            assert torch.equal(loss, expected)
        loss, grad = value_and_grad(fn, x, labels, reduction="sum", normalizer=torch.tensor(1, device=device))
        assert loss.item() == 0.0 and not grad.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_inputs(device, reduction):
    cases = [
        (ops.sigmoid_focal_loss, torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)),
        (ops.sigmoid_focal_loss, torch.zeros(0, device=device), torch.zeros(0, device=device)),
        (ops.sigmoid_focal_loss, torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.int64, device=device)),
        (ops.sigmoid_focal_loss, torch.zeros(3, 0, device=device), torch.full((3,), 0, device=device)),
        (ops.softmax_focal_loss, torch.zeros(2, 0, 5, device=device), torch.zeros(2, 0, dtype=torch.int64,
                                                                                  device=device)),
    ]
    for fn, x, target in cases:
        loss, grad = value_and_grad(fn, x, target, reduction=reduction)
        expected_shape = () if reduction != "none" else (x.shape if fn is ops.sigmoid_focal_loss else x.shape[:-1])
        assert loss.shape == expected_shape and loss.dtype == torch.float32
        assert grad.shape == x.shape
        if reduction != "none":
            assert loss.item() == 0.0
        expected = getattr(reference, fn.__name__)(x, target, reduction=reduction)
        assert expected.shape == loss.shape and torch.equal(loss, expected)


def test_non_contiguous_inputs():
    head = randn((4, 30, 7), seed=18)
    x = head[..., 2:5]  # a view of a wider head output
    labels_wide = random_labels((30, 4), -1, 2, seed=18)
    labels = labels_wide.t()  # transposed labels
    t = hard_targets((4, 30, 3), seed=18).transpose(0, 1).contiguous().transpose(0, 1)
    assert not x.is_contiguous() and not labels.is_contiguous() and not t.is_contiguous()
    for fn, target in ((ops.sigmoid_focal_loss, t), (ops.sigmoid_focal_loss, labels),
                       (ops.softmax_focal_loss, labels)):
        for reduction in REDUCTIONS:
            loss, grad = value_and_grad(fn, x, target, reduction=reduction)
            expected, expected_grad = value_and_grad(fn, x.contiguous(), target.contiguous(), reduction=reduction)
            assert torch.equal(loss, expected) and torch.equal(grad, expected_grad)


def test_deterministic_across_thread_counts():
    x = randn((64, 1000, 2), seed=19)  # several reduction chunks
    labels = random_labels((64, 1000), -1, 1, seed=19)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(threads, 3)):
            torch.set_num_threads(n)
            results.append([value_and_grad(fn, x, labels, reduction="sum")
                            for fn in (ops.sigmoid_focal_loss, ops.softmax_focal_loss)])
    finally:
        torch.set_num_threads(threads)
    for (a_loss, a_grad), (b_loss, b_grad) in zip(*results):
        assert torch.equal(a_loss, b_loss) and torch.equal(a_grad, b_grad)


# ---------------------------------------------------------------- the CPU's vectorised maths
# csrc/cpu/vector_math.h (polynomial exp, log, log1p and pow) checked through the ops: float32
# results within rtol 1e-5 of float64 references over the ranges the kernels feed them.

def exact_sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="none"):
    """The sigmoid focal loss with softplus for the cross-entropy: accurate in float64 also
    where torch's BCE-with-logits rounds a tiny loss (x << 0, t = 0) to 0."""
    ce = t * F.softplus(-x) + (1 - t) * F.softplus(x)
    m = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
    loss = (alpha * t + (1 - alpha) * (1 - t)) * ce * m ** gamma
    return loss if reduction == "none" else loss.sum()


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0, 2.0, 3.7])
def test_vector_maths_sigmoid_logit_sweep(gamma):
    # exp(-|x|) and log1p of it over [-85, 85], float targets (soft ones included, so the
    # modulator m spans [0, 1] and pow(m, gamma) sees values down to 1e-37), losses down to 1e-37.
    # (A soft target t has d loss / dx ~ p - t, which float32 cancels where p ~ t: 0.5 puts
    # that point at x = 0, where p - t is exactly 0.)
    x = torch.linspace(-85.0, 85.0, 2001)
    for target in (0.0, 1.0, 0.5, 1e-6):
        t = torch.full_like(x, target)
        for reduction in ("none", "sum"):
            assert_matches_float64_reference(ops.sigmoid_focal_loss, exact_sigmoid_focal_loss, x, t,
                                             gamma=gamma, reduction=reduction, atol=1e-30)


def exact_softmax_focal_loss(x, labels, alpha=0.25, gamma=2.0, reduction="none"):
    """The softmax focal loss from s = sum over the other classes of exp(x_c - x_y): -log p_t =
    log1p(s) and 1 - p_t = s / (1 + s) keep their relative accuracy in float64 also where
    log_softmax rounds p_t to 1 (a target above the others by more than ~30)."""
    ignored = labels == -1
    target = labels.clamp(min=0)
    d = x - x.gather(-1, target[:, None])
    others = torch.exp(d).scatter(-1, target[:, None], 0.0).sum(-1)
    loss = torch.where(target == 0, 1 - alpha, alpha) * (others / (1 + others)) ** gamma * torch.log1p(others)
    loss = torch.where(ignored, torch.zeros_like(loss), loss)
    if reduction == "mean":
        return loss.sum() / (~ignored).sum().clamp(min=1)
    return loss.sum() if reduction == "sum" else loss


@pytest.mark.parametrize("classes", [3, 16, 20, 80, 5000])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.7])
def test_vector_maths_general_softmax(classes, gamma):
    # Rows of 3 (no full 16-lane step), 16, 20 (a lane step and a tail), 80 (RetinaNet) and
    # 5000 classes (more than one block of the backward), logits spread over +-40 so the
    # exponentials span their range, the target the row maximum by 18 or more in a third of
    # the rows (the log1p(sum of the others) branch: 1 + 1.5e-8 is 1 in float32).
    rows = 40 if classes < 5000 else 6
    x = randn((rows, classes), seed=40 + classes, scale=12.0).clamp(-40, 40)
    labels = random_labels((rows,), -1, classes - 1, seed=40 + classes)
    top = torch.arange(rows) % 3 == 0
    x[top, labels[top].clamp(min=0)] = x[top].max(dim=1).values + 18.0
    for reduction in REDUCTIONS:
        assert_matches_float64_reference(ops.softmax_focal_loss, exact_softmax_focal_loss, x, labels,
                                         gamma=gamma, reduction=reduction, atol=1e-30)


def test_vector_maths_deterministic_wide_rows():
    # The RetinaNet shape: per-row lanes and fixed chunks, so no dependence on the thread count.
    x = randn((3000, 80), seed=41)
    labels = random_labels((3000,), -1, 80, seed=41)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(threads, 3)):
            torch.set_num_threads(n)
            results.append([value_and_grad(ops.softmax_focal_loss, x, labels.clamp(max=79), reduction=r)
                            for r in ("sum", "none")]
                           + [value_and_grad(ops.sigmoid_focal_loss, x, labels, gamma=1.5, reduction=r)
                              for r in ("mean", "none")])
    finally:
        torch.set_num_threads(threads)
    for (a_loss, a_grad), (b_loss, b_grad) in zip(*results):
        assert torch.equal(a_loss, b_loss) and torch.equal(a_grad, b_grad)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(0, 40), classes=st.integers(1, 6), gamma=st.sampled_from([0.0, 0.3, 1.0, 2.0, 2.7]),
       alpha=st.sampled_from([-1.0, 0.0, 0.25, 0.9]), reduction=st.sampled_from(REDUCTIONS),
       seed=st.integers(0, 2**16))
def test_property_matches_reference(rows, classes, gamma, alpha, reduction, seed):
    x = randn((rows, classes), seed=seed)
    labels = random_labels((rows,), -1, classes - 1, seed=seed)
    assert_matches_float64_reference(ops.softmax_focal_loss, reference.softmax_focal_loss, x, labels,
                                     alpha=alpha, gamma=gamma, reduction=reduction)
    sigmoid_labels = random_labels((rows,), -1, classes, seed=seed)
    assert_matches_float64_reference(ops.sigmoid_focal_loss, reference.sigmoid_focal_loss, x, sigmoid_labels,
                                     alpha=alpha, gamma=gamma, reduction=reduction)


# ---------------------------------------------------------------- errors

SIG = torch.ops.retinaface.sigmoid_focal_loss
SOFT = torch.ops.retinaface.softmax_focal_loss


def _sig(inputs=None, targets=None, alpha=0.25, gamma=2.0, reduction="sum", normalizer=None,
         background_index=3, ignore_index=-1):
    inputs = torch.zeros(4, 3) if inputs is None else inputs
    targets = torch.zeros(4, dtype=torch.int64) if targets is None else targets
    return SIG(inputs, targets, alpha, gamma, reduction, normalizer, background_index, ignore_index)


def _soft(logits=None, labels=None, alpha=0.25, gamma=2.0, reduction="sum", normalizer=None, ignore_index=-1):
    logits = torch.zeros(4, 3) if logits is None else logits
    labels = torch.zeros(4, dtype=torch.int64) if labels is None else labels
    return SOFT(logits, labels, alpha, gamma, reduction, normalizer, ignore_index)


@pytest.mark.parametrize("call,message", [
    (lambda: _sig(reduction="avg"), r"sigmoid_focal_loss\(\): reduction must be 'none', 'sum' or 'mean', got 'avg'"),
    (lambda: _sig(gamma=-0.5), r"gamma must be a finite number >= 0, got -0.5"),
    (lambda: _sig(gamma=float("inf")), r"gamma must be a finite number >= 0, got inf"),
    (lambda: _sig(alpha=1.5), r"alpha must be in \[0, 1\] \(or negative to disable the weighting\), got 1.5"),
    (lambda: _sig(inputs=torch.zeros(4, 3, dtype=torch.int64)), r"inputs must be a floating tensor"),
    (lambda: _sig(targets=torch.zeros(4, 2)), r"float targets must have the shape of inputs \[4, 3\], got \[4, 2\]"),
    (lambda: _sig(targets=torch.zeros(4, 3, dtype=torch.int64)),
     r"integer targets \(class labels\) must have shape \[4\] \(inputs \[4, 3\] without the class "
     r"dimension\), got \[4, 3\]"),
    (lambda: _sig(targets=torch.zeros(4, dtype=torch.bool)),
     r"targets must be a floating tensor \(per-element targets\) or an integer tensor \(class labels\), got Bool"),
    (lambda: _sig(inputs=torch.tensor(1.0), targets=torch.tensor(1)),
     r"inputs must have a class dimension \[..., C\] with integer targets, got shape \[\]"),
    (lambda: _sig(targets=torch.tensor([0, 1, 5, 2])),
     r"targets must hold class indices in \[0, 3\), background_index 3 or ignore_index -1, got 5"),
    (lambda: _sig(background_index=-1), r"background_index and ignore_index must differ, got -1 for both"),
    (lambda: _sig(reduction="mean", normalizer=torch.tensor(2.0)),
     r"normalizer cannot be combined with reduction='mean'"),
    (lambda: _sig(normalizer=torch.ones(2)), r"normalizer must have one element \(e.g. the number of positives\), "
                                             r"got shape \[2\]"),
    (lambda: _sig(normalizer=torch.tensor(True)), r"normalizer must be a floating or integer tensor, got Bool"),
    (lambda: _soft(labels=torch.zeros(4)), r"softmax_focal_loss\(\): labels must be an integer tensor, got Float"),
    (lambda: _soft(labels=torch.zeros(3, dtype=torch.int64)),
     r"labels must have shape \[4\] \(logits \[4, 3\] without the class dimension\), got \[3\]"),
    (lambda: _soft(logits=torch.zeros(4, 0)), r"logits must have shape \[..., C\] with C >= 1, got \[4, 0\]"),
    (lambda: _soft(logits=torch.zeros(4, 3, dtype=torch.int32)), r"logits must be a floating tensor"),
    (lambda: _soft(labels=torch.tensor([0, 1, 3, -1])), r"labels must be in \[0, 3\) or ignore_index -1, got 3"),
    (lambda: _soft(labels=torch.tensor([0, -2, 1, -1])), r"labels must be in \[0, 3\) or ignore_index -1, got -2"),
    (lambda: _soft(gamma=-1.0), r"softmax_focal_loss\(\): gamma must be a finite number >= 0"),
])
def test_bad_input(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_backward_bad_input():
    x, labels = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"sigmoid_focal_loss_backward\(\): grad must have the loss's shape "
                                           r"\[4, 3\] for reduction='none', got \[4\]"):
        torch.ops.retinaface.sigmoid_focal_loss_backward(torch.ones(4), x, labels, 0.25, 2.0, "none", None, 3, -1)
    with pytest.raises(RuntimeError, match=r"softmax_focal_loss_backward\(\): grad must have one element"):
        torch.ops.retinaface.softmax_focal_loss_backward(torch.ones(2), x, labels, 0.25, 2.0, "sum", None, -1)
    with pytest.raises(RuntimeError, match=r"softmax_focal_loss_backward\(\): grad must be a floating tensor"):
        torch.ops.retinaface.softmax_focal_loss_backward(torch.ones((), dtype=torch.int64), x, labels, 0.25, 2.0,
                                                         "sum", None, -1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch():
    with pytest.raises(RuntimeError, match=r"targets must be on the same device as inputs"):
        _sig(inputs=torch.zeros(4, 3, device="cuda"))
    with pytest.raises(RuntimeError, match=r"normalizer must be on the same device as inputs"):
        _sig(normalizer=torch.tensor(1.0, device="cuda"))
    with pytest.raises(RuntimeError, match=r"labels must be on the same device as logits"):
        _soft(logits=torch.zeros(4, 3, device="cuda"))


# ---------------------------------------------------------------- opcheck, torch.compile

def test_opcheck():
    x = randn((3, 5, 2), seed=20).requires_grad_()
    labels = random_labels((3, 5), -1, 2, seed=20)
    t = hard_targets((3, 5, 2), seed=20)
    norm = torch.tensor(3.0)
    for args in ((x, t, 0.25, 2.0, "none", None, 2, -1), (x, labels, 0.25, 0.5, "sum", norm, 2, -1),
                 (x, labels, -1.0, 2.0, "mean", None, 2, -1)):
        torch.library.opcheck(torch.ops.retinaface.sigmoid_focal_loss.default, args)
    softmax_labels = labels.clamp(max=1)
    for args in ((x, softmax_labels, 0.25, 2.0, "none", norm, -1), (x, softmax_labels, 0.25, 0.0, "mean", None, -1)):
        torch.library.opcheck(torch.ops.retinaface.softmax_focal_loss.default, args)
    torch.library.opcheck(torch.ops.retinaface.softmax_focal_loss.default,
                          (torch.zeros(0, 2, requires_grad=True), torch.zeros(0, dtype=torch.int64), 0.25, 2.0,
                           "sum", None, -1))

    detached = x.detach()
    torch.library.opcheck(torch.ops.retinaface.sigmoid_focal_loss_backward.default,
                          (torch.rand(3, 5, 2), detached, t, 0.25, 2.0, "none", None, 2, -1))
    torch.library.opcheck(torch.ops.retinaface.sigmoid_focal_loss_backward.default,
                          (torch.tensor(2.0), detached, labels, 0.25, 2.0, "mean", None, 2, -1))
    torch.library.opcheck(torch.ops.retinaface.softmax_focal_loss_backward.default,
                          (torch.tensor(0.5), detached, softmax_labels, 0.25, 2.0, "sum", norm, -1))
    torch.library.opcheck(torch.ops.retinaface.softmax_focal_loss_backward.default,
                          (torch.rand(3, 5), detached, softmax_labels, 0.25, 2.0, "none", None, -1))


def test_torch_compile_fullgraph_cpu():
    x = randn((2, 50, 2), seed=21)
    labels = random_labels((2, 50), -1, 1, seed=21)

    def loss_fn(z, y):
        num_pos = (y > 0).sum().clamp(min=1)
        return (ops.softmax_focal_loss(z, y, reduction="sum", normalizer=num_pos)
                + ops.sigmoid_focal_loss(z, y, reduction="mean"))

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss, grad = value_and_grad(compiled, x, labels)
    expected, expected_grad = value_and_grad(loss_fn, x, labels)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)


# ---------------------------------------------------------------- CUDA

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_matches_cpu_at_realistic_sizes(dtype, reduction):
    # RetinaFace batch: 32 x 16800 priors x 2 classes; RetinaNet-like 20000 anchors x 80 classes.
    x = randn((32, 16800, 2), seed=22, dtype=dtype)
    labels = random_labels((32, 16800), -1, 1, seed=22)
    t = hard_targets((32, 16800, 2), seed=22, fraction=0.05).to(dtype)
    wide = randn((20000, 80), seed=23, dtype=dtype)
    wide_labels = random_labels((20000,), -1, 80, seed=23)
    cases = ((ops.sigmoid_focal_loss, x, t), (ops.sigmoid_focal_loss, x, labels),
             (ops.softmax_focal_loss, x, labels), (ops.sigmoid_focal_loss, wide, wide_labels),
             (ops.softmax_focal_loss, wide, wide_labels.clamp(max=79)))
    half = dtype in (torch.float16, torch.bfloat16)
    for fn, inputs, target in cases:
        cpu_loss, cpu_grad = value_and_grad(fn, inputs, target, reduction=reduction)
        cuda_loss, cuda_grad = value_and_grad(fn, inputs.cuda(), target.cuda(), reduction=reduction)
        assert cuda_loss.dtype == cpu_loss.dtype and cuda_grad.dtype == dtype
        torch.testing.assert_close(cuda_loss.cpu(), cpu_loss, rtol=1e-5, atol=1e-6)
        # Half gradients: the same float32 value may round to neighbouring halves.
        torch.testing.assert_close(cuda_grad.cpu(), cpu_grad, rtol=1e-2 if half else 1e-5,
                                   atol=1e-5 if half else 1e-8)


@requires_cuda
def test_cuda_deterministic_and_device_normalizer():
    x = randn((32, 16800, 2), seed=24, device="cuda")
    labels = random_labels((32, 16800), -1, 1, seed=24, device="cuda")
    num_pos = (labels > 0).sum().clamp(min=1)
    first = [value_and_grad(ops.softmax_focal_loss, x, labels, reduction="sum", normalizer=num_pos)
             for _ in range(2)]
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][1], first[1][1])
    cpu = value_and_grad(ops.softmax_focal_loss, x.cpu(), labels.cpu(), reduction="sum",
                         normalizer=num_pos.cpu())
    torch.testing.assert_close(first[0][0].cpu(), cpu[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(first[0][1].cpu(), cpu[1], rtol=1e-5, atol=1e-10)
    # A CPU normalizer with CUDA inputs is read on the host.
    loss = ops.softmax_focal_loss(x, labels, reduction="sum", normalizer=num_pos.cpu())
    torch.testing.assert_close(loss, first[0][0])


@requires_cuda
def test_cuda_invalid_labels_are_ignored():
    x = randn((6, 3), seed=25, device="cuda")
    labels = torch.tensor([0, 1, 7, -5, 2, 1], device="cuda")
    valid = torch.tensor([0, 1, -1, -1, 2, 1], device="cuda")
    for reduction in REDUCTIONS:
        assert torch.equal(ops.softmax_focal_loss(x, labels, reduction=reduction),
                           ops.softmax_focal_loss(x, valid, reduction=reduction))


@requires_cuda
def test_cuda_graph_capture():
    x = randn((8, 4200, 2), seed=26, device="cuda").requires_grad_()
    labels = random_labels((8, 4200), -1, 1, seed=26, device="cuda")

    def step():
        num_pos = (labels > 0).sum().clamp(min=1)
        loss = (ops.softmax_focal_loss(x, labels, reduction="sum", normalizer=num_pos)
                + ops.sigmoid_focal_loss(x, labels, reduction="mean"))
        (grad,) = torch.autograd.grad(loss, x)
        return loss, grad

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up on a side stream, as CUDA graphs require
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss, static_grad = step()
    with torch.no_grad():
        x.mul_(0.5)
        labels.copy_(random_labels((8, 4200), -1, 1, seed=27, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    expected_loss, expected_grad = step()
    torch.testing.assert_close(static_loss, expected_loss)
    torch.testing.assert_close(static_grad, expected_grad)


@requires_cuda
def test_torch_compile_fullgraph_cuda():
    x = randn((4, 4200, 2), seed=28, device="cuda")
    labels = random_labels((4, 4200), -1, 1, seed=28, device="cuda")

    def loss_fn(z, y):
        num_pos = (y > 0).sum().clamp(min=1)
        return (ops.softmax_focal_loss(z, y, reduction="sum", normalizer=num_pos)
                + ops.sigmoid_focal_loss(z, y, reduction="mean"))

    compiled = torch.compile(loss_fn, fullgraph=True)
    loss, grad = value_and_grad(compiled, x, labels)
    expected, expected_grad = value_and_grad(loss_fn, x, labels)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)


# ---------------------------------------------------------------- conf_loss="focal"

def _multibox_problem(batch, seed, num_classes=2, device="cpu"):
    from test_multibox_loss import make_problem

    preds, truth = make_problem(batch, image_size=(160, 160), max_faces=8, seed=seed, device=device,
                                num_classes=num_classes)
    truth[4][0] = 8  # at least one image with faces
    return preds, truth


def _grads(losses, preds, weights=(2.0, 1.0, 0.5)):
    return torch.autograd.grad(sum(w * loss for w, loss in zip(weights, losses)), preds, allow_unused=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_multibox_focal_matches_reference(device, num_classes):
    preds, truth = _multibox_problem(3, seed=30, num_classes=num_classes, device=device)
    kwargs = dict(conf_loss="focal", focal_alpha=0.3, focal_gamma=1.5)
    fused = ops.multibox_loss(*preds, *truth, **kwargs)
    expected = reference.multibox_loss(*preds, *truth, **kwargs)
    for a, e in zip(fused, expected):
        assert a.shape == () and a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)
    for a, e in zip(_grads(fused, preds), _grads(expected, preds)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)


def test_multibox_focal_semantics():
    preds, truth = _multibox_problem(2, seed=31)
    loc, conf, landms = preds
    *ce, assignment = torch.ops.retinaface.multibox_loss(*preds, *truth, 0.35, 0.2, 0, [0.1, 0.2])
    focal = ops.multibox_loss(*preds, *truth, conf_loss="focal")
    # loss_l and loss_landm are the mined loss's; the class term is the focal loss of
    # every prior, target 1 on the positives, divided by the number of positives.
    torch.testing.assert_close(focal[0], ops.multibox_loss(*preds, *truth)[0])
    torch.testing.assert_close(focal[2], ops.multibox_loss(*preds, *truth)[2])
    positive = assignment >= 0
    expected = ops.softmax_focal_loss(conf, positive.long(), reduction="sum") / positive.sum()
    torch.testing.assert_close(focal[1], expected)
    # neg_pos_ratio does not matter (no mining); the default is biubug6's loss, unchanged.
    torch.testing.assert_close(ops.multibox_loss(*preds, *truth, neg_pos_ratio=3, conf_loss="focal")[1], focal[1])
    for a, e in zip(ops.multibox_loss(*preds, *truth, conf_loss="ce"), ops.multibox_loss(*preds, *truth)):
        assert torch.equal(a, e)
    with pytest.raises(ValueError, match="conf_loss must be 'ce' or 'focal', got 'bce'"):
        ops.multibox_loss(*preds, *truth, conf_loss="bce")


def test_multibox_focal_without_faces():
    preds, truth = _multibox_problem(2, seed=32)
    truth[4].zero_()  # no ground truth: N = 1, every prior is background
    losses = ops.multibox_loss(*preds, *truth, conf_loss="focal")
    expected = ops.softmax_focal_loss(preds[1], torch.zeros(preds[1].shape[:2], dtype=torch.int64), reduction="sum")
    torch.testing.assert_close(losses[1], expected)
    assert losses[0].item() == 0.0 and losses[2].item() == 0.0


def test_multiboxloss_module_focal():
    from test_multibox_loss import targets_list

    preds, truth = _multibox_problem(3, seed=33)
    criterion = retinaface_ext.MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False, conf_loss="focal",
                                            focal_alpha=0.25, focal_gamma=2.0)
    losses = criterion(preds, truth[0], targets_list(truth))
    expected = reference.multibox_loss(*preds, *truth, conf_loss="focal")
    for a, e in zip(losses, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)
    for a, e in zip(_grads(losses, preds), _grads(expected, preds)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)
    default = retinaface_ext.MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False)
    assert default.conf_loss == "ce"
    with pytest.raises(ValueError, match="conf_loss must be 'ce' or 'focal'"):
        retinaface_ext.MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False, conf_loss="bce")


def test_init_focal_prior_bias():
    from retinaface_ext.models import RetinaFace, init_focal_prior_bias

    torch.manual_seed(0)
    model = RetinaFace("mobilenet0.25")
    assert init_focal_prior_bias(model) == 3
    for head in model.ClassHead:
        bias = head.conv1x1.bias.view(-1, 2)
        torch.testing.assert_close(torch.softmax(bias, dim=-1)[:, 1], torch.full((2,), 0.01))
    model.train()
    with torch.no_grad():
        _, conf, _ = model(torch.randn(2, 3, 64, 64) * 50)
    p_face = torch.softmax(conf, dim=-1)[..., 1]
    assert 0.005 < p_face.mean().item() < 0.02 and p_face.max().item() < 0.05
    with pytest.raises(ValueError, match="prior_probability must be in"):
        init_focal_prior_bias(model, prior_probability=1.0)


def test_trainer_with_focal_loss(tmp_path):
    pytest.importorskip("cv2")
    pytest.importorskip("skimage")
    import argparse

    from retinaface_ext.data import SyntheticFaces, TrainTransform
    from retinaface_ext.training import TrainConfig, Trainer
    from retinaface_ext.training.cli import add_train_arguments, config_from_args

    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--conf-loss", "focal", "--focal-alpha", "0.5", "--focal-gamma", "1.0"])
    parsed = config_from_args(args)
    assert (parsed.conf_loss, parsed.focal_alpha, parsed.focal_gamma) == ("focal", 0.5, 1.0)
    assert config_from_args(add_train_arguments(argparse.ArgumentParser()).parse_args([])).conf_loss == "ce"

    config = TrainConfig(data="synthetic", batch_size=2, epochs=1, decay_epochs=(1, 1), image_size=64, lr=1e-2,
                         workers=0, out=str(tmp_path), progress=False, device="cpu", synthetic_size=4, seed=1,
                         max_steps=2, conf_loss="focal")
    dataset = SyntheticFaces(4, image_size=96, seed=1, transform=TrainTransform(64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(config, dataset=dataset)
        # The class heads start at P(face) = 0.01 (no pretrained weights).
        bias = trainer.module.ClassHead[0].conv1x1.bias.detach().view(-1, 2)
        torch.testing.assert_close(torch.softmax(bias, -1)[:, 1], torch.full((2,), 0.01))
        try:
            assert trainer.train() == "max_steps"
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(threads)
    assert trainer.step == 2
    assert all(math.isfinite(v) for h in trainer.history for v in h[1:])
    with pytest.raises(ValueError, match="conf_loss must be 'ce' or 'focal'"):
        Trainer(TrainConfig(conf_loss="sigmoid", device="cpu", out=str(tmp_path)), dataset=dataset)
