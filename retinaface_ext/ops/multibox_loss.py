from typing import Sequence, Tuple

import torch

from .. import defaults, reference
from .._extension import HAS_EXTENSION, check_first_order, check_same_device, fused_op, register_fake
from ..reference._checks import check_neg_pos_ratio, check_unit_interval
from .focal_loss import softmax_focal_loss

CONF_LOSSES = ("ce", "focal")


def multibox_loss(
    loc: torch.Tensor,
    conf: torch.Tensor,
    landms: torch.Tensor,
    priors: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_landms: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_counts: torch.Tensor,
    threshold: float = defaults.MATCH_THRESHOLD,
    neg_pos_ratio: int = defaults.NEG_POS_RATIO,
    variances: Sequence[float] = defaults.VARIANCES,
    min_best_iou: float = defaults.MIN_BEST_IOU,
    conf_loss: str = "ce",
    focal_alpha: float = defaults.FOCAL_ALPHA,
    focal_gamma: float = defaults.FOCAL_GAMMA,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """biubug6's MultiBox loss, fused: -> (loss_l, loss_c, loss_landm), 0-dim tensors.

    Shapes: predictions loc [B, P, 4], conf [B, P, C] (C >= 2, class 1 = face),
    landms [B, P, 10]; priors [P, 4] (cx, cy, w, h); padded ground truth
    gt_boxes [B, G, 4] xyxy, gt_landms [B, G, 10], gt_labels [B, G] (1 = face
    with landmarks, -1 = face without; float or int) and gt_counts [B] (the
    first gt_counts[b] rows of image b are real).

    Semantics (biubug6): priors are matched to ground truth as
    retinaface_ext.ops.match does; positives are matched priors whose label is
    not 0, and their conf target is class 1.
      loss_l     = SmoothL1(sum) of loc vs encode(matched box), positives / N
      loss_landm = SmoothL1(sum) of landms vs encode_landmarks, label > 0 / N1
      loss_c     = cross-entropy(sum) over positives and hard negatives / N
    where the hard negatives of an image are hard_negative_mask of the
    per-prior loss logsumexp(conf) - conf[0], k = min(neg_pos_ratio * num_pos,
    P - 1); N = max(#positives in the batch, 1), N1 = max(#label > 0, 1).
    With two classes that loss is softplus(conf[1] - conf[0]), and the
    kernels (CPU and CUDA alike) rank by the logit difference itself: the
    exact order of the loss. The reference ranks its rounded float value of
    logsumexp(conf) - conf[0], whose rounding error grows with the logits'
    magnitude, so priors whose losses differ by less than that rounding (or
    round to the same float) are the one place where the selections may
    differ; positives rank below every background prior with a finite
    difference (softplus(-inf) = 0, the positives' zeroed loss), as in the
    reference up to the same rounding. The loss added for a selected
    negative is softplus of its difference, so a background prior whose
    conf[0] is +inf (difference -inf) has mining loss 0, ranks last and adds
    0, where the reference computes inf - inf = NaN, ranks it first and
    returns a NaN loss_c.

    Differentiable w.r.t. loc, conf and landms (a fused backward kernel).
    The losses are float32 (float64 for float64 predictions); float16 and
    bfloat16 predictions are computed in float32 and get gradients in their own
    dtype. No host sync on the fused path: on CUDA, forward and backward
    (matching, hard negative selection, N and N1, the divisions, the incoming
    loss gradients) stay on the device and can be captured in a CUDA graph;
    results do not depend on scheduling (no float atomics). What the CPU
    rejects with an error but the device cannot report: gt_counts outside
    [0, G] are clamped into it by the CUDA match, and prior_assignment
    entries outside {-2, -1, 0..G-1} get zero gradients.

    Where we differ from biubug6: ground-truth boxes of zero or non-finite size
    are ignored by matching (biubug6 encodes log(0) = -inf for them), the log
    in the box encoding is clamped at 1e-6, and equal mining losses are broken
    by the lower prior index (biubug6's unstable sort picks any).

    conf_loss="focal" (not in biubug6; RetinaNet's recipe) replaces the
    cross-entropy with hard negative mining by a focal loss over all priors:
      loss_c = sum over every prior of softmax_focal_loss(conf, target,
               focal_alpha, focal_gamma) / N
    with target 1 for the positives and 0 for every other prior (no mining:
    neg_pos_ratio is not used), alpha weighting the face class and 1 - alpha
    the background (see retinaface_ext.ops.softmax_focal_loss). loss_l and
    loss_landm are unchanged. Initialise the class heads with
    retinaface_ext.models.init_focal_prior_bias. Still no host sync: the
    fused op runs with neg_pos_ratio=0 and its prior_assignment gives the
    targets; N is passed to the focal loss as a device tensor.
    """
    if conf_loss not in CONF_LOSSES:
        raise ValueError(f"multibox_loss(): conf_loss must be 'ce' or 'focal', got {conf_loss!r}")
    op = fused_op("multibox_loss")
    if op is None:
        return reference.multibox_loss(loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels,
                                       gt_counts, threshold, neg_pos_ratio, variances,
                                       min_best_iou, conf_loss, focal_alpha, focal_gamma)
    neg_pos_ratio = check_neg_pos_ratio("multibox_loss", neg_pos_ratio)
    focal = conf_loss == "focal"
    loss_l, loss_c, loss_landm, prior_assignment = op(
        loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, gt_counts, float(threshold),
        float(min_best_iou), 0 if focal else neg_pos_ratio, [float(v) for v in variances])
    if focal:
        loss_c = focal_conf_loss(conf, prior_assignment, focal_alpha, focal_gamma)
    return loss_l, loss_c, loss_landm


def focal_conf_loss(conf: torch.Tensor, prior_assignment: torch.Tensor,
                    alpha: float = defaults.FOCAL_ALPHA,
                    gamma: float = defaults.FOCAL_GAMMA) -> torch.Tensor:
    """conf_loss="focal"'s class term from multibox_loss's prior_assignment [B, P]:
    softmax focal loss of every prior (target 1 where prior_assignment >= 0, else
    0), summed and divided by N = max(#positives, 1), a device tensor (no sync)."""
    positive = prior_assignment >= 0
    num_pos = positive.sum().clamp(min=1)
    return softmax_focal_loss(conf, positive.to(torch.int64), alpha, gamma, reduction="sum",
                              normalizer=num_pos)


_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_predictions_and_targets(op, loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels):
    """The fakes' part of csrc/common/multibox_loss_checks.h: dtypes and devices."""
    torch._check(loc.dtype in _FLOATING, lambda: f"{op}(): loc must be a floating tensor, got {loc.dtype}")
    for name, tensor in (("conf", conf), ("landms", landms)):
        torch._check(tensor.dtype == loc.dtype, lambda: f"{op}(): {name} must be {loc.dtype}, got {tensor.dtype}")
    for name, tensor in (("priors", priors), ("gt_boxes", gt_boxes), ("gt_landms", gt_landms)):
        torch._check(tensor.dtype in _FLOATING,
                     lambda: f"{op}(): {name} must be a floating tensor, got {tensor.dtype}")
    check_same_device(op, "loc", loc, conf=conf, landms=landms, priors=priors, gt_boxes=gt_boxes,
                      gt_landms=gt_landms, gt_labels=gt_labels)


def _loss_dtype(loc):
    return torch.float64 if loc.dtype == torch.float64 else torch.float32


@register_fake("multibox_loss")
def _multibox_loss_fake(loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, gt_counts,
                        threshold, min_best_iou, neg_pos_ratio, variances):
    op = "multibox_loss"
    torch._check(loc.dim() == 3, lambda: f"{op}(): loc must have shape [B, P, 4], got {list(loc.shape)}")
    _check_predictions_and_targets(op, loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels)
    check_same_device(op, "loc", loc, gt_counts=gt_counts)
    torch._check(not gt_counts.is_floating_point() and gt_counts.dtype != torch.bool,
                 lambda: f"{op}(): gt_counts must be an integer tensor, got {gt_counts.dtype}")
    check_unit_interval(op, "threshold", threshold)
    check_unit_interval(op, "min_best_iou", min_best_iou)
    torch._check(neg_pos_ratio >= 0, lambda: f"{op}(): neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
    dtype = _loss_dtype(loc)
    return (loc.new_empty((), dtype=dtype), loc.new_empty((), dtype=dtype),
            loc.new_empty((), dtype=dtype), loc.new_empty(loc.shape[:2], dtype=torch.int64))


@register_fake("multibox_loss_backward")
def _multibox_loss_backward_fake(grad_loss_l, grad_loss_c, grad_loss_landm, loc, conf, landms,
                                 priors, gt_boxes, gt_landms, gt_labels, prior_assignment,
                                 variances):
    op = "multibox_loss_backward"
    _check_predictions_and_targets(op, loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels)
    check_same_device(op, "loc", loc, prior_assignment=prior_assignment, grad_loss_l=grad_loss_l,
                      grad_loss_c=grad_loss_c, grad_loss_landm=grad_loss_landm)
    # The kernel returns contiguous gradients whatever the input strides.
    return loc.new_empty(loc.shape), conf.new_empty(conf.shape), landms.new_empty(landms.shape)


def _setup_context(ctx, inputs, output):
    (loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, _gt_counts, _threshold,
     _min_best_iou, _neg_pos_ratio, variances) = inputs
    prior_assignment = output[3]
    # The assignment is bookkeeping, not a differentiable output; and a loss the
    # caller does not use should arrive as None, not as a materialised zero
    # (autograd would otherwise fill a [B, P] int64 zero gradient every step).
    ctx.mark_non_differentiable(prior_assignment)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels,
                          prior_assignment)
    ctx.variances = variances


def _backward(ctx, grad_loss_l, grad_loss_c, grad_loss_landm, _grad_prior_assignment):
    loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, prior_assignment = ctx.saved_tensors
    check_first_order("multibox_loss", loc, conf, landms, grad_loss_l, grad_loss_c, grad_loss_landm)
    zero = loc.new_zeros((), dtype=_loss_dtype(loc))
    grads = [zero if g is None else g for g in (grad_loss_l, grad_loss_c, grad_loss_landm)]
    d_loc, d_conf, d_landms = torch.ops.retinaface.multibox_loss_backward(
        *grads, loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, prior_assignment,
        ctx.variances)
    return (d_loc, d_conf, d_landms) + (None,) * 9


if HAS_EXTENSION:
    torch.library.register_autograd("retinaface::multibox_loss", _backward,
                                    setup_context=_setup_context)
