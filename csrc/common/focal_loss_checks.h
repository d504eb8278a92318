// Argument checks of sigmoid_focal_loss, softmax_focal_loss and their
// backward ops, shared by the CPU kernels (csrc/cpu/focal_loss.cpp) and the
// CUDA registration (csrc/cuda/focal_loss.cpp), so both reject the same inputs
// with the same messages. Only checks that need no device data live here: the
// CPU kernels also check the label values, which a CUDA kernel could only
// report with a host sync.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <optional>
#include <sstream>
#include <string>

#include "common/checks.h"
#include "common/focal_math.h"

namespace retinaface {

// The loss is computed and returned in float32 (float64 for float64 inputs).
inline at::ScalarType focal_loss_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline FocalReduction parse_focal_reduction(const char* op, c10::string_view reduction) {
  const std::string r(reduction.data(), reduction.size());
  if (r == "none") return FocalReduction::kNone;
  if (r == "sum") return FocalReduction::kSum;
  if (r == "mean") return FocalReduction::kMean;
  TORCH_CHECK(false, op, "(): reduction must be 'none', 'sum' or 'mean', got '", r, "'");
}

inline void check_focal_options(const char* op, double alpha, double gamma) {
  TORCH_CHECK(std::isfinite(gamma) && gamma >= 0, op, "(): gamma must be a finite number >= 0, got ",
              gamma);
  TORCH_CHECK(!std::isnan(alpha) && alpha <= 1, op,
              "(): alpha must be in [0, 1] (or negative to disable the weighting), got ", alpha);
}

// normalizer: one element, a number type, on the input's device or the CPU
// (a CPU value is read on the host: no device sync).
inline void check_normalizer(const char* op, const std::optional<at::Tensor>& normalizer,
                             const char* input_name, const at::Tensor& input,
                             FocalReduction reduction) {
  if (!normalizer.has_value()) return;
  const at::Tensor& n = *normalizer;
  TORCH_CHECK(reduction != FocalReduction::kMean, op,
              "(): normalizer cannot be combined with reduction='mean' (use 'sum' or 'none')");
  TORCH_CHECK(n.numel() == 1, op,
              "(): normalizer must have one element (e.g. the number of positives), got shape ",
              shape_str(n));
  TORCH_CHECK(at::isFloatingType(n.scalar_type()) ||
                  at::isIntegralType(n.scalar_type(), /*includeBool=*/false),
              op, "(): normalizer must be a floating or integer tensor, got ", n.scalar_type());
  TORCH_CHECK(n.device() == input.device() || n.device().is_cpu(), op,
              "(): normalizer must be on the same device as ", input_name, " (", input.device(),
              ") or on the CPU, got ", n.device());
}

// Rows and classes of a [..., C] input (rows = product of the leading dims).
struct FocalShape {
  bool labels;  // integer class labels (else per-element float targets)
  int64_t rows, classes;
};

// The shape of t without its last dimension, e.g. "[2, 16800]".
inline std::string leading_shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes().slice(0, t.dim() > 0 ? t.dim() - 1 : 0);
  return s.str();
}

inline FocalShape check_sigmoid_focal_loss_args(const char* op, const at::Tensor& inputs,
                                                const at::Tensor& targets,
                                                const std::optional<at::Tensor>& normalizer,
                                                double alpha, double gamma,
                                                FocalReduction reduction, int64_t background_index,
                                                int64_t ignore_index) {
  check_floating(op, "inputs", inputs);
  check_same_device(op, "targets", targets, "inputs", inputs);
  check_focal_options(op, alpha, gamma);
  check_normalizer(op, normalizer, "inputs", inputs, reduction);
  if (at::isFloatingType(targets.scalar_type())) {
    TORCH_CHECK(targets.sizes() == inputs.sizes(), op,
                "(): float targets must have the shape of inputs ", shape_str(inputs), ", got ",
                shape_str(targets));
    return {false, inputs.numel(), 1};
  }
  TORCH_CHECK(at::isIntegralType(targets.scalar_type(), /*includeBool=*/false), op,
              "(): targets must be a floating tensor (per-element targets) or an integer tensor "
              "(class labels), got ",
              targets.scalar_type());
  TORCH_CHECK(inputs.dim() >= 1, op,
              "(): inputs must have a class dimension [..., C] with integer targets, got shape ",
              shape_str(inputs));
  TORCH_CHECK(targets.sizes() == inputs.sizes().slice(0, inputs.dim() - 1), op,
              "(): integer targets (class labels) must have shape ", leading_shape_str(inputs),
              " (inputs ", shape_str(inputs), " without the class dimension), got ",
              shape_str(targets));
  TORCH_CHECK(background_index != ignore_index, op,
              "(): background_index and ignore_index must differ, got ", background_index,
              " for both");
  const int64_t classes = inputs.size(-1);
  return {true, classes == 0 ? 0 : inputs.numel() / classes, classes};
}

inline FocalShape check_softmax_focal_loss_args(const char* op, const at::Tensor& logits,
                                                const at::Tensor& labels,
                                                const std::optional<at::Tensor>& normalizer,
                                                double alpha, double gamma,
                                                FocalReduction reduction) {
  check_floating(op, "logits", logits);
  TORCH_CHECK(logits.dim() >= 1 && logits.size(-1) >= 1, op,
              "(): logits must have shape [..., C] with C >= 1, got ", shape_str(logits));
  check_integral(op, "labels", labels);
  TORCH_CHECK(labels.sizes() == logits.sizes().slice(0, logits.dim() - 1), op,
              "(): labels must have shape ", leading_shape_str(logits), " (logits ",
              shape_str(logits), " without the class dimension), got ", shape_str(labels));
  check_same_device(op, "labels", labels, "logits", logits);
  check_focal_options(op, alpha, gamma);
  check_normalizer(op, normalizer, "logits", logits, reduction);
  const int64_t classes = logits.size(-1);
  return {true, logits.numel() / classes, classes};
}

// The incoming gradient of a backward op: the loss's shape for
// reduction='none', one element otherwise.
inline void check_focal_grad(const char* op, const at::Tensor& grad, at::IntArrayRef loss_shape,
                             FocalReduction reduction, const char* input_name,
                             const at::Tensor& input) {
  if (reduction == FocalReduction::kNone) {
    TORCH_CHECK(grad.sizes() == loss_shape, op, "(): grad must have the loss's shape ",
                loss_shape, " for reduction='none', got ", shape_str(grad));
  } else {
    TORCH_CHECK(grad.numel() == 1, op,
                "(): grad must have one element (the gradient of a reduced loss), got shape ",
                shape_str(grad));
  }
  check_floating(op, "grad", grad);
  check_same_device(op, "grad", grad, input_name, input);
}

}  // namespace retinaface
