// The combined margin of margin_cross_entropy (insightface's m1, m2, m3),
// shared by the CPU and CUDA kernels. Plain C++ with no torch headers.
//
// The target class's cosine x becomes g(x) - m3 before the scale s, with
//   c = clamp(x, -1, 1), theta = acos(c), phi = m1 * theta + m2,
//   g(x) = cos(phi)                   while phi <= pi (c >= cos_limit),
//   g(x) = -1 + (c - cos_limit)       beyond, cos_limit = cos((pi - m2) / m1).
// cos(phi) alone would turn back up once phi passes pi (the target logit
// would grow again as the sample moves away from its class); the linear
// continuation (slope 1 in c, like the CosFace-style fallback of insightface's
// original ArcFace, but joined continuously at phi = pi) keeps g increasing in
// c and finite. With m1 = 1, m2 = 0 (CosFace, plain softmax) g(x) = c exactly:
// no acos/cos round trip.
//
// The exact derivative (gradient="exact"):
//   g'(x) = m1 * sin(m1 * theta_c + m2) / sin(theta_c),
//   theta_c = clamp(theta, kMarginThetaEps, pi - kMarginThetaEps),
// 1 on the linear continuation and in the plain case. The clamp keeps it
// finite at c = +-1 (where sin(theta) = 0) and continuous, with the right
// limit m1^2 at c = 1 when m2 = 0 (SphereFace). The clamp of x to [-1, 1]
// only guards the domain of acos: the gradient passes it as if it were not
// there (x a hair above 1 from rounding still learns).
#pragma once

#include <cmath>

#include "common/box_math.h"  // RF_HOST_DEVICE

namespace retinaface {

constexpr double kPi = 3.14159265358979323846;
// Smallest angle (radians) at which the exact-mode derivative is evaluated:
// float32 cosines below 1 have theta >= 3.5e-4, so this only touches the last
// few representable cosines next to +-1. The derivative is then at most
// about m1 / sin(1e-3) = 1000 * m1.
constexpr double kMarginThetaEps = 1e-3;

RF_HOST_DEVICE float rf_cos(float x) { return cosf(x); }
RF_HOST_DEVICE double rf_cos(double x) { return cos(x); }
RF_HOST_DEVICE float rf_sin(float x) { return sinf(x); }
RF_HOST_DEVICE double rf_sin(double x) { return sin(x); }
RF_HOST_DEVICE float rf_acos(float x) { return acosf(x); }
RF_HOST_DEVICE double rf_acos(double x) { return acos(x); }

// The margin constants in the compute type T (float, or double for float64).
template <typename T>
struct MarginParams {
  T s, m1, m2, m3;
  T cos_limit;  // g switches to its linear continuation below this cosine
  T theta_lo, theta_hi;  // the clamp of theta in the exact derivative
  bool plain;   // m1 == 1 and m2 == 0: g(x) = clamp(x, -1, 1)
};

// Host only (the kernels receive the struct). Valid for m1 > 0 and
// 0 <= m2 < pi (the registration checks): then phi >= 0 always, and phi > pi
// happens exactly for c < cos_limit.
template <typename T>
inline MarginParams<T> make_margin_params(double s, double m1, double m2, double m3) {
  MarginParams<T> p;
  p.s = static_cast<T>(s);
  p.m1 = static_cast<T>(m1);
  p.m2 = static_cast<T>(m2);
  p.m3 = static_cast<T>(m3);
  const double theta_max = (kPi - m2) / m1;
  // theta_max >= pi: phi never passes pi, every c >= -1 keeps the margin.
  p.cos_limit = theta_max < kPi ? static_cast<T>(std::cos(theta_max)) : static_cast<T>(-2);
  p.theta_lo = static_cast<T>(kMarginThetaEps);
  p.theta_hi = static_cast<T>(kPi - kMarginThetaEps);
  p.plain = m1 == 1.0 && m2 == 0.0;
  return p;
}

// clamp(x, -1, 1) that lets NaN through (like torch.clamp).
template <typename T>
RF_HOST_DEVICE T clamp_cosine(T x) {
  return x < T(-1) ? T(-1) : (x > T(1) ? T(1) : x);
}

// g(x) above.
template <typename T>
RF_HOST_DEVICE T margin_cosine(T x, const MarginParams<T>& p) {
  const T c = clamp_cosine(x);
  if (p.plain) return c;
  if (!(c >= p.cos_limit)) return T(-1) + (c - p.cos_limit);  // NaN stays NaN
  return rf_cos(p.m1 * rf_acos(c) + p.m2);
}

// The target logit s * (g(x) - m3), in the reference's order of operations.
template <typename T>
RF_HOST_DEVICE T margin_target_logit(T x, const MarginParams<T>& p) {
  return (margin_cosine(x, p) - p.m3) * p.s;
}

// dg/dx in "exact" mode (see above); the straight-through mode uses 1.
template <typename T>
RF_HOST_DEVICE T margin_cosine_grad(T x, const MarginParams<T>& p) {
  const T c = clamp_cosine(x);
  if (p.plain || !(c >= p.cos_limit)) return T(1);
  T theta = rf_acos(c);
  theta = theta < p.theta_lo ? p.theta_lo : (theta > p.theta_hi ? p.theta_hi : theta);
  return p.m1 * rf_sin(p.m1 * theta + p.m2) / rf_sin(theta);
}

}  // namespace retinaface
