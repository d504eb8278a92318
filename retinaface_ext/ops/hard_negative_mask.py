import torch

from .. import defaults, reference
from .._extension import fused_op, register_fake


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
    return op(conf_loss, positive, int(neg_pos_ratio))


@register_fake("hard_negative_mask")
def _hard_negative_mask_fake(conf_loss, positive, neg_pos_ratio):
    torch._check(conf_loss.dim() == 2, lambda: "hard_negative_mask(): conf_loss must have shape [B, P]")
    return conf_loss.new_empty(conf_loss.shape, dtype=torch.bool)
