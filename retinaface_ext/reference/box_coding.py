"""Pure-PyTorch box coding: biubug6's encode / decode / encode_landm / decode_landm.

Each function follows biubug6's tensor operations in their order (so float32
results are bit-identical except where exp/log round differently), generalised
from [P, R] to [..., P, R]: priors [P, 4] apply along the second-to-last dim.
float16/bfloat16 inputs are computed in float32 and float64 in float64, and
the result has the input dtype; priors of any floating dtype are read in that
compute dtype. One deliberate difference: encode clamps the width/height
ratio at MIN_ENCODED_RATIO before the log, so a zero-area box gives a large
finite target instead of -inf (see retinaface_ext.ops.encode).
"""
import torch

from .. import defaults
from ._checks import check_variances

# csrc/common/box_math.h kMinEncodedRatio.
MIN_ENCODED_RATIO = 1e-6


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_compute(tensor, priors):
    dtype = _compute_dtype(tensor.dtype)
    return tensor.to(dtype), priors.to(dtype)


def encode(boxes, priors, variances=defaults.VARIANCES):
    """xyxy ground truth [..., P, 4] -> loc targets [..., P, 4]."""
    check_variances("encode", variances)
    matched, priors = _as_compute(boxes, priors)
    g_cxcy = (matched[..., :2] + matched[..., 2:]) / 2 - priors[:, :2]
    g_cxcy /= variances[0] * priors[:, 2:]
    g_wh = (matched[..., 2:] - matched[..., :2]) / priors[:, 2:]
    # box_math.h keeps `ratio > min ? ratio : min`; torch.where is the same
    # comparison (a NaN ratio takes the minimum, where clamp would keep NaN).
    g_wh = torch.where(g_wh > MIN_ENCODED_RATIO, g_wh, MIN_ENCODED_RATIO)
    g_wh = torch.log(g_wh) / variances[1]
    return torch.cat([g_cxcy, g_wh], dim=-1).to(boxes.dtype)


def decode(loc, priors, variances=defaults.VARIANCES):
    """loc [..., P, 4] -> xyxy boxes [..., P, 4]."""
    check_variances("decode", variances)
    loc_c, priors = _as_compute(loc, priors)
    boxes = torch.cat(
        (
            priors[:, :2] + loc_c[..., :2] * variances[0] * priors[:, 2:],
            priors[:, 2:] * torch.exp(loc_c[..., 2:] * variances[1]),
        ),
        dim=-1,
    )
    boxes[..., :2] -= boxes[..., 2:] / 2
    boxes[..., 2:] += boxes[..., :2]
    return boxes.to(loc.dtype)


def encode_landmarks(landmarks, priors, variances=defaults.VARIANCES):
    """Points [..., P, 10] (x0, y0 .. x4, y4) -> offsets [..., P, 10]. Uses variances[0] only."""
    check_variances("encode_landmarks", variances)
    matched, priors = _as_compute(landmarks, priors)
    matched = matched.reshape(*matched.shape[:-1], 5, 2)
    priors = priors[:, None, :]  # [P, 1, 4]: the same prior for the 5 points
    g_cxcy = matched - priors[..., :2]
    g_cxcy /= variances[0] * priors[..., 2:]
    return g_cxcy.flatten(-2).to(landmarks.dtype)


def decode_landmarks(landmarks, priors, variances=defaults.VARIANCES):
    """Offsets [..., P, 10] -> points [..., P, 10]. Uses variances[0] only."""
    check_variances("decode_landmarks", variances)
    pre, priors = _as_compute(landmarks, priors)
    points = torch.cat(
        [priors[:, :2] + pre[..., 2 * k : 2 * k + 2] * variances[0] * priors[:, 2:] for k in range(5)],
        dim=-1,
    )
    return points.to(landmarks.dtype)
