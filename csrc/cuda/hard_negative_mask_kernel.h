// Launchers of the hard_negative_mask CUDA kernels (no torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

// mask[b, i] for b < batch, i < num_priors (all row-major contiguous):
// biubug6's hard negatives of conf_loss with the positives' loss zeroed,
// k = min(neg_pos_ratio * #positives, P - 1) per image. One block per image;
// num_priors must be < 2^31 and batch <= 2^31 - 1.
template <typename T>
cudaError_t launch_hard_negative_mask(const T* conf_loss, const bool* positive, int64_t batch,
                                      int64_t num_priors, int64_t neg_pos_ratio, bool* mask,
                                      cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
