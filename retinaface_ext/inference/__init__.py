"""Fast inference for detect(): BatchNorm folding, the fused MobileNet stem, onnxruntime and CUDA backends."""
from .backends import BACKENDS, clear_cache, describe_backend, get_runner, resolve_backend
from .runners import Runner, stem_parameters
from .folding import fold_batchnorm, folded_conv
from .onnx_graph import UnsupportedModel, build_onnx_model

__all__ = ["BACKENDS", "Runner", "UnsupportedModel", "build_onnx_model", "clear_cache", "describe_backend",
           "fold_batchnorm", "folded_conv", "get_runner", "resolve_backend", "stem_parameters"]
