"""Triplet loss with batch-hard mining (Hermans, Beyer and Leibe, "In Defense of
the Triplet Loss for Person Re-Identification", 2017; the triplet loss of
FaceNet, Schroff et al. 2015).

For each anchor a of the batch: the hardest positive p (same label, not a
itself, largest distance) and the hardest negative n (other label, smallest
distance); the loss is max(d(a, p) - d(a, n) + margin, 0), or the soft margin
log(1 + exp(d(a, p) - d(a, n))) when margin is None.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_floating, check_labels, check_same_device, compute_dtype, shape_str

METRICS = ("euclidean", "cosine")
REDUCTIONS = ("mean", "sum", "none")


def _check_options(fn, margin, metric, squared, reduction):
    check_choice(fn, "metric", metric, METRICS)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    if margin is not None and not margin >= 0:
        raise ValueError(f"{fn}: margin must be >= 0 or None (soft margin), got {margin}")
    if squared and metric != "euclidean":
        raise ValueError(f"{fn}: squared=True needs metric='euclidean', got metric={metric!r}")


def _mining_distances(x: torch.Tensor, metric: str) -> torch.Tensor:
    """[N, N] distances used only to *choose* the hardest pairs (no gradient).
    Squared Euclidean ranks like Euclidean, so no sqrt is needed here."""
    if metric == "cosine":
        return 1 - x @ x.T
    sq_norms = x.square().sum(dim=1)
    return (sq_norms[:, None] + sq_norms[None, :] - 2 * (x @ x.T)).clamp(min=0)


def _pair_distances(a: torch.Tensor, b: torch.Tensor, metric: str, squared: bool) -> torch.Tensor:
    """Row-wise d(a[i], b[i]) from the differences themselves (not the Gram-matrix
    identity, which cancels catastrophically for close points): exactly 0 for
    identical embeddings, and the loss is differentiated through these only."""
    if metric == "cosine":
        return 1 - (a * b).sum(dim=1)
    sq = (a - b).square().sum(dim=1)
    if squared:
        return sq
    # sqrt'(0) is inf: clamp before the sqrt and zero exact-zero distances with a
    # where, so a zero distance has the finite (zero) subgradient, not inf * 0 = NaN.
    safe = sq.clamp(min=torch.finfo(sq.dtype).tiny)
    return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                            margin: Optional[float] = 0.3, metric: str = "euclidean",
                            squared: bool = False, reduction: str = "mean",
                            return_active_fraction: bool = False, ignore_index: Optional[int] = -1
                            ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Batch-hard triplet loss.

    Args:
        embeddings: [N, D] float embeddings (float16/bfloat16 computed in float32).
        labels: [N] integer identities; ``ignore_index`` marks unlabelled samples.
        margin: the hinge margin (>= 0), or None for the soft margin
            softplus(d_ap - d_an).
        metric: ``"euclidean"`` (||a - b||) or ``"cosine"`` (1 - cos(a, b); the
            embeddings are L2-normalised first).
        squared: use ||a - b||^2 instead (``"euclidean"`` only).
        reduction: ``"mean"`` over the *valid* anchors, ``"sum"``, or ``"none"``
            ([N], 0 for anchors that are not valid).
        return_active_fraction: also return the fraction of valid anchors whose
            triplet is active: d_ap - d_an + margin > 0 (nonzero hinge), or, with the
            soft margin, d_ap > d_an (the triplet is violated). No gradient; 0 when
            there are no valid anchors.
        ignore_index: label of samples that take no part (neither anchor, positive
            nor negative), as in :func:`center_loss`; None to use every label.

    An anchor is valid when it has at least one positive (another sample with its
    label) and one negative; the others are excluded (a batch of one identity, or of
    singletons, gives loss 0 and a zero gradient, never NaN). N = 0 gives 0.

    Mining uses an [N, N] distance matrix computed without gradient; the loss is
    then differentiated through the chosen pairs' distances, recomputed from the
    embedding differences (stable; a zero distance has a finite gradient).
    Ties between equally hard pairs pick the lowest index.

    Returns:
        the loss (float32; float64 for float64 embeddings), and with
        ``return_active_fraction`` the tuple (loss, active_fraction).
    """
    fn = "batch_hard_triplet_loss()"
    check_floating(fn, "embeddings", embeddings)
    if embeddings.dim() != 2:
        raise ValueError(f"{fn}: embeddings must have shape [N, D], got {shape_str(embeddings)}")
    check_labels(fn, "labels", labels, embeddings.shape[0])
    check_same_device(fn, embeddings=embeddings, labels=labels)
    _check_options(fn, margin, metric, squared, reduction)

    dtype = compute_dtype(embeddings)
    x = embeddings.to(dtype)
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    n = x.shape[0]

    with torch.no_grad():
        dist = _mining_distances(x, metric)
        same = labels[:, None] == labels[None, :]
        not_self = ~torch.eye(n, dtype=torch.bool, device=x.device)
        is_positive, is_negative = same & not_self, ~same
        if ignore_index is not None:
            labelled = labels != ignore_index
            both_labelled = labelled[:, None] & labelled[None, :]
            is_positive, is_negative = is_positive & both_labelled, is_negative & both_labelled
        if n:
            hardest_positive = dist.masked_fill(~is_positive, float("-inf")).argmax(dim=1)
            hardest_negative = dist.masked_fill(~is_negative, float("inf")).argmin(dim=1)
        else:  # argmax over an empty row raises; nothing to mine
            hardest_positive = hardest_negative = torch.zeros(0, dtype=torch.long, device=x.device)
        valid = is_positive.any(dim=1) & is_negative.any(dim=1)

    d_ap = _pair_distances(x, x.index_select(0, hardest_positive), metric, squared)
    d_an = _pair_distances(x, x.index_select(0, hardest_negative), metric, squared)
    gap = d_ap - d_an
    per_anchor = F.softplus(gap) if margin is None else F.relu(gap + margin)
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))

    num_valid = valid.sum().clamp(min=1).to(dtype)
    if reduction == "none":
        loss = per_anchor
    elif reduction == "sum":
        loss = per_anchor.sum()
    else:
        loss = per_anchor.sum() / num_valid
    if not return_active_fraction:
        return loss
    with torch.no_grad():
        violated = gap > 0 if margin is None else gap + margin > 0
        active_fraction = (valid & violated).sum().to(dtype) / num_valid
    return loss, active_fraction


class TripletLoss(nn.Module):
    """Module form of :func:`batch_hard_triplet_loss`; ``forward(embeddings, labels)``
    returns the loss and keeps the fraction of active triplets of the last call in
    ``last_active_fraction`` (a detached scalar tensor, cheap to log)."""

    def __init__(self, margin: Optional[float] = 0.3, metric: str = "euclidean",
                 squared: bool = False, reduction: str = "mean", ignore_index: Optional[int] = -1):
        super().__init__()
        _check_options("TripletLoss()", margin, metric, squared, reduction)
        self.margin, self.metric, self.squared, self.reduction = margin, metric, squared, reduction
        self.ignore_index = ignore_index
        self.last_active_fraction: Optional[torch.Tensor] = None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss, self.last_active_fraction = batch_hard_triplet_loss(
            embeddings, labels, self.margin, self.metric, self.squared, self.reduction,
            return_active_fraction=True, ignore_index=self.ignore_index)
        return loss

    def extra_repr(self) -> str:
        margin = "soft" if self.margin is None else self.margin
        return f"margin={margin}, metric={self.metric!r}, squared={self.squared}, reduction={self.reduction!r}"
