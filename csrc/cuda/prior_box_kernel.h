// prior_box on CUDA: the launcher (no torch headers).
//
// The levels travel by value as a kernel parameter, so no host-to-device copy
// precedes the launch and it can be captured in a CUDA graph. The capacities
// cover every RetinaFace / SSD-style configuration (3 to 6 levels of 1 to 3
// sizes); the registration code computes larger ones on the CPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

constexpr int kMaxPriorLevels = 8;
constexpr int kMaxPriorSizes = 32;

struct PriorLevels {
  int num_levels;
  int64_t first_prior[kMaxPriorLevels + 1];  // level k holds priors [first_prior[k], first_prior[k + 1])
  int64_t cols[kMaxPriorLevels];
  int first_size[kMaxPriorLevels];  // its min sizes are min_size[first_size[k] ...]
  int num_sizes[kMaxPriorLevels];
  double step[kMaxPriorLevels];
  double min_size[kMaxPriorSizes];
  double height, width;
  bool clip;
};

// Writes the first_prior[num_levels] priors (cx, cy, w, h) to `priors` [P, 4].
cudaError_t launch_prior_box(const PriorLevels& levels, float* priors, cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
