import torch

from .. import reference
from .._extension import fused_op, register_fake


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of two sets of xyxy boxes: [N, 4] x [M, 4] -> [N, M].

    No +1 and no epsilon (torchvision and biubug6 semantics). Half and bfloat16
    inputs are computed in float32 and returned in the input dtype.
    """
    op = fused_op("box_iou")
    if op is None:
        return reference.box_iou(boxes1, boxes2)
    return op(boxes1, boxes2)


@register_fake("box_iou")
def _box_iou_fake(boxes1, boxes2):
    for name, boxes, size in (("boxes1", boxes1, "N"), ("boxes2", boxes2, "M")):
        torch._check(boxes.dim() == 2 and boxes.shape[1] == 4,
                     lambda: f"box_iou(): {name} must have shape [{size}, 4], got {list(boxes.shape)}")
        torch._check(boxes.is_floating_point(),
                     lambda: f"box_iou(): {name} must be a floating tensor, got {boxes.dtype}")
    torch._check(boxes1.device == boxes2.device,
                 lambda: f"box_iou(): boxes2 must be on the same device as boxes1 ({boxes1.device}), "
                 f"got {boxes2.device}")
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))
