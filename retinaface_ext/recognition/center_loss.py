"""Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep
Face Recognition", ECCV 2016).

    L_C = 1/2 * ||x_i - c_{y_i}||^2, per sample, reduced over the batch.

The class centre of each sample is *gathered* (``index_select``): memory and
time are O(N * D), never an [N, K] distance matrix, so it scales to the 100k+
identities of face-recognition training sets.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from ._checks import (check_choice, check_floating, check_labels, check_same_device,
                      compute_dtype, shape_str)

REDUCTIONS = ("mean", "sum", "none")
UPDATE_RULES = ("count_normalised", "sgd")


def _check_center_inputs(fn, features, labels, centers):
    check_floating(fn, "features", features)
    if features.dim() != 2:
        raise ValueError(f"{fn}: features must have shape [N, D], got {shape_str(features)}")
    check_labels(fn, "labels", labels, features.shape[0])
    if centers is not None:
        check_floating(fn, "centers", centers)
        if centers.dim() != 2 or centers.shape[1] != features.shape[1]:
            raise ValueError(f"{fn}: centers must have shape [K, {features.shape[1]}] (D of features), "
                             f"got {shape_str(centers)}")
        check_same_device(fn, features=features, labels=labels, centers=centers)
    else:
        check_same_device(fn, features=features, labels=labels)


def _check_label_range(fn, labels, num_classes, ignore_index):
    """Labels must be in [0, K) or ignore_index. Checked on CPU only: on an accelerator
    the check would be a host sync every step; there an out-of-range label trips
    index_select's device-side assert instead."""
    if labels.device.type != "cpu" or labels.numel() == 0:
        return
    used = labels[labels != ignore_index]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= num_classes):
        bad = used[(used < 0) | (used >= num_classes)][0].item()
        raise ValueError(f"{fn}: labels must be in [0, {num_classes}) or ignore_index={ignore_index}, "
                         f"got {bad}")


def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                ignore_index: int = -1, reduction: str = "mean") -> torch.Tensor:
    """Center loss 1/2 * ||features[i] - centers[labels[i]]||^2.

    Args:
        features: [N, D] float features (any float dtype; float16/bfloat16 are
            computed in float32, and get their gradient in their own dtype).
        labels: [N] integer class indices in [0, K); ``ignore_index`` marks samples
            that contribute nothing (no loss, zero gradient, no centre update).
        centers: [K, D] class centres. Differentiable: gradients reach ``centers``
            when it requires grad (the "sgd" rule of :class:`CenterLoss`).
        ignore_index: label value to skip (default -1).
        reduction: ``"mean"`` over the non-ignored samples (0 when every label is
            ignored or N = 0, never NaN), ``"sum"``, or ``"none"`` ([N], 0 on ignored rows).

    Returns:
        A float32 scalar (float64 when features or centers are float64), or [N] for ``"none"``.

    Note: Wen et al. write L_C as the *sum* over the mini-batch; ``"mean"`` (the usual
    choice in PyTorch code) divides by the number of non-ignored samples, so the
    loss weight lambda does not depend on the batch size.
    """
    fn = "center_loss()"
    _check_center_inputs(fn, features, labels, centers)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    _check_label_range(fn, labels, centers.shape[0], ignore_index)

    dtype = compute_dtype(features, centers)
    valid = labels != ignore_index
    if centers.shape[0] == 0:  # K = 0: only all-ignored batches are legal, gather nothing
        gathered = features.new_zeros(features.shape, dtype=dtype)
    else:
        # Ignored rows gather centre 0 and are masked out below: no host sync, no boolean indexing.
        index = torch.where(valid, labels, torch.zeros_like(labels))
        gathered = centers.to(dtype).index_select(0, index)
    diff = features.to(dtype) - gathered
    # Masking diff (not only the loss) keeps inf/NaN features of ignored rows out of the gradient.
    diff = torch.where(valid[:, None], diff, torch.zeros((), dtype=dtype, device=diff.device))
    per_sample = 0.5 * diff.square().sum(dim=1)

    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / valid.sum().clamp(min=1).to(dtype)


