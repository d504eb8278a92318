"""ONNX translations of our custom ops for the torch.export-based exporter.

``torch.onnx.export(..., dynamo=True, custom_translation_table=onnx_translations())``
turns every ``torch.ops.retinaface.*`` call below into standard ONNX operators
(opset 18), so a model that calls ``ops.detect_postprocess``, ``ops.decode``,
``ops.decode_landmarks`` or ``ops.prior_box`` exports and runs in onnxruntime
with no custom op. The functions are traced by onnxscript: Python values
(thresholds, sizes) are known while the graph is built, tensors are graph values.

Arithmetic follows ``csrc/common/box_math.h`` (biubug6's order of float32
operations), so decoding matches the fused kernels to the last bit except where
the runtime's ``exp`` rounds differently (an ulp).

detect_postprocess and ONNX ``NonMaxSuppression`` (checked against the ONNX
spec and onnxruntime's CPU kernel):

- NonMaxSuppression is per class and orders boxes with a priority queue, so
  equal scores come out in no defined order. We sort first (``TopK``, whose
  spec breaks ties by the lower index: our stable order) and hand NMS a
  strictly decreasing rank instead of the score, so its visiting order is ours
  whatever its tie rule. The score threshold is applied before, strictly
  (``score > threshold``), so NMS's own ``score_threshold`` (``>`` in
  onnxruntime, "less than ... removed" in the spec) never sees a tie either.
- Its IoU test is ``iou > iou_threshold``, with iou = inter / (area1 + area2 -
  inter) in float32: the same test and formula as ours (torchvision's, no +1).
  Box format 0 means [y1, x1, y2, x2]; IoU is symmetric in x and y, so our
  [x1, y1, x2, y2] boxes give the same overlaps. Boxes of zero area, or with a
  NaN coordinate, neither suppress nor are suppressed, as in our kernel.
- It requires 0 <= iou_threshold <= 1 (onnxruntime raises otherwise), as our
  op does; the translation checks it at export, where the op's own check does
  not run.
- ``max_output_boxes_per_class`` = max_detections: NMS stops after that many
  kept boxes, which are the first max_detections of our greedy order.
- float64 inputs are post-processed in float32 (NonMaxSuppression takes float
  only) and the detections cast back to float64.
"""
import functools
from typing import Sequence

import numpy as np
import torch

_MISSING_ONNXSCRIPT = ('Exporting with the torch.export-based ONNX exporter needs onnxscript: '
                       'pip install "retinaface-ext[export]"  (onnx, onnxscript, onnxruntime)')


def _onnxscript():
    try:
        import onnxscript
        from onnxscript import opset18
    except ImportError:
        raise ImportError(_MISSING_ONNXSCRIPT) from None
    return onnxscript, opset18


def _constant(op, values, dtype=np.float32):
    return op.Constant(value=_ir_tensor(np.asarray(values, dtype=dtype)))


def _ir_tensor(array):
    import onnx_ir

    return onnx_ir.tensor(array)


def _cast(op, value, dtype):
    return value if value.dtype == dtype else op.Cast(value, to=dtype)


def _compute_dtype(value):
    """Our kernels compute in float64 for float64 inputs, in float32 for all others."""
    import onnx_ir

    return onnx_ir.DataType.DOUBLE if value.dtype == onnx_ir.DataType.DOUBLE else onnx_ir.DataType.FLOAT


def _constant_like(op, value, like):
    # Written in float64 and rounded once to like's dtype, as the kernels' T(variance).
    return op.CastLike(_constant(op, value, np.float64), like)


def _decode_boxes(op, loc, priors, variances):
    """biubug6 decode() on [..., 4] offsets and priors (cx, cy, w, h) -> [..., 4] xyxy (box_math.h order)."""
    prior_centres = op.Slice(priors, [0], [2], [-1])
    prior_sizes = op.Slice(priors, [2], [4], [-1])
    offsets = op.Mul(op.Slice(loc, [0], [2], [-1]), _constant_like(op, variances[0], loc))
    centres = op.Add(prior_centres, op.Mul(offsets, prior_sizes))
    sizes = op.Mul(prior_sizes, op.Exp(op.Mul(op.Slice(loc, [2], [4], [-1]), _constant_like(op, variances[1], loc))))
    top_left = op.Sub(centres, op.Div(sizes, _constant_like(op, 2.0, loc)))
    return op.Concat(top_left, op.Add(top_left, sizes), axis=-1)


