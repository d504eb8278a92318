// detect_postprocess on CUDA: launcher declarations (no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

// Thresholds and sizes of one call; the thresholds and variances are rounded
// to the compute type by the launcher, as on the CPU.
struct DetectPostprocessParams {
  double score_threshold, nms_threshold, var0, var1;
  int64_t pre_nms_top_k, max_detections;
};

// Bytes of global scratch per image (top-k keys and indices, decoded boxes,
// removed flags) for P priors; the caller allocates batch times this.
// compute_bytes: sizeof the compute type (4 or 8).
int64_t detect_postprocess_scratch_bytes(int64_t num_priors, int64_t pre_nms_top_k,
                                         int compute_bytes);

// One block per image, one launch for the batch, no host sync, static shapes.
//   In: the type of loc / conf / landms (float, __half, __nv_bfloat16, double);
//   T:  the compute and output type (float; double with double inputs).
// loc [B, P, 4], conf [B, P, num_classes] (face score in column 1), landms
// [B, P, 10], priors [P, 4] (cx, cy, w, h), all contiguous. Writes every row
// of detections [B, max_detections, 15] (zeros past the count) and counts [B].
// num_priors < 2^31.
template <typename In, typename T>
cudaError_t launch_detect_postprocess(const In* loc, const In* conf, int64_t num_classes,
                                      const In* landms, const T* priors, int64_t batch,
                                      int64_t num_priors, const DetectPostprocessParams& params,
                                      void* scratch, T* detections, int64_t* counts,
                                      cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
