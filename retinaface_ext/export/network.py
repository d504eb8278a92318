"""ONNX export of a RetinaFace network alone (outputs loc, conf (softmaxed), landmarks)."""

import torch

from ..reference._checks import check_integer
from .._files import written_atomically
from ._exporter import DEFAULT_OPSET, export_module

ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAMES = ("loc", "conf", "landmarks")


def export_onnx(model, path, image_size=(640, 640), dynamic=False, opset_version=DEFAULT_OPSET, check=True,
                exporter="dynamo"):
    """Writes ``model`` (eval mode) to ``path`` as ONNX and returns the path.

    Input ``input``: [B, 3, H, W] float32, BGR minus (104, 117, 123) -- the same
    as the PyTorch model. Outputs ``loc`` [B, P, 4], ``conf`` [B, P, 2]
    (softmax probabilities) and ``landmarks`` [B, P, 10], raw (not decoded:
    decode them with the priors of ``ops.prior_box((H, W))``).
    ``dynamic=True`` makes batch, height and width dynamic axes (named
    ``batch``, ``height``, ``width``; the outputs' ``batch``, ``priors``);
    otherwise the graph is fixed to batch 1 and ``image_size = (height, width)``.
    ``check`` runs ``onnx.checker`` on the written file.

    ``exporter="dynamo"`` (default) uses the torch.export-based exporter
    (``torch.onnx.export(dynamo=True)``, which needs onnxscript), with
    BatchNorm folded into the convolutions. ``exporter="torchscript"`` is the
    fallback for where it cannot work (a torch without it, a model of yours
    that torch.export cannot trace): torch's legacy TorchScript exporter, which
    torch deprecates (it warns ``DeprecationWarning``); same inputs and outputs.
    """
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"export_onnx: exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    height, width = (check_integer("export_onnx", "image_size", s) for s in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"export_onnx: image_size must be positive (height, width), got {tuple(image_size)}")
    parameter = next(model.parameters())
    # With dynamic axes the example must not have a size of 1 (torch.export
    # specialises sizes 0 and 1) nor equal height and width (it would assume them equal).
    batch = 2 if dynamic else 1
    if dynamic and height == width:
        width += 8
    example = torch.zeros(batch, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    dynamic_shapes = output_shapes = None
    if dynamic:
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        dynamic_shapes = (dims,)
        output_shapes = {"loc": ["batch", "priors", 4], "conf": ["batch", "priors", 2],
                         "landmarks": ["batch", "priors", 10]}
    was_training = model.training
    model.eval()
    try:
        if exporter == "torchscript":
            _export_with_torchscript(model, example, path, dynamic, opset_version, check)
        else:
            export_module(model, (example,), path, [ONNX_INPUT_NAME], ONNX_OUTPUT_NAMES, dynamic_shapes,
                          output_shapes, opset_version, check)
    finally:
        model.train(was_training)
    return path


def _export_with_torchscript(model, example, path, dynamic, opset_version, check):
    import onnx  # the legacy exporter needs no onnxscript

    dynamic_axes = None
    if dynamic:
        dynamic_axes = {ONNX_INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        dynamic_axes.update({name: {0: "batch", 1: "priors"} for name in ONNX_OUTPUT_NAMES})
    with written_atomically(path) as temporary:
        torch.onnx.export(model, (example,), temporary, input_names=[ONNX_INPUT_NAME],
                          output_names=list(ONNX_OUTPUT_NAMES), dynamic_axes=dynamic_axes,
                          opset_version=opset_version, dynamo=False)
        if check:
            onnx.checker.check_model(temporary)
