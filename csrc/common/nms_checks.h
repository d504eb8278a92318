// Argument checks of nms and batched_nms, shared by the CPU and CUDA
// registrations so both reject the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "common/checks.h"

namespace retinaface {

inline void check_boxes_and_scores(const char* op, const at::Tensor& boxes,
                                   const at::Tensor& scores, double iou_threshold) {
  check_shape(op, "boxes", boxes, {-1, 4}, "[N, 4]");
  const std::string scores_shape = "[N] (N = " + std::to_string(boxes.size(0)) + " from boxes)";
  check_shape(op, "scores", scores, {boxes.size(0)}, scores_shape.c_str());
  check_floating(op, "boxes", boxes);
  check_floating(op, "scores", scores);
  check_same_device(op, "scores", scores, "boxes", boxes);
  check_unit_interval(op, "iou_threshold", iou_threshold);
}

inline void check_batched_nms_idxs(const at::Tensor& boxes, const at::Tensor& idxs) {
  const std::string idxs_shape = "[N] (N = " + std::to_string(boxes.size(0)) + " from boxes)";
  check_shape("batched_nms", "idxs", idxs, {boxes.size(0)}, idxs_shape.c_str());
  check_integral("batched_nms", "idxs", idxs);
  check_same_device("batched_nms", "idxs", idxs, "boxes", boxes);
}

// Greedy NMS is only defined for finite inputs (a NaN box never suppresses
// and a NaN score has no rank), so they are rejected, naming the row.
// `value` is the first bad element of row `row` (non-finite values print the
// same whatever their floating type).
inline void check_finite_value(const char* op, const char* name, double value, int64_t row) {
  TORCH_CHECK(std::isfinite(value), op, "(): ", name, " must be finite, got ", value, " in row ",
              row);
}

}  // namespace retinaface
