import torch

from .. import defaults, reference
from .._extension import check_same_device, fused_op, register_fake
from ..reference._checks import check_neg_pos_ratio


def hard_negative_mask(conf_loss: torch.Tensor, positive: torch.Tensor,
                       neg_pos_ratio: int = defaults.NEG_POS_RATIO) -> torch.Tensor:
    """biubug6's hard negative mining: [B, P] losses, [B, P] bool positives -> bool [B, P].

    Per image: the loss of the positives is set to 0, then the
    k = min(neg_pos_ratio * num_pos, P - 1) priors with the largest loss are
    selected (ties: lower prior index first; NaN counts as the largest loss).
    An image without positives selects nothing. Like biubug6's ``neg`` the
    mask may include positives when k is close to P; callers take
    ``positive | mask``.

    Where we differ from biubug6: its double ``sort`` is not stable, so which of
    several equal losses it picks is unspecified; we pick the lower indices,
    i.e. the set a stable double sort gives. The kernel finds that set with a
    radix select (O(P) per image) instead of two sorts.
    """
    op = fused_op("hard_negative_mask")
    if op is None:
        return reference.hard_negative_mask(conf_loss, positive, neg_pos_ratio)
    return op(conf_loss, positive, check_neg_pos_ratio("hard_negative_mask", neg_pos_ratio))


@register_fake("hard_negative_mask")
def _hard_negative_mask_fake(conf_loss, positive, neg_pos_ratio):
    op = "hard_negative_mask"
    torch._check(conf_loss.dim() == 2, lambda: f"{op}(): conf_loss must have shape [B, P], got {list(conf_loss.shape)}")
    torch._check(conf_loss.is_floating_point(), lambda: f"{op}(): conf_loss must be a floating tensor, got {conf_loss.dtype}")
    torch._check(positive.shape == conf_loss.shape,
                 lambda: f"{op}(): positive must have the shape of conf_loss ({list(conf_loss.shape)}), "
                         f"got {list(positive.shape)}")
    torch._check(positive.dtype == torch.bool, lambda: f"{op}(): positive must be torch.bool, got {positive.dtype}")
    check_same_device(op, "conf_loss", conf_loss, positive=positive)
    torch._check(neg_pos_ratio >= 0, lambda: f"{op}(): neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
    return conf_loss.new_empty(conf_loss.shape, dtype=torch.bool)
