"""Pure-PyTorch greedy NMS with torchvision's semantics: the oracle for the fused kernels."""
import torch

from ._checks import check_unit_interval


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Boxes are computed in float32 (float16 / bfloat16 / float32 inputs) or float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _iou_one_to_many(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """IoU of one xyxy box with [M, 4] boxes, in box_math.h's order of operations."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    iw = torch.clamp(torch.min(box[2], others[:, 2]) - torch.max(box[0], others[:, 0]), min=0)
    ih = torch.clamp(torch.min(box[3], others[:, 3]) - torch.max(box[1], others[:, 1]), min=0)
    inter = iw * ih
    return inter / ((area + areas) - inter)


def greedy_nms(sorted_boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on boxes already in descending score order -> kept positions (int64).

    Keeps the first box left, drops the later boxes whose IoU with it is
    > iou_threshold (compared in the boxes' dtype, so the threshold is rounded
    to it as torch does; a NaN IoU does not suppress), and repeats.
    """
    remaining = torch.arange(sorted_boxes.shape[0], device=sorted_boxes.device)
    kept = []
    while remaining.numel() > 0:
        top = remaining[0]
        kept.append(top)
        rest = remaining[1:]
        iou = _iou_one_to_many(sorted_boxes[top], sorted_boxes[rest])
        remaining = rest[~(iou > iou_threshold)]
    if not kept:
        return torch.empty(0, dtype=torch.int64, device=sorted_boxes.device)
    return torch.stack(kept)


def _check_finite(op: str, name: str, values: torch.Tensor) -> None:
    bad = ~torch.isfinite(values)
    if bad.dim() > 1:
        bad = bad.any(dim=1)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise RuntimeError(f"{op}(): {name} must be finite, got {values[row].tolist()} in row {row}")


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Pure-PyTorch nms: a loop over the boxes in stable descending score order."""
    check_unit_interval("nms", "iou_threshold", iou_threshold)
    _check_finite("nms", "boxes", boxes)
    _check_finite("nms", "scores", scores)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].to(_compute_dtype(boxes.dtype))
    return order[greedy_nms(sorted_boxes, iou_threshold)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Pure-PyTorch batched_nms: nms per class, merged in stable descending score order."""
    check_unit_interval("batched_nms", "iou_threshold", iou_threshold)
    _check_finite("batched_nms", "boxes", boxes)
    _check_finite("batched_nms", "scores", scores)
    kept = [
        members[nms(boxes[members], scores[members], iou_threshold)]
        for members in (torch.nonzero(idxs == c).flatten() for c in torch.unique(idxs))
    ]
    if not kept:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept = torch.sort(torch.cat(kept)).values  # index order, so the stable sort breaks ties by index
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]
