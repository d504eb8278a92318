import torch

from .. import reference
from .._extension import HAS_EXTENSION, check_same_device, fused_op, register_fake


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of two sets of xyxy boxes: [N, 4] x [M, 4] -> [N, M].

    No +1 and no epsilon (torchvision and biubug6 semantics). Half and bfloat16
    inputs are computed in float32 and returned in the input dtype.
    Differentiable w.r.t. both sets of boxes (e.g. for IoU losses), with the
    gradient of the pure-PyTorch reference (at ties of the min / max, each side
    gets half, as torch.minimum / torch.maximum give it), in PyTorch, so it is
    differentiable again.
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
    check_same_device("box_iou", "boxes1", boxes1, boxes2=boxes2)
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _min_backward(grad, x, y):
    """torch.minimum's gradient w.r.t. x: all of it where x < y, half at ties."""
    return torch.where(x == y, grad / 2, grad).masked_fill(x > y, 0)


def _backward(ctx, grad):
    # The derivative of reference.box_iou, written out (float32, as the forward computes).
    boxes1, boxes2 = ctx.saved_tensors
    a, b, grad = boxes1.float(), boxes2.float(), grad.float()
    size_a, size_b = a[:, 2:] - a[:, :2], b[:, 2:] - b[:, :2]  # [N, 2], [M, 2] (w, h)
    area_a, area_b = size_a.prod(1), size_b.prod(1)
    max_xy = torch.min(a[:, None, 2:], b[None, :, 2:])
    min_xy = torch.max(a[:, None, :2], b[None, :, :2])
    extent = max_xy - min_xy
    wh = extent.clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    grad_union = -grad * inter / (union * union)
    grad_inter = grad / union - grad_union
    grad_extent = (grad_inter[..., None] * wh.flip(-1)).masked_fill(extent < 0, 0)  # clamp passes at 0
    grads = []
    for boxes, size, grad_area, corner_max, corner_min, other_max, other_min, dim in (
            (a, size_a, grad_union.sum(1), a[:, None, 2:], a[:, None, :2], b[None, :, 2:], b[None, :, :2], 1),
            (b, size_b, grad_union.sum(0), b[None, :, 2:], b[None, :, :2], a[:, None, 2:], a[:, None, :2], 0)):
        # area = (x2 - x1) * (y2 - y1); max_xy = min(x2y2, other), min_xy = max(x1y1, other).
        grad_size = grad_area[:, None] * size.flip(-1)
        grad_high = grad_size + _min_backward(grad_extent, corner_max, other_max).sum(dim)
        grad_low = -grad_size - _min_backward(grad_extent, -corner_min, -other_min).sum(dim)
        grads.append(torch.cat([grad_low, grad_high], dim=1))
    return (grads[0].to(boxes1.dtype) if ctx.needs_input_grad[0] else None,
            grads[1].to(boxes2.dtype) if ctx.needs_input_grad[1] else None)


if HAS_EXTENSION:
    torch.library.register_autograd("retinaface::box_iou", _backward, setup_context=_setup_context)
