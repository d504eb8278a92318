// Vectorisable float maths for the CPU kernels' loops (margin_cross_entropy,
// the focal losses): exp, log, log1p and pow written as branch-free
// arithmetic on the float's bits, so that GCC vectorises loops that call
// them, which it cannot do with expf / logf / log1pf / powf (libm calls).
//
// RF_VECTOR_CLONES compiles a function for AVX-512, AVX2 and the baseline ISA
// and picks one at load time. Two GCC details decide whether the loops in
// such a function actually vectorise (checked with -fopt-info-vec and by
// looking at the clones' instructions):
// - The clones are "avx512f" and "avx2", not "arch=haswell": a clone with
//   another -march cannot inline the default-target inline functions it calls
//   (this header, std::bit_cast, focal_math.h), so an arch=haswell clone
//   calls them one element at a time.
// - Choices inside the loop bodies use vec::select (a bit blend), not `c ? a :
//   b`: GCC threads jumps through repeated conditions (the clamps of exp, say)
//   and the branches this leaves in the loop body stop the AVX2 and SSE
//   clones from vectorising (AVX-512's masks hide the problem).
//
// Accuracy (float32; largest relative error against float64 libm over 2e7
// random arguments per function, the same with -O2 for SSE2, AVX2+FMA and
// AVX-512):
//   exp(x)         < 1.1e-7 on [-87.3, 88]; 0 below -87.33 (where expf turns
//                  subnormal), capped at x = 88; NaN stays NaN.
//   log(x)         x > 0 over 2^-140 .. 2^121 (subnormals included): < 1e-7
//                  (< 5e-8 absolute near x = 1); log(0) = -inf, log(+inf) =
//                  +inf, NaN for x < 0 and NaN.
//   log1p_unit(x)  x in [0, 1] down to 2^-141: < 1.1e-7.
//   log1p(x)       x >= 0 (2^-101 .. 2^20): < 1.3e-7.
//   pow_unit(m, g) m in [0, 1], g in (0, 5]: < 2e-7 for results above 1e-37
//                  (the exponent g log m is carried in double, so the error
//                  does not grow with |g log m|); 0 for m = 0 and once m^g
//                  underflows.
// tests/test_focal_loss.py checks them through the ops (float32 results
// within rtol 1e-5 of float64 references, confident predictions down to
// 1 - p_t ~ 1e-26) and tests/test_margin_cross_entropy.py through that op.
// Results may differ in the last bits between the AVX-512, AVX2 and baseline
// clones (FMA contraction), never between runs or thread counts.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define RF_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RF_VECTOR_CLONES
#endif

// The loop templates that RF_VECTOR_CLONES functions instantiate are forced
// inline, so that each clone compiles them for its own ISA.
#if defined(__GNUC__)
#define RF_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define RF_ALWAYS_INLINE inline
#endif

