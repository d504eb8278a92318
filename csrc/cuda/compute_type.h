// The compute type of an element type: float for float/half/bfloat16, double
// for double. Host-safe (no device functions), so launcher headers included by
// the registration .cpp files can use it too.
#pragma once

namespace retinaface {
namespace cuda {

template <typename T>
struct ComputeType {
  using type = float;
};
template <>
struct ComputeType<double> {
  using type = double;
};
template <typename T>
using compute_t = typename ComputeType<T>::type;

}  // namespace cuda
}  // namespace retinaface
