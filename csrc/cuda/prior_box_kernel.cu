// prior_box on CUDA: one thread per prior, the values of common/prior_box_math.h
// (bit-identical to the CPU kernel and to biubug6).
#include "common/prior_box_math.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/prior_box_kernel.h"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void prior_box_kernel(const PriorLevels levels, float* __restrict__ priors) {
  const int64_t total = levels.first_prior[levels.num_levels];
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int k = 0;
    while (p >= levels.first_prior[k + 1]) ++k;
    // Within a level, priors are ordered row -> column -> min size.
    const int64_t offset = p - levels.first_prior[k];
    const int64_t cell = offset / levels.num_sizes[k];
    const int size = static_cast<int>(offset - cell * levels.num_sizes[k]);
    prior_at(cell / levels.cols[k], cell % levels.cols[k], levels.step[k],
             levels.min_size[levels.first_size[k] + size], levels.height, levels.width,
             levels.clip, priors + 4 * p);
  }
}

}  // namespace

cudaError_t launch_prior_box(const PriorLevels& levels, float* priors, cudaStream_t stream) {
  const int64_t total = levels.first_prior[levels.num_levels];
  if (total == 0) return cudaSuccess;
  prior_box_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(levels, priors);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace retinaface
