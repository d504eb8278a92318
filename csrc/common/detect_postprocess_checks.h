// Argument checks of detect_postprocess, shared by the CPU and CUDA
// registrations so both reject the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/checks.h"

namespace retinaface {

inline void check_detect_postprocess_args(const at::Tensor& loc, const at::Tensor& conf,
                                          const at::Tensor& landms, const at::Tensor& priors,
                                          double score_threshold, double nms_threshold,
                                          int64_t pre_nms_top_k, int64_t max_detections,
                                          at::ArrayRef<double> variances) {
  const char* op = "detect_postprocess";
  check_shape(op, "loc", loc, {-1, -1, 4}, "[B, P, 4]");
  const int64_t batch = loc.size(0), num_priors = loc.size(1);
  const std::string bp = "B = " + std::to_string(batch) + ", P = " + std::to_string(num_priors) +
                         " from loc";
  const std::string conf_shape = "[B, P, C] (" + bp + ")";
  const std::string landms_shape = "[B, P, 10] (" + bp + ")";
  const std::string priors_shape = "[P, 4] (P = " + std::to_string(num_priors) + " from loc)";
  check_shape(op, "conf", conf, {batch, num_priors, -1}, conf_shape.c_str());
  TORCH_CHECK(conf.size(2) >= 2, op,
              "(): conf must have at least 2 classes (background, face) in its last dim, got ",
              shape_str(conf));
  check_shape(op, "landms", landms, {batch, num_priors, 10}, landms_shape.c_str());
  check_shape(op, "priors", priors, {num_priors, 4}, priors_shape.c_str());
  check_floating(op, "loc", loc);
  check_floating(op, "conf", conf);
  check_floating(op, "landms", landms);
  check_floating(op, "priors", priors);
  check_same_device(op, "conf", conf, "loc", loc);
  check_same_device(op, "landms", landms, "loc", loc);
  check_same_device(op, "priors", priors, "loc", loc);
  check_unit_interval(op, "score_threshold", score_threshold);
  check_unit_interval(op, "nms_threshold", nms_threshold);
  TORCH_CHECK(pre_nms_top_k >= 0, op, "(): pre_nms_top_k must be >= 0, got ", pre_nms_top_k);
  TORCH_CHECK(max_detections >= 0, op, "(): max_detections must be >= 0, got ", max_detections);
  check_variances(op, variances);
}

// The dtype detect_postprocess computes and returns in: float64 when any
// input is float64, float32 otherwise (half/bfloat16 included).
inline at::ScalarType detect_postprocess_compute_dtype(const at::Tensor& loc,
                                                       const at::Tensor& conf,
                                                       const at::Tensor& landms,
                                                       const at::Tensor& priors) {
  const auto promoted = at::promoteTypes(
      at::promoteTypes(loc.scalar_type(), conf.scalar_type()),
      at::promoteTypes(landms.scalar_type(), priors.scalar_type()));
  return promoted == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace retinaface
