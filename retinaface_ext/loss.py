"""MultiBoxLoss: a drop-in for biubug6's layers/modules/multibox_loss.py, on the fused op."""
from typing import Sequence, Tuple

import torch
from torch import nn

from . import defaults
from .ops.multibox_loss import multibox_loss


class MultiBoxLoss(nn.Module):
    """RetinaFace's MultiBox loss with biubug6's constructor and forward.

    ``MultiBoxLoss(num_classes, overlap_thresh, prior_for_matching, bkg_label,
    neg_mining, neg_pos, neg_overlap, encode_target)`` takes biubug6's
    arguments with biubug6's meaning: ``overlap_thresh`` is the matching
    threshold (0.35 in its train.py) and ``neg_pos`` the negative:positive
    ratio of hard negative mining (7). As in biubug6, ``prior_for_matching``,
    ``bkg_label`` (the background is class 0), ``neg_mining`` (mining is always
    on), ``neg_overlap`` and ``encode_target`` are stored but change nothing.

    ``forward(predictions, priors, targets)``: predictions = (loc [B, P, 4],
    conf [B, P, num_classes], landms [B, P, 10]), priors [P, 4], targets a
    list of B tensors [n_i, 15] (xyxy box, 10 landmark coordinates, label;
    n_i may be 0). Returns (loss_l, loss_c, loss_landm), see
    retinaface_ext.ops.multibox_loss for the exact semantics; biubug6 trains on
    2.0 * loss_l + loss_c + loss_landm.

    Beyond biubug6, keyword-only: ``conf_loss="focal"`` replaces the class
    term's cross-entropy with hard negative mining by a softmax focal loss over
    all priors normalised by the number of positives (RetinaNet; ``neg_pos``
    is then unused), with ``focal_alpha`` (face class; background 1 - alpha)
    and ``focal_gamma``. The default ``conf_loss="ce"`` is biubug6's loss.
    """

    def __init__(self, num_classes: int, overlap_thresh: float, prior_for_matching: bool,
                 bkg_label: int, neg_mining: bool, neg_pos: int, neg_overlap: float,
                 encode_target: bool, *, conf_loss: str = "ce",
                 focal_alpha: float = defaults.FOCAL_ALPHA,
                 focal_gamma: float = defaults.FOCAL_GAMMA):
        super().__init__()
        if int(neg_pos) != neg_pos or neg_pos < 0:
            raise ValueError(f"MultiBoxLoss: neg_pos must be a non-negative integer, got {neg_pos}")
        if conf_loss not in ("ce", "focal"):
            raise ValueError(f"MultiBoxLoss: conf_loss must be 'ce' or 'focal', got {conf_loss!r}")
        self.conf_loss = conf_loss
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.num_classes = num_classes
        self.threshold = overlap_thresh
        self.background_label = bkg_label
        self.encode_target = encode_target
        self.use_prior_for_matching = prior_for_matching
        self.do_neg_mining = neg_mining
        self.negpos_ratio = int(neg_pos)
        self.neg_overlap = neg_overlap
        self.variance = list(defaults.VARIANCES)

    def forward(self, predictions: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                priors: torch.Tensor, targets: Sequence[torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, conf, landms = predictions
        if conf.shape[-1] != self.num_classes:
            raise ValueError(f"MultiBoxLoss: conf has {conf.shape[-1]} classes, "
                             f"expected num_classes = {self.num_classes}")
        if len(targets) != loc.shape[0]:
            raise ValueError(f"MultiBoxLoss: got {len(targets)} targets for a batch of "
                             f"{loc.shape[0]} images")
        gt, counts = pad_targets(targets, loc.device, priors.dtype)
        return multibox_loss(loc, conf, landms, priors, gt[..., :4], gt[..., 4:14], gt[..., 14],
                             counts, threshold=self.threshold, neg_pos_ratio=self.negpos_ratio,
                             variances=self.variance, min_best_iou=defaults.MIN_BEST_IOU,
                             conf_loss=self.conf_loss, focal_alpha=self.focal_alpha,
                             focal_gamma=self.focal_gamma)


def pad_targets(targets: Sequence[torch.Tensor], device, dtype=torch.float32
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """A list of [n_i, 15] targets -> (padded [B, max n_i, 15] on device, counts [B] int64).

    The counts come from the tensors' shapes, so nothing waits for the device:
    they are copied to a CUDA device from pinned memory, asynchronously.
    """
    for i, t in enumerate(targets):
        if t.dim() != 2 or t.shape[1] != 15:
            raise ValueError(f"MultiBoxLoss: targets[{i}] must have shape [n, 15], "
                             f"got {list(t.shape)}")
    device = torch.device(device)
    counts = torch.tensor([t.shape[0] for t in targets], dtype=torch.int64)
    if device.type == "cuda":
        counts = counts.pin_memory().to(device, non_blocking=True)
    else:
        counts = counts.to(device)
    if len(targets) == 0:
        return torch.zeros(0, 0, 15, dtype=dtype, device=device), counts
    if device.type == "cuda" and all(t.device.type == "cpu" for t in targets):
        # Targets straight from a DataLoader: pad on the host and copy once,
        # from pinned memory and asynchronously (a pageable copy would wait
        # for the device).
        padded = torch.nn.utils.rnn.pad_sequence([t.to(dtype) for t in targets], batch_first=True)
        return padded.pin_memory().to(device, non_blocking=True), counts
    padded = torch.nn.utils.rnn.pad_sequence(
        [t.to(device=device, dtype=dtype) for t in targets], batch_first=True)
    return padded, counts
