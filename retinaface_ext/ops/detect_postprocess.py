from typing import Sequence, Tuple

import torch

from .. import defaults, reference
from .._extension import check_same_device, fused_op, register_fake, register_no_gradient
from ..reference._checks import check_unit_interval, check_variances


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
    """RetinaFace detection post-processing for a batch (biubug6 detect.py), padded.

    Args:
        loc: [B, P, 4] box offsets from the network.
        conf: [B, P, C] class probabilities, C >= 2 (already softmaxed, as
            RetinaFace's forward returns them in eval mode); the face score is
            ``conf[..., 1]``.
        landms: [B, P, 10] landmark offsets.
        priors: [P, 4] priors (cx, cy, w, h), e.g. from ``prior_box``.
        score_threshold: priors with score > score_threshold are candidates
            (strictly: a score equal to it is dropped).
        nms_threshold: IoU threshold of the NMS (as in :func:`nms`).
        pre_nms_top_k: at most this many candidates, the highest-scoring
            (equal scores: lower prior index first), enter the NMS.
        max_detections: K, the number of rows per image; the first K boxes the
            NMS keeps are returned.
        variances: the two box-coding variances.

    Returns:
        detections: [B, K, 15] rows (x1, y1, x2, y2, score, x0, y0, ..., x4, y4)
            in normalised coordinates (multiply by the image size for pixels),
            in descending score order; rows past the image's count are zero.
        counts: [B] int64, the number of valid rows per image.

    Per image: threshold the scores, take the top pre_nms_top_k, decode their
    boxes (``decode``), NMS, keep the first max_detections and decode their
    landmarks (``decode_landmarks``). The shapes are static, so there is no
    host sync and the result can be captured in a CUDA graph.

    Outputs are float32 for float32, float16 and bfloat16 inputs (computed in
    float32) and float64 when any input is float64. Thresholds are rounded to
    that dtype before comparing. NaN scores never pass the threshold; a
    candidate whose decoded box is NaN neither suppresses nor is suppressed.

    Differences from biubug6's detect.py: its NMS is py_cpu_nms, with areas
    (x2 - x1 + 1) * (y2 - y1 + 1) in pixels and a non-stable argsort for the
    score order; we follow torchvision's NMS as DESIGN.md says (no +1, on
    normalised coordinates, stable order: equal scores keep the lower prior
    index first), so borderline overlaps and score ties can resolve
    differently. biubug6 also applies keep_top_k after NMS on the host; here it
    is max_detections, and results stay padded on the device.
    """
    op = fused_op("detect_postprocess")
    if op is None:
        return reference.detect_postprocess(
            loc, conf, landms, priors, score_threshold, nms_threshold, pre_nms_top_k,
            max_detections, variances,
        )
    return op(
        loc, conf, landms, priors, float(score_threshold), float(nms_threshold),
        int(pre_nms_top_k), int(max_detections), [float(v) for v in variances],
    )


_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@register_fake("detect_postprocess")
def _detect_postprocess_fake(
    loc, conf, landms, priors, score_threshold, nms_threshold, pre_nms_top_k, max_detections,
    variances,
):
    op = "detect_postprocess"
    torch._check(loc.dim() == 3 and loc.shape[2] == 4,
                 lambda: f"{op}(): loc must have shape [B, P, 4], got {list(loc.shape)}")
    batch, num_priors = loc.shape[:2]
    torch._check(conf.dim() == 3 and conf.shape[:2] == (batch, num_priors) and conf.shape[2] >= 2,
                 lambda: f"{op}(): conf must have shape [B, P, C] (B = {batch}, P = {num_priors} from loc, "
                         f"C >= 2), got {list(conf.shape)}")
    torch._check(landms.dim() == 3 and landms.shape == (batch, num_priors, 10),
                 lambda: f"{op}(): landms must have shape [{batch}, {num_priors}, 10], got {list(landms.shape)}")
    torch._check(priors.dim() == 2 and priors.shape == (num_priors, 4),
                 lambda: f"{op}(): priors must have shape [{num_priors}, 4], got {list(priors.shape)}")
    for name, tensor in (("loc", loc), ("conf", conf), ("landms", landms), ("priors", priors)):
        torch._check(tensor.dtype in _FLOATING,
                     lambda: f"{op}(): {name} must be a floating tensor (float32, float64, float16 or "
                             f"bfloat16), got {tensor.dtype}")
    check_same_device(op, "loc", loc, conf=conf, landms=landms, priors=priors)
    check_unit_interval(op, "score_threshold", score_threshold)
    check_unit_interval(op, "nms_threshold", nms_threshold)
    torch._check(pre_nms_top_k >= 0, lambda: f"{op}(): pre_nms_top_k must be >= 0, got {pre_nms_top_k}")
    torch._check(max_detections >= 0, lambda: f"{op}(): max_detections must be >= 0, got {max_detections}")
    check_variances(op, variances)  # as the kernels (csrc/common/checks.h)
    dtype = torch.promote_types(
        torch.promote_types(loc.dtype, conf.dtype), torch.promote_types(landms.dtype, priors.dtype)
    )
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    batch = loc.shape[0]
    detections = loc.new_empty((batch, max_detections, 15), dtype=dtype)
    counts = loc.new_empty((batch,), dtype=torch.int64)
    return detections, counts


register_no_gradient("detect_postprocess", "thresholding, top-k and NMS select boxes, they are not "
                     "differentiable. Detach its inputs (e.g. run it under torch.no_grad()).")
