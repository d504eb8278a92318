"""retinaface-ext: fused C++/CUDA PyTorch ops for RetinaFace face detection."""
from . import landmarks, ops, recognition, reference
from ._extension import HAS_EXTENSION
from .loss import MultiBoxLoss
from .models import RetinaFace
from .weights import load_weights
from .detection import detect
from .alignment import align

__version__ = "0.1.0"
__all__ = ["HAS_EXTENSION", "MultiBoxLoss", "RetinaFace", "align", "detect", "landmarks", "load_weights", "ops",
           "recognition", "reference"]
