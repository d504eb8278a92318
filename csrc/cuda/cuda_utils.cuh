// Helpers for the .cu kernels. Plain CUDA (no torch headers), so every .cu
// compiles wherever nvcc exists.
//
// Launchers are `cudaError_t launch_<op>(raw pointers, sizes, ..., cudaStream_t)`
// declared in csrc/cuda/<op>_kernel.h; they return cudaGetLastError() after the
// launch, and the registration file csrc/cuda/<op>.cpp turns an error into a
// TORCH_CHECK naming the op.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/compute_type.h"

namespace retinaface {
namespace cuda {

// Element types of the tensors a kernel reads. at::Half and at::BFloat16 have
// the layout of __half and __nv_bfloat16, so the registration code passes
// their data pointers reinterpret_cast to these.
__device__ __forceinline__ float to_compute(float x) { return x; }
__device__ __forceinline__ double to_compute(double x) { return x; }
__device__ __forceinline__ float to_compute(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_compute(float x);
template <>
__device__ __forceinline__ float from_compute<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_compute<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <typename T>
__device__ __forceinline__ T from_compute(double x) { return static_cast<T>(x); }


inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// X(T) for every floating element type the CUDA launchers are instantiated
// for (the types dispatch_device_type hands out), e.g.
// RF_FOR_EACH_FLOATING_TYPE(RF_INSTANTIATE) after a launcher's definition.
#define RF_FOR_EACH_FLOATING_TYPE(X) X(float) X(double) X(__half) X(__nv_bfloat16)

// Blocks for a grid-stride loop over n elements, capped so huge inputs still
// launch (the loop covers the rest).
inline unsigned int grid_for(int64_t n, int threads) {
  const int64_t blocks = ceil_div(n, threads);
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

}  // namespace cuda
}  // namespace retinaface
