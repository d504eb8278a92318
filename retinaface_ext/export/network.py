"""ONNX export of a RetinaFace network alone (outputs loc, conf (softmaxed), landmarks)."""
import torch

from ._exporter import DEFAULT_OPSET, export_module

ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAMES = ("loc", "conf", "landmarks")


def export_onnx(model, path, image_size=(640, 640), dynamic=False, opset_version=DEFAULT_OPSET, check=True):
    """Writes ``model`` (eval mode) to ``path`` as ONNX and returns the path.

    Input ``input``: [B, 3, H, W] float32, BGR minus (104, 117, 123) -- the same
    as the PyTorch model. Outputs ``loc`` [B, P, 4], ``conf`` [B, P, 2]
    (softmax probabilities) and ``landmarks`` [B, P, 10], raw (not decoded:
    decode them with the priors of ``ops.prior_box((H, W))``).
    ``dynamic=True`` makes batch, height and width dynamic axes (named
    ``batch``, ``height``, ``width``; the outputs' ``batch``, ``priors``);
    otherwise the graph is fixed to batch 1 and ``image_size = (height, width)``.
    ``check`` runs ``onnx.checker`` on the written file.

    Uses the torch.export-based exporter (``torch.onnx.export(dynamo=True)``,
    which needs onnxscript), with BatchNorm folded into the convolutions.
    """
    height, width = (int(s) for s in image_size)
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
        export_module(model, (example,), path, [ONNX_INPUT_NAME], ONNX_OUTPUT_NAMES, dynamic_shapes,
                      output_shapes, opset_version, check)
    finally:
        model.train(was_training)
    return path
