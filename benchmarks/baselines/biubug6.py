"""biubug6/Pytorch_Retinaface's loss and detection post-processing, as its users run them.

This is the baseline the fused ops are measured against, so it keeps the
*structure* (and therefore the cost) of biubug6's code, not just its results:

* ``MultiBoxLoss.forward`` loops over the images in Python; per image it
  computes the IoU of every ground-truth box with every prior (``jaccard``),
  takes both ``max`` reductions, ``index_fill_``s 2.0 into the best priors,
  runs the Python ``for j`` loop that forces each face onto its best prior,
  encodes boxes and landmarks for *all* priors and copies them into CPU
  target tensors that are moved to the predictions' device afterwards; then it
  mines hard negatives with two full sorts (``sort`` of the losses, ``sort`` of
  the indices to get ranks) and sums ``F.smooth_l1_loss`` / ``F.cross_entropy``.
* ``detect`` post-processes a batch image by image like ``detect.py`` /
  ``test_widerface.py``: decode in torch, scale to pixels, move to numpy,
  threshold, argsort, keep the top 5000 and run ``py_cpu_nms`` (the Python NMS
  of Fast R-CNN, whose box areas have a +1).

Written here from the semantics in DESIGN.md (biubug6 is MIT licensed; no code
is copied). Numerically it follows biubug6 wherever the ops do, with these
choices, all of which keep its results:

* negatives per image are ``min(7 * num_pos, P - 1)`` (DESIGN.md; some forks
  add 200);
* an image none of whose faces reaches IoU 0.2 gets zero targets for boxes
  *and* landmarks (biubug6 leaves its landmark targets uninitialised there;
  they are masked out either way);
* the target tensors are allocated on the CPU and moved to the predictions'
  device, as biubug6 does when ``gpu_train`` is set, instead of reading a
  global configuration.

It does not guard against zero-area ground truth (biubug6 writes -inf
targets there); the benchmark data drops such boxes, as biubug6's crop does.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANCES = (0.1, 0.2)


# ----------------------------------------------------------------------------
# Box utilities (biubug6 utils/box_utils.py semantics, same order of float ops)
# ----------------------------------------------------------------------------


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    half = priors[:, 2:] / 2
    return torch.cat((priors[:, :2] - half, priors[:, :2] + half), dim=1)


def jaccard(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every xyxy box in boxes_a [A, 4] with every one in boxes_b [B, 4]: [A, B], no +1."""
    upper = torch.min(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    lower = torch.max(boxes_a[:, None, :2], boxes_b[None, :, :2])
    sides = torch.clamp(upper - lower, min=0)
    intersection = sides[..., 0] * sides[..., 1]
    area_a = ((boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1]))[:, None]
    area_b = ((boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1]))[None, :]
    return intersection / (area_a + area_b - intersection)


