"""Pure-PyTorch focal losses (Lin et al., "Focal Loss for Dense Object Detection").

sigmoid_focal_loss is torchvision.ops.sigmoid_focal_loss's formula, written
out here (torchvision is not a dependency): p = sigmoid(x),
ce = BCE-with-logits, p_t = p t + (1 - p)(1 - t), loss = ce (1 - p_t)^gamma,
times alpha_t = alpha t + (1 - alpha)(1 - t) when alpha >= 0. Integer class
labels are turned into one-hot float targets first. softmax_focal_loss is
-alpha_t (1 - p_t)^gamma log p_t with PyTorch's log_softmax.

Both are differentiated by autograd. The one liberty taken with torchvision's
formula is in (1 - p_t)^gamma for gamma < 1: its value is the same, but at
1 - p_t = 0 (which float rounding reaches for confident predictions) the
gradient of pow would be inf * 0 = NaN, so there the factor is treated as a
constant (gradient 0, the limit). The fused ops in retinaface_ext.ops compute
1 - p_t without cancellation and are more accurate for confident predictions
than this formula is in float32. Same signatures as retinaface_ext.ops.
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F

Normalizer = Union[None, float, int, torch.Tensor]

REDUCTIONS = ("none", "sum", "mean")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_options(op, alpha, gamma, reduction, normalizer):
    if reduction not in REDUCTIONS:
        raise RuntimeError(f"{op}(): reduction must be 'none', 'sum' or 'mean', got '{reduction}'")
    if not (gamma >= 0 and gamma != float("inf")):
        raise RuntimeError(f"{op}(): gamma must be a finite number >= 0, got {gamma}")
    if not alpha <= 1:
        raise RuntimeError(f"{op}(): alpha must be in [0, 1] (or negative to disable the weighting), "
                           f"got {alpha}")
    if normalizer is not None and reduction == "mean":
        raise RuntimeError(f"{op}(): normalizer cannot be combined with reduction='mean' "
                           "(use 'sum' or 'none')")
    if isinstance(normalizer, torch.Tensor):
        if normalizer.numel() != 1:
            raise RuntimeError(f"{op}(): normalizer must have one element (e.g. the number of positives), "
                               f"got shape {list(normalizer.shape)}")
        if normalizer.dtype == torch.bool or normalizer.is_complex():
            raise RuntimeError(f"{op}(): normalizer must be a floating or integer tensor, got {normalizer.dtype}")


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_same_device(op, name, tensor, other_name, other):
    if tensor.device != other.device:
        raise RuntimeError(f"{op}(): {name} must be on the same device as {other_name} ({other.device}), "
                           f"got {tensor.device}")


def modulating_factor(one_minus_pt: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p_t) ** gamma; for gamma < 1 with a zero (not NaN) gradient where 1 - p_t = 0."""
    if gamma >= 1:
        return one_minus_pt ** gamma
    if gamma == 0:
        return torch.ones_like(one_minus_pt)  # 0 ** 0 = 1: plain cross-entropy
    positive = one_minus_pt > 0
    safe = torch.where(positive, one_minus_pt, torch.ones_like(one_minus_pt))
    return torch.where(positive, safe ** gamma, torch.zeros_like(one_minus_pt))


def _reduce(loss, reduction, normalizer, count):
    if reduction == "mean":
        return loss.sum() / count.clamp(min=1).to(loss.dtype)
    out = loss.sum() if reduction == "sum" else loss
    return out if normalizer is None else out / normalizer


