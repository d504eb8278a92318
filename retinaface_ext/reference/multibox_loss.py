"""Pure-PyTorch MultiBox loss: biubug6's MultiBoxLoss on padded ground truth.

Written for clarity, like biubug6: match, encode the matched ground truth,
mine hard negatives, then smooth L1 and cross-entropy with PyTorch's own
functions, so autograd differentiates it. It uses boolean indexing (a host
sync on CUDA): it is the oracle and the fallback, not the fast path.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

from .. import defaults
from ._checks import check_neg_pos_ratio, check_unit_interval, check_variances
from .box_coding import encode, encode_landmarks
from .focal_loss import softmax_focal_loss
from .hard_negative_mask import hard_negative_mask
from .match import match

# prior_assignment codes, as the fused op returns them.
UNUSED_PRIOR = -1
HARD_NEGATIVE = -2


def multibox_loss(loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, gt_counts,
                  threshold=defaults.MATCH_THRESHOLD, neg_pos_ratio=defaults.NEG_POS_RATIO,
                  variances=defaults.VARIANCES, min_best_iou=defaults.MIN_BEST_IOU,
                  conf_loss="ce", focal_alpha=defaults.FOCAL_ALPHA,
                  focal_gamma=defaults.FOCAL_GAMMA
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss_l, loss_c, loss_landm) exactly as retinaface_ext.ops.multibox_loss defines them."""
    if conf_loss not in ("ce", "focal"):
        raise ValueError(f"multibox_loss(): conf_loss must be 'ce' or 'focal', got {conf_loss!r}")
    check_unit_interval("multibox_loss", "threshold", threshold)
    check_unit_interval("multibox_loss", "min_best_iou", min_best_iou)
    neg_pos_ratio = check_neg_pos_ratio("multibox_loss", neg_pos_ratio)
    check_variances("multibox_loss", variances)
    focal = conf_loss == "focal"
    loss_l, loss_c, loss_landm, assignment = multibox_loss_with_assignment(
        loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, gt_counts,
        threshold, 0 if focal else neg_pos_ratio, variances, min_best_iou)
    if focal:
        # Every prior, target 1 for the positives (no mining), divided by N.
        positive = assignment >= 0
        loss_c = softmax_focal_loss(conf, positive.long(), focal_alpha, focal_gamma, "sum",
                                    normalizer=positive.sum().clamp(min=1))
    return loss_l, loss_c, loss_landm


def multibox_loss_with_assignment(loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels,
                                  gt_counts, threshold=defaults.MATCH_THRESHOLD,
                                  neg_pos_ratio=defaults.NEG_POS_RATIO,
                                  variances=defaults.VARIANCES,
                                  min_best_iou=defaults.MIN_BEST_IOU):
    """multibox_loss plus the [B, P] int64 prior_assignment the fused op also returns
    (>= 0 the ground truth of a positive prior, -1 unused, -2 a mined hard negative)."""
    # float16/bfloat16 predictions are computed in float32, float64 in float64.
    dtype = torch.float64 if loc.dtype == torch.float64 else torch.float32
    loc_f, conf_f, landms_f = loc.to(dtype), conf.to(dtype), landms.to(dtype)
    priors_f = priors.to(dtype)
    batch, num_priors = loc.shape[:2]

    assigned = match(gt_boxes, gt_counts, priors, threshold, min_best_iou)
    if gt_boxes.shape[1] > 0:
        labels = gt_labels.to(dtype).gather(1, assigned.clamp(min=0))
        labels = torch.where(assigned >= 0, labels, torch.zeros_like(labels))
    else:
        labels = torch.zeros(batch, num_priors, dtype=dtype, device=loc.device)
    positive = labels != 0  # biubug6: conf_t != 0, then conf_t[pos] = 1
    with_landmarks = labels > 0  # label -1: a face without landmarks

    # Localisation: smooth L1 against the encoded matched box, positives only.
    image, prior = positive.nonzero(as_tuple=True)
    truth = assigned[image, prior]
    # One matched box per positive, against its own prior: encode's [P, 4] x [P, 4].
    loc_t = encode(gt_boxes.to(dtype)[image, truth], priors_f[prior], variances)
    loss_l = F.smooth_l1_loss(loc_f[image, prior], loc_t, reduction="sum")

    image1, prior1 = with_landmarks.nonzero(as_tuple=True)
    truth1 = assigned[image1, prior1]
    landm_t = encode_landmarks(gt_landms.to(dtype)[image1, truth1], priors_f[prior1], variances)
    loss_landm = F.smooth_l1_loss(landms_f[image1, prior1], landm_t, reduction="sum")

    # Confidence: mine on logsumexp - conf[target], then cross-entropy over pos | neg.
    target = positive.long()
    with torch.no_grad():
        mining_loss = torch.logsumexp(conf_f, dim=-1) - conf_f.gather(-1, target[..., None])[..., 0]
    negative = hard_negative_mask(mining_loss, positive, neg_pos_ratio)
    selected = positive | negative
    loss_c = F.cross_entropy(conf_f[selected], target[selected], reduction="sum")

    num_pos = positive.sum().clamp(min=1).to(dtype)
    num_landm = with_landmarks.sum().clamp(min=1).to(dtype)
    assignment = torch.where(
        positive, assigned,
        torch.where(negative, torch.full_like(assigned, HARD_NEGATIVE),
                    torch.full_like(assigned, UNUSED_PRIOR)))
    return loss_l / num_pos, loss_c / num_pos, loss_landm / num_landm, assignment