def _decode_landmarks(op, landms, priors, variances):
    """biubug6 decode_landm() on [..., 10] offsets -> [..., 10] points (x0, y0, ..., x4, y4)."""
    # The prior centre and size repeated for the ten coordinates: (cx, cy) * 5 and (w, h) * 5.
    prior_centres = op.Concat(*[op.Slice(priors, [0], [2], [-1])] * 5, axis=-1)
    prior_sizes = op.Concat(*[op.Slice(priors, [2], [4], [-1])] * 5, axis=-1)
    return op.Add(prior_centres, op.Mul(op.Mul(landms, _constant_like(op, variances[0], landms)), prior_sizes))


def _decode_translation(loc, priors, variances: Sequence[float]):
    """retinaface::decode(Tensor loc, Tensor priors, float[] variances) -> Tensor (loc's dtype)."""
    _, op = _onnxscript()
    dtype = _compute_dtype(loc)
    return op.CastLike(_decode_boxes(op, _cast(op, loc, dtype), _cast(op, priors, dtype), variances), loc)


def _decode_landmarks_translation(landmarks, priors, variances: Sequence[float]):
    """retinaface::decode_landmarks(Tensor landmarks, Tensor priors, float[] variances) -> Tensor (their dtype)."""
    _, op = _onnxscript()
    dtype = _compute_dtype(landmarks)
    return op.CastLike(_decode_landmarks(op, _cast(op, landmarks, dtype), _cast(op, priors, dtype), variances),
                       landmarks)


def _prior_box_translation(height: int, width: int, min_sizes: Sequence[int], sizes_per_level: Sequence[int],
                           steps: Sequence[int], clip: bool, device: str = ""):
    """retinaface::prior_box(...) -> Tensor, at a size fixed at export time: a constant.

    ``ops.prior_box`` called with symbolic sizes, as inside a dynamically
    shaped export, never reaches this op: it computes the priors with tensor
    operations that export to a graph of the input's shape. ``device`` (where
    the schema has it) means nothing in an ONNX graph.
    """
    _, op = _onnxscript()
    from ..ops.prior_box import _prior_box_of_symbolic_size  # vectorised, bit-exact on plain ints too

    levels, start = [], 0
    for count in sizes_per_level:
        levels.append(tuple(min_sizes[start:start + count]))
        start += count
    priors = _prior_box_of_symbolic_size(height, width, levels, steps, clip, None, torch.float32)
    return _constant(op, priors.numpy())


