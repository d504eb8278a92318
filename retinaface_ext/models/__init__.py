"""The RetinaFace network: MobileNetV1-0.25 / ResNet-50 bodies, FPN, SSH and heads (biubug6 layout)."""
from .focal_init import init_focal_prior_bias
from .frozen_batchnorm import FrozenBatchNorm2d, freeze_batchnorm, has_folded_batchnorm
from .mobilenet import MobileNetV1
from .necks import FPN, SSH
from .resnet import ResNet50
from .retinaface import BboxHead, ClassHead, LandmarkHead, RetinaFace, canonical_backbone_name

__all__ = [
    "BboxHead",
    "ClassHead",
    "FPN",
    "FrozenBatchNorm2d",
    "LandmarkHead",
    "MobileNetV1",
    "ResNet50",
    "RetinaFace",
    "SSH",
    "canonical_backbone_name",
    "freeze_batchnorm",
    "has_folded_batchnorm",
    "init_focal_prior_bias",
]
