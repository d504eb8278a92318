"""Focal losses (RetinaNet), fused: sigmoid_focal_loss and softmax_focal_loss.

Forward and backward are our kernels (csrc/cpu/focal_loss.cpp,
csrc/cuda/focal_loss_kernel.cu; the maths in csrc/common/focal_math.h), registered
with torch.library.register_autograd. Without the compiled extension both
functions fall back to retinaface_ext.reference.focal_loss (torchvision's
formula and autograd).
"""
from typing import Optional, Union

import torch

from .. import reference
from .._extension import HAS_EXTENSION, check_first_order, check_same_device, fused_op, register_fake

Normalizer = Union[None, float, int, torch.Tensor]


def _normalizer_tensor(normalizer: Normalizer) -> Optional[torch.Tensor]:
    """The op's `Tensor? normalizer`: a number becomes a CPU 0-dim float64 tensor,
    which the kernels read on the host (no device sync, no host-to-device copy)."""
    if normalizer is None or isinstance(normalizer, torch.Tensor):
        return normalizer
    return torch.tensor(float(normalizer), dtype=torch.float64)


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "none", normalizer: Normalizer = None,
                       background_index: Optional[int] = None, ignore_index: int = -1) -> torch.Tensor:
    """Sigmoid focal loss, torchvision.ops.sigmoid_focal_loss's semantics, fused.

    Per element, with x a logit and t its target: p = sigmoid(x),
    ce = binary cross-entropy with logits, p_t = p t + (1 - p)(1 - t),
    loss = alpha_t * ce * (1 - p_t) ** gamma with
    alpha_t = alpha t + (1 - alpha)(1 - t); a negative alpha disables the
    weighting (alpha_t = 1). gamma = 0 gives exactly alpha_t * BCE.

    targets is either
      * a float tensor of the shape of inputs (any shape): per-element targets
        in [0, 1], exactly as torchvision; or
      * an integer tensor of class labels for inputs [..., C], of shape [...]
        (inputs without the class dimension). A label in [0, C) is a one-hot
        target (that class 1, the others 0); ``background_index`` (default
        None: C, the mmdetection / detectron2 convention) is a background row
        (every class 0); ``ignore_index`` (default -1, detectron2's "ignored
        anchor") is a row with no loss and no gradient. Any other label is an
        error (the CPU raises; CUDA kernels cannot raise without a host sync
        and treat such a row as ignored).

    reduction: "none" (the loss per element, shape of inputs), "sum", or
    "mean" (the sum over the elements that count: all elements for float
    targets, C per non-ignored row for labels; 0 when there are none, where
    torch's mean would give NaN). normalizer (e.g. the number of positives):
    a number or a one-element tensor that divides the result of "none" or
    "sum" (not allowed with "mean"). A tensor normalizer on the inputs' device
    is read by the kernels on the device (no host sync, so the loss can be
    captured in a CUDA graph); a CPU tensor or a number is read on the host.
    It is not clamped (pass max(num_pos, 1)) and gets no gradient.

    Computed in float32 for float16/bfloat16/float32 inputs (float64 for
    float64); the loss is float32 (float64), the gradient w.r.t. inputs has the
    inputs' dtype. targets get no gradient.

    Numerics: p and 1 - p, the cross-entropy and 1 - p_t are computed without
    cancellation, so confident predictions keep an accurate loss and gradient
    (torchvision's formula rounds 1 - p_t to 0 there). For gamma < 1 the
    derivative of (1 - p_t)^gamma is infinite at p_t = 1, but it multiplies
    p(1 - p), which vanishes faster: the kernels compute the product as
    (1 - p_t)^gamma times a bounded ratio, so the gradient is finite for every
    gamma >= 0 (its limit, 0, where 1 - p_t underflows).
    """
    op = fused_op("sigmoid_focal_loss")
    if op is None:
        return reference.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction, normalizer,
                                            background_index, ignore_index)
    if background_index is None:
        background_index = inputs.shape[-1] if inputs.dim() > 0 else 0
    return op(inputs, targets, float(alpha), float(gamma), reduction, _normalizer_tensor(normalizer),
              int(background_index), int(ignore_index))


