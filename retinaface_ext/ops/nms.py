import torch

from .. import reference
from .._extension import check_same_device, fused_op, register_fake
from ..reference._checks import check_unit_interval


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics.

    Args:
        boxes: [N, 4] xyxy boxes (float32, float64, float16 or bfloat16).
        scores: [N] scores, any floating dtype.
        iou_threshold: a box is dropped when its IoU with a higher-scoring kept
            box is > iou_threshold (strictly: IoU == threshold is kept).

    Returns:
        int64 [K] indices of the kept boxes, in descending score order.

    The boxes are sorted by descending score with a stable sort (equal scores:
    lower index first), then every box is kept unless a kept box before it
    overlaps it by more than the threshold. IoU is xyxy with no +1 and no
    epsilon (``retinaface_ext.ops.box_iou``). float16 / bfloat16 boxes are
    computed in float32; the threshold is rounded to the compute dtype before
    comparing, as a torch comparison of a float32 tensor with a Python float
    does. (torchvision's CPU kernel compares in float64, its CUDA kernel in
    float32; the two differ only for an IoU exactly equal to float32(threshold)
    when that lies above the threshold, e.g. 0.4.)

    Raises:
        RuntimeError: if any box coordinate or score is NaN or infinite (the
            message names the argument and the first bad row); torchvision gives
            an order-dependent result there instead.
    """
    op = fused_op("nms")
    if op is None:
        return reference.nms(boxes, scores, iou_threshold)
    return op(boxes, scores, float(iou_threshold))


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each category: boxes with different ``idxs`` never suppress each other.

    Args:
        boxes, scores, iou_threshold: as in :func:`nms`.
        idxs: [N] integer category of each box (any values).

    Returns:
        int64 [K] indices of the kept boxes, in descending score order over all
        categories (equal scores: lower index first), as torchvision's
        batched_nms returns them.

    Each category is suppressed on its own (natively, not with torchvision's
    coordinate-offset trick, which shifts the boxes and so changes the IoU
    rounding), so the result is exactly nms() per category, merged. Non-finite
    boxes or scores raise as in :func:`nms`.
    """
    op = fused_op("batched_nms")
    if op is None:
        return reference.batched_nms(boxes, scores, idxs, iou_threshold)
    return op(boxes, scores, idxs, float(iou_threshold))


def _kept_indices_fake(boxes):
    # How many boxes survive depends on the data.
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept,), dtype=torch.int64)


@register_fake("nms")
def _nms_fake(boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "nms(): boxes must have shape [N, 4]")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "nms(): scores must have shape [N]")
    check_same_device("nms", "boxes", boxes, scores=scores)
    check_unit_interval("nms", "iou_threshold", iou_threshold)
    return _kept_indices_fake(boxes)


@register_fake("batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "batched_nms(): boxes must have shape [N, 4]")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "batched_nms(): scores must have shape [N]")
    torch._check(idxs.dim() == 1 and idxs.shape[0] == boxes.shape[0], lambda: "batched_nms(): idxs must have shape [N]")
    check_same_device("batched_nms", "boxes", boxes, scores=scores, idxs=idxs)
    check_unit_interval("batched_nms", "iou_threshold", iou_threshold)
    return _kept_indices_fake(boxes)
