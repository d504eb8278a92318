"""Training data: WIDER FACE label files, biubug6's augmentation, synthetic faces, batching.

A sample is ``(image, annotations)``: ``image`` a BGR uint8 array [H, W, 3] (or,
after :class:`TrainTransform`, a float32 [3, S, S] array, BGR minus the mean) and
``annotations`` a float32 array [n, 15]: x1, y1, x2, y2, five landmarks
(x, y), label (1 = face with landmarks, -1 = face without, landmarks -1).
:func:`collate` turns a list of transformed samples into the padded
ground-truth tensors + counts that ``ops.multibox_loss`` takes.
"""
from .augment import BGR_MEAN, INTERPOLATIONS, AugmentParams, Distortion, TrainTransform, draw_augmentation, matrix_iof
from .collate import Batch, collate, normalize_images
from .synthetic import SyntheticFaces, generate_synthetic_dataset, render_scene
from .widerface import (
    EpochSampler,
    LabelFormatError,
    WiderFaceDataset,
    parse_label_file,
    write_label_file,
)

__all__ = [
    "AugmentParams",
    "BGR_MEAN",
    "Distortion",
    "INTERPOLATIONS",
    "Batch",
    "EpochSampler",
    "LabelFormatError",
    "SyntheticFaces",
    "TrainTransform",
    "WiderFaceDataset",
    "collate",
    "draw_augmentation",
    "generate_synthetic_dataset",
    "matrix_iof",
    "normalize_images",
    "parse_label_file",
    "render_scene",
    "write_label_file",
]
