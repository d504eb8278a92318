"""Pure-PyTorch combined-margin softmax cross-entropy, insightface's way.

insightface (recognition/arcface_torch/losses.py, CombinedMarginLoss; then
F.cross_entropy or Partial FC's DistCrossEntropy) puts the margin on the
target logit of a copy of the cosine logits, scales the copy by s and takes
the softmax cross-entropy. This module does the same with PyTorch's own
functions, so autograd differentiates it; it is the oracle of the fused op
(retinaface_ext.ops.margin_cross_entropy, whose docstring defines the
semantics) and its fallback. It keeps [N, C] copies and indexes with
nonzero() (a host sync on CUDA): clarity, not speed.
"""
import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")
GRADIENT_MODES = ("straight_through", "exact")
# The clamp of theta in the exact derivative (csrc/common/margin_math.h: kMarginThetaEps).
THETA_EPS = 1e-3


class MarginStats(NamedTuple):
    """Per-row statistics of the scaled, margined logits of one shard of classes, each [N].

    row_max: max_j z_j (no gradient: a shift); row_sumexp: sum_j exp(z_j - row_max)
    (its gradient holds row_max fixed); target_logit: z of the row's target
    class if this shard holds it, else 0. z_j = s * cos_j, and s * (g(cos_t) - m3)
    on the target. float32 (float64 for float64 logits).
    """

    row_max: torch.Tensor
    row_sumexp: torch.Tensor
    target_logit: torch.Tensor