def encode(matched: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """xyxy boxes matched to each prior [P, 4] -> regression targets [P, 4]."""
    offset = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    offset /= variances[0] * priors[:, 2:]
    scale = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    scale = torch.log(scale) / variances[1]
    return torch.cat([offset, scale], dim=1)


def encode_landm(matched: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """Landmarks matched to each prior [P, 10] -> targets [P, 10]."""
    points = matched.reshape(matched.shape[0], 5, 2)
    offset = points - priors[:, None, :2]
    offset /= variances[0] * priors[:, None, 2:]
    return offset.reshape(offset.shape[0], -1)


def decode(loc: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """Regression outputs [P, 4] -> xyxy boxes [P, 4] (biubug6's order: x1y1 = c - wh/2, x2y2 = x1y1 + wh)."""
    boxes = torch.cat(
        (
            priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
            priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1]),
        ),
        dim=1,
    )
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def decode_landm(pred: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """Landmark outputs [P, 10] -> points [P, 10]."""
    points = [priors[:, :2] + pred[:, 2 * k : 2 * k + 2] * variances[0] * priors[:, 2:] for k in range(5)]
    return torch.cat(points, dim=1)


def log_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(x), 1)) [N, 1], stabilised by the *global* max of x, as biubug6 does."""
    x_max = x.detach().max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1, keepdim=True)) + x_max


# ----------------------------------------------------------------------------
# Matching, one image at a time
# ----------------------------------------------------------------------------


def assign_priors(threshold: float, truths: torch.Tensor, priors: torch.Tensor, min_best_iou: float = 0.2):
    """biubug6's matching of one image: (best ground truth per prior [P], its overlap [P]), or None.

    None when no face's best prior reaches ``min_best_iou`` (the image then has
    no positives). Overlaps below ``threshold`` mark background priors.
    """
    overlaps = jaccard(truths, point_form(priors))  # [G, P]
    best_prior_overlap, best_prior_idx = overlaps.max(1)
    valid_best_priors = best_prior_idx[best_prior_overlap >= min_best_iou]
    if valid_best_priors.shape[0] <= 0:
        return None
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap.index_fill_(0, valid_best_priors, 2)
    # Every face claims its best prior, the last face winning a shared prior;
    # biubug6 does this for the faces that missed min_best_iou too.
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    return best_truth_idx, best_truth_overlap


def match(threshold, truths, priors, variances, labels, landms, loc_t, conf_t, landm_t, idx):
    """Fill loc_t[idx], conf_t[idx], landm_t[idx] for one image (biubug6's utils.box_utils.match)."""
    assignment = assign_priors(threshold, truths, priors)
    if assignment is None:
        loc_t[idx] = 0
        conf_t[idx] = 0
        landm_t[idx] = 0
        return
    best_truth_idx, best_truth_overlap = assignment
    conf = labels[best_truth_idx]
    conf[best_truth_overlap < threshold] = 0
    loc_t[idx] = encode(truths[best_truth_idx], priors, variances)
    conf_t[idx] = conf
    landm_t[idx] = encode_landm(landms[best_truth_idx], priors, variances)


def matched_indices(truths_per_image: Sequence[torch.Tensor], priors: torch.Tensor, threshold: float = 0.35):
    """[B, P] int64: the face each prior is matched to, -1 for background (the ops.match convention)."""
    rows = []
    for truths in truths_per_image:
        assignment = assign_priors(threshold, truths, priors) if truths.shape[0] else None
        if assignment is None:
            rows.append(torch.full((priors.shape[0],), -1, dtype=torch.int64, device=priors.device))
            continue
        best_truth_idx, best_truth_overlap = assignment
        rows.append(torch.where(best_truth_overlap < threshold, -1, best_truth_idx))
    if not rows:
        return torch.empty((0, priors.shape[0]), dtype=torch.int64, device=priors.device)
    return torch.stack(rows)


# ----------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------


class MultiBoxLoss(nn.Module):
    """biubug6's MultiBoxLoss: same constructor, forward(predictions, priors, targets) -> (loss_l, loss_c, loss_landm).

    Users build it as ``MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False)``.
    Only ``num_classes``, ``overlap_thresh`` and ``neg_pos`` change anything,
    as in biubug6.
    """

    def __init__(self, num_classes, overlap_thresh, prior_for_matching, bkg_label, neg_mining, neg_pos,
                 neg_overlap, encode_target):
        super().__init__()
        self.num_classes = num_classes
        self.threshold = overlap_thresh
        self.background_label = bkg_label
        self.encode_target = encode_target
        self.use_prior_for_matching = prior_for_matching
        self.do_neg_mining = neg_mining
        self.negpos_ratio = neg_pos
        self.neg_overlap = neg_overlap
        self.variance = list(VARIANCES)

    def forward(self, predictions, priors, targets: List[torch.Tensor]):
        loc_data, conf_data, landm_data = predictions
        num = loc_data.size(0)
        num_priors = priors.size(0)

        # Targets are built on the CPU and moved afterwards (biubug6's torch.Tensor(...) + .cuda()).
        loc_t = torch.empty(num, num_priors, 4)
        landm_t = torch.empty(num, num_priors, 10)
        conf_t = torch.empty(num, num_priors, dtype=torch.int64)
        for idx in range(num):
            truths = targets[idx][:, :4].detach()
            labels = targets[idx][:, -1].detach()
            landms = targets[idx][:, 4:14].detach()
            match(self.threshold, truths, priors.detach(), self.variance, labels, landms,
                  loc_t, conf_t, landm_t, idx)
        loc_t = loc_t.to(loc_data.device)
        conf_t = conf_t.to(loc_data.device)
        landm_t = landm_t.to(loc_data.device)

        zero = torch.tensor(0, device=loc_data.device)

        # Landmark loss: only faces annotated with landmarks (label 1).
        pos1 = conf_t > zero
        num_pos_landm = pos1.long().sum(1, keepdim=True)
        n1 = max(num_pos_landm.detach().sum().float(), 1)
        pos_idx1 = pos1.unsqueeze(pos1.dim()).expand_as(landm_data)
        landm_p = landm_data[pos_idx1].view(-1, 10)
        landm_t = landm_t[pos_idx1].view(-1, 10)
        loss_landm = F.smooth_l1_loss(landm_p, landm_t, reduction="sum")

        pos = conf_t != zero
        conf_t[pos] = 1

        # Box loss on every positive (label 1 or -1).
        pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
        loc_p = loc_data[pos_idx].view(-1, 4)
        loc_t = loc_t[pos_idx].view(-1, 4)
        loss_l = F.smooth_l1_loss(loc_p, loc_t, reduction="sum")

        # Hard negative mining: rank every prior's confidence loss with two full sorts.
        batch_conf = conf_data.view(-1, self.num_classes)
        loss_c = log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))
        loss_c[pos.view(-1, 1)] = 0
        loss_c = loss_c.view(num, -1)
        _, loss_idx = loss_c.sort(1, descending=True)
        _, idx_rank = loss_idx.sort(1)
        num_pos = pos.long().sum(1, keepdim=True)
        num_neg = torch.clamp(self.negpos_ratio * num_pos, max=pos.size(1) - 1)
        neg = idx_rank < num_neg.expand_as(idx_rank)

        # Confidence loss over positives and mined negatives.
        pos_idx = pos.unsqueeze(2).expand_as(conf_data)
        neg_idx = neg.unsqueeze(2).expand_as(conf_data)
        conf_p = conf_data[(pos_idx + neg_idx).gt(0)].view(-1, self.num_classes)
        targets_weighted = conf_t[(pos + neg).gt(0)]
        loss_c = F.cross_entropy(conf_p, targets_weighted, reduction="sum")

        n = max(num_pos.detach().sum().float(), 1)
        return loss_l / n, loss_c / n, loss_landm / n1


