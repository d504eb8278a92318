"""Realistic ground truth for the benchmarks: WIDER FACE validation faces, shaped like training batches.

The official validation ground truth (``wider_face_val.mat``, the file the
standard evaluation reads) holds, per event and image, the faces as
``x, y, w, h`` in pixels: 3226 images, 39708 faces, up to 709 in one image.
The face counts and sizes are what make matching, mining and NMS expensive, so
the benchmarks take them from there rather than from uniform random boxes.

Each image becomes a training target the way biubug6's data pipeline would
produce it for a 640 x 640 training crop, minus the randomness of the crop:

* zero-width or zero-height boxes are dropped (biubug6's ``_crop`` drops them
  with its ``min(w, h) > 0`` mask);
* boxes are converted to ``x1, y1, x2, y2`` and normalised to ``[0, 1]`` in a
  square of side ``max(1024, extent of the boxes)`` (WIDER images are 1024 px
  wide; the training crop is square and resized to 640, so normalised
  coordinates are all the loss ever sees);
* every face gets five plausible landmarks inside its box (eyes, nose, mouth
  corners, jittered) and label 1, except about one face in five that gets
  label -1 and landmarks -1, as in biubug6's training labels (faces annotated
  without landmarks).

Batches are B consecutive images of a fixed shuffle of the validation set
(``numpy.random.default_rng(0).permutation``), as a shuffling data loader would
deliver them; ``shuffle=False`` takes them in the .mat's order instead (whose
first event, Parade, is about three times as crowded as the average image).
With the shuffle, the first 32 images hold 416 faces (the set's mean for 32
images is 394) and the first 256 hold 3206 (mean 3150).

Everything is deterministic: image ``i``'s landmarks and labels come from a
generator seeded with ``i``, so an image's target does not depend on which
other images share its batch.

Where the ``.mat`` files are: ``$RETINAFACE_WIDERFACE_GT`` if set, else
``<repo>/.gpu_data`` (git-ignored: the copy carried to a GPU machine, see
benchmarks/README.md), else the first ``shared/data/widerface_val_gt`` found
beside the repository or beside one of its parent folders
(``<repo>/../shared/data/widerface_val_gt`` in the usual checkout). The data is
never committed to the repository.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

ENV_VAR = "RETINAFACE_WIDERFACE_GT"
MAT_FILE = "wider_face_val.mat"
NUM_VAL_IMAGES = 3226
NUM_VAL_FACES = 39708

# The square a WIDER image is normalised in is at least this wide (images are 1024 px wide).
MIN_SQUARE_SIDE = 1024.0
# Fraction of faces labelled -1 (no landmarks), like biubug6's training labels.
NO_LANDMARK_FRACTION = 0.2
# Mean landmark layout of a frontal face, as fractions of the box: left eye,
# right eye, nose tip, left and right mouth corners.
_LANDMARK_LAYOUT = np.array(
    [[0.30, 0.38], [0.70, 0.38], [0.50, 0.58], [0.35, 0.78], [0.65, 0.78]], dtype=np.float64
)
_LANDMARK_JITTER = 0.06
SHUFFLE_SEED = 0

_REPO_ROOT = Path(__file__).resolve().parents[1]


class WiderFaceNotFound(FileNotFoundError):
    """The WIDER FACE validation ground truth is not where the benchmarks look for it."""


def gt_folder() -> Optional[Path]:
    """The folder holding ``wider_face_val.mat``, or None when it cannot be found."""
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        folder = Path(from_env).expanduser()
        return folder if (folder / MAT_FILE).is_file() else None
    for folder in [_REPO_ROOT / ".gpu_data"] + [p / "shared" / "data" / "widerface_val_gt" for p in _REPO_ROOT.parents]:
        if (folder / MAT_FILE).is_file():
            return folder
    return None


def missing_reason() -> str:
    """Why the data is missing, for pytest.skip."""
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return f"{MAT_FILE} not found in ${ENV_VAR}={from_env}"
    return (
        f"WIDER FACE validation ground truth ({MAT_FILE}) not found: set ${ENV_VAR} "
        f"to its folder or put it in <repo>/../shared/data/widerface_val_gt"
    )


@functools.lru_cache(maxsize=4)
def _load_val_boxes_cached(folder: str) -> tuple:
    import scipy.io

    mat = scipy.io.loadmat(os.path.join(folder, MAT_FILE))
    per_event = mat["face_bbx_list"]  # [events, 1] cells of [images, 1] cells of [n, 4]
    images = []
    for event in range(per_event.shape[0]):
        cells = per_event[event, 0]
        for image in range(cells.shape[0]):
            boxes = np.asarray(cells[image, 0], dtype=np.float64).reshape(-1, 4)
            boxes.setflags(write=False)
            images.append(boxes)
    return tuple(images)


def load_val_boxes(folder: Optional[os.PathLike] = None) -> Sequence[np.ndarray]:
    """Faces of every validation image, in the .mat's order: a sequence of [n, 4] x, y, w, h (pixels).

    Raises WiderFaceNotFound when the file is missing.
    """
    folder = Path(folder) if folder is not None else gt_folder()
    if folder is None or not (folder / MAT_FILE).is_file():
        raise WiderFaceNotFound(missing_reason())
    return _load_val_boxes_cached(str(folder.resolve()))


def available() -> bool:
    return gt_folder() is not None


def image_targets(xywh: np.ndarray, seed: int) -> np.ndarray:
    """One image's faces as a biubug6 training target: [n, 15] float32 (x1, y1, x2, y2, 10 landmarks, label).

    Drops zero-width/height boxes, normalises to [0, 1] in a square of side
    max(1024, extent of the boxes), adds five landmarks per face (label 1) or
    none (landmarks -1, label -1) for about one face in five.
    """
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    xywh = xywh[(xywh[:, 2] > 0) & (xywh[:, 3] > 0)]
    x1y1 = xywh[:, :2]
    x2y2 = xywh[:, :2] + xywh[:, 2:]
    extent = float(x2y2.max()) if len(xywh) else 0.0
    side = max(MIN_SQUARE_SIDE, extent)
    boxes = np.concatenate([x1y1, x2y2], axis=1) / side

    rng = np.random.default_rng(seed)
    n = len(boxes)
    wh = boxes[:, None, 2:] - boxes[:, None, :2]
    fractions = _LANDMARK_LAYOUT[None] + rng.uniform(-_LANDMARK_JITTER, _LANDMARK_JITTER, (n, 5, 2))
    landmarks = (boxes[:, None, :2] + np.clip(fractions, 0.0, 1.0) * wh).reshape(n, 10)
    labels = np.where(rng.random(n) < NO_LANDMARK_FRACTION, -1.0, 1.0)
    landmarks[labels < 0] = -1.0
    return np.concatenate([boxes, landmarks, labels[:, None]], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _all_targets(folder: str) -> tuple:
    return tuple(image_targets(xywh, seed=i) for i, xywh in enumerate(_load_val_boxes_cached(folder)))


def all_targets(folder: Optional[os.PathLike] = None) -> Sequence[np.ndarray]:
    """image_targets for every validation image, cached."""
    load_val_boxes(folder)  # raises when missing
    folder = Path(folder) if folder is not None else gt_folder()
    return _all_targets(str(folder.resolve()))


@dataclass
class GroundTruthBatch:
    """A batch of training ground truth in both forms the ops take.

    Padded form (retinaface_ext.ops): gt_boxes [B, G, 4] xyxy, gt_landms
    [B, G, 10], gt_labels [B, G] (1 or -1; padding 0), gt_counts [B] int64,
    G = the largest face count in the batch. List form (biubug6's
    MultiBoxLoss): targets, B tensors of [n_i, 15].
    """

    gt_boxes: torch.Tensor
    gt_landms: torch.Tensor
    gt_labels: torch.Tensor
    gt_counts: torch.Tensor
    targets: List[torch.Tensor]
    image_indices: List[int]

    @property
    def batch_size(self) -> int:
        return len(self.targets)

    @property
    def num_faces(self) -> int:
        return int(self.gt_counts.sum())

    def describe(self) -> str:
        counts = self.gt_counts.tolist()
        return f"{len(counts)} images, {sum(counts)} faces (max {max(counts, default=0)} per image)"


def pad_targets(
    targets: Sequence[torch.Tensor],
    labels_dtype: torch.dtype = torch.float32,
) -> tuple:
    """biubug6 targets (list of [n, 15]) -> padded (gt_boxes, gt_landms, gt_labels, gt_counts)."""
    batch = len(targets)
    device = targets[0].device if batch else torch.device("cpu")
    dtype = targets[0].dtype if batch else torch.float32
    counts = [int(t.shape[0]) for t in targets]
    max_gt = max(counts, default=0)
    padded = torch.zeros((batch, max_gt, 15), dtype=dtype, device=device)
    for b, target in enumerate(targets):
        padded[b, : counts[b]] = target
    return (
        padded[..., :4].contiguous(),
        padded[..., 4:14].contiguous(),
        padded[..., 14].to(labels_dtype).contiguous(),
        torch.tensor(counts, dtype=torch.int64, device=device),
    )


@functools.lru_cache(maxsize=1)
def _shuffled_order(num_images: int) -> tuple:
    return tuple(int(i) for i in np.random.default_rng(SHUFFLE_SEED).permutation(num_images))


def batch(
    batch_size: int,
    start: int = 0,
    shuffle: bool = True,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
    labels_dtype: torch.dtype = torch.float32,
    folder: Optional[os.PathLike] = None,
) -> GroundTruthBatch:
    """Positions start .. start + batch_size - 1 (wrapping around) of the image order, as a GroundTruthBatch.

    The order is the fixed shuffle of the validation images, or the .mat's
    order with ``shuffle=False``.
    """
    per_image = all_targets(folder)
    order = _shuffled_order(len(per_image)) if shuffle else range(len(per_image))
    indices = [order[(start + k) % len(per_image)] for k in range(batch_size)]
    targets = [torch.from_numpy(per_image[i].copy()).to(device=device, dtype=dtype) for i in indices]
    gt_boxes, gt_landms, gt_labels, gt_counts = pad_targets(targets, labels_dtype)
    return GroundTruthBatch(gt_boxes, gt_landms, gt_labels, gt_counts, targets, indices)
