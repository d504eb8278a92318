import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from utils import DEVICES, random_boxes, random_landmarks, requires_extension

from retinaface_ext import defaults, ops, reference
from retinaface_ext.ops import box_coding as box_coding_module

pytestmark = requires_extension

OP_NAMES = ["encode", "decode", "encode_landmarks", "decode_landmarks"]
ROW_SIZE = {"encode": 4, "decode": 4, "encode_landmarks": 10, "decode_landmarks": 10}
ARG_NAME = {"encode": "boxes", "decode": "loc", "encode_landmarks": "landmarks", "decode_landmarks": "landmarks"}
LEADING_DIMS = [(), (3,), (2, 3)]


def make_priors(device="cpu", dtype=torch.float32):
    # A small real prior set (252 priors), so widths and heights differ.
    return ops.prior_box((64, 96), device=device, dtype=dtype)


def make_input(op_name, leading, num_priors, generator, dtype=torch.float32, device="cpu"):
    """A typical first argument of op_name: [*leading, P, 4 or 10]."""
    n = math.prod(leading) * num_priors
    if op_name == "encode":
        x = random_boxes(n, generator)
    elif op_name == "encode_landmarks":
        x = random_landmarks(random_boxes(n, generator), generator)
    else:  # predicted offsets, roughly the scale a trained network produces
        x = torch.randn(n, ROW_SIZE[op_name], generator=generator)
    return x.reshape(*leading, num_priors, ROW_SIZE[op_name]).to(device, dtype)


@pytest.fixture(params=["fused", "fallback"])
def path(request, monkeypatch):
    """Runs a test through the compiled op and through the wrapper's reference fallback."""
    if request.param == "fallback":
        monkeypatch.setattr(box_coding_module, "fused_op", lambda name: None)
    return request.param


def run(op_name, *args, **kwargs):
    return getattr(ops, op_name)(*args, **kwargs)


def run_reference(op_name, *args, **kwargs):
    return getattr(reference, op_name)(*args, **kwargs)


def assert_matches_reference(op_name, x, priors, **kwargs):
    out = run(op_name, x, priors, **kwargs)
    expected = run_reference(op_name, x, priors, **kwargs)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    if op_name.endswith("landmarks") and x.dtype == torch.float32:
        # No transcendental: the same float operations in the same order.
        assert torch.equal(out, expected)
    else:
        # exp/log may round differently from PyTorch's vectorised ones by an ulp.
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    return out


# ------------------------------------------------------------- vs reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("leading", LEADING_DIMS)
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_matches_reference(device, leading, op_name):
    g = torch.Generator().manual_seed(len(leading))
    priors = make_priors(device)
    x = make_input(op_name, leading, priors.shape[0], g, device=device)
    assert_matches_reference(op_name, x, priors)


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_custom_variances(op_name):
    g = torch.Generator().manual_seed(3)
    priors = make_priors()
    x = make_input(op_name, (2,), priors.shape[0], g)
    out = assert_matches_reference(op_name, x, priors, variances=(0.25, 0.5))
    assert not torch.equal(out, run(op_name, x, priors))


def test_landmarks_use_first_variance_only():
    g = torch.Generator().manual_seed(4)
    priors = make_priors()
    for op_name in ["encode_landmarks", "decode_landmarks"]:
        x = make_input(op_name, (2,), priors.shape[0], g)
        assert torch.equal(run(op_name, x, priors, (0.1, 0.2)), run(op_name, x, priors, (0.1, 0.7)))


def test_exact_values(path):
    priors = torch.tensor([[0.5, 0.5, 0.25, 0.5]])
    box = torch.tensor([[0.25, 0.0, 0.75, 1.0]])  # centre (0.5, 0.5), size (0.5, 1.0)
    expected_loc = torch.tensor([[0.0, 0.0, math.log(2.0) / 0.2, math.log(2.0) / 0.2]])
    torch.testing.assert_close(ops.encode(box, priors), expected_loc)
    torch.testing.assert_close(ops.decode(expected_loc, priors), box)

    points = torch.tensor([[0.5, 0.5, 0.525, 0.55, 0.475, 0.45, 0.75, 1.0, 0.0, 0.0]])
    offsets = torch.tensor([[0.0, 0.0, 1.0, 1.0, -1.0, -1.0, 10.0, 10.0, -20.0, -10.0]])
    torch.testing.assert_close(ops.encode_landmarks(points, priors), offsets)
    torch.testing.assert_close(ops.decode_landmarks(offsets, priors), points)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("leading", LEADING_DIMS)
