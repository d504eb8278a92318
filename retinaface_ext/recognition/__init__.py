"""Face-recognition losses: center loss and batch-hard triplet loss.

(The normalised-linear / margin-softmax heads live in ``heads.py``, added separately.)
"""
from .center_loss import (
    CenterLoss,
    center_loss,
    center_update_statistics,
    count_normalised_center_step,
)
from .triplet_loss import TripletLoss, batch_hard_triplet_loss

__all__ = [
    "CenterLoss",
    "TripletLoss",
    "batch_hard_triplet_loss",
    "center_loss",
    "center_update_statistics",
    "count_normalised_center_step",
]
