from typing import Optional

import torch

from .. import reference
from .._extension import HAS_EXTENSION, check_first_order, check_same_device, fused_op, register_fake
from ..reference.margin_cross_entropy import (
    MarginStats,
    check_options,
    combine_margin_stats,
    reduce_margin_loss,
)

__all__ = ["MarginStats", "combine_margin_stats", "margin_cross_entropy"]


def margin_cross_entropy(cos_logits: torch.Tensor, labels: torch.Tensor, s: float = 64.0, m1: float = 1.0,
                         m2: float = 0.5, m3: float = 0.0, reduction: str = "mean",
                         gradient: str = "straight_through", return_stats: bool = False,
                         class_offset: int = 0, num_classes: Optional[int] = None):
    """Combined-margin softmax cross-entropy (ArcFace, CosFace, SphereFace), fused.

    Inputs: cos_logits [N, C], the cosines between L2-normalised features and
    class weights (float32, float16, bfloat16 or float64; any strides);
    labels [N], any integer dtype, -1 = ignored.

    Logits (insightface's CombinedMarginLoss): z_j = s * cos_j for every class
    but the target; the target's is z_t = s * (g(cos_t) - m3), with
    c = clamp(cos_t, -1, 1), theta = acos(c) and
        g = cos(m1 * theta + m2)           while m1 * theta + m2 <= pi,
        g = -1 + (c - cos(theta_max))      beyond, theta_max = (pi - m2) / m1.
    ArcFace = (m1, m2, m3) = (1, 0.5, 0), CosFace = (1, 0, 0.35), SphereFace
    approximated as (1.35, 0, 0). The loss of a row is
    logsumexp_j(z_j) - z_t (a softmax cross-entropy); "mean" divides the sum by
    the number of rows with a label, at least 1 (so a batch of -1 labels gives
    0, not NaN as F.cross_entropy would), "sum" sums, "none" gives [N] with 0
    on ignored rows. The loss is float32 (float64 for float64 logits);
    float16/bfloat16 are computed in float32 and get their gradient in their
    own dtype.

    Where we differ from insightface:
      * theta + m2 > pi: insightface's CombinedMarginLoss takes cos(theta + m2)
        as is, which turns back up past pi (the target logit then grows as the
        sample moves away from its class); its original ArcFace switched there
        to cos - m2 * sin(m2), a jump. We continue linearly in c with slope 1
        from the value -1 at theta_max: g stays increasing in cos, continuous
        and finite (-1 - (1 + cos(theta_max)) at worst).
      * insightface's margin branch round-trips every logit through
        cos(acos(.)) and needs m1 = 1 and m3 = 0, or else ignores m1 and m2 and
        applies m3 only (m3 > 0), and raises otherwise; we apply the combined
        formula above for any m1 > 0, 0 <= m2 < pi, m3, and use the cosines
        of the other classes as they are. m1 = 1, m2 = 0 gives g = c exactly.
      * Not provided: insightface's interclass_filtering_threshold (off by
        default there) and the old ArcFace's easy_margin (margin only where
        cos > 0; False in insightface).

    gradient="straight_through" (insightface): CombinedMarginLoss's ArcFace
    branch computes arccos, adds m2 on the target and takes cos in place under
    torch.no_grad(), and only then multiplies by s, so autograd sees
    z = s * cos: the target column's gradient is s * (softmax_t - 1) * upstream
    with softmax_t taken from the margined logits, as if the margin were
    absent from that logit's derivative. (Its CosFace branch subtracts m3 with
    autograd on, but that has slope 1, so it is the same gradient.) The other
    columns get s * softmax_j * upstream in both modes.
    gradient="exact": the target column is further multiplied by
    dg/dcos = m1 * sin(m1 * theta + m2) / sin(theta), with theta clamped to
    [1e-3, pi - 1e-3] so it stays finite at cos = +-1 (and takes the limit m1^2
    at cos = 1 when m2 = 0); 1 on the linear continuation and when m1 = 1,
    m2 = 0. The clamp of cos to [-1, 1] passes the gradient through.

    Classes sharded over devices (Partial FC): pass this shard's columns,
    class_offset (the global index of its first column) and num_classes (the
    total; default class_offset + C), with the global labels. A label of
    another shard is "not in this shard": that row's loss here is 0 and not
    counted by "mean", but it still enters the statistics. With
    return_stats=True the result is (loss, MarginStats(row_max, row_sumexp,
    target_logit)), per row of this shard's logits z, and
    combine_margin_stats() of the shards' stats gives the full loss and exact
    gradients (its docstring has the formula and the all-reduces).

    Fused: one pass per row with an online max and sum-exp; no softmax, no
    copy of the logits, nothing [N, C] but the gradient, which the backward
    writes once from the saved per-row max and sum-exp. Labels outside
    [-1, num_classes) raise on the CPU; on CUDA (no host sync) such a row's
    loss is NaN. CUDA results do not depend on scheduling (no float atomics).
    """
    check_options(reduction, gradient)
    op = fused_op("margin_cross_entropy")
    if op is None:
        return reference.margin_cross_entropy(cos_logits, labels, s, m1, m2, m3, reduction, gradient,
                                              return_stats, class_offset, num_classes)
    num_local = cos_logits.shape[1] if cos_logits.dim() == 2 else 0
    total = class_offset + num_local if num_classes is None else num_classes
    per_row, row_max, row_sumexp, target_logit = op(
        cos_logits, labels, float(s), float(m1), float(m2), float(m3), int(class_offset), int(total),
        gradient == "exact")
    counted = (labels >= class_offset) & (labels < class_offset + num_local)
    loss = reduce_margin_loss(per_row, counted, reduction)
    if return_stats:
        return loss, MarginStats(row_max, row_sumexp, target_logit)
    return loss


