// For the registration files (host code): the element type a CUDA launcher
// takes for an ATen scalar type. at::Half and at::BFloat16 have the layout of
// __half and __nv_bfloat16, so data pointers are reinterpret_cast between them
// (device_cptr / device_mptr), and dispatch_device_type calls a generic lambda
// with the CUDA element type of a floating dtype.
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

// A tensor's data as the launcher's element type T (the caller picks T to
// match the tensor's dtype, e.g. from dispatch_device_type or compute_t).
template <typename T>
const T* device_cptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}
template <typename T>
T* device_mptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

// Calls fn(T{}) with T the CUDA element type of a floating dtype (float,
// double, __half, __nv_bfloat16); any other dtype is an error naming op
// (callers have checked the dtype already, so this is a safety net).
template <typename Fn>
void dispatch_device_type(at::ScalarType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); break;
    case at::kDouble: fn(double{}); break;
    case at::kHalf: fn(__half{}); break;
    case at::kBFloat16: fn(__nv_bfloat16{}); break;
    default: TORCH_CHECK(false, op, "(): unexpected dtype ", dtype);
  }
}

}  // namespace cuda
}  // namespace retinaface
