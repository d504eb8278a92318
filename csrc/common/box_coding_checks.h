// Argument checks of the box-coding ops (encode, decode, encode_landmarks,
// decode_landmarks), shared by the CPU kernels (csrc/cpu/box_coding.cpp) and
// the CUDA registration (csrc/cuda/box_coding.cpp) so both raise the same
// errors. retinaface_ext/ops/box_coding.py repeats them for the fake and the
// reference fallback.
#pragma once

#include "common/checks.h"

namespace retinaface {

// input [..., P, row_size] against priors [P, 4] on the same device. priors may
// have any floating dtype (e.g. float32 priors with float16 predictions under
// AMP): the kernels read them in the compute type of input.
inline void check_coding_args(const char* op, const char* name, const at::Tensor& input,
                              const at::Tensor& priors, at::ArrayRef<double> variances,
                              int64_t row_size) {
  TORCH_CHECK(input.dim() >= 2 && input.size(-1) == row_size, op, "(): ", name,
              " must have shape [..., P, ", row_size, "], got ", shape_str(input));
  check_floating(op, name, input);
  check_shape(op, "priors", priors, {-1, 4}, "[P, 4]");
  TORCH_CHECK(priors.size(0) == input.size(-2), op, "(): priors must have shape [P, 4] with P = ",
              name, ".size(-2) = ", input.size(-2), ", got ", shape_str(priors));
  check_floating(op, "priors", priors);
  check_same_device(op, "priors", priors, name, input);
  check_variances(op, variances);
}

// The dtype the kernels compute in (and read the priors in): float64 for
// float64 input, float32 otherwise (at::opmath_type of the input).
inline at::ScalarType coding_compute_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace retinaface