# ----------------------------------------------------------------------------
# Detection post-processing (detect.py / test_widerface.py), image by image
# ----------------------------------------------------------------------------


def py_cpu_nms(dets: np.ndarray, thresh: float) -> List[int]:
    """Greedy NMS over dets [N, 5] (x1, y1, x2, y2, score) in pixels, +1 in widths and heights.

    Keeps a box whose IoU with every kept box is <= thresh; returns kept rows
    by descending score.
    """
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= thresh]
    return keep


def detect_image(loc, conf, landms, priors, image_size: Tuple[int, int], confidence_threshold=0.02,
                 top_k=5000, nms_threshold=0.4, keep_top_k=750, variances=VARIANCES) -> np.ndarray:
    """One image: loc [P, 4], conf [P, 2] probabilities, landms [P, 10] -> dets [K, 15] in pixels.

    Rows are x1, y1, x2, y2, score, 10 landmark coordinates, by descending score.
    """
    height, width = image_size
    scale = torch.tensor([width, height] * 2, dtype=loc.dtype, device=loc.device)
    scale_landm = torch.tensor([width, height] * 5, dtype=loc.dtype, device=loc.device)
    boxes = (decode(loc.detach(), priors.detach(), variances) * scale).cpu().numpy()
    scores = conf.detach().cpu().numpy()[:, 1]
    points = (decode_landm(landms.detach(), priors.detach(), variances) * scale_landm).cpu().numpy()

    above = np.where(scores > confidence_threshold)[0]
    boxes, points, scores = boxes[above], points[above], scores[above]

    order = scores.argsort()[::-1][:top_k]
    boxes, points, scores = boxes[order], points[order], scores[order]

    dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
    keep = py_cpu_nms(dets, nms_threshold)
    dets, points = dets[keep][:keep_top_k], points[keep][:keep_top_k]
    return np.concatenate((dets, points), axis=1)


def detect(loc, conf, landms, priors, image_size: Tuple[int, int], **kwargs) -> List[np.ndarray]:
    """A batch, one image after another (what biubug6's scripts do per image): list of [K_i, 15] in pixels."""
    return [detect_image(loc[b], conf[b], landms[b], priors, image_size, **kwargs) for b in range(loc.shape[0])]