namespace retinaface {
namespace vec {

// c ? a : b as a blend of bits, which GCC keeps as a select (see above).
RF_ALWAYS_INLINE float select(bool c, float a, float b) {
  const int32_t mask = -static_cast<int32_t>(c);
  return std::bit_cast<float>((std::bit_cast<int32_t>(a) & mask) |
                              (std::bit_cast<int32_t>(b) & ~mask));
}
// float64 runs the same loop code on the scalar path: a plain select.
RF_ALWAYS_INLINE double select(bool c, double a, double b) { return c ? a : b; }

// exp(x + tail) for |tail| at most about ulp(x) (the low part of an argument
// carried in two floats; 0 for a plain exp): x = n ln2 + r with |r| <= ln2 / 2
// (Cody-Waite split of ln2, exact for |n| < 2^15), exp(r) by its Taylor
// polynomial of degree 7 (truncation error < 6e-9 relative), times 2^n built
// in the exponent bits.
RF_ALWAYS_INLINE float exp_with_tail(float x, float tail) {
  constexpr float kLow = -87.33f, kHigh = 88.0f;
  float xc = select(x < kLow, kLow, x);
  xc = select(xc > kHigh, kHigh, xc);
  // Round x / ln2 to the nearest integer by adding 1.5 * 2^23: the integer
  // then sits in the low mantissa bits of t.
  constexpr float kRound = 12582912.0f;
  const float t = xc * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  const int32_t n_int = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kRound);
  const float r = ((xc - n * 0.693359375f) - n * -2.12194440e-4f) + tail;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float two_n = std::bit_cast<float>((n_int + 127) << 23);
  return select(x < kLow, 0.0f, p * two_n);
}

RF_ALWAYS_INLINE float exp(float x) { return exp_with_tail(x, 0.0f); }

// log(1 + d) for d in [sqrt(1/2) - 1, sqrt(2) - 1], d exact: with s = d / (2 + d),
// log(1 + d) = 2 atanh(s) = 2s + s R(s^2), R(z) = 2z/3 + 2z^2/5 + ..., and 2s =
// d - s d, so log(1 + d) = d - s (d - R): the rounding of s only touches a
// correction of at most a fifth of the result. s^2 <= 0.0295: six terms of R
// leave a truncation error below 1e-10.
RF_ALWAYS_INLINE float log1p_reduced(float d) {
  const float s = d / (2.0f + d);
  const float z = s * s;
  float r = 2.0f / 13.0f;
  r = r * z + 2.0f / 11.0f;
  r = r * z + 2.0f / 9.0f;
  r = r * z + 2.0f / 7.0f;
  r = r * z + 2.0f / 5.0f;
  r = r * z + 2.0f / 3.0f;
  r = r * z;
  return d - s * (d - r);
}

// x = 2^k f with f in [sqrt(1/2), sqrt(2)) for x > 0 (subnormals scaled by
// 2^24 first): k and f - 1 (exact, Sterbenz).
struct LogReduced {
  float k, d;
};
RF_ALWAYS_INLINE LogReduced log_reduce(float x) {
  const bool subnormal = x < std::numeric_limits<float>::min();
  const float scaled = select(subnormal, x * 16777216.0f, x);
  // Subtracting the bits of sqrt(1/2) makes the exponent field k exactly for
  // f in [sqrt(1/2), sqrt(2)).
  const int32_t bits = std::bit_cast<int32_t>(scaled);
  const int32_t k = (bits - 0x3f3504f3) >> 23;
  const float f = std::bit_cast<float>(bits - (k << 23));
  return {static_cast<float>(k) - select(subnormal, 24.0f, 0.0f), f - 1.0f};
}

// log(x): k ln2 + log(f), ln2 split so that k ln2_hi is exact. log(0) = -inf,
// log(+inf) = +inf, NaN for x < 0 and NaN.
RF_ALWAYS_INLINE float log(float x) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const LogReduced v = log_reduce(x);
  const float value = v.k * 0.693359375f + (log1p_reduced(v.d) + v.k * -2.12194440e-4f);
  return select(x > 0.0f, select(x < kInf, value, x),
                select(x == 0.0f, -kInf, std::numeric_limits<float>::quiet_NaN()));
}

// log(1 + x) for x in [0, 1] (log1p(exp(-|z|)) of the stable sigmoid): x / (2 + x)
// is at most 1/3 here, so no range reduction: s^2 <= 1/9 and nine terms of R
// leave a truncation error below 2e-9 relative.
RF_ALWAYS_INLINE float log1p_unit(float x) {
  const float s = x / (2.0f + x);
  const float z = s * s;
  float r = 2.0f / 19.0f;
  r = r * z + 2.0f / 17.0f;
  r = r * z + 2.0f / 15.0f;
  r = r * z + 2.0f / 13.0f;
  r = r * z + 2.0f / 11.0f;
  r = r * z + 2.0f / 9.0f;
  r = r * z + 2.0f / 7.0f;
  r = r * z + 2.0f / 5.0f;
  r = r * z + 2.0f / 3.0f;
  r = r * z;
  return x - s * (x - r);
}

// log(1 + x) for any x >= 0: log(u) of u = 1 + x rounded, plus the first-order
// correction for that rounding, (x - (u - 1)) / u (u - 1 is exact for u >= 1).
RF_ALWAYS_INLINE float log1p(float x) {
  const float u = 1.0f + x;
  return log(u) + (x - (u - 1.0f)) / u;
}

// m^gamma for m in [0, 1] and gamma > 0, as exp(gamma log m) with gamma log m
// in double (so its rounding error does not grow with |log m|), handed to exp
// as a float and its remainder. m = 0: log m = -inf, and exp gives 0.
RF_ALWAYS_INLINE float pow_unit(float m, float gamma) {
  const LogReduced v = log_reduce(m);
  const double log_m = static_cast<double>(v.k) * 0.6931471805599453 +
                       static_cast<double>(log1p_reduced(v.d));
  const double y = static_cast<double>(gamma) * log_m;
  const float hi = static_cast<float>(y);
  const float lo = static_cast<float>(y - static_cast<double>(hi));
  return select(m > 0.0f, exp_with_tail(hi, lo), 0.0f);
}

// float64: the same names on libm (the scalar path; gradcheck and tests).
inline double exp(double x) { return std::exp(x); }
inline double log(double x) { return std::log(x); }
inline double log1p_unit(double x) { return std::log1p(x); }
inline double log1p(double x) { return std::log1p(x); }
inline double pow_unit(double m, double gamma) { return std::pow(m, gamma); }

}  // namespace vec
}  // namespace retinaface
