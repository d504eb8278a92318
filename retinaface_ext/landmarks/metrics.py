"""Facial-landmark metrics: NME, and the AUC and failure rate of its CED curve.

NME of a face = mean over its K landmarks of ||pred_k - gt_k||_2, divided by a
normalising distance d taken from the ground truth. Landmark layouts
(0-based indices; "left" and "right" as seen in the image):

| layout | inter_ocular (outer eye corners) | inter_pupil (eye centres) |
|---|---|---|
| 5 points (ours, biubug6/RetinaFace order: left eye, right eye, nose, left mouth corner, right mouth corner) | 0 - 1 (the eye points are the eye centres) | 0 - 1 |
| 68 points (300W / iBUG: eyes 36-41 and 42-47) | 36 - 45 | mean(36..41) - mean(42..47) |
| 98 points (WFLW: eyes 60-67 and 68-75, pupils 96, 97) | 60 - 72 | 96 - 97 |

``"bbox"`` normalises by sqrt(w * h) of the tight box around the ground-truth
landmarks; pass a tensor to normalise by anything else (e.g. the face box size).
The 300W and WFLW literature reports NME with ``"inter_ocular"``.
"""
from typing import Optional, Sequence, Tuple, Union

import torch

#: (index a, index b) of the outer eye corners for inter-ocular NME, by number of landmarks.
INTER_OCULAR = {5: (0, 1), 68: (36, 45), 98: (60, 72)}
#: the points averaged into each pupil (eye centre) for inter-pupil NME, by number of landmarks.
PUPILS = {5: ((0,), (1,)), 68: (tuple(range(36, 42)), tuple(range(42, 48))), 98: ((96,), (97,))}

NORMALIZATIONS = ("inter_ocular", "inter_pupil", "bbox")


def _shape(t):
    return str(list(t.shape))


def _normalizer(gt: torch.Tensor, normalization) -> torch.Tensor:
    fn = "nme()"
    n, k = gt.shape[:2]
    if isinstance(normalization, (torch.Tensor, int, float)):
        d = torch.as_tensor(normalization, device=gt.device)
        if not (d.is_floating_point() or d.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{fn}: normalization must be a real tensor or a name, got {d.dtype}")
        if d.dim() > 1 or (d.dim() == 1 and d.shape[0] != n):
            raise ValueError(f"{fn}: normalization as a tensor must have shape [] or [{n}] (one per face), "
                             f"got {_shape(d)}")
        return d.to(gt.dtype).expand(n)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"{fn}: normalization must be one of {', '.join(map(repr, NORMALIZATIONS))} "
                         f"or a tensor, got {normalization!r}")
    if normalization == "bbox":
        wh = gt.amax(dim=1) - gt.amin(dim=1)
        return (wh[:, 0] * wh[:, 1]).sqrt()
    if k not in INTER_OCULAR:
        raise ValueError(f"{fn}: normalization={normalization!r} knows the 5-, 68- and 98-point layouts; "
                         f"gt has K={k} landmarks (pass normalization='bbox' or a tensor)")
    if normalization == "inter_ocular":
        a, b = INTER_OCULAR[k]
        return (gt[:, a] - gt[:, b]).norm(dim=-1)
    left, right = PUPILS[k]
    return (gt[:, list(left)].mean(dim=1) - gt[:, list(right)].mean(dim=1)).norm(dim=-1)


