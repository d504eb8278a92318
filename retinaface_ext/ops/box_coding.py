"""Box coding: encode / decode boxes and landmarks against priors (biubug6 box_utils).

All four ops take a first argument of shape [..., P, R] (R = 4 for boxes,
10 for landmarks) with any number of leading batch dims, including none and
zero-size ones, and priors [P, 4] (cx, cy, w, h) on the same device that
apply along the second-to-last dim. The result has the shape and dtype of the
first argument; float16/bfloat16 are computed in float32, float64 in float64.
The priors may have any floating dtype (e.g. float32 priors with float16
predictions under autocast): they are read in that compute dtype, and a
gradient w.r.t. them has their dtype. decode and decode_landmarks are
differentiable (w.r.t. both the predictions and the priors); encode and
encode_landmarks build targets and have no gradient (backpropagating through
them raises).
"""
from typing import Sequence

import torch

from .. import defaults, reference
from .._extension import HAS_EXTENSION, check_same_device, fused_op, register_fake, register_no_gradient
from ..reference._checks import check_variances


def _variances(variances: Sequence[float]):
    return [float(v) for v in variances]


def encode(
    boxes: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = defaults.VARIANCES
) -> torch.Tensor:
    """Regression targets of xyxy ground-truth boxes against priors: [..., P, 4] -> [..., P, 4].

    loc = ((cxy_gt - cxy_prior) / (variances[0] * wh_prior),
           log(wh_gt / wh_prior) / variances[1]), in biubug6's order of operations.

    Deliberate difference from biubug6: the ratio wh_gt / wh_prior is clamped
    at 1e-6 before the log (csrc/common/box_math.h kMinEncodedRatio), so a
    zero-area (or inverted) box gives a large finite target, log(1e-6) / 0.2
    ~ -69, where biubug6 writes -inf (or NaN). Results are otherwise equal.
    """
    op = fused_op("encode")
    if op is None:
        _check_coding_args("encode", "boxes", boxes, priors, variances, 4)
        return reference.encode(boxes, priors, variances)
    return op(boxes, priors, _variances(variances))


def decode(
    loc: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = defaults.VARIANCES
) -> torch.Tensor:
    """xyxy boxes from predicted offsets against priors: [..., P, 4] -> [..., P, 4].

    cxy = cxy_prior + loc[:2] * variances[0] * wh_prior,
    wh = wh_prior * exp(loc[2:] * variances[1]); x1y1 = cxy - wh / 2,
    x2y2 = x1y1 + wh (biubug6's order of operations, so float32 results equal
    biubug6's decode up to the rounding of exp). Differentiable w.r.t. loc and
    priors, e.g. for IoU-style losses on decoded predictions.
    """
    op = fused_op("decode")
    if op is None:
        _check_coding_args("decode", "loc", loc, priors, variances, 4)
        return reference.decode(loc, priors, variances)
    return op(loc, priors, _variances(variances))


def encode_landmarks(
    landmarks: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = defaults.VARIANCES
) -> torch.Tensor:
    """Offsets of 5 landmark points against priors: [..., P, 10] -> [..., P, 10].

    Points are ordered x0, y0 .. x4, y4; offset = (pt - cxy_prior) /
    (variances[0] * wh_prior). Uses variances[0] only, as biubug6's encode_landm.
    """
    op = fused_op("encode_landmarks")
    if op is None:
        _check_coding_args("encode_landmarks", "landmarks", landmarks, priors, variances, 10)
        return reference.encode_landmarks(landmarks, priors, variances)
    return op(landmarks, priors, _variances(variances))


def decode_landmarks(
    landmarks: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = defaults.VARIANCES
) -> torch.Tensor:
    """5 landmark points from predicted offsets: [..., P, 10] -> [..., P, 10].

    pt = cxy_prior + offset * variances[0] * wh_prior, points x0, y0 .. x4, y4.
    Uses variances[0] only, as biubug6's decode_landm. Differentiable w.r.t.
    landmarks and priors.
    """
    op = fused_op("decode_landmarks")
    if op is None:
        _check_coding_args("decode_landmarks", "landmarks", landmarks, priors, variances, 10)
        return reference.decode_landmarks(landmarks, priors, variances)
    return op(landmarks, priors, _variances(variances))


# ---------------------------------------------------------------- fake (meta)
# The kernels return a new contiguous tensor shaped like their first argument.
# The fake implementations repeat the kernels' checks (same messages): under
# torch.compile they are what reports a bad call, and a priors tensor on the
# meta device dispatches here rather than to the kernel of the other argument.
# The fallback to the reference (no extension) runs the same checks.

