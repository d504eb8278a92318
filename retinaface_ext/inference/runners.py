"""The runners behind ``detect()``'s backends: each turns uint8 images [B, H, W, 3] into detections.

- :class:`OnnxRuntimeRunner`: the model as an ONNX graph (onnx_graph.py, BatchNorm
  folded) in an onnxruntime session; for MobileNetV1-0.25 the first four layers
  run in the fused ``ops.mobilenet_stem`` straight from the uint8 images and the
  graph starts after them.
- :class:`TorchRunner`: a copy of the model with BatchNorm folded, channels_last,
  in the chosen precision; the fused stem on the CPU; CUDA-graph replay on
  request (cuda_graphs.py).
- :class:`EagerRunner`: the model itself.

The shared steps (the network input, the stem's weights, the post-processing)
are here too. backends.py chooses and caches the runners.
"""
import collections
import functools

import numpy as np
import torch

from .. import defaults, ops
from .._extension import HAS_EXTENSION
from ..data.collate import mean_tensor
from ..models.mobilenet import MobileNetV1
from ..models.retinaface import RetinaFace
from .folding import fold_batchnorm, folded_conv, is_foldable_batchnorm
from .onnx_graph import INPUT_NAME, STEM_BLOCKS, STEM_INPUT_NAME, UnsupportedModel, build_onnx_model

ONNXRUNTIME_HINT = 'pip install "retinaface-ext[onnxruntime]"  (onnx and onnxruntime)'
# Input shapes whose CUDA graphs a runner keeps (each holds its own memory pool).
MAX_CUDA_GRAPHS = 4

PostprocessOptions = collections.namedtuple(
    "PostprocessOptions", ["score_threshold", "nms_threshold", "pre_nms_top_k", "max_detections"])


# ----------------------------------------------------------------------------- shared steps


def model_device(model):
    for module in model.modules():  # the first parameter's device, without model.parameters()'s bookkeeping
        for parameter in module._parameters.values():
            if parameter is not None:
                return parameter.device
    return torch.device("cpu")


def compute_dtype(device, half):
    """The network's dtype: ``half`` None -> float16 on CUDA, float32 elsewhere; True -> float16;
    False -> float32; or a floating dtype (torch.float16, torch.bfloat16, torch.float32)."""
    if half is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(half, torch.dtype):
        if half not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"detect(): half must be a bool or torch.float16 / torch.bfloat16 / torch.float32, "
                             f"got {half}")
        return half
    return torch.float16 if half else torch.float32


def network_input(batch, device, dtype=torch.float32, channels_last=False):
    """uint8 [B, H, W, 3] images -> the network's input [B, 3, H, W]: BGR minus the mean, in ``dtype``.

    The uint8 batch is moved to ``device`` first (4x less to copy than floats).
    NHWC permuted to NCHW *is* the channels_last layout, so ``channels_last``
    costs no copy.
    """
    batch = batch.to(device=device, non_blocking=True)
    x = torch.sub(batch.permute(0, 3, 1, 2), mean_tensor(tuple(defaults.BGR_MEAN), str(batch.device))).to(dtype)
    return x if channels_last else x.contiguous()


# Constants are made once per device (and size): a tensor built from Python numbers on CUDA is a
# host-to-device copy, which must not happen while a CUDA graph is being captured.
@functools.lru_cache(maxsize=64)
def _pixel_scale(height, width, device):
    """Multiplies detections [.., 15] from normalised coordinates to pixels (the score column by 1)."""
    return torch.tensor([width, height] * 2 + [1.0] + [width, height] * 5, dtype=torch.float32, device=device)


def _numpy_network_input(batch):
    """network_input() in numpy, on this thread: no OpenMP workers left spinning next to onnxruntime's."""
    out = np.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=np.float32)
    for c, mean in enumerate(defaults.BGR_MEAN):
        np.subtract(batch[..., c], np.float32(mean), out=out[:, c], dtype=np.float32)
    return out


@torch.no_grad()
def stem_parameters(model):
    """(weights, biases) of ``model.body.stage1[:4]`` with BatchNorm folded, for ``ops.mobilenet_stem``."""
    if type(getattr(model, "body", None)) is not MobileNetV1:
        raise UnsupportedModel("the fused stem needs a MobileNetV1 body")
    weights, biases = [], []
    for block in model.body.stage1[:STEM_BLOCKS]:
        layers = list(block)
        for k in range(0, len(layers), 3):  # conv, BatchNorm, LeakyReLU
            weight, bias = folded_conv(layers[k], layers[k + 1])
            weights.append(weight.cpu().contiguous())
            biases.append(bias.cpu().contiguous())
    return weights, biases


# stage1[:4] as the fused stem computes it: per conv (stride, groups), each followed by BatchNorm and
# LeakyReLU(0.1); shapes as reference.mobilenet_stem.STEM_LAYERS.
_STEM_CONVS = ((2, 1), (1, 8), (1, 1), (2, 16), (1, 1), (1, 32), (1, 1))


