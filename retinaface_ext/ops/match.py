import torch

from .. import defaults, reference
from .._extension import check_same_device, fused_op, register_fake
from ..reference._checks import check_unit_interval


def match(
    gt_boxes: torch.Tensor,
    gt_counts: torch.Tensor,
    priors: torch.Tensor,
    threshold: float = defaults.MATCH_THRESHOLD,
    min_best_iou: float = defaults.MIN_BEST_IOU,
) -> torch.Tensor:
    """biubug6's prior matching for a padded batch: the ground truth each prior is assigned to.

    Args:
        gt_boxes: [B, G, 4] xyxy ground-truth boxes, normalised; padded: only
            the first ``gt_counts[b]`` boxes of image b are read (float32,
            float64, float16 or bfloat16; computed in float32).
        gt_counts: [B] integer tensor, each in [0, G]. A count outside that
            range raises on the CPU; on CUDA it is clamped into [0, G] on the
            device, since raising would need a host sync.
        priors: [P, 4] priors (cx, cy, w, h), as ``prior_box`` makes them.
        threshold: a prior whose best IoU is below it is background.
        min_best_iou: a face whose best prior has IoU below it does not force
            that prior to be positive.

    Returns:
        [B, P] int64: the index into G of the ground truth each prior is
        assigned to, or -1 for background.

    Per image, as biubug6's ``match`` (IoU of xyxy boxes, no +1, no epsilon,
    the priors taken as ``point_form(priors)``; ties go to the first index):
    (1) each face's best prior (argmax over priors; prior 0 at IoU 0 if the
    face overlaps no prior); (2) a face whose best IoU is < ``min_best_iou`` is
    not forced, and if no face is forced the image has no positives;
    (3) each prior's best face (argmax over faces) and IoU, the best prior of
    every forced face getting IoU 2.0; (4) for every face j in order, its best
    prior is assigned to j (last write wins, forced or not); (5) priors with
    IoU < ``threshold`` are background.

    Deliberate difference from biubug6: a degenerate ground-truth box (a
    non-finite coordinate, or width or height <= 0) is ignored: it is never
    assigned and never forces a prior, whereas biubug6 would assign it through
    step 4 and then encode log(0) = -inf for it.

    One call for the whole batch with no host synchronisation. On the CPU the
    kernel detects when the priors are regular grids (``prior_box`` output)
    and then visits, for each face, only the priors whose box can intersect
    it, so the cost grows with the number of faces rather than faces x priors;
    other priors tensors are matched by brute force, with the same result.
    """
    op = fused_op("match")
    if op is None:
        return reference.match(gt_boxes, gt_counts, priors, threshold, min_best_iou)
    return op(gt_boxes, gt_counts, priors, float(threshold), float(min_best_iou))


@register_fake("match")
def _match_fake(gt_boxes, gt_counts, priors, threshold, min_best_iou):
    torch._check(gt_boxes.dim() == 3 and gt_boxes.shape[-1] == 4,
                 lambda: f"match(): gt_boxes must have shape [B, G, 4], got {list(gt_boxes.shape)}")
    torch._check(gt_counts.dim() == 1 and gt_counts.shape[0] == gt_boxes.shape[0],
                 lambda: f"match(): gt_counts must have shape [B], got {list(gt_counts.shape)}")
    torch._check(priors.dim() == 2 and priors.shape[-1] == 4,
                 lambda: f"match(): priors must have shape [P, 4], got {list(priors.shape)}")
    check_same_device("match", "gt_boxes", gt_boxes, gt_counts=gt_counts, priors=priors)
    check_unit_interval("match", "threshold", threshold)
    check_unit_interval("match", "min_best_iou", min_best_iou)
    return gt_boxes.new_empty((gt_boxes.shape[0], priors.shape[0]), dtype=torch.int64)
