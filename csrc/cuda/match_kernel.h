// match on CUDA: launcher declaration (no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

// biubug6's matching for a padded batch, the result of csrc/cpu/match.cpp
// (see there and retinaface_ext/ops/match.py for the semantics).
//
//   gt_boxes   [batch, max_gt, 4] contiguous xyxy of element type T (float,
//              double, __half or __nv_bfloat16), read as float32 like the CPU
//              kernel does (gt_boxes.to(float32));
//   gt_counts  [batch] int64 on the device. Unlike the CPU kernel, which
//              raises, a count outside [0, max_gt] is clamped into it (no host
//              synchronisation to check it);
//   priors     [num_priors, 4] contiguous float32 (cx, cy, w, h);
//   scratch    launch_match_scratch_bytes(batch, max_gt) bytes of device
//              memory, at least 8-byte aligned, contents irrelevant (the
//              launcher clears it on the stream);
//   assigned   [batch, num_priors] int64 output: the index into max_gt of the
//              assigned ground truth, -1 for background. It is also the
//              kernels' working memory between the launches.
//
// Requires num_priors <= INT32_MAX and max_gt <= INT32_MAX / 2 (checked by the
// caller). batch, max_gt or num_priors == 0 launches nothing and returns
// cudaErrorInvalidValue: the caller handles empty inputs itself.
template <typename T>
cudaError_t launch_match(const T* gt_boxes, const int64_t* gt_counts, const float* priors,
                         int64_t batch, int64_t max_gt, int64_t num_priors, float threshold,
                         float min_best_iou, void* scratch, int64_t* assigned,
                         cudaStream_t stream);

// Bytes of scratch launch_match needs.
int64_t launch_match_scratch_bytes(int64_t batch, int64_t max_gt);

}  // namespace cuda
}  // namespace retinaface