@torch.no_grad()
def center_update_statistics(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                             ignore_index: int = -1, dtype: Optional[torch.dtype] = None
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums [K, D] and counts [K] of a batch (ignored labels left out).

    These are the sufficient statistics of Wen et al.'s centre update, and they add
    up across processes: all-reduce (sum) both to update centres with the global batch.
    Vectorised with ``index_add_`` (no Python loop over classes, no host sync: ignored
    rows go to an extra scratch row that is dropped).
    """
    fn = "center_update_statistics()"
    _check_center_inputs(fn, features, labels, None)
    _check_label_range(fn, labels, num_classes, ignore_index)
    dtype = dtype or compute_dtype(features)
    scratch = num_classes  # row K collects the ignored samples
    index = torch.where(labels != ignore_index, labels, torch.full_like(labels, scratch))
    sums = features.new_zeros((num_classes + 1, features.shape[1]), dtype=dtype)
    sums.index_add_(0, index, features.detach().to(dtype))
    counts = features.new_zeros(num_classes + 1, dtype=dtype)
    counts.index_add_(0, index, torch.ones_like(index, dtype=dtype))
    return sums[:num_classes], counts[:num_classes]


@torch.no_grad()
def count_normalised_center_step(centers: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor,
                                 alpha: float) -> None:
    """Wen et al.'s update, in place:
    delta c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j) = (n_j * c_j - S_j) / (1 + n_j),
    c_j -= alpha * delta c_j. Classes absent from the batch (n_j = 0) do not move."""
    delta = (counts[:, None] * centers.to(sums.dtype) - sums) / (1 + counts[:, None])
    centers.sub_((alpha * delta).to(centers.dtype))


class CenterLoss(nn.Module):
    """Center loss with learnable class centres.

    Args:
        num_classes: K, the number of identities.
        feature_dim: D, the feature size.
        alpha: the centre learning rate of the ``"count_normalised"`` rule (Wen et al.
            use 0.5); unused by ``"sgd"`` (there the optimizer's learning rate rules).
        update: how the centres learn.

            - ``"count_normalised"`` (default; Wen et al.'s Algorithm 1): ``centers`` is a
              *buffer* (no gradient, not in ``parameters()``), updated in ``forward`` in
              training mode only, under ``no_grad``, after the loss is computed with the
              current centres: c_j -= alpha * sum_{i: y_i=j} (c_j - x_i) / (1 + n_j),
              n_j the number of samples of class j in the batch. Vectorised
              (``index_add_``), no loop over classes.
            - ``"sgd"``: ``centers`` is an ``nn.Parameter``; the loss's gradient reaches it
              and your optimizer learns it (give it its own learning rate with a param
              group if needed). ``forward`` changes nothing.
        ignore_index: label value whose samples are skipped (loss and update).
        reduction: ``"mean"`` (over non-ignored samples), ``"sum"`` or ``"none"``.
        all_reduce: with ``"count_normalised"``, sum the per-class statistics over all
            processes of the default ``torch.distributed`` group before the update
            (a no-op when torch.distributed is not initialised).

    Centres start at zero (they move towards the class means; with ``"sgd"`` the
    classes separate through their different gradients). Call ``reset_parameters``
    or assign ``centers`` to initialise them otherwise.

    Distributed training: centre updates are **per process**. With
    ``"count_normalised"`` each process updates its own copy from its own batch, so
    the copies drift apart unless you pass ``all_reduce=True`` (the global-batch
    update, identical on every rank) or synchronise them yourself. Keep the module
    outside the DDP wrapper (DDP's default ``broadcast_buffers=True`` would overwrite
    the other ranks' buffers with rank 0's). With ``"sgd"`` the centre gradients are
    averaged only if the module's parameters are inside a DDP-wrapped module
    (or you all-reduce their gradients).
    """

    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 0.5,
                 update: str = "count_normalised", ignore_index: int = -1,
                 reduction: str = "mean", all_reduce: bool = False):
        super().__init__()
        fn = "CenterLoss()"
        check_choice(fn, "update", update, UPDATE_RULES)
        check_choice(fn, "reduction", reduction, REDUCTIONS)
        if num_classes < 1:
            raise ValueError(f"{fn}: num_classes must be >= 1, got {num_classes}")
        if feature_dim < 1:
            raise ValueError(f"{fn}: feature_dim must be >= 1, got {feature_dim}")
        if not alpha >= 0:
            raise ValueError(f"{fn}: alpha must be >= 0, got {alpha}")
        self.num_classes, self.feature_dim = int(num_classes), int(feature_dim)
        self.alpha, self.update = float(alpha), update
        self.ignore_index, self.reduction, self.all_reduce = int(ignore_index), reduction, all_reduce
        centers = torch.zeros(self.num_classes, self.feature_dim)
        if update == "sgd":
            self.centers = nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.centers.zero_()

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = center_loss(features, labels, self.centers, self.ignore_index, self.reduction)
        if self.update == "count_normalised" and self.training:
            self.update_centers(features, labels)
        return loss

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One count-normalised step from this batch (what ``forward`` does in training mode)."""
        dtype = compute_dtype(features, self.centers)
        sums, counts = center_update_statistics(features, labels, self.num_classes,
                                                self.ignore_index, dtype)
        if self.all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        count_normalised_center_step(self.centers, sums, counts, self.alpha)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, update={self.update!r}, "
                f"alpha={self.alpha}, ignore_index={self.ignore_index}, reduction={self.reduction!r}")
