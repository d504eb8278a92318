// Argument checks of match, shared by the CPU kernel (csrc/cpu/match.cpp) and
// the CUDA registration (csrc/cuda/match.cpp) so both raise the same errors.
//
// The range of gt_counts ([0, G]) is not checked here: that needs the values
// on the host. The CPU kernel checks it (it reads them anyway); the CUDA
// kernel must not synchronise, so it clamps each count into [0, G] on the
// device instead (see csrc/cuda/match_kernel.cu).
#pragma once

#include "common/checks.h"

namespace retinaface {

inline void check_match_args(const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                             const at::Tensor& priors, double threshold, double min_best_iou) {
  check_shape("match", "gt_boxes", gt_boxes, {-1, -1, 4}, "[B, G, 4]");
  check_shape("match", "gt_counts", gt_counts, {gt_boxes.size(0)}, "[B]");
  check_shape("match", "priors", priors, {-1, 4}, "[P, 4]");
  check_floating("match", "gt_boxes", gt_boxes);
  check_floating("match", "priors", priors);
  check_integral("match", "gt_counts", gt_counts);
  check_same_device("match", "gt_counts", gt_counts, "gt_boxes", gt_boxes);
  check_same_device("match", "priors", priors, "gt_boxes", gt_boxes);
  check_unit_interval("match", "threshold", threshold);
  check_unit_interval("match", "min_best_iou", min_best_iou);
}

// The range check of gt_counts, for the CPU kernels (they read the counts on
// the host anyway): returns them as a contiguous int64 tensor.
inline at::Tensor checked_counts_cpu(const char* op, const at::Tensor& gt_counts, int64_t max_gt) {
  auto counts = gt_counts.to(at::kLong).contiguous();
  const int64_t* count_ptr = counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < counts.numel(); ++b) {
    TORCH_CHECK(count_ptr[b] >= 0 && count_ptr[b] <= max_gt, op, "(): gt_counts[", b,
                "] must be in [0, ", max_gt, "] (the padded G of gt_boxes), got ", count_ptr[b]);
  }
  return counts;
}

}  // namespace retinaface
