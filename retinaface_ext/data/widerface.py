"""WIDER FACE in the retinaface_gt_v1.1 ``label.txt`` format, and the training dataset over it.

The format (biubug6's ``data/widerface/train/label.txt``)::

    # 0--Parade/0_Parade_marchingband_1_849.jpg
    449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.727 425.893 0.0 538.273 431.491 0.0 0.82

A ``#`` line names an image (relative to the images directory); each following
line is a face: ``x y w h`` then five landmarks as ``x y flag`` and a blur /
confidence value (20 numbers). Faces without landmarks have -1 there. Lines of
only ``x y w h`` (the validation split's label.txt) are faces without landmarks.
"""
import io
import math
import os
from dataclasses import dataclass, field
from typing import List

import numpy as np
from torch.utils.data import Dataset, DistributedSampler, Sampler

from .decode import open_lazily, read_bgr_image

#: column indices of the 10 landmark coordinates in a 20-number label line.
_LANDMARK_COLUMNS = (4, 5, 7, 8, 10, 11, 13, 14, 16, 17)

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class LabelFormatError(ValueError):
    """A malformed line in a label file; the message starts with ``file:line:``."""


@dataclass
class LabelEntry:
    """One image of a label file: its path, its faces [n, 15] and where it was declared."""

    image_path: str
    annotations: np.ndarray = field(repr=False)
    line: int


def _parse_face_line(numbers, where):
    if len(numbers) == 4:
        x, y, w, h = numbers
        landmarks = [-1.0] * 10
    elif len(numbers) in (19, 20):
        x, y, w, h = numbers[:4]
        landmarks = [numbers[c] for c in _LANDMARK_COLUMNS]
    else:
        raise LabelFormatError(f"{where}: a face line needs 4, 19 or 20 numbers "
                               f"(x y w h [5 x (x y flag)] [blur]), got {len(numbers)}")
    if not all(math.isfinite(v) for v in numbers):
        raise LabelFormatError(f"{where}: non-finite value in a face line")
    if w < 0 or h < 0:
        raise LabelFormatError(f"{where}: negative box size w={w:g} h={h:g}")
    # biubug6: a face whose first landmark x is negative has no landmarks (label -1).
    label = -1.0 if landmarks[0] < 0 else 1.0
    if label < 0:
        landmarks = [-1.0] * 10
    row = [x, y, x + w, y + h, *landmarks, label]
    if not all(abs(v) <= _FLOAT32_MAX for v in row):  # the annotations are float32: inf there
        raise LabelFormatError(f"{where}: a value (or x + w, y + h) beyond float32's range in a face line")
    return row


def parse_label_file(label_file, images_dir=None) -> List[LabelEntry]:
    """Parses a retinaface_gt ``label.txt`` into one :class:`LabelEntry` per image.

    ``images_dir`` defaults to the ``images`` folder next to the label file
    (biubug6's layout: ``train/label.txt`` and ``train/images/``). Annotations
    are float32 [n, 15]: x1, y1, x2 = x + w, y2 = y + h, ten landmark
    coordinates, label (1 with landmarks, -1 without). Raises
    :class:`LabelFormatError` naming the file and line of the first bad line.
    """
    label_file = os.fspath(label_file)
    if images_dir is None:
        images_dir = os.path.join(os.path.dirname(os.path.abspath(label_file)), "images")
    entries = []
    faces = []

    def close_entry():
        if entries:
            entries[-1].annotations = np.asarray(faces, dtype=np.float32).reshape(-1, 15)

    for line_number, raw in enumerate(_read_lines(label_file), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{label_file}:{line_number}"
        if line.startswith("#"):
            name = line[1:].strip()
            if not name:
                raise LabelFormatError(f"{where}: '#' line without an image path")
            close_entry()
            faces = []
            entries.append(LabelEntry(os.path.join(images_dir, name), None, line_number))
            continue
        if not entries:
            raise LabelFormatError(f"{where}: face line before the first '# image' line")
        try:
            numbers = [float(token) for token in line.split()]
        except ValueError:
            raise LabelFormatError(f"{where}: expected numbers, got {line[:80]!r}") from None
        faces.append(_parse_face_line(numbers, where))
    close_entry()
    return entries


def _read_lines(label_file):
    """The lines of a UTF-8 text file; LabelFormatError naming the file and line where it is not UTF-8."""
    with open(label_file, "rb") as handle:
        data = handle.read()
    try:
        # utf-8-sig: a byte-order mark (which Windows editors add) is not part of the first line.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise LabelFormatError(f"{label_file}:{line_number}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
                               "save the label file as UTF-8") from None
    return list(io.StringIO(text, newline=None))  # universal newlines, as reading the file as text


