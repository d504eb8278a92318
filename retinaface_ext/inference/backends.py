"""What runs the network for ``detect()``: the backends, and the cache of their per-model state.

- ``"onnxruntime"`` (CPU, float32): the model written as an ONNX graph with
  BatchNorm folded (onnx_graph.py) and run by an onnxruntime session with
  ``torch.get_num_threads()`` threads. For MobileNetV1-0.25 the first four
  layers run in the fused ``ops.mobilenet_stem`` op straight from the uint8
  images (no float copy of the image is made), and the graph starts after them.
- ``"torch"``: a copy of the model with BatchNorm folded into the convolutions,
  channels_last; on CUDA in float16 by default (or bfloat16 / float32), with
  optional CUDA-graph replay of network + post-processing for a fixed input
  shape; on the CPU with the fused stem for MobileNetV1-0.25.
- ``"eager"``: the model itself, as given (any module with RetinaFace's
  interface; switched to eval mode for the call).
- ``"auto"``: onnxruntime on the CPU when ``onnx`` and ``onnxruntime`` are
  installed, the model is one the graph writer knows and float32 is asked
  for; "torch" otherwise.

The onnxruntime session and the folded copy are built once per model and
cached (weakly: they go with the model). The cache entry is keyed by every
parameter and buffer of the model -- which tensor object, where its data is,
and its version counter, which PyTorch bumps on every in-place change
(``load_state_dict``, an optimizer step, ``p.mul_(2)`` under ``no_grad``) -- so
a changed model is rebuilt, never served stale. Writes that bypass the version
counter (through ``p.data`` or a numpy view), or that put a tensor straight
into ``module._parameters``, are not seen, nor are in-place changes to a
model created under ``torch.inference_mode`` (its tensors have no version
counter): call :func:`clear_cache` after them. To notice replaced parameters
cheaply, the cache installs PyTorch's global parameter / buffer / module
registration hooks, which only count registrations. The graphs are
size-independent (dynamic height and width); CUDA graphs are keyed by their
exact input shape. The runners themselves are in runners.py.
"""
import functools
import importlib.util
import operator
import threading
import warnings
import weakref

import torch

from ..models.retinaface import RetinaFace
from .onnx_graph import UnsupportedModel
from .runners import EagerRunner, OnnxRuntimeRunner, TorchRunner, compute_dtype, model_device

BACKENDS = ("auto", "onnxruntime", "torch", "eager")


# ----------------------------------------------------------------------------- selection and cache


@functools.lru_cache(maxsize=None)
def onnxruntime_available():
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def resolve_backend(model, backend="auto", half=None):
    """The backend ``detect(model, ..., backend=backend, half=half)`` runs: "onnxruntime", "torch" or "eager".

    "auto" may still fall back from onnxruntime to "torch" when the graph
    writer meets a module it does not know (see :func:`describe_backend`).
    """
    device = model_device(model)
    return _resolve(model, backend, half, device, compute_dtype(device, half))


def _resolve(model, backend, half, device, dtype):
    if backend not in BACKENDS:
        raise ValueError(f"detect(): backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f'detect(): backend="onnxruntime" runs on the CPU, but the model is on {device}; '
                             'use backend="torch" or model.cpu()')
        if dtype != torch.float32:
            raise ValueError(f'detect(): backend="onnxruntime" runs in float32, got half={half!r}')
    if backend != "auto":
        return backend
    if device.type == "cpu" and dtype == torch.float32 and type(model) is RetinaFace and onnxruntime_available():
        return "onnxruntime"
    return "torch"


class ModelState:
    """A model's parameters and buffers as a runner was built from them: which tensor objects, where their
    data is and their version counters (bumped by PyTorch on every in-place change).

    ``matches(model)`` is False as soon as a weight changed in place, a parameter, buffer or submodule was
    replaced, or the model moved. Holding the tensors keeps their ids from being reused by new ones.

    The model's module tree is walked again only when a parameter, buffer or submodule was registered
    anywhere since the last check (PyTorch's global registration hooks count them): otherwise the same
    tensors are still in place and only their versions and storage are compared, ~10x cheaper than the
    walk (which cost 0.35 ms of a 10 ms detect() call).
    """

    def __init__(self, model):
        _count_registrations()
        self.registrations = _registrations[0]
        self.tensors = tensors_of(model)
        self.versions = _versions(self.tensors)
        self.pointers = [t.data_ptr() for t in self.tensors]

    def matches(self, model):
        if self.registrations != _registrations[0]:
            tensors = tensors_of(model)
            if len(tensors) != len(self.tensors) or not all(map(operator.is_, tensors, self.tensors)):
                return False
            self.registrations = _registrations[0]
        return _versions(self.tensors) == self.versions and [t.data_ptr() for t in self.tensors] == self.pointers


def _versions(tensors):
    try:
        return [t._version for t in tensors]
    except RuntimeError:  # a model made under torch.inference_mode: its tensors have no version counter
        return [-1 if t.is_inference() else t._version for t in tensors]


def tensors_of(model):
    """Every parameter and buffer of ``model`` (an explicit walk: ``model.modules()`` builds every module's
    name and takes 3x longer)."""
    tensors = []
    stack = [model]
    while stack:
        module = stack.pop()
        tensors += module._parameters.values()
        tensors += module._buffers.values()
        stack += module._modules.values()
    return [t for t in tensors if t is not None]


_registrations = [0]  # parameters, buffers and submodules registered on any module since the hooks went in


def _registered(*args):
    _registrations[0] += 1


@functools.lru_cache(maxsize=None)
def _count_registrations():
    """Installs the counting hooks, once (they return None: the registration is left unchanged)."""
    from torch.nn.modules import module

    module.register_module_parameter_registration_hook(_registered)
    module.register_module_buffer_registration_hook(_registered)
    module.register_module_module_registration_hook(_registered)


_lock = threading.Lock()
_cache = weakref.WeakKeyDictionary()  # model -> (ModelState, {config: runner})


def get_runner(model, backend="auto", half=None):
    """The (cached) :class:`Runner` for ``model``; see the module docstring for the backends."""
    device = model_device(model)
    dtype = compute_dtype(device, half)
    name = _resolve(model, backend, half, device, dtype)
    if name == "eager":
        return EagerRunner(model, device, dtype)
    threads = torch.get_num_threads()
    config = (backend, name, device, dtype, threads if name == "onnxruntime" else None)
    with _lock:
        state, runners = _cache.get(model, (None, None))
        if state is None or not state.matches(model):
            state, runners = ModelState(model), {}  # the weights changed: every runner of the old ones goes
            _cache[model] = (state, runners)
        if config not in runners:
            runner = None
            if name == "onnxruntime":
                try:
                    runner = OnnxRuntimeRunner(model, threads)
                except UnsupportedModel:
                    if backend != "auto":
                        raise
                except Exception as error:  # an onnx / onnxruntime that does not import or load the graph
                    if backend != "auto":
                        raise
                    warnings.warn(f"detect(): the onnxruntime backend is unavailable ({type(error).__name__}: "
                                  f"{error}); running the torch backend instead", RuntimeWarning, stacklevel=3)
            runners[config] = runner or TorchRunner(model, device, dtype)
        return runners[config]


def describe_backend(model, backend="auto", half=None):
    """A one-line description of what ``detect(model, backend=backend, half=half)`` runs (builds it if needed)."""
    return get_runner(model, backend, half).description


def clear_cache(model=None):
    """Forgets the cached runners of ``model`` (of every model when None)."""
    with _lock:
        if model is None:
            _cache.clear()
        else:
            _cache.pop(model, None)
