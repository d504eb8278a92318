"""ONNX export with the torch.export-based exporter (``torch.onnx.export(dynamo=True)``).

- :func:`export_onnx`: the network alone (input BGR minus mean, outputs loc, conf, landmarks).
- :func:`export_onnx_with_postprocess`: one graph from uint8 images to detections in pixels.
- :func:`onnx_translations`: our ops' ONNX translations, for exporting your own model
  that calls ``retinaface_ext.ops`` (pass it as ``custom_translation_table``).

Needs ``pip install "retinaface-ext[export]"`` (onnx, onnxscript, onnxruntime).
"""
from .detector import RetinaFaceWithPostprocess, export_onnx_with_postprocess
from .network import ONNX_INPUT_NAME, ONNX_OUTPUT_NAMES, export_onnx
from .translations import onnx_translations

__all__ = ["ONNX_INPUT_NAME", "ONNX_OUTPUT_NAMES", "RetinaFaceWithPostprocess", "export_onnx",
           "export_onnx_with_postprocess", "onnx_translations"]
