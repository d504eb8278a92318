"""Face-recognition heads and losses: normalised-linear heads with a margin
softmax (ArcFace / CosFace / SphereFace, on the fused margin_cross_entropy op),
center loss and batch-hard triplet loss.
"""
from .center_loss import (
    CenterLoss,
    center_loss,
    center_update_statistics,
    count_normalised_center_step,
)
from .heads import (
    MARGIN_PRESETS,
    ArcFaceHead,
    CosFaceHead,
    MarginSoftmaxHead,
    NormalizedLinear,
    SphereFaceHead,
)
from .triplet_loss import TripletLoss, batch_hard_triplet_loss

__all__ = [
    "MARGIN_PRESETS",
    "ArcFaceHead",
    "CenterLoss",
    "CosFaceHead",
    "MarginSoftmaxHead",
    "NormalizedLinear",
    "SphereFaceHead",
    "TripletLoss",
    "batch_hard_triplet_loss",
    "center_loss",
    "center_update_statistics",
    "count_normalised_center_step",
]
