import torch

from .. import defaults
from ._checks import check_unit_interval
from .box_iou import box_iou


def _point_form(priors):
    """biubug6 point_form: (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return torch.cat((priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), 1)


def _valid_boxes(boxes):
    """Finite boxes with positive width and height (box_math.h is_valid_box)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return (w > 0) & (h > 0) & (w < float("inf")) & (h < float("inf"))


def _check(gt_boxes, gt_counts, priors, threshold, min_best_iou):
    def fail(message):
        raise RuntimeError(f"match(): {message}")

    if gt_boxes.dim() != 3 or gt_boxes.shape[2] != 4:
        fail(f"gt_boxes must have shape [B, G, 4], got {list(gt_boxes.shape)}")
    if gt_counts.dim() != 1 or gt_counts.shape[0] != gt_boxes.shape[0]:
        fail(f"gt_counts must have shape [B], got {list(gt_counts.shape)}")
    if priors.dim() != 2 or priors.shape[1] != 4:
        fail(f"priors must have shape [P, 4], got {list(priors.shape)}")
    for name, tensor in (("gt_boxes", gt_boxes), ("priors", priors)):
        if tensor.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            fail(f"{name} must be a floating tensor (float32, float64, float16 or bfloat16), "
                 f"got {tensor.dtype}")
    if gt_counts.is_floating_point() or gt_counts.is_complex() or gt_counts.dtype == torch.bool:
        fail(f"gt_counts must be an integer tensor, got {gt_counts.dtype}")
    for name, tensor in (("gt_counts", gt_counts), ("priors", priors)):
        if tensor.device != gt_boxes.device:
            fail(f"{name} must be on the same device as gt_boxes ({gt_boxes.device}), "
                 f"got {tensor.device}")
    for b, count in enumerate(gt_counts.tolist()):
        if not 0 <= count <= gt_boxes.shape[1]:
            fail(f"gt_counts[{b}] must be in [0, {gt_boxes.shape[1]}] "
                 f"(the padded G of gt_boxes), got {count}")
    check_unit_interval("match", "threshold", threshold)
    check_unit_interval("match", "min_best_iou", min_best_iou)


def match(gt_boxes, gt_counts, priors, threshold=defaults.MATCH_THRESHOLD,
          min_best_iou=defaults.MIN_BEST_IOU):
    """Pure-PyTorch match, written as biubug6's match() one image at a time.

    Same semantics as retinaface_ext.ops.match, including its one difference
    from biubug6: degenerate ground-truth boxes are ignored (their IoU row is
    set to -1, so they never win a prior and never force one). NaN IoUs (priors
    with a non-finite coordinate) count as 0, as the kernels' comparisons do.
    """
    _check(gt_boxes, gt_counts, priors, threshold, min_best_iou)
    num_priors = priors.shape[0]
    assigned = torch.full((gt_boxes.shape[0], num_priors), -1, dtype=torch.int64,
                          device=gt_boxes.device)
    if num_priors == 0:
        return assigned
    priors_xyxy = _point_form(priors.float())
    for idx, count in enumerate(gt_counts.tolist()):
        truths = gt_boxes[idx, :count].float()
        if count == 0:
            continue
        valid = _valid_boxes(truths)
        overlaps = box_iou(truths, priors_xyxy)  # biubug6 jaccard
        # A prior with a NaN or infinite coordinate has NaN IoUs: as in the kernels, it never
        # becomes a face's best prior and its best face is the first valid one at IoU 0.
        overlaps = torch.nan_to_num(overlaps, nan=0.0)
        overlaps[~valid] = -1.0
        # (1) best prior for each ground truth
        best_prior_overlap, best_prior_idx = overlaps.max(1)
        # (2) ground truths that force their best prior
        forced = valid & (best_prior_overlap >= min_best_iou)
        best_prior_idx_filter = best_prior_idx[forced]
        if best_prior_idx_filter.shape[0] <= 0:
            continue
        # (3) best ground truth for each prior; forced priors get overlap 2
        best_truth_overlap, best_truth_idx = overlaps.max(0)
        best_truth_overlap.index_fill_(0, best_prior_idx_filter, 2.0)
        # (4) every (valid) ground truth takes its best prior, last one wins
        for j in range(best_prior_idx.size(0)):
            if valid[j]:
                best_truth_idx[best_prior_idx[j]] = j
        # (5) background below the threshold
        best_truth_idx[best_truth_overlap < threshold] = -1
        assigned[idx] = best_truth_idx
    return assigned