def test_round_trip(device, leading):
    g = torch.Generator().manual_seed(5)
    priors = make_priors(device)
    boxes = make_input("encode", leading, priors.shape[0], g, device=device)
    torch.testing.assert_close(ops.decode(ops.encode(boxes, priors), priors), boxes, rtol=0, atol=1e-6)
    loc = make_input("decode", leading, priors.shape[0], g, device=device)
    torch.testing.assert_close(ops.encode(ops.decode(loc, priors), priors), loc, rtol=1e-4, atol=1e-4)

    points = make_input("encode_landmarks", leading, priors.shape[0], g, device=device)
    decoded = ops.decode_landmarks(ops.encode_landmarks(points, priors), priors)
    torch.testing.assert_close(decoded, points, rtol=0, atol=1e-6)


# ----------------------------------------------------------------- shapes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("leading,num_priors", [((0,), 252), ((2, 0), 252), ((), 0), ((3,), 0), ((0, 2), 0)])
def test_zero_size(device, op_name, leading, num_priors):
    priors = make_priors(device)[:num_priors]
    x = torch.zeros(*leading, num_priors, ROW_SIZE[op_name], device=device)
    out = run(op_name, x, priors)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert run_reference(op_name, x, priors).shape == x.shape


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_single_prior_many_batch_dims(op_name, path):
    g = torch.Generator().manual_seed(6)
    priors = make_priors()[100:101]
    x = make_input(op_name, (2, 3, 4), 1, g)
    assert_matches_reference(op_name, x, priors)


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_large_input_is_split_across_threads(op_name):
    # More rows than one parallel task holds, and a row count that is not a
    # multiple of P, so tasks start in the middle of an image.
    g = torch.Generator().manual_seed(7)
    priors = make_priors()
    x = make_input(op_name, (37,), priors.shape[0], g)
    assert_matches_reference(op_name, x, priors)


