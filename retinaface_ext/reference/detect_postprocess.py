"""Pure-PyTorch detect_postprocess: biubug6 detect.py's steps, one image at a time."""
from typing import Sequence, Tuple

import torch

from .. import defaults
from ._checks import check_unit_interval, check_variances
from .nms import greedy_nms


def _decode_boxes(loc, priors, variances):
    # biubug6 decode(), in its (and box_math.h's) order of operations.
    centres = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])
    top_left = centres - sizes / 2
    return torch.cat([top_left, top_left + sizes], dim=1)


def _decode_landmarks(landms, priors, variances):
    # biubug6 decode_landm().
    points = landms.reshape(-1, 5, 2)
    decoded = priors[:, None, :2] + points * variances[0] * priors[:, None, 2:]
    return decoded.reshape(-1, 10)


def detect_postprocess(
    loc: torch.Tensor,
    conf: torch.Tensor,
    landms: torch.Tensor,
    priors: torch.Tensor,
    score_threshold: float = defaults.SCORE_THRESHOLD,
    nms_threshold: float = defaults.NMS_THRESHOLD,
    pre_nms_top_k: int = defaults.PRE_NMS_TOP_K,
    max_detections: int = defaults.MAX_DETECTIONS,
    variances: Sequence[float] = defaults.VARIANCES,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch detect_postprocess (same contract as retinaface_ext.ops.detect_postprocess)."""
    check_unit_interval("detect_postprocess", "score_threshold", score_threshold)
    check_unit_interval("detect_postprocess", "nms_threshold", nms_threshold)
    check_variances("detect_postprocess", variances)
    dtype = torch.promote_types(
        torch.promote_types(loc.dtype, conf.dtype), torch.promote_types(landms.dtype, priors.dtype)
    )
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    batch = loc.shape[0]
    detections = torch.zeros(batch, max_detections, 15, dtype=dtype, device=loc.device)
    counts = torch.zeros(batch, dtype=torch.int64, device=loc.device)
    priors = priors.to(dtype)
    for b in range(batch):
        scores = conf[b, :, 1].to(dtype)
        candidates = torch.nonzero(scores > score_threshold).flatten()
        order = torch.sort(scores[candidates], descending=True, stable=True).indices
        selected = candidates[order[:pre_nms_top_k]]
        boxes = _decode_boxes(loc[b, selected].to(dtype), priors[selected], variances)
        kept = greedy_nms(boxes, nms_threshold)[:max_detections]
        rows = torch.cat(
            [
                boxes[kept],
                scores[selected[kept], None],
                _decode_landmarks(landms[b, selected[kept]].to(dtype), priors[selected[kept]], variances),
            ],
            dim=1,
        )
        detections[b, : rows.shape[0]] = rows
        counts[b] = rows.shape[0]
    return detections, counts