def softmax_focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "none", normalizer: Normalizer = None,
                       ignore_index: int = -1) -> torch.Tensor:
    """Softmax focal loss over classes, fused: -alpha_t (1 - p_t)^gamma log p_t.

    logits [..., C] (C >= 1), labels [...] integer in [0, C), p_t = softmax(
    logits)[label] with a stable log-softmax per row. Rows labelled
    ``ignore_index`` (default -1) give 0 and no gradient; other labels outside
    [0, C) are an error on the CPU and ignored by the CUDA kernels.

    alpha follows Detectron's SoftmaxFocalLoss: class 0 is the background and
    is weighted 1 - alpha, every other class alpha (alpha = 0.25 weights the
    background 0.75, as the sigmoid focal loss weights its negatives); a
    negative alpha disables the weighting. gamma = 0 gives exactly
    alpha_t * cross-entropy.

    reduction: "none" (per row, shape [...]), "sum" or "mean" (over the
    non-ignored rows; 0 when every row is ignored, where F.cross_entropy gives
    NaN). normalizer as in sigmoid_focal_loss: a number or one-element tensor
    dividing "none" / "sum", read on the device when it is there (no host
    sync), no gradient.

    float16/bfloat16 logits are computed in float32; the loss is float32
    (float64 for float64 logits), the gradient has the logits' dtype.
    1 - p_t is the sum of the other classes' probabilities (no cancellation)
    and the gradient's factor gamma p_t ce (1 - p_t)^(gamma - 1) is computed as
    (1 - p_t)^gamma p_t (ce / (1 - p_t)), with ce / (1 - p_t) -> 1, so it is
    finite for every gamma >= 0.
    """
    op = fused_op("softmax_focal_loss")
    if op is None:
        return reference.softmax_focal_loss(logits, labels, alpha, gamma, reduction, normalizer,
                                            ignore_index)
    return op(logits, labels, float(alpha), float(gamma), reduction, _normalizer_tensor(normalizer),
              int(ignore_index))


def _loss_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_devices(op, name, x, targets_name, targets, normalizer, grad=None):
    """The kernels' device checks: targets (and grad) on x's device; a normalizer there or on the CPU."""
    torch._check(x.is_floating_point(), lambda: f"{op}(): {name} must be a floating tensor, got {x.dtype}")
    check_same_device(op, name, x, **{targets_name: targets}, grad=grad)
    if normalizer is not None and normalizer.device.type != "cpu":
        check_same_device(op, name, x, normalizer=normalizer)


@register_fake("sigmoid_focal_loss")
def _sigmoid_focal_loss_fake(inputs, targets, alpha, gamma, reduction, normalizer, background_index,
                             ignore_index):
    _check_devices("sigmoid_focal_loss", "inputs", inputs, "targets", targets, normalizer)
    shape = inputs.shape if reduction == "none" else ()
    return inputs.new_empty(shape, dtype=_loss_dtype(inputs))


@register_fake("sigmoid_focal_loss_backward")
def _sigmoid_focal_loss_backward_fake(grad, inputs, targets, alpha, gamma, reduction, normalizer,
                                      background_index, ignore_index):
    _check_devices("sigmoid_focal_loss_backward", "inputs", inputs, "targets", targets, normalizer, grad)
    return inputs.new_empty(inputs.shape)  # contiguous, whatever the input strides


@register_fake("softmax_focal_loss")
def _softmax_focal_loss_fake(logits, labels, alpha, gamma, reduction, normalizer, ignore_index):
    torch._check(logits.dim() >= 1, lambda: "softmax_focal_loss(): logits must have shape [..., C]")
    _check_devices("softmax_focal_loss", "logits", logits, "labels", labels, normalizer)
    shape = logits.shape[:-1] if reduction == "none" else ()
    return logits.new_empty(shape, dtype=_loss_dtype(logits))


@register_fake("softmax_focal_loss_backward")
def _softmax_focal_loss_backward_fake(grad, logits, labels, alpha, gamma, reduction, normalizer,
                                      ignore_index):
    _check_devices("softmax_focal_loss_backward", "logits", logits, "labels", labels, normalizer, grad)
    return logits.new_empty(logits.shape)


def _sigmoid_setup_context(ctx, inputs, output):
    x, targets, alpha, gamma, reduction, normalizer, background_index, ignore_index = inputs
    ctx.save_for_backward(x, targets, normalizer)
    ctx.options = (alpha, gamma, reduction)
    ctx.indices = (background_index, ignore_index)


def _sigmoid_backward(ctx, grad):
    x, targets, normalizer = ctx.saved_tensors
    check_first_order("sigmoid_focal_loss", x, grad)
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.retinaface.sigmoid_focal_loss_backward(
            grad, x, targets, *ctx.options, normalizer, *ctx.indices)
    return (grad_x,) + (None,) * 7


def _softmax_setup_context(ctx, inputs, output):
    logits, labels, alpha, gamma, reduction, normalizer, ignore_index = inputs
    ctx.save_for_backward(logits, labels, normalizer)
    ctx.options = (alpha, gamma, reduction)
    ctx.ignore_index = ignore_index


def _softmax_backward(ctx, grad):
    logits, labels, normalizer = ctx.saved_tensors
    check_first_order("softmax_focal_loss", logits, grad)
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = torch.ops.retinaface.softmax_focal_loss_backward(
            grad, logits, labels, *ctx.options, normalizer, ctx.ignore_index)
    return (grad_logits,) + (None,) * 6


if HAS_EXTENSION:
    torch.library.register_autograd("retinaface::sigmoid_focal_loss", _sigmoid_backward,
                                    setup_context=_sigmoid_setup_context)
    torch.library.register_autograd("retinaface::softmax_focal_loss", _softmax_backward,
                                    setup_context=_softmax_setup_context)