# ----------------------------------------------------------------- dtypes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_other_dtypes(device, dtype, op_name):
    g = torch.Generator().manual_seed(8)
    priors = make_priors(device, dtype)
    x = make_input(op_name, (2,), priors.shape[0], g, dtype=dtype, device=device)
    out = run(op_name, x, priors)
    assert out.dtype == dtype
    expected = run_reference(op_name, x, priors)
    if dtype == torch.float64:
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    else:
        # Both compute in float32 and round once at the end, so they agree
        # unless an ulp of exp/log moves a value across a rounding boundary.
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(out, run(op_name, x.float(), priors.float()).to(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_non_contiguous(device, op_name):
    g = torch.Generator().manual_seed(9)
    priors = make_priors(device)
    base = make_input(op_name, (4,), priors.shape[0], g, device=device)
    # Every other image, and rows with a column stride.
    x = base[::2]
    y = base.transpose(-1, -2).contiguous().transpose(-1, -2)
    priors_t = priors.t().contiguous().t()
    assert not x.is_contiguous() and not y.is_contiguous() and not priors_t.is_contiguous()
    for inp, pri in [(x, priors), (y, priors_t)]:
        out = assert_matches_reference(op_name, inp, pri)
        assert out.is_contiguous()
        assert torch.equal(out, run(op_name, inp.contiguous(), pri.contiguous()))


# ------------------------------------------------------ mixed prior dtypes
# Priors of any floating dtype: read in the input's compute dtype (float32, or
# float64 for float64 input); the result keeps the input's dtype. This is what
# AMP needs: float16 predictions against float32 priors.

MIXED_DTYPES = [
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.bfloat16),
    (torch.float32, torch.float64),
    (torch.float32, torch.float16),
    (torch.float64, torch.float32),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,prior_dtype", MIXED_DTYPES)
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_priors_of_another_dtype(device, dtype, prior_dtype, op_name, path):
    g = torch.Generator().manual_seed(15)
    priors = make_priors(device, torch.float64).to(prior_dtype)
    x = make_input(op_name, (2,), priors.shape[0], g, dtype=dtype, device=device)
    out = run(op_name, x, priors)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    # The same as converting the priors to the compute dtype first.
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    same_dtype = run(op_name, x.to(compute), priors.to(compute)).to(dtype)
    expected = run_reference(op_name, x, priors)
    if dtype == torch.float64:
        torch.testing.assert_close(out, same_dtype, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    elif dtype == torch.float32:
        torch.testing.assert_close(out, same_dtype, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(out, same_dtype)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op_name", ["decode", "decode_landmarks"])
def test_gradient_with_priors_of_another_dtype(device, op_name):
    # AMP: float16 predictions, float32 priors that require grad. Each gradient
    # has the dtype of its input and matches the reference's autograd.
    g = torch.Generator().manual_seed(16)
    priors = make_priors(device)
    x = make_input(op_name, (2,), priors.shape[0], g, dtype=torch.float16, device=device)
    weights = torch.randn(x.shape, generator=g).to(device, torch.float16)
    grads = []
    for fn in (getattr(ops, op_name), getattr(reference, op_name)):
        a, p = x.clone().requires_grad_(), priors.clone().requires_grad_()
        (fn(a, p) * weights).sum().backward()
        assert a.grad.dtype == torch.float16 and p.grad.dtype == torch.float32
        grads.append((a.grad, p.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_opcheck_priors_of_another_dtype(op_name):
    g = torch.Generator().manual_seed(17)
    op = getattr(torch.ops.retinaface, op_name).default
    priors = make_priors()[:40]
    x = make_input(op_name, (2,), priors.shape[0], g, dtype=torch.float16)
    if op_name.startswith("decode"):
        args = (x.requires_grad_(), priors.clone().requires_grad_(), [0.1, 0.2])
    else:
        args = (x, priors, [0.1, 0.2])
    torch.library.opcheck(op, args)


# ----------------------------------------------------------------- errors


def bad_calls(op_name):
    arg, row = ARG_NAME[op_name], ROW_SIZE[op_name]
    priors = make_priors()
    num = priors.shape[0]
    x = torch.zeros(2, num, row)
    return [
        (torch.zeros(2, num, row + 1), priors, defaults.VARIANCES,
         rf"{op_name}\(\): {arg} must have shape \[\.\.\., P, {row}\], got \[2, {num}, {row + 1}\]"),
        (torch.zeros(row), priors, defaults.VARIANCES,
         rf"{arg} must have shape \[\.\.\., P, {row}\], got \[{row}\]"),
        (x.long(), priors, defaults.VARIANCES, rf"{arg} must be a floating tensor"),
        (x, priors[:-1], defaults.VARIANCES,
         rf"priors must have shape \[P, 4\] with P = {arg}\.size\(-2\) = {num}, got \[{num - 1}, 4\]"),
        (x, torch.zeros(num, 5), defaults.VARIANCES, rf"priors must have shape \[P, 4\], got \[{num}, 5\]"),
        (x, priors[None], defaults.VARIANCES, rf"priors must have shape \[P, 4\], got \[1, {num}, 4\]"),
        # C++ prints Long, the fallback's checks torch.int64.
        (x, priors.long(), defaults.VARIANCES,
         r"priors must be a floating tensor \(float32, float64, float16 or bfloat16\), got (Long|torch\.int64)"),
        (x, priors, (0.1, 0.2, 0.3), r"variances must have 2 values, got 3"),
        (x, priors, (0.1, 0.0), r"variances must be positive and finite, got \(0\.1, 0(\.0)?\)"),
    ]


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_bad_input(op_name, path):
    for x, priors, variances, message in bad_calls(op_name):
        with pytest.raises(RuntimeError, match=message):
            run(op_name, x, priors, variances)


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_priors_on_another_device(op_name, path):
    # The meta device stands in for a second device on CPU-only machines.
    arg = ARG_NAME[op_name]
    priors = make_priors()
    x = torch.zeros(priors.shape[0], ROW_SIZE[op_name])
    with pytest.raises(RuntimeError, match=rf"priors must be on the same device as {arg} \(cpu\), got meta"):
        run(op_name, x, priors.to("meta"))
    with pytest.raises(RuntimeError, match=rf"priors must be on the same device as {arg} \(meta\), got cpu"):
        run(op_name, x.to("meta"), priors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_priors_on_cpu_input_on_cuda(op_name):
    priors = make_priors()
    x = torch.zeros(priors.shape[0], ROW_SIZE[op_name], device="cuda")
    with pytest.raises(RuntimeError, match=r"priors must be on the same device as"):
        run(op_name, x, priors)


# ------------------------------------------------------- degenerate boxes


def test_zero_area_boxes_give_finite_targets(path):
    priors = make_priors()[:4]
    boxes = torch.tensor(
        [
            [0.3, 0.3, 0.3, 0.5],  # zero width
            [0.3, 0.3, 0.5, 0.3],  # zero height
            [0.3, 0.3, 0.3, 0.3],  # a point
            [0.5, 0.5, 0.3, 0.3],  # inverted: negative width and height
        ]
    )
    loc = ops.encode(boxes, priors)
    assert torch.isfinite(loc).all()
    floor = math.log(1e-6) / defaults.VARIANCES[1]
    clamped = torch.tensor([[True, False], [False, True], [True, True], [True, True]])
    torch.testing.assert_close(loc[:, 2:][clamped], torch.full((6,), floor), rtol=1e-6, atol=0)
    assert (loc[:, 2:][~clamped] > floor).all()
    torch.testing.assert_close(loc, reference.encode(boxes, priors), rtol=1e-5, atol=1e-6)
    # The widths / heights at the clamp boundary are left alone.
    tiny = torch.tensor([[0.3, 0.3, 0.3 + 4e-6 * priors[0, 2].item(), 0.5]])
    assert ops.encode(tiny, priors[:1])[0, 2] > floor


def test_encode_landmarks_missing_points():
    # biubug6 encodes the -1 placeholders of faces without landmarks like any
    # point (the loss ignores them): finite values, nothing special-cased.
    priors = make_priors()[:3]
    points = torch.full((3, 10), -1.0)
    out = ops.encode_landmarks(points, priors)
    assert torch.isfinite(out).all()
    assert torch.equal(out, reference.encode_landmarks(points, priors))


# ---------------------------------------------------------------- autograd


@pytest.mark.parametrize("leading", LEADING_DIMS + [(0,)])
@pytest.mark.parametrize("op_name", ["decode", "decode_landmarks"])
def test_gradcheck(op_name, leading):
    g = torch.Generator().manual_seed(10)
    priors = make_priors(dtype=torch.float64)[::50].clone().requires_grad_()
    x = make_input(op_name, leading, priors.shape[0], g, dtype=torch.float64).requires_grad_()
    fn = getattr(ops, op_name)
    assert torch.autograd.gradcheck(lambda a, p: fn(a, p, (0.1, 0.2)), (x, priors))
    assert torch.autograd.gradgradcheck(lambda a, p: fn(a, p, (0.1, 0.2)), (x, priors))
    # Only the predictions require grad: the usual case inside a loss.
    assert torch.autograd.gradcheck(lambda a: fn(a, priors.detach()), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("op_name", ["decode", "decode_landmarks"])
def test_gradient_matches_reference_autograd(op_name, dtype):
    g = torch.Generator().manual_seed(11)
    priors = make_priors(dtype=dtype)
    x = make_input(op_name, (2,), priors.shape[0], g, dtype=dtype)
    weights = torch.randn(x.shape, generator=g).to(dtype)
    grads = []
    for fn in (getattr(ops, op_name), getattr(reference, op_name)):
        a, p = x.clone().requires_grad_(), priors.clone().requires_grad_()
        (fn(a, p) * weights).sum().backward()
        assert a.grad.dtype == dtype and p.grad.dtype == dtype
        grads.append((a.grad, p.grad))
    tol = {} if dtype == torch.float16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][0], grads[1][0], **tol)
    # The priors' gradient sums over many images and priors; half rounds that differently.
    torch.testing.assert_close(grads[0][1].float(), grads[1][1].float(), **(tol or dict(rtol=2e-2, atol=2e-2)))


@pytest.mark.parametrize("op_name", ["encode", "encode_landmarks"])
def test_encode_has_no_gradient(op_name):
    g = torch.Generator().manual_seed(14)
    priors = make_priors()
    x = make_input(op_name, (), priors.shape[0], g).requires_grad_()
    out = run(op_name, x, priors)  # the forward works; only backward is refused
    assert torch.equal(out, run(op_name, x.detach(), priors))
    with pytest.raises(RuntimeError, match=rf"{op_name}\(\) has no gradient"):
        out.sum().backward()


# --------------------------------------------------------------- opcheck


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_opcheck(op_name):
    g = torch.Generator().manual_seed(12)
    op = getattr(torch.ops.retinaface, op_name).default
    priors = make_priors()[:40]
    differentiable = op_name.startswith("decode")
    for leading in [(), (2,), (2, 3), (0,)]:
        x = make_input(op_name, leading, priors.shape[0], g)
        if differentiable:
            args = (x.clone().requires_grad_(), priors.clone().requires_grad_(), [0.1, 0.2])
        else:
            args = (x, priors, [0.1, 0.2])
        torch.library.opcheck(op, args)
    torch.library.opcheck(op, (torch.zeros(3, 0, ROW_SIZE[op_name]), priors[:0], [0.1, 0.2]))


def test_compile_fullgraph():
    g = torch.Generator().manual_seed(13)
    priors = make_priors()
    loc = make_input("decode", (2,), priors.shape[0], g)
    landmarks = make_input("decode_landmarks", (2,), priors.shape[0], g)

    def detect(loc, landmarks, priors):
        return ops.decode(loc, priors), ops.decode_landmarks(landmarks, priors)

    compiled = torch.compile(detect, fullgraph=True, backend="aot_eager")
    for out, expected in zip(compiled(loc, landmarks, priors), detect(loc, landmarks, priors)):
        assert torch.equal(out, expected)

    # The registered backward also runs under compile (e.g. a compiled loss).
    def loss(loc, landmarks):
        boxes, points = detect(loc, landmarks, priors)
        return boxes.square().sum() + points.square().sum()

    grads = []
    for fn in (torch.compile(loss, fullgraph=True, backend="aot_eager"), loss):
        a, b = loc.clone().requires_grad_(), landmarks.clone().requires_grad_()
        fn(a, b).backward()
        grads.append((a.grad, b.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


# ---------------------------------------------------------- property test


@st.composite
def boxes_and_priors(draw):
    n = draw(st.integers(1, 8))
    unit = st.floats(0.0, 1.0, allow_subnormal=False)
    size = st.floats(1e-3, 1.0)
    rows = [
        (draw(unit), draw(unit), draw(size), draw(size), draw(unit), draw(unit), draw(size), draw(size))
        for _ in range(n)
    ]
    data = torch.tensor(rows, dtype=torch.float32)
    x1y1, wh = data[:, :2], data[:, 2:4]
    boxes = torch.cat([x1y1, x1y1 + wh], dim=1)
    priors = data[:, 4:]
    batch = draw(st.sampled_from([(), (2,)]))
    return boxes.expand(*batch, n, 4), priors


@settings(max_examples=60, deadline=None)
@given(boxes_and_priors(), st.sampled_from([(0.1, 0.2), (0.5, 1.0)]))
def test_decode_encode_round_trip_property(data, variances):
    boxes, priors = data
    loc = ops.encode(boxes, priors, variances)
    assert torch.isfinite(loc).all()
    torch.testing.assert_close(loc, reference.encode(boxes, priors, variances), rtol=1e-5, atol=1e-5)
    decoded = ops.decode(loc, priors, variances)
    # Coordinates are in [0, 2]; the error is a few float32 ulps of the
    # prior size scaled back (sizes span three decades).
    torch.testing.assert_close(decoded, boxes, rtol=0, atol=2e-6)


# ------------------------------------------------------------------- CUDA
# Skipped without a GPU. The CUDA kernels (csrc/cuda/box_coding_kernel.cu) use the
# same box_math.h functions compiled with -fmad=false, so landmark results
# (no transcendental) equal the CPU bit for bit; boxes go through expf/logf,
# whose CUDA versions may differ from the CPU's by an ulp.

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def assert_cuda_matches_cpu(op_name, x, priors, **kwargs):
    out = run(op_name, x.cuda(), priors.cuda(), **kwargs)
    expected = run(op_name, x, priors, **kwargs)
    assert out.device.type == "cuda" and out.dtype == x.dtype and out.shape == x.shape
    assert out.is_contiguous()
    if op_name.endswith("landmarks") and x.dtype in (torch.float32, torch.float64):
        assert torch.equal(out.cpu(), expected)
    elif x.dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-6)
    else:
        # Both compute in float32 and round once to float16/bfloat16: an ulp
        # of exp/log can only move a value to the neighbouring half value.
        torch.testing.assert_close(out.cpu(), expected)


@requires_cuda
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_cuda_matches_cpu_realistic(op_name):
    # A batch of 8 images at 640 x 640: 16800 priors, 134400 rows, many blocks.
    g = torch.Generator().manual_seed(20)
    priors = ops.prior_box((640, 640))
    x = make_input(op_name, (8,), priors.shape[0], g)
    assert_cuda_matches_cpu(op_name, x, priors)
    assert_cuda_matches_cpu(op_name, x, priors, variances=(0.25, 0.5))


@requires_cuda
@pytest.mark.parametrize("dtype,prior_dtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                               (torch.float64, torch.float64)] + MIXED_DTYPES)
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_cuda_matches_cpu_dtypes(op_name, dtype, prior_dtype):
    g = torch.Generator().manual_seed(21)
    priors = ops.prior_box((160, 224)).to(prior_dtype)
    x = make_input(op_name, (3,), priors.shape[0], g, dtype=dtype)
    assert_cuda_matches_cpu(op_name, x, priors)


@requires_cuda
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_cuda_matches_cpu_odd_shapes(op_name):
    # Row counts that are not a multiple of the block size, a single prior,
    # several leading dims, and a non-contiguous input with a storage offset.
    g = torch.Generator().manual_seed(22)
    for leading, num_priors in [((), 1), ((5, 7), 1), ((3,), 257), ((2, 2), 1000)]:
        priors = make_priors()[:num_priors]
        assert_cuda_matches_cpu(op_name, make_input(op_name, leading, num_priors, g), priors)
    priors = make_priors()
    base = make_input(op_name, (5,), priors.shape[0], g)
    assert_cuda_matches_cpu(op_name, base[1::2], priors)


@requires_cuda
def test_cuda_runs_on_current_stream():
    # The kernels run on the current stream of the input's device.
    g = torch.Generator().manual_seed(23)
    priors = make_priors("cuda")
    loc = make_input("decode", (2,), priors.shape[0], g, device="cuda")
    expected = ops.decode(loc, priors)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = ops.decode(loc, priors)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected)


@requires_cuda
@pytest.mark.parametrize("op_name", ["decode", "decode_landmarks"])
def test_cuda_gradient_matches_cpu(op_name):
    g = torch.Generator().manual_seed(24)
    priors = make_priors()
    x = make_input(op_name, (4,), priors.shape[0], g)
    weights = torch.randn(x.shape, generator=g)
    grads = []
    for device in ("cpu", "cuda"):
        a = x.to(device).requires_grad_()
        p = priors.to(device).requires_grad_()
        (getattr(ops, op_name)(a, p) * weights.to(device)).sum().backward()
        grads.append((a.grad.cpu(), p.grad.cpu()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    # The priors' gradient is a sum over the batch; reduction order differs.
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-5)


@requires_cuda
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_cuda_opcheck(op_name):
    g = torch.Generator().manual_seed(25)
    op = getattr(torch.ops.retinaface, op_name).default
    priors = make_priors("cuda")[:40]
    for leading, dtype in [((2,), torch.float32), ((0,), torch.float32), ((2,), torch.float16)]:
        x = make_input(op_name, leading, priors.shape[0], g, dtype=dtype, device="cuda")
        if op_name.startswith("decode"):
            args = (x.requires_grad_(), priors.clone().requires_grad_(), [0.1, 0.2])
        else:
            args = (x, priors, [0.1, 0.2])
        torch.library.opcheck(op, args)


@requires_cuda
def test_cuda_compile_fullgraph_inductor():
    g = torch.Generator().manual_seed(26)
    priors = make_priors("cuda")
    loc = make_input("decode", (2,), priors.shape[0], g, device="cuda")
    landmarks = make_input("decode_landmarks", (2,), priors.shape[0], g, device="cuda")

    def detect(loc, landmarks):
        return ops.decode(loc, priors).clamp(0, 1), ops.decode_landmarks(landmarks, priors)

    compiled = torch.compile(detect, fullgraph=True)
    for out, expected in zip(compiled(loc, landmarks), detect(loc, landmarks)):
        assert torch.equal(out, expected)

    def loss(loc, landmarks):
        boxes, points = detect(loc, landmarks)
        return boxes.square().sum() + points.square().sum()

    grads = []
    for fn in (torch.compile(loss, fullgraph=True), loss):
        a, b = loc.clone().requires_grad_(), landmarks.clone().requires_grad_()
        fn(a, b).backward()
        grads.append((a.grad, b.grad))
    # Inductor may fuse the surrounding elementwise maths differently.
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)


@requires_cuda
def test_cuda_graph_capture():
    # No host sync and no allocation outside the caching allocator: the four
    # ops can be captured and replayed on new data.
    g = torch.Generator().manual_seed(27)
    priors = make_priors("cuda")
    inputs = {name: make_input(name, (2,), priors.shape[0], g, device="cuda") for name in OP_NAMES}
    static = {name: x.clone() for name, x in inputs.items()}
    for name in OP_NAMES:  # warm up (lazy initialisation) outside the capture
        run(name, static[name], priors)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = {name: run(name, static[name], priors) for name in OP_NAMES}
    for name in OP_NAMES:
        static[name].copy_(make_input(name, (2,), priors.shape[0], g, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    for name in OP_NAMES:
        assert torch.equal(outputs[name], run(name, static[name], priors))