def check_options(reduction: str, gradient: str, fn: str = "margin_cross_entropy") -> None:
    """RuntimeError naming the option, like the op's TORCH_CHECKs (and focal_loss's reduction)."""
    if reduction not in REDUCTIONS:
        raise RuntimeError(f"{fn}(): reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if gradient not in GRADIENT_MODES:
        raise RuntimeError(f"{fn}(): gradient must be one of {GRADIENT_MODES}, got {gradient!r}")


def _check_args(cos_logits, labels, s, m1, m2, m3, class_offset, num_classes):
    # The fused op's checks (csrc/common/margin_cross_entropy_checks.h), same messages.
    op = "margin_cross_entropy()"
    if cos_logits.dim() != 2:
        raise RuntimeError(f"{op}: cos_logits must have shape [N, C], got {list(cos_logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != cos_logits.shape[0]:
        raise RuntimeError(f"{op}: labels must have shape [{cos_logits.shape[0]}], got {list(labels.shape)}")
    if not cos_logits.is_floating_point():
        raise RuntimeError(f"{op}: cos_logits must be a floating tensor, got {cos_logits.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise RuntimeError(f"{op}: labels must be an integer tensor, got {labels.dtype}")
    if labels.device != cos_logits.device:
        raise RuntimeError(f"{op}: labels must be on the same device as cos_logits ({cos_logits.device}), "
                           f"got {labels.device}")
    if not (math.isfinite(s) and s > 0):
        raise RuntimeError(f"{op}: s must be a positive finite scale, got {s}")
    if not (math.isfinite(m1) and m1 > 0):
        raise RuntimeError(f"{op}: m1 must be positive and finite, got {m1}")
    if not (0 <= m2 < math.pi):
        raise RuntimeError(f"{op}: m2 must be in [0, pi), got {m2}")
    if not math.isfinite(m3):
        raise RuntimeError(f"{op}: m3 must be finite, got {m3}")
    if class_offset < 0:
        raise RuntimeError(f"{op}: class_offset must be >= 0, got {class_offset}")
    if num_classes < class_offset + cos_logits.shape[1]:
        raise RuntimeError(f"{op}: num_classes must be >= class_offset + C = {class_offset} + "
                           f"{cos_logits.shape[1]}, got {num_classes}")
    bad = (labels != -1) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise RuntimeError(f"{op}: labels must be -1 (ignored) or a class in [0, {num_classes}), "
                           f"got {int(labels[row])} at row {row}")


def cos_limit(m1: float, m2: float) -> float:
    """The cosine below which m1 * theta + m2 > pi (-2: never, for c in [-1, 1])."""
    theta_max = (math.pi - m2) / m1
    return math.cos(theta_max) if theta_max < math.pi else -2.0


def margin_cosine(cos: torch.Tensor, m1: float, m2: float) -> torch.Tensor:
    """g(cos): cos(m1 * acos(c) + m2) with c = clamp(cos, -1, 1) while m1 * acos(c) + m2 <= pi,
    its continuation -1 + (c - cos_limit) beyond; c itself when m1 = 1 and m2 = 0."""
    c = cos.clamp(-1, 1)
    if m1 == 1.0 and m2 == 0.0:
        return c
    limit = cos_limit(m1, m2)
    arc = torch.cos(torch.acos(c) * m1 + m2)
    linear = (c - limit) + -1.0
    return torch.where(c >= limit, arc, linear)


def margin_cosine_grad(cos: torch.Tensor, m1: float, m2: float) -> torch.Tensor:
    """dg/dcos as the "exact" mode defines it: m1 sin(m1 theta + m2) / sin(theta) with theta
    clamped to [THETA_EPS, pi - THETA_EPS]; 1 on the linear continuation and when m1 = 1, m2 = 0.
    The clamp of cos to [-1, 1] passes the gradient through."""
    c = cos.clamp(-1, 1)
    if m1 == 1.0 and m2 == 0.0:
        return torch.ones_like(c)
    theta = torch.acos(c).clamp(THETA_EPS, math.pi - THETA_EPS)
    arc = torch.sin(theta * m1 + m2) * m1 / torch.sin(theta)
    return torch.where(c >= cos_limit(m1, m2), arc, torch.ones_like(c))


class _MarginCosine(torch.autograd.Function):
    """g with the exact-mode derivative (plain autograd through acos is infinite at +-1)."""

    @staticmethod
    def forward(ctx, cos, m1, m2):
        ctx.save_for_backward(cos)
        ctx.m1, ctx.m2 = m1, m2
        return margin_cosine(cos, m1, m2)

    @staticmethod
    def backward(ctx, grad):
        (cos,) = ctx.saved_tensors
        return grad * margin_cosine_grad(cos, ctx.m1, ctx.m2), None, None


def reduce_margin_loss(per_row: torch.Tensor, counted: torch.Tensor, reduction: str) -> torch.Tensor:
    """"none": per_row; "sum": its sum; "mean": the sum over max(#counted rows, 1)."""
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / counted.sum().clamp(min=1)


def margin_cross_entropy(cos_logits: torch.Tensor, labels: torch.Tensor, s: float = 64.0, m1: float = 1.0,
                         m2: float = 0.5, m3: float = 0.0, reduction: str = "mean",
                         gradient: str = "straight_through", return_stats: bool = False,
                         class_offset: int = 0, num_classes: Optional[int] = None):
    """retinaface_ext.ops.margin_cross_entropy in plain PyTorch (same signature and results)."""
    check_options(reduction, gradient)
    num_local = cos_logits.shape[1] if cos_logits.dim() == 2 else 0
    total = class_offset + num_local if num_classes is None else num_classes
    _check_args(cos_logits, labels, s, m1, m2, m3, class_offset, total)

    compute = torch.float64 if cos_logits.dtype == torch.float64 else torch.float32
    x = cos_logits.to(compute)
    labels = labels.long()
    in_shard = (labels >= class_offset) & (labels < class_offset + num_local)
    target = torch.where(in_shard, labels - class_offset, torch.full_like(labels, -1))
    rows = in_shard.nonzero().squeeze(1)
    cols = target[rows]
    cos_target = x[rows, cols]
    if gradient == "exact":
        logits = x.index_put((rows, cols), _MarginCosine.apply(cos_target, m1, m2) - m3)
    else:
        # insightface: the margin is written into the logits under no_grad, so
        # autograd sees only `logits * s` (straight-through on the target).
        logits = x.clone()
        with torch.no_grad():
            logits[rows, cols] = margin_cosine(cos_target, m1, m2) - m3
    logits = logits * s

    if num_local == 0:
        per_row = logits.sum(1)  # zeros, attached to the graph
    else:
        per_row = F.cross_entropy(logits, target, ignore_index=-1, reduction="none")
    loss = reduce_margin_loss(per_row, in_shard, reduction)
    if not return_stats:
        return loss

    if num_local == 0:
        row_max = logits.new_full((logits.shape[0],), -math.inf)
    else:
        row_max = logits.detach().amax(1)
    row_sumexp = torch.exp(logits - row_max[:, None]).sum(1)
    target_logit = logits.new_zeros(logits.shape[0]).index_put((rows,), logits[rows, cols])
    return loss, MarginStats(row_max, row_sumexp, target_logit)


def combine_margin_stats(stats: Sequence[MarginStats], labels: torch.Tensor,
                         reduction: str = "mean") -> torch.Tensor:
    """The cross-entropy over all classes from the MarginStats of the shards that hold them.

    With K shards (each called with the same global labels and its own
    class_offset, num_classes = the total), per row
        M = max_k row_max_k
        S = sum_k row_sumexp_k * exp(row_max_k - M)
        loss = M + log(S) - sum_k target_logit_k
    (exactly one shard holds the target, the others give 0), rows with label
    -1 give 0, and "mean" divides by max(#rows with a label, 1). On devices
    this is an all-reduce MAX of row_max, then all-reduce SUMs of
    row_sumexp * exp(row_max - M) and of target_logit (differentiable
    all-reduces, e.g. torch.distributed.nn.functional.all_reduce, if the
    gradient should flow back). Gradients are exact: row_max only shifts.
    """
    check_options(reduction, "exact", "combine_margin_stats")
    if len(stats) == 0:
        raise RuntimeError("combine_margin_stats(): stats must hold the MarginStats of at least one shard, got none")
    rows = labels.shape
    for k, st in enumerate(stats):
        for name, t in zip(MarginStats._fields, st):
            if t.shape != rows:
                raise RuntimeError(f"combine_margin_stats(): stats[{k}].{name} must have the shape of labels "
                                   f"{list(rows)}, got {list(t.shape)}")
    row_max = torch.stack([st.row_max for st in stats]).detach()
    row_sumexp = torch.stack([st.row_sumexp for st in stats])
    target_logit = torch.stack([st.target_logit for st in stats])
    top = row_max.amax(0)
    total_sumexp = (row_sumexp * torch.exp(row_max - top)).sum(0)
    per_row = (top + torch.log(total_sumexp)) - target_logit.sum(0)
    labelled = labels != -1
    per_row = torch.where(labelled, per_row, torch.zeros_like(per_row))
    return reduce_margin_loss(per_row, labelled, reduction)
