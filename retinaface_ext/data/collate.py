"""Batching for the fused loss: images stacked, ground truth padded to [B, G, ...] plus counts."""
import functools
from typing import NamedTuple

import numpy as np
import torch

from .. import defaults


class Batch(NamedTuple):
    """A training batch. ``gt_*[b, :gt_counts[b]]`` are image b's faces; the rest is padding.

    images [B, 3, S, S] float32, or [B, S, S, 3] uint8 BGR when the transform
    returns uint8 (4x fewer bytes to pin and copy; :func:`normalize_images`
    turns them into the network's input on the device); gt_boxes [B, G, 4] (x1, y1, x2, y2, normalised);
    gt_landms [B, G, 10]; gt_labels [B, G] float32 (1 / -1, padding 0);
    gt_counts [B] int64. This is exactly what ``ops.multibox_loss`` takes, so
    a batch moves to the device in five copies and no per-image Python work
    remains in the training step.
    """

    images: torch.Tensor
    gt_boxes: torch.Tensor
    gt_landms: torch.Tensor
    gt_labels: torch.Tensor
    gt_counts: torch.Tensor

    def to(self, device, non_blocking=False):
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def targets(self):
        """biubug6's list of [n, 15] target tensors (for its MultiBoxLoss)."""
        full = torch.cat([self.gt_boxes, self.gt_landms, self.gt_labels.unsqueeze(-1)], dim=-1)
        return [full[b, :n] for b, n in enumerate(self.gt_counts.tolist())]


def collate(samples, pad_multiple=1):
    """``[(image [3, S, S], targets [n, 15]), ...]`` -> :class:`Batch`.

    ``G`` is the largest face count in the batch rounded up to
    ``pad_multiple`` (a fixed multiple keeps shapes steadier for torch.compile
    and CUDA graphs); padding rows are zeros.
    """
    first = samples[0][0] if samples else None
    dtype = np.uint8 if first is not None and np.asarray(first).dtype == np.uint8 else np.float32
    images = torch.from_numpy(np.stack([np.asarray(image, dtype=dtype) for image, _ in samples]))
    counts = [len(targets) for _, targets in samples]
    max_count = max(counts, default=0)
    if pad_multiple > 1:
        max_count = -(-max_count // pad_multiple) * pad_multiple
    padded = np.zeros((len(samples), max_count, 15), dtype=np.float32)
    for slot, (_, targets) in zip(padded, samples):
        slot[: len(targets)] = targets
    padded = torch.from_numpy(padded)
    return Batch(
        images=images,
        gt_boxes=padded[..., :4].contiguous(),
        gt_landms=padded[..., 4:14].contiguous(),
        gt_labels=padded[..., 14].contiguous(),
        gt_counts=torch.tensor(counts, dtype=torch.int64),
    )


# Made once per device and mean: a tensor built from Python numbers on CUDA is a host-to-device
# copy that waits for the stream (every training step), and is not allowed while a CUDA graph is
# being captured (detect()).
@functools.lru_cache(maxsize=None)
def mean_tensor(bgr_mean, device):
    """float32 [1, 3, 1, 1] of the BGR mean (a tuple of floats) on ``device`` (a string), cached."""
    return torch.tensor(bgr_mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def normalize_images(images, bgr_mean=defaults.BGR_MEAN, channels_last=False):
    """uint8 [B, S, S, 3] BGR -> float32 [B, 3, S, S] minus ``bgr_mean``, where the batch is (e.g. the GPU).

    The values equal ``TrainTransform``'s float32 output exactly. With
    ``channels_last`` the result keeps the uint8 batch's NHWC layout (the
    channels_last memory format, no copy beyond the conversion); float
    batches are returned unchanged.
    """
    if images.dtype != torch.uint8:
        return images
    mean = mean_tensor(tuple(float(m) for m in bgr_mean), str(images.device))
    out = images.permute(0, 3, 1, 2).float() - mean
    return out if channels_last else out.contiguous()