def nme(pred: torch.Tensor, gt: torch.Tensor,
        normalization: Union[str, torch.Tensor, float] = "inter_ocular") -> torch.Tensor:
    """Per-face normalised mean error [N].

    Args:
        pred: predicted landmarks [N, K, 2].
        gt: ground-truth landmarks [N, K, 2] (same units as pred).
        normalization: ``"inter_ocular"`` (default), ``"inter_pupil"`` (K = 5, 68 or
            98; see the module docstring for the indices), ``"bbox"`` (sqrt(w * h) of
            the ground-truth landmarks' box), or a tensor [N] / scalar of distances.

    Returns:
        [N] float32 NMEs (float64 for float64 inputs). A zero normaliser is clamped
        to the smallest positive float, so an exact prediction of a degenerate face
        gets 0 and any error a huge NME (a failure), never NaN. Multiply by 100 for
        the percentages papers report.
    """
    fn = "nme()"
    for name, t in (("pred", pred), ("gt", gt)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")
    if pred.dim() != 3 or pred.shape[2] != 2:
        raise ValueError(f"{fn}: pred must have shape [N, K, 2], got {_shape(pred)}")
    if gt.shape != pred.shape:
        raise ValueError(f"{fn}: gt must have the shape of pred {_shape(pred)}, got {_shape(gt)}")
    if pred.device != gt.device:
        raise ValueError(f"{fn}: pred and gt must be on one device, got {pred.device} and {gt.device}")
    dtype = torch.float64 if torch.float64 in (pred.dtype, gt.dtype) else torch.float32
    pred, gt = pred.to(dtype), gt.to(dtype)
    if pred.shape[1] == 0:
        raise ValueError(f"{fn}: pred must have at least one landmark (K >= 1), got {_shape(pred)}")
    d = _normalizer(gt, normalization).clamp(min=torch.finfo(dtype).tiny)
    return (pred - gt).norm(dim=-1).mean(dim=1) / d


def auc_and_failure_rate(nmes: Union[torch.Tensor, Sequence[float]], threshold: float = 0.1,
                         step: Optional[float] = None) -> Tuple[float, float]:
    """AUC of the cumulative error distribution (CED) up to ``threshold``, and the failure rate.

    CED(t) = fraction of faces with NME <= t. AUC = (1 / threshold) * integral of
    CED(t) for t in [0, threshold], in [0, 1]: 1 when every NME is 0, 0 when every
    NME is >= threshold. Failure rate = fraction of faces with NME **>** threshold
    (strictly; an NME exactly at the threshold is not a failure, consistent with
    CED(threshold) counting it).

    Args:
        nmes: per-face NMEs (a 1-D tensor, array or list; e.g. from :func:`nme`).
            NaN/inf count as failures; negative values raise. The threshold is
            compared in their own precision (a float32 NME equal to float32(0.1)
            is at the threshold, not above it).
        threshold: the CED cut-off (0.1 = the usual AUC@0.1 / FR@0.1).
        step: None (default) for the exact area, mean(max(0, 1 - nme / threshold));
            or a grid step (threshold must be a multiple of it) for the trapezoid rule
            on the CED sampled at 0, step, ..., threshold, as the published evaluation
            scripts compute it (step=1e-4 matches them to about 1e-4).

    Returns:
        (auc, failure_rate) as Python floats.
    """
    fn = "auc_and_failure_rate()"
    if isinstance(nmes, torch.Tensor):
        values = nmes.detach()
    else:
        values = torch.as_tensor(nmes, dtype=torch.float64)
    if values.dim() != 1:
        raise ValueError(f"{fn}: nmes must be 1-D (one NME per face), got shape {_shape(values)}")
    if values.numel() == 0:
        raise ValueError(f"{fn}: nmes is empty: the AUC and failure rate of no faces are undefined")
    if not threshold > 0:
        raise ValueError(f"{fn}: threshold must be > 0, got {threshold}")
    if not values.is_floating_point():
        values = values.double()
    # Compare in the NMEs' own precision: a float32 NME of 0.1 is *at* the threshold 0.1
    # (float32(0.1) > 0.1 in float64 would make it a failure).
    limit = torch.tensor(threshold, dtype=values.dtype).item()
    values = values.to("cpu", torch.float64)
    if bool((values < 0).any()):
        raise ValueError(f"{fn}: nmes must be >= 0, got {values.min().item()}")
    values = torch.where(values.isfinite(), values, torch.full_like(values, float("inf")))
    failure_rate = (values > limit).double().mean().item()

    if step is None:
        auc = (1 - values / limit).clamp(min=0).mean().item()
        return auc, failure_rate
    intervals = round(threshold / step) if step > 0 else 0
    if not step > 0 or intervals < 1 or abs(intervals * step - threshold) > 1e-9 * threshold:
        raise ValueError(f"{fn}: step must be > 0 and divide threshold={threshold}, got {step}")
    grid = torch.linspace(0, limit, intervals + 1, dtype=torch.float64)
    # CED(t) = #{nme <= t} / N, by binary search in the sorted NMEs (no [grid, N] matrix).
    ced = torch.searchsorted(values.sort().values, grid, right=True).double() / values.numel()
    # Trapezoid rule on the uniform grid, divided by its length: each cell weighs 1 / intervals.
    auc = ((ced[:-1] + ced[1:]).sum() / (2 * intervals)).item()
    return auc, failure_rate