def _detect_postprocess_translation(loc, conf, landms, priors, score_threshold: float, nms_threshold: float,
                                    pre_nms_top_k: int, max_detections: int, variances: Sequence[float]):
    """retinaface::detect_postprocess(...) -> (detections [B, max_detections, 15], counts [B]).

    Per image, as the fused op: the face scores (``conf[..., 1]``) above the
    threshold, the top pre_nms_top_k in stable descending order, decoded,
    greedy NMS, the first max_detections kept, their landmarks decoded; rows
    past the count are zero. See the module docstring for how NMS is made to
    follow our semantics.
    """
    import onnx_ir

    _, op = _onnxscript()
    if not 0.0 <= nms_threshold <= 1.0:  # NaN too
        raise ValueError(f"detect_postprocess ONNX export: nms_threshold must be in [0, 1] (ONNX "
                         f"NonMaxSuppression's iou_threshold), got {nms_threshold}")
    output_dtype = (onnx_ir.DataType.DOUBLE
                    if any(t.dtype == onnx_ir.DataType.DOUBLE for t in (loc, conf, landms, priors))
                    else onnx_ir.DataType.FLOAT)
    loc, conf, landms, priors = (_cast(op, t, onnx_ir.DataType.FLOAT) for t in (loc, conf, landms, priors))
    int64 = functools.partial(_constant, op, dtype=np.int64)

    scores = op.Gather(conf, int64(1), axis=2)                                  # [B, P]
    # NaN scores never pass the threshold; as -inf they also sort last.
    scores = op.Where(op.IsNaN(scores), _constant(op, -np.inf), scores)
    num_priors = op.Shape(scores, start=1, end=2)                               # [1]
    k = op.Min(num_priors, int64([pre_nms_top_k]))
    top_scores, top_index = op.TopK(scores, k, axis=1, largest=1, sorted=1)    # [B, k], stable order
    candidate = op.Greater(top_scores, _constant(op, score_threshold))          # a prefix of each row

    gather_index = op.Unsqueeze(top_index, int64([2]))                          # [B, k, 1]
    boxes = _decode_boxes(op, op.GatherND(loc, gather_index, batch_dims=1),
                          op.Gather(priors, top_index, axis=0), variances)     # [B, k, 4]

    # NMS on ranks k, k-1, ..., 1 (0 for non-candidates, dropped by score_threshold 0).
    rank = op.Cast(op.Range(int64(0), op.Squeeze(k, int64([0])), int64(1)), to=onnx_ir.DataType.FLOAT)
    nms_scores = op.Where(candidate, op.Sub(op.Cast(k, to=onnx_ir.DataType.FLOAT), rank), _constant(op, 0.0))
    selected = op.NonMaxSuppression(boxes, op.Unsqueeze(nms_scores, int64([1])), int64([max_detections]),
                                    _constant(op, [nms_threshold]), _constant(op, [0.0]),
                                    center_point_box=0)                        # [S, 3]: batch, class, box
    batch_and_box = op.Gather(selected, int64([0, 2]), axis=1)                  # [S, 2]
    kept = op.ScatterND(op.ConstantOfShape(op.Shape(top_scores), value=_ir_tensor(np.zeros(1, np.float32))),
                        batch_and_box,
                        op.Expand(_constant(op, 1.0), op.Shape(batch_and_box, start=0, end=1)))  # [B, k] 0/1
    counts = op.Cast(op.ReduceSum(kept, int64([1]), keepdims=0), to=onnx_ir.DataType.INT64)

    # Compact the kept candidates to the front in greedy order: the largest keys
    # -rank of the kept ones, found by TopK (no tie among kept keys).
    rows = op.Min(k, int64([max_detections]))
    keys = op.Where(op.Cast(kept, to=onnx_ir.DataType.BOOL), op.Neg(rank), _constant(op, -np.inf))
    _, order = op.TopK(keys, rows, axis=1, largest=1, sorted=1)                # [B, rows]
    prior_index = op.GatherElements(top_index, order, axis=1)
    row_boxes = op.GatherND(boxes, op.Unsqueeze(order, int64([2])), batch_dims=1)
    row_scores = op.Unsqueeze(op.GatherElements(top_scores, order, axis=1), int64([2]))
    row_landmarks = _decode_landmarks(op, op.GatherND(landms, op.Unsqueeze(prior_index, int64([2])), batch_dims=1),
                                      op.Gather(priors, prior_index, axis=0), variances)
    detections = op.Concat(row_boxes, row_scores, row_landmarks, axis=2)       # [B, rows, 15]
    valid = op.Less(op.Range(int64(0), op.Squeeze(rows, int64([0])), int64(1)),
                    op.Unsqueeze(counts, int64([1])))                          # [B, rows]
    detections = op.Where(op.Unsqueeze(valid, int64([2])), detections, _constant(op, 0.0))
    # Pad to max_detections rows when fewer candidates than that exist.
    padding = op.Concat(int64([0, 0, 0, 0]), op.Sub(int64([max_detections]), rows), int64([0]), axis=0)
    detections = op.Pad(detections, padding)
    if output_dtype != onnx_ir.DataType.FLOAT:
        detections = op.Cast(detections, to=output_dtype)
    return detections, counts


def onnx_translations():
    """``{torch op overload: onnxscript translation}`` for ``torch.onnx.export(custom_translation_table=...)``.

    Empty without the compiled extension (then no ``torch.ops.retinaface`` op exists to translate).
    """
    from .._extension import HAS_EXTENSION

    _onnxscript()
    if not HAS_EXTENSION:
        return {}
    ops = torch.ops.retinaface
    return {
        ops.detect_postprocess.default: _detect_postprocess_translation,
        ops.decode.default: _decode_translation,
        ops.decode_landmarks.default: _decode_landmarks_translation,
        ops.prior_box.default: _prior_box_translation,
    }
