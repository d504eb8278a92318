import torch

from ._checks import check_neg_pos_ratio


def hard_negative_mask(conf_loss: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: int = 7
                       ) -> torch.Tensor:
    """Pure-PyTorch hard negative mining, written as biubug6's double sort (made stable).

    Per image (row): zero the loss on positives, rank the priors by loss
    descending (stable, so ties keep the lower prior index first; NaN ranks
    first, as torch.sort puts it), and keep the first
    k = min(neg_pos_ratio * num_pos, P - 1).
    """
    neg_pos_ratio = check_neg_pos_ratio("hard_negative_mask", neg_pos_ratio)
    loss = conf_loss.masked_fill(positive, 0)
    _, order = loss.sort(dim=1, descending=True, stable=True)
    _, rank = order.sort(dim=1)
    num_pos = positive.long().sum(dim=1, keepdim=True)
    # min(ratio * num_pos, P - 1) without overflowing int64 for a huge ratio (num_pos >= 1 where it matters).
    ratio = min(neg_pos_ratio, positive.shape[1] - 1)
    num_neg = torch.clamp(ratio * num_pos, max=positive.shape[1] - 1)
    return rank < num_neg