def _uses_stem(model):
    """Whether the fused stem can replace body.stage1[:4]: the compiled op, and exactly the layers it computes."""
    if not HAS_EXTENSION or type(model) is not RetinaFace or type(model.body) is not MobileNetV1:
        return False
    from ..reference.mobilenet_stem import STEM_LAYERS

    layers = [layer for block in model.body.stage1[:STEM_BLOCKS] for layer in
              (block.children() if type(block) is torch.nn.Sequential else [block])]
    if len(layers) != 3 * len(STEM_LAYERS):
        return False
    for k, ((out, inp, size, stride), (_, groups)) in enumerate(zip(STEM_LAYERS, _STEM_CONVS)):
        conv, bn, act = layers[3 * k: 3 * k + 3]
        if (type(conv) is not torch.nn.Conv2d or not is_foldable_batchnorm(bn)
                or type(act) is not torch.nn.LeakyReLU or act.negative_slope != defaults.MOBILENET_LEAKY
                or tuple(conv.weight.shape) != (out, inp, size, size) or conv.stride != (stride, stride)
                or conv.groups != groups or conv.padding != (size // 2, size // 2) or conv.dilation != (1, 1)
                or conv.padding_mode != "zeros"):
            return False
    return True


def _forward_after_stem(model, x):
    """RetinaFace.forward from the output of body.stage1[:4]."""
    body = model.body
    c3 = body.stage1[STEM_BLOCKS:](x)
    c4 = body.stage2(c3)
    return model.forward_features([c3, c4, body.stage3(c4)])


@functools.lru_cache(maxsize=32)
def cached_priors(height, width, device):
    """``ops.prior_box((height, width))`` on ``device``, computed once per size."""
    return ops.prior_box((height, width), device=torch.device(device))


@torch.no_grad()
def postprocess(loc, conf, landms, height, width, options):
    """ops.detect_postprocess of a batch, scaled to pixels: (detections [B, K, 15] tensor, counts [B] tensor)."""
    detections, counts = ops.detect_postprocess(
        loc.float(), conf.float(), landms.float(), cached_priors(height, width, str(loc.device)),
        score_threshold=options.score_threshold, nms_threshold=options.nms_threshold,
        pre_nms_top_k=options.pre_nms_top_k, max_detections=options.max_detections)
    return detections * _pixel_scale(height, width, str(detections.device)).to(detections.dtype), counts


# ----------------------------------------------------------------------------- runners


class Runner:
    """Runs one backend for one model: ``detect(batch, options)`` on uint8 [B, H, W, 3] CPU images."""

    name = "?"
    description = "?"

    def network(self, batch):
        """(loc, conf, landms) of the images, conf softmaxed (RetinaFace.forward in eval mode)."""
        raise NotImplementedError

    def detect(self, batch, options, cuda_graph=False):
        """(detections float32 numpy [B, K, 15] in pixels, counts list) for one batch of same-size images."""
        height, width = batch.shape[1:3]
        detections, counts = postprocess(*self.network(batch), height, width, options)
        return detections.cpu().numpy(), counts.cpu().tolist()


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model, threads):
        try:
            import onnxruntime
        except ImportError:
            raise ImportError(f'backend="onnxruntime" needs onnxruntime and onnx: {ONNXRUNTIME_HINT}') from None
        self.stem = stem_parameters(model) if _uses_stem(model) else None
        proto = build_onnx_model(model, after_stem=self.stem is not None)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
        self.input_name = STEM_INPUT_NAME if self.stem is not None else INPUT_NAME
        self.description = (f"onnxruntime {onnxruntime.__version__} (CPU, {threads} thread{'s' * (threads != 1)})"
                            + (" + fused mobilenet_stem" if self.stem is not None else ""))

    def network(self, batch):
        if self.stem is not None:
            x = ops.mobilenet_stem(batch, *self.stem).numpy()
        else:
            x = _numpy_network_input(batch.numpy())
        loc, conf, landms = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(landms)


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model, device, dtype):
        self.device = device
        self.dtype = dtype
        self.stem = stem_parameters(model) if device.type == "cpu" and dtype == torch.float32 and \
            _uses_stem(model) else None
        self.net = fold_batchnorm(model).to(device=device, dtype=dtype, memory_format=torch.channels_last)
        self.cuda_graphs = collections.OrderedDict()
        precision = str(dtype).replace("torch.", "")
        self.description = (f"PyTorch {torch.__version__} ({device}, {precision}, BatchNorm folded, channels_last)"
                            + (" + fused mobilenet_stem" if self.stem is not None else ""))

    def network(self, batch):
        if self.stem is not None:
            x = ops.mobilenet_stem(batch, *self.stem).contiguous(memory_format=torch.channels_last)
            return _forward_after_stem(self.net, x)
        return self.net(network_input(batch, self.device, self.dtype, channels_last=True))

    def detect(self, batch, options, cuda_graph=False):
        if not cuda_graph or self.device.type != "cuda":
            return super().detect(batch, options)
        from .cuda_graphs import StaticShapeDetector

        key = (tuple(batch.shape), options)
        detector = self.cuda_graphs.get(key)
        if detector is None:
            detector = StaticShapeDetector(self, tuple(batch.shape), options, capture=True)
            self.cuda_graphs[key] = detector
            while len(self.cuda_graphs) > MAX_CUDA_GRAPHS:
                self.cuda_graphs.popitem(last=False)
        self.cuda_graphs.move_to_end(key)
        return detector(batch)


class EagerRunner(Runner):
    """The model as given (never cached: it holds the model)."""

    name = "eager"

    def __init__(self, model, device, dtype):
        self.model = model
        self.device = device
        self.dtype = dtype
        precision = str(dtype).replace("torch.", "")
        self.description = f"PyTorch {torch.__version__} eager ({device}, {precision} autocast)" \
            if dtype != torch.float32 else f"PyTorch {torch.__version__} eager ({device})"

    def network(self, batch):
        was_training = self.model.training
        self.model.eval()
        try:
            x = network_input(batch, self.device, channels_last=self.device.type == "cuda")
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                return self.model(x)
        finally:
            self.model.train(was_training)
