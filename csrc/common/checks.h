// Argument checks shared by every op's registration code. Each error names the
// op, the argument, what was expected and what came, e.g.
//   match(): gt_boxes must have shape [B, G, 4], got [2, 3]
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <sstream>
#include <string>

namespace retinaface {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// Checks dim and, for each expected size >= 0, that size. -1 = any size.
inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        std::initializer_list<int64_t> expected, const char* expected_str) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  int64_t d = 0;
  for (int64_t e : expected) {
    if (!ok) break;
    ok = e < 0 || t.size(d) == e;
    ++d;
  }
  TORCH_CHECK(ok, op, "(): ", name, " must have shape ", expected_str, ", got ", shape_str(t));
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                  t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              op, "(): ", name,
              " must be a floating tensor (float32, float64, float16 or bfloat16), got ",
              t.scalar_type());
}

inline void check_integral(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, "(): ", name,
              " must be an integer tensor, got ", t.scalar_type());
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t,
                        at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, op, "(): ", name, " must be ", expected, ", got ",
              t.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, "(): ", name, " must be on the same device as ",
              ref_name, " (", ref.device(), "), got ", t.device());
}

// An IoU or score threshold. NaN fails every comparison (a NaN match threshold
// would make every prior positive, a NaN NMS threshold suppress nothing), and
// values outside [0, 1] select all or nothing, so both are rejected.
inline void check_unit_interval(const char* op, const char* name, double value) {
  TORCH_CHECK(value >= 0 && value <= 1, op, "(): ", name, " must be in [0, 1], got ", value);
}

inline void check_variances(const char* op, at::ArrayRef<double> variances) {
  TORCH_CHECK(variances.size() == 2, op, "(): variances must have 2 values, got ",
              variances.size());
  TORCH_CHECK(variances[0] > 0 && variances[1] > 0 && std::isfinite(variances[0]) &&
                  std::isfinite(variances[1]),
              op, "(): variances must be positive and finite, got (", variances[0], ", ", variances[1],
              ")");
}

}  // namespace retinaface
