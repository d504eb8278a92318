"""WIDER FACE evaluation: the official protocol (vectorised) and the prediction files it reads."""
from .widerface import (
    SETTINGS,
    GroundTruth,
    average_precision,
    load_ground_truth,
    normalize_scores,
    pr_curves,
    read_prediction_file,
    read_predictions,
    voc_ap,
    widerface_ap,
    write_prediction_file,
)

__all__ = [
    "SETTINGS",
    "GroundTruth",
    "average_precision",
    "load_ground_truth",
    "normalize_scores",
    "pr_curves",
    "read_prediction_file",
    "read_predictions",
    "voc_ap",
    "widerface_ap",
    "write_prediction_file",
]