_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_coding_args(op, name, tensor, priors, variances, row_size):
    shape = list(tensor.shape)
    torch._check(
        tensor.dim() >= 2 and tensor.shape[-1] == row_size,
        lambda: f"{op}(): {name} must have shape [..., P, {row_size}], got {shape}",
    )
    torch._check(
        tensor.dtype in _FLOATING,
        lambda: f"{op}(): {name} must be a floating tensor (float32, float64, float16 or "
        f"bfloat16), got {tensor.dtype}",
    )
    torch._check(
        priors.dim() == 2 and priors.shape[1] == 4,
        lambda: f"{op}(): priors must have shape [P, 4], got {list(priors.shape)}",
    )
    torch._check(
        priors.shape[0] == tensor.shape[-2],
        lambda: f"{op}(): priors must have shape [P, 4] with P = {name}.size(-2) = "
        f"{tensor.shape[-2]}, got {list(priors.shape)}",
    )
    torch._check(
        priors.dtype in _FLOATING,
        lambda: f"{op}(): priors must be a floating tensor (float32, float64, float16 or "
        f"bfloat16), got {priors.dtype}",
    )
    check_same_device(op, name, tensor, priors=priors)
    check_variances(op, variances)


@register_fake("encode")
def _encode_fake(boxes, priors, variances):
    _check_coding_args("encode", "boxes", boxes, priors, variances, 4)
    return boxes.new_empty(boxes.shape)


@register_fake("decode")
def _decode_fake(loc, priors, variances):
    _check_coding_args("decode", "loc", loc, priors, variances, 4)
    return loc.new_empty(loc.shape)


@register_fake("encode_landmarks")
def _encode_landmarks_fake(landmarks, priors, variances):
    _check_coding_args("encode_landmarks", "landmarks", landmarks, priors, variances, 10)
    return landmarks.new_empty(landmarks.shape)


@register_fake("decode_landmarks")
def _decode_landmarks_fake(landmarks, priors, variances):
    _check_coding_args("decode_landmarks", "landmarks", landmarks, priors, variances, 10)
    return landmarks.new_empty(landmarks.shape)


# ------------------------------------------------------------------- autograd
# Closed-form derivatives, written in PyTorch (so they are differentiable
# again) and computed in the kernels' compute dtype.


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sum_to_priors(grad):
    """[..., P, 4] -> [P, 4]: priors are broadcast over the leading dims."""
    if grad.dim() == 2:
        return grad
    return grad.sum(dim=tuple(range(grad.dim() - 2)))


def _decode_setup_context(ctx, inputs, output):
    loc, priors, variances = inputs
    ctx.save_for_backward(loc, priors)
    ctx.variances = variances


def _decode_backward(ctx, grad):
    loc, priors = ctx.saved_tensors
    var0, var1 = ctx.variances[0], ctx.variances[1]
    dtype = _compute_dtype(loc.dtype)
    grad, loc_c, pri = grad.to(dtype), loc.to(dtype), priors.to(dtype)
    # x1y1 = cxy - wh / 2 and x2y2 = cxy + wh / 2, with
    # cxy = cxy_p + loc[:2] * var0 * wh_p and wh = wh_p * exp(loc[2:] * var1).
    grad_center = grad[..., :2] + grad[..., 2:]
    grad_size = (grad[..., 2:] - grad[..., :2]) / 2
    scale = torch.exp(loc_c[..., 2:] * var1)
    grad_loc = grad_priors = None
    if ctx.needs_input_grad[0]:
        grad_loc = torch.cat(
            [grad_center * var0 * pri[:, 2:], grad_size * pri[:, 2:] * scale * var1], dim=-1
        ).to(loc.dtype)
    if ctx.needs_input_grad[1]:
        grad_wh = grad_center * loc_c[..., :2] * var0 + grad_size * scale
        grad_priors = _sum_to_priors(torch.cat([grad_center, grad_wh], dim=-1))
        grad_priors = grad_priors.to(priors.dtype)
    return grad_loc, grad_priors, None


def _decode_landmarks_backward(ctx, grad):
    offsets, priors = ctx.saved_tensors
    var0 = ctx.variances[0]
    dtype = _compute_dtype(offsets.dtype)
    grad = grad.to(dtype).unflatten(-1, (5, 2))
    pri = priors.to(dtype)
    # pt = cxy_p + offset * var0 * wh_p for each of the 5 points.
    grad_offsets = grad_priors = None
    if ctx.needs_input_grad[0]:
        grad_offsets = (grad * var0 * pri[:, None, 2:]).flatten(-2).to(offsets.dtype)
    if ctx.needs_input_grad[1]:
        offsets_c = offsets.to(dtype).unflatten(-1, (5, 2))
        grad_center = grad.sum(-2)
        grad_wh = (grad * offsets_c * var0).sum(-2)
        grad_priors = _sum_to_priors(torch.cat([grad_center, grad_wh], dim=-1))
        grad_priors = grad_priors.to(priors.dtype)
    return grad_offsets, grad_priors, None


# Regression targets are built from ground truth and are not meant to be differentiated.
for _name in ("encode", "encode_landmarks"):
    register_no_gradient(_name, "it builds regression targets from ground truth. Detach its inputs, or "
                         "decode the predictions and differentiate decode() instead.")

if HAS_EXTENSION:
    torch.library.register_autograd(
        "retinaface::decode", _decode_backward, setup_context=_decode_setup_context
    )
    torch.library.register_autograd(
        "retinaface::decode_landmarks", _decode_landmarks_backward, setup_context=_decode_setup_context
    )
