// Argument checks of margin_cross_entropy and margin_cross_entropy_backward,
// shared by the CPU and CUDA registrations so both reject the same inputs
// with the same messages. Only checks that need no device data live here: the
// CPU also checks the label values (check_margin_labels_cpu), which on CUDA
// would need a host sync (the CUDA kernel gives such rows a NaN loss instead).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <string>

#include "common/checks.h"
#include "common/margin_math.h"

namespace retinaface {

// The dtype of the losses and row statistics for logits of type `logits`.
inline at::ScalarType margin_loss_dtype(at::ScalarType logits) {
  return logits == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_margin_logits_and_labels(const char* op, const at::Tensor& cos_logits,
                                           const at::Tensor& labels) {
  check_shape(op, "cos_logits", cos_logits, {-1, -1}, "[N, C]");
  const std::string n_str = "[" + std::to_string(cos_logits.size(0)) + "]";
  check_shape(op, "labels", labels, {cos_logits.size(0)}, n_str.c_str());
  check_floating(op, "cos_logits", cos_logits);
  check_integral(op, "labels", labels);
  check_same_device(op, "labels", labels, "cos_logits", cos_logits);
}

inline void check_margin_params(const char* op, double s, double m1, double m2, double m3) {
  TORCH_CHECK(std::isfinite(s) && s > 0, op, "(): s must be a positive finite scale, got ", s);
  TORCH_CHECK(std::isfinite(m1) && m1 > 0, op, "(): m1 must be positive and finite, got ", m1);
  TORCH_CHECK(m2 >= 0 && m2 < kPi, op, "(): m2 must be in [0, pi), got ", m2);
  TORCH_CHECK(std::isfinite(m3), op, "(): m3 must be finite, got ", m3);
}

inline void check_class_range(const char* op, const at::Tensor& cos_logits, int64_t class_offset,
                              int64_t num_classes) {
  TORCH_CHECK(class_offset >= 0, op, "(): class_offset must be >= 0, got ", class_offset);
  // Written so that a huge class_offset cannot overflow int64 (C >= 0, offset >= 0).
  TORCH_CHECK(class_offset <= std::numeric_limits<int64_t>::max() - cos_logits.size(1) &&
                  num_classes >= class_offset + cos_logits.size(1),
              op, "(): num_classes must be >= class_offset + C = ", class_offset, " + ",
              cos_logits.size(1), ", got ", num_classes);
}

// Everything margin_cross_entropy checks before it runs (CPU and CUDA).
inline void check_margin_cross_entropy_args(const at::Tensor& cos_logits, const at::Tensor& labels,
                                            double s, double m1, double m2, double m3,
                                            int64_t class_offset, int64_t num_classes) {
  const char* op = "margin_cross_entropy";
  check_margin_logits_and_labels(op, cos_logits, labels);
  check_margin_params(op, s, m1, m2, m3);
  check_class_range(op, cos_logits, class_offset, num_classes);
}

// A per-row tensor of the backward: shape [N], the loss dtype, the device of
// cos_logits.
inline void check_margin_row_tensor(const char* name, const at::Tensor& t,
                                    const at::Tensor& cos_logits) {
  const char* op = "margin_cross_entropy_backward";
  const std::string n_str = "[" + std::to_string(cos_logits.size(0)) + "]";
  check_shape(op, name, t, {cos_logits.size(0)}, n_str.c_str());
  check_dtype(op, name, t, margin_loss_dtype(cos_logits.scalar_type()));
  check_same_device(op, name, t, "cos_logits", cos_logits);
}

// Everything margin_cross_entropy_backward checks before it runs.
inline void check_margin_cross_entropy_backward_args(
    const at::Tensor& grad_loss, const at::Tensor& grad_sumexp, const at::Tensor& grad_target,
    const at::Tensor& cos_logits, const at::Tensor& labels, const at::Tensor& row_max,
    const at::Tensor& row_sumexp, double s, double m1, double m2, double m3,
    int64_t class_offset) {
  const char* op = "margin_cross_entropy_backward";
  check_margin_logits_and_labels(op, cos_logits, labels);
  check_margin_params(op, s, m1, m2, m3);
  TORCH_CHECK(class_offset >= 0, op, "(): class_offset must be >= 0, got ", class_offset);
  check_margin_row_tensor("grad_loss", grad_loss, cos_logits);
  check_margin_row_tensor("grad_sumexp", grad_sumexp, cos_logits);
  check_margin_row_tensor("grad_target", grad_target, cos_logits);
  check_margin_row_tensor("row_max", row_max, cos_logits);
  check_margin_row_tensor("row_sumexp", row_sumexp, cos_logits);
}

// CPU only: every label is -1 (ignored) or a class in [0, num_classes).
inline void check_margin_labels_cpu(const at::Tensor& labels_long, int64_t num_classes) {
  const int64_t* y = labels_long.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < labels_long.numel(); ++i) {
    TORCH_CHECK(y[i] == -1 || (y[i] >= 0 && y[i] < num_classes),
                "margin_cross_entropy(): labels must be -1 (ignored) or a class in [0, ",
                num_classes, "), got ", y[i], " at row ", i);
  }
}

}  // namespace retinaface
