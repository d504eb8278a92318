"""End-to-end ONNX export: uint8 BGR images in, detections in pixels out (decoding and NMS in the graph)."""
import torch
from torch import nn

from .. import defaults, ops
from .._extension import EXTENSION_ERROR, HAS_EXTENSION
from ..detection import BGR_MEAN
from ..reference._checks import check_integer
from ._exporter import DEFAULT_OPSET, export_module

ONNX_INPUT_NAME = "images"
ONNX_OUTPUT_NAMES = ("detections", "counts")

# Columns of a detection row that are x or y coordinates (scaled by the width or height).
_X_COLUMNS = (0, 2, 5, 7, 9, 11, 13)
_Y_COLUMNS = (1, 3, 6, 8, 10, 12, 14)


class RetinaFaceWithPostprocess(nn.Module):
    """A RetinaFace with ``detect()``'s pre- and post-processing in its forward, for export.

    ``forward(images)``: BGR uint8 images [N, H, W, 3] (as ``cv2.imread`` gives
    them, stacked) -> ``detections`` float32 [N, max_detections, 15] in pixels
    (x1, y1, x2, y2, score, five landmarks x, y; rows past the count are zero)
    and ``counts`` int64 [N]. The mean is subtracted and the images transposed
    inside; the priors come from H and W (``ops.prior_box`` on the symbolic
    size), and ``ops.detect_postprocess`` does the rest. In PyTorch it gives
    what ``detect(model, list(images))`` gives, padded.
    """

    def __init__(self, model, score_threshold=0.5, nms_threshold=defaults.NMS_THRESHOLD,
                 pre_nms_top_k=defaults.PRE_NMS_TOP_K, max_detections=defaults.MAX_DETECTIONS):
        super().__init__()
        self.model = model
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.max_detections = int(max_detections)
        self.register_buffer("mean", torch.tensor(BGR_MEAN, dtype=torch.float32), persistent=False)
        x_columns, y_columns = torch.zeros(15), torch.zeros(15)
        x_columns[list(_X_COLUMNS)] = 1.0
        y_columns[list(_Y_COLUMNS)] = 1.0
        self.register_buffer("x_columns", x_columns, persistent=False)
        self.register_buffer("y_columns", y_columns, persistent=False)

    def forward(self, images):
        height, width = images.shape[1], images.shape[2]
        # Contiguous NCHW, as detect() feeds the CPU: a permuted (channels-last) input
        # makes torch.export's conv shape rules guard on every feature map being > 1.
        batch = (images.float() - self.mean).permute(0, 3, 1, 2).contiguous()
        loc, conf, landms = self.model(batch)
        priors = ops.prior_box((height, width), device=images.device)
        detections, counts = ops.detect_postprocess(
            loc.float(), conf.float(), landms.float(), priors, score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold, pre_nms_top_k=self.pre_nms_top_k,
            max_detections=self.max_detections,
        )
        # Normalised -> pixels; the score column is multiplied by 1.
        scale = self.x_columns * width + self.y_columns * height + (1.0 - self.x_columns - self.y_columns)
        return detections * scale, counts


def export_onnx_with_postprocess(model, path, score_threshold=0.5, nms_threshold=defaults.NMS_THRESHOLD,
                                 pre_nms_top_k=defaults.PRE_NMS_TOP_K, max_detections=defaults.MAX_DETECTIONS,
                                 opset_version=DEFAULT_OPSET, check=True):
    """Writes one ONNX graph that detects faces end to end, and returns ``path``.

    Input ``images``: BGR uint8 [N, H, W, 3], N, H and W dynamic. Outputs
    ``detections`` float32 [N, max_detections, 15] in pixels (x1, y1, x2, y2,
    score, five landmarks x, y), rows past each image's count zero, and
    ``counts`` int64 [N] -- ``ops.detect_postprocess``'s layout, scaled to
    pixels. Thresholds are fixed in the graph. Everything is standard ONNX
    (opset 18, ``NonMaxSuppression`` for the NMS), so onnxruntime runs it
    without custom ops; see ``retinaface_ext.export.translations`` for how the
    graph keeps our NMS semantics. Needs the compiled extension (its ops are
    what the exporter translates) and ``onnxscript``.
    """
    if not HAS_EXTENSION:
        raise RuntimeError("export_onnx_with_postprocess needs the compiled retinaface_ext extension "
                           f"(its ops are what the exporter translates): {EXTENSION_ERROR}")
    # Checked here, before the export: the op's own check would fail inside torch.export's
    # trace, as a page of exporter traceback after seconds of work.
    if not 0.0 <= float(nms_threshold) <= 1.0:
        raise ValueError(f"nms_threshold must be in [0, 1] for ONNX NonMaxSuppression, got {nms_threshold}")
    if not 0.0 <= float(score_threshold) <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    for name, value in (("pre_nms_top_k", pre_nms_top_k), ("max_detections", max_detections)):
        if check_integer("export_onnx_with_postprocess", name, value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    parameter = next(model.parameters())
    # Batch 2 and H != W: torch.export specialises sizes 0 and 1 and would tie equal sizes.
    example = torch.zeros(2, 64, 96, 3, dtype=torch.uint8, device=parameter.device)
    # min=2: making the transposed input contiguous guards on a width != 1.
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("height", min=2), 2: torch.export.Dim("width", min=2)}
    wrapper = RetinaFaceWithPostprocess(model, score_threshold, nms_threshold, pre_nms_top_k, max_detections)
    was_training = model.training
    model.eval()
    try:
        export_module(wrapper.to(parameter.device).eval(), (example,), path, [ONNX_INPUT_NAME], ONNX_OUTPUT_NAMES,
                      (dims,), {"detections": ["batch", int(max_detections), 15], "counts": ["batch"]},
                      opset_version, check)
    finally:
        model.train(was_training)
    return path
