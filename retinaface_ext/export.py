"""ONNX export of a RetinaFace model (outputs loc, conf (softmaxed), landmarks)."""
import os

import torch

ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAMES = ("loc", "conf", "landmarks")
_EXPORT_EXTRA_HINT = 'pip install "retinaface-ext[export]"  (onnx and onnxruntime)'


def export_onnx(model, path, image_size=(640, 640), dynamic=False, opset_version=17, check=True):
    """Writes ``model`` (eval mode) to ``path`` as ONNX and returns the path.

    Input ``input``: [B, 3, H, W] float32, BGR minus (104, 117, 123) -- the same
    as the PyTorch model. Outputs ``loc`` [B, P, 4], ``conf`` [B, P, 2]
    (softmax probabilities) and ``landmarks`` [B, P, 10], raw (not decoded:
    decode them with the priors of ``ops.prior_box((H, W))``).
    ``dynamic=True`` makes batch, height and width dynamic axes; otherwise the
    graph is fixed to batch 1 and ``image_size = (height, width)``.
    ``check`` runs ``onnx.checker`` on the written file.
    """
    try:
        import onnx
    except ImportError:
        raise ImportError(f"ONNX export needs the onnx package: {_EXPORT_EXTRA_HINT}") from None
    height, width = (int(s) for s in image_size)
    parameter = next(model.parameters())
    example = torch.zeros(1, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {ONNX_INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        dynamic_axes.update({name: {0: "batch", 1: "priors"} for name in ONNX_OUTPUT_NAMES})
    was_training = model.training
    model.eval()
    try:
        # The TorchScript-based exporter: it needs no onnxscript and handles the
        # FPN's size-dependent upsampling with dynamic height/width.
        torch.onnx.export(
            model, (example,), os.fspath(path),
            input_names=[ONNX_INPUT_NAME], output_names=list(ONNX_OUTPUT_NAMES),
            dynamic_axes=dynamic_axes, opset_version=opset_version, do_constant_folding=True,
            dynamo=False,
        )
    finally:
        model.train(was_training)
    if check:
        onnx.checker.check_model(os.fspath(path))
    return path