def torchvision_sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                                   gamma: float = 2.0) -> torch.Tensor:
    """Element-wise torchvision.ops.sigmoid_focal_loss (reduction='none') on float targets."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    # At +-inf the cross-entropy's limit: 0 when the target agrees, inf otherwise (the kernels'
    # value; the formula computes inf - inf there).
    disagrees = torch.where(inputs > 0, targets < 1, targets > 0)
    limit = torch.where(disagrees, float("inf"), 0.0).to(ce_loss.dtype)
    ce_loss = torch.where(torch.isinf(inputs), limit, ce_loss)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * modulating_factor(1 - p_t, gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "none", normalizer: Normalizer = None,
                       background_index: Optional[int] = None, ignore_index: int = -1) -> torch.Tensor:
    """retinaface_ext.ops.sigmoid_focal_loss, written with torchvision's formula."""
    op = "sigmoid_focal_loss"
    _check_options(op, alpha, gamma, reduction, normalizer)
    _check_same_device(op, "targets", targets, "inputs", inputs)
    if not inputs.is_floating_point():
        raise RuntimeError(f"{op}(): inputs must be a floating tensor, got {inputs.dtype}")
    if not targets.is_floating_point() and not _is_integer(targets):
        raise RuntimeError(f"{op}(): targets must be a floating tensor (per-element targets) or an integer "
                           f"tensor (class labels), got {targets.dtype}")
    dtype = _compute_dtype(inputs)
    x = inputs.to(dtype)
    if targets.is_floating_point():
        if targets.shape != inputs.shape:
            raise RuntimeError(f"{op}(): float targets must have the shape of inputs {list(inputs.shape)}, "
                               f"got {list(targets.shape)}")
        loss = torchvision_sigmoid_focal_loss(x, targets.to(dtype), alpha, gamma)
        count = torch.tensor(loss.numel(), device=loss.device)
        return _reduce(loss, reduction, normalizer, count)

    if inputs.dim() < 1:
        raise RuntimeError(f"{op}(): inputs must have a class dimension [..., C] with integer targets, "
                           f"got shape {list(inputs.shape)}")
    num_classes = inputs.shape[-1]
    if background_index is None:
        background_index = num_classes
    if background_index == ignore_index:
        raise RuntimeError(f"{op}(): background_index and ignore_index must differ, got {ignore_index} for both")
    if targets.shape != inputs.shape[:-1]:
        raise RuntimeError(f"{op}(): integer targets (class labels) must have shape "
                           f"{list(inputs.shape[:-1])}, got {list(targets.shape)}")
    labels = targets.long()
    ignored = labels == ignore_index
    background = labels == background_index
    known = ignored | background | ((labels >= 0) & (labels < num_classes))
    if not bool(known.all()):
        bad = int(labels[~known][0])
        raise RuntimeError(f"{op}(): targets must hold class indices in [0, {num_classes}), "
                           f"background_index {background_index} or ignore_index {ignore_index}, "
                           f"got {bad}")
    positive = torch.where(ignored | background, torch.full_like(labels, -1), labels)
    classes = torch.arange(num_classes, device=inputs.device)
    one_hot = (positive[..., None] == classes).to(dtype)
    loss = torchvision_sigmoid_focal_loss(x, one_hot, alpha, gamma)
    loss = torch.where(ignored[..., None], torch.zeros_like(loss), loss)
    count = (~ignored).sum() * num_classes
    return _reduce(loss, reduction, normalizer, count)


def softmax_focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "none", normalizer: Normalizer = None,
                       ignore_index: int = -1) -> torch.Tensor:
    """retinaface_ext.ops.softmax_focal_loss with log_softmax and autograd."""
    op = "softmax_focal_loss"
    _check_options(op, alpha, gamma, reduction, normalizer)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise RuntimeError(f"{op}(): logits must have shape [..., C] with C >= 1, got {list(logits.shape)}")
    if not logits.is_floating_point():
        raise RuntimeError(f"{op}(): logits must be a floating tensor, got {logits.dtype}")
    if not _is_integer(labels):
        raise RuntimeError(f"{op}(): labels must be an integer tensor, got {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise RuntimeError(f"{op}(): labels must have shape {list(logits.shape[:-1])}, got {list(labels.shape)}")
    _check_same_device(op, "labels", labels, "logits", logits)
    num_classes = logits.shape[-1]
    labels = labels.long()
    ignored = labels == ignore_index
    if not bool((ignored | ((labels >= 0) & (labels < num_classes))).all()):
        bad = int(labels[~ignored & ((labels < 0) | (labels >= num_classes))][0])
        raise RuntimeError(f"{op}(): labels must be in [0, {num_classes}) or ignore_index "
                           f"{ignore_index}, got {bad}")
    dtype = _compute_dtype(logits)
    x = logits.to(dtype)
    # Rows whose maximum is infinite: logits equal to it count as equal (difference 0, where
    # inf - inf is NaN), so +inf logits share the probability, as in the kernels.
    row_max = x.amax(dim=-1, keepdim=True)
    x = torch.where(torch.isinf(row_max), torch.where(x == row_max, torch.zeros_like(x), x - row_max), x)
    log_p = F.log_softmax(x, dim=-1)
    target = torch.where(ignored, torch.zeros_like(labels), labels)
    log_pt = log_p.gather(-1, target[..., None])[..., 0]
    one_minus_pt = -torch.expm1(log_pt)
    loss = -modulating_factor(one_minus_pt, gamma) * log_pt
    if alpha >= 0:
        alpha_t = torch.full_like(loss, alpha).masked_fill(target == 0, 1 - alpha)
        loss = alpha_t * loss
    loss = torch.where(ignored, torch.zeros_like(loss), loss)
    return _reduce(loss, reduction, normalizer, (~ignored).sum())
