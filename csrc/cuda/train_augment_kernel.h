// train_augment on CUDA: launcher declarations (no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

struct TrainAugmentConstants {
  float mean[3];     // subtracted for float outputs
  uint8_t fill[3];   // the pad colour
  int hsv_block_pixels;  // OpenCV's HSV2BGR SIMD step on the host CPU (the reference)
};

// images: contiguous uint8 [batch, height, width, 3]; params: float64
// [batch, 12] on the device (csrc/common/train_augment_math.h). out: T =
// uint8_t -> [batch, size, size, 3]; float, __half or __nv_bfloat16 ->
// [batch, 3, size, size] minus the mean. One thread per output pixel; every
// source read is clamped into its image, so bad params cannot read out of
// bounds. batch == 0 launches nothing.
template <typename T>
cudaError_t launch_train_augment(const uint8_t* images, int64_t batch, int64_t height, int64_t width,
                                 const double* params, int size, TrainAugmentConstants constants, T* out,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
