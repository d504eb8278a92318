"""Pure-PyTorch implementations of every op, with the same signatures as
retinaface_ext.ops: the oracle the tests compare the fused kernels with, and
the fallback when the compiled extension is missing. Written for clarity
(the semantics of ../DESIGN.md, biubug6's behaviour), not speed.
"""
from .align_faces import align_faces, arcface_template
from .box_coding import decode, decode_landmarks, encode, encode_landmarks
from .box_iou import box_iou
from .detect_postprocess import detect_postprocess
from .focal_loss import sigmoid_focal_loss, softmax_focal_loss
from .hard_negative_mask import hard_negative_mask
from .margin_cross_entropy import MarginStats, combine_margin_stats, margin_cross_entropy
from .match import match
from .mobilenet_stem import mobilenet_stem
from .multibox_loss import multibox_loss
from .nms import batched_nms, nms
from .prior_box import prior_box
from .train_augment import train_augment

__all__ = [
    "MarginStats",
    "align_faces",
    "arcface_template",
    "batched_nms",
    "box_iou",
    "combine_margin_stats",
    "decode",
    "decode_landmarks",
    "detect_postprocess",
    "encode",
    "encode_landmarks",
    "hard_negative_mask",
    "margin_cross_entropy",
    "match",
    "mobilenet_stem",
    "multibox_loss",
    "nms",
    "prior_box",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "train_augment",
]
