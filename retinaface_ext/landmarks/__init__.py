"""Facial-landmark training and evaluation: PFLD's weighted loss, NME, AUC and failure rate."""
from .metrics import INTER_OCULAR, PUPILS, auc_and_failure_rate, nme
from .pfld import WFLW_ATTRIBUTES, PFLDLoss, attribute_weights, pfld_loss

__all__ = [
    "INTER_OCULAR",
    "PFLDLoss",
    "PUPILS",
    "WFLW_ATTRIBUTES",
    "attribute_weights",
    "auc_and_failure_rate",
    "nme",
    "pfld_loss",
]