def write_label_file(label_file, samples, blur=0.0):
    """Writes ``samples`` (pairs of relative image path and [n, 15] annotations) as a label.txt."""
    with open(label_file, "w", encoding="utf-8") as handle:
        for relative_path, annotations in samples:
            handle.write(f"# {relative_path}\n")
            for face in np.asarray(annotations, dtype=np.float64).reshape(-1, 15):
                x1, y1, x2, y2 = face[:4]
                values = [x1, y1, x2 - x1, y2 - y1]
                for k in range(5):
                    if face[14] > 0:
                        values += [face[4 + 2 * k], face[5 + 2 * k], 0.0]
                    else:
                        values += [-1.0, -1.0, -1.0]
                values.append(blur)
                handle.write(" ".join(f"{v:.3f}" for v in values) + "\n")


class WiderFaceDataset(Dataset):
    """A label.txt dataset: ``dataset[i]`` -> ``(image, annotations [n, 15] float32)``.

    Without ``transform`` the image is the BGR uint8 array as read. With one
    (e.g. :class:`~retinaface_ext.data.TrainTransform`), it is called as
    ``transform(image, annotations, rng)`` where ``rng`` is a
    ``numpy.random.Generator`` seeded from ``(seed, epoch, index)``: the
    augmentation of a sample depends only on those, not on the worker that
    loads it or on what was loaded before, which is what makes ``--resume``
    and multi-process training reproducible. Index with ``(epoch, index)``
    pairs (see :class:`EpochSampler`) or a plain index (epoch 0). A transform
    with ``decodes_regions = True`` gets JPEGs as :class:`~retinaface_ext.data.decode.JpegFile`
    (decoded by the transform, only where it needs pixels).
    """

    def __init__(self, label_file, images_dir=None, transform=None, seed=0, skip_empty=False):
        self.label_file = os.fspath(label_file)
        self.entries = parse_label_file(label_file, images_dir)
        if skip_empty:
            self.entries = [e for e in self.entries if len(e.annotations)]
        self.transform = transform
        self.seed = int(seed)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        entry = self.entries[index]
        context = f" (listed in {self.label_file}:{entry.line})"
        if self.transform is not None and getattr(self.transform, "decodes_regions", False):
            image = open_lazily(entry.image_path, context)  # the transform decodes only what it uses
        else:
            image = read_bgr_image(entry.image_path, context)
        annotations = entry.annotations.copy()
        if self.transform is None:
            return image, annotations
        rng = np.random.default_rng((self.seed, int(epoch), int(index)))
        return self.transform(image, annotations, rng)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` pairs: a DistributedSampler that tells the dataset the epoch.

    The epoch travels with every index, so datasets in persistent DataLoader
    workers see it without being re-created. Shuffling is the
    ``DistributedSampler`` permutation of ``seed + epoch`` (world size 1 for a
    single process), so the order is a function of (seed, epoch) alone.
    ``skip`` drops the first samples of the current epoch (resume mid-epoch).
    """

    def __init__(self, dataset_size, shuffle=True, seed=0, rank=0, world_size=1, drop_last=False):
        self._sampler = DistributedSampler(_Sized(dataset_size), num_replicas=world_size, rank=rank,
                                           shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch, skip=0):
        self.epoch = int(epoch)
        self.skip = int(skip)
        self._sampler.set_epoch(self.epoch)

    def __iter__(self):
        indices = list(self._sampler)[self.skip:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self):
        return max(len(self._sampler) - self.skip, 0)


class _Sized:
    def __init__(self, n):
        self.n = int(n)

    def __len__(self):
        return self.n
