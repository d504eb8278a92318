// Argument checks of match, shared by the CPU kernel (csrc/cpu/match.cpp) and
// the CUDA registration (csrc/cuda/match.cpp) so both raise the same errors.
//
// The range of gt_counts ([0, G]) is not checked here: that needs the values
// on the host. The CPU kernel checks it (it reads them anyway); the CUDA
// kernel must not synchronise, so it clamps each count into [0, G] on the
// device instead (see csrc/cuda/match.cu).
#pragma once

#include "common/checks.h"

namespace retinaface {

inline void check_match_args(const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                             const at::Tensor& priors) {
  check_shape("match", "gt_boxes", gt_boxes, {-1, -1, 4}, "[B, G, 4]");
  check_shape("match", "gt_counts", gt_counts, {gt_boxes.size(0)}, "[B]");
  check_shape("match", "priors", priors, {-1, 4}, "[P, 4]");
  check_floating("match", "gt_boxes", gt_boxes);
  check_floating("match", "priors", priors);
  TORCH_CHECK(at::isIntegralType(gt_counts.scalar_type(), /*includeBool=*/false),
              "match(): gt_counts must be an integer tensor, got ", gt_counts.scalar_type());
  check_same_device("match", "gt_counts", gt_counts, "gt_boxes", gt_boxes);
  check_same_device("match", "priors", priors, "gt_boxes", gt_boxes);
}

}  // namespace retinaface
