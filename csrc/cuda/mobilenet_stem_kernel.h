// mobilenet_stem on CUDA: launcher declarations (no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

// The seven folded convolutions (OIHW float32, contiguous, on the device) and
// the per-channel mean and LeakyReLU slope of one call.
struct MobilenetStemParams {
  const float* weight[7];
  const float* bias[7];
  float mean[3];
  float slope;
};

// Floats of device scratch the launcher needs for `batch` images of
// height x width (the intermediate maps of the first six layers).
int64_t mobilenet_stem_workspace_floats(int64_t batch, int64_t height, int64_t width);

// images: uint8 [batch, height, width, 3] contiguous; out: float32
// [batch, 32, ceil(height / 4), ceil(width / 4)] contiguous; workspace:
// mobilenet_stem_workspace_floats(...) floats. One launch per layer on
// `stream`, no host sync; nothing is launched for an empty output.
cudaError_t launch_mobilenet_stem(const uint8_t* images, int64_t batch, int64_t height,
                                  int64_t width, const MobilenetStemParams& params,
                                  float* workspace, float* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
