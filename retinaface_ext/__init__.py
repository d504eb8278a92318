"""retinaface-ext: fused C++/CUDA PyTorch ops for RetinaFace face detection."""
from . import ops, reference
from ._extension import HAS_EXTENSION
from .loss import MultiBoxLoss

__version__ = "0.1.0"
__all__ = ["HAS_EXTENSION", "MultiBoxLoss", "ops", "reference"]