def _loss_dtype(cos_logits):
    return torch.float64 if cos_logits.dtype == torch.float64 else torch.float32


@register_fake("margin_cross_entropy")
def _margin_cross_entropy_fake(cos_logits, labels, s, m1, m2, m3, class_offset, num_classes,
                               exact_gradient):
    torch._check(cos_logits.dim() == 2,
                 lambda: f"margin_cross_entropy(): cos_logits must have shape [N, C], got {list(cos_logits.shape)}")
    torch._check(labels.dim() == 1 and labels.shape[0] == cos_logits.shape[0],
                 lambda: f"margin_cross_entropy(): labels must have shape [{cos_logits.shape[0]}], "
                 f"got {list(labels.shape)}")
    check_same_device("margin_cross_entropy", "cos_logits", cos_logits, labels=labels)
    rows = (cos_logits.shape[0],)
    dtype = _loss_dtype(cos_logits)
    return tuple(cos_logits.new_empty(rows, dtype=dtype) for _ in range(4))


@register_fake("margin_cross_entropy_backward")
def _margin_cross_entropy_backward_fake(grad_loss, grad_sumexp, grad_target, cos_logits, labels,
                                        row_max, row_sumexp, s, m1, m2, m3, class_offset,
                                        exact_gradient):
    check_same_device("margin_cross_entropy_backward", "cos_logits", cos_logits, labels=labels,
                      grad_loss=grad_loss, grad_sumexp=grad_sumexp, grad_target=grad_target,
                      row_max=row_max, row_sumexp=row_sumexp)
    # The kernel returns a contiguous gradient whatever the input strides.
    return cos_logits.new_empty(cos_logits.shape)


def _setup_context(ctx, inputs, output):
    cos_logits, labels, s, m1, m2, m3, class_offset, _num_classes, exact_gradient = inputs
    _per_row, row_max, row_sumexp, _target_logit = output
    ctx.save_for_backward(cos_logits, labels, row_max, row_sumexp)
    ctx.options = (s, m1, m2, m3, class_offset, exact_gradient)
    # row_max is a shift: combine_margin_stats and the loss do not depend on it.
    ctx.mark_non_differentiable(row_max)


def _backward(ctx, grad_loss, _grad_max, grad_sumexp, grad_target):
    cos_logits, labels, row_max, row_sumexp = ctx.saved_tensors
    check_first_order("margin_cross_entropy", cos_logits, grad_loss, grad_sumexp, grad_target)
    zeros = None
    grads = []
    for g in (grad_loss, grad_sumexp, grad_target):
        if g is None:
            zeros = row_max.new_zeros(row_max.shape) if zeros is None else zeros
            g = zeros
        grads.append(g)
    grad = torch.ops.retinaface.margin_cross_entropy_backward(
        *grads, cos_logits, labels, row_max, row_sumexp, *ctx.options)
    return (grad,) + (None,) * 8


if HAS_EXTENSION:
    torch.library.register_autograd("retinaface::margin_cross_entropy", _backward,
                                    setup_context=_setup_context)
