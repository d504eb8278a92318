// For the registration files (host code): the element type a CUDA launcher
// takes for an ATen scalar type. at::Half and at::BFloat16 have the layout of
// __half and __nv_bfloat16, so data pointers are reinterpret_cast between them.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace retinaface {
namespace cuda {

template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using device_t = typename DeviceType<T>::type;

}  // namespace cuda
}  // namespace retinaface
