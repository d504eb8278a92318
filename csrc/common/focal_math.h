// Focal loss maths shared by the CPU and CUDA kernels (sigmoid_focal_loss,
// softmax_focal_loss): forward values and analytic gradients, per element
// (sigmoid) or per row (softmax). Plain C++ with no torch headers, so nvcc
// compiles it anywhere; templated over the compute type T (float for float32,
// float16 and bfloat16 inputs, double for float64).
//
// Numerical choices (the point of this file):
// - p = sigmoid(x) and q = 1 - p = sigmoid(-x) are each computed without
//   cancellation, from e = exp(-|x|); likewise 1 - p_t of the softmax is the
//   sum of the other classes' probabilities, never 1 - p_t. So the modulating
//   factor (1 - p_t)^gamma stays accurate for well-classified examples, where
//   torchvision's formula rounds 1 - p_t to 0.
// - gamma < 1: d/dm m^gamma = gamma m^(gamma-1) is infinite at m = 1 - p_t = 0,
//   but in the gradient it always multiplies a factor that vanishes at least as
//   fast (p(1-p) for the sigmoid, the cross-entropy for the softmax). We write
//   the product as m^gamma times a bounded ratio (p q / m <= 1, ce / m -> 1), so
//   the gradient is finite for every gamma >= 0 and equals its limit 0 at m = 0
//   (m underflows to 0 only beyond |logit differences| of ~100 in float32).
// - gamma = 0: m^0 = 1 also at m = 0 (pow(0, 0) = 1), so the loss and the
//   gradient are exactly binary / softmax cross-entropy (times alpha_t).
// - alpha < 0 disables the alpha weighting (torchvision's convention).
// - Two-class softmax rows are the sigmoid maths on x_y - x_other (one exp).
// - Infinite logits give the limits: a sigmoid logit of +-inf has loss 0 when
//   the target agrees (t = 1 for +inf, 0 for -inf) and +inf otherwise (the
//   formula would give inf - inf); in a softmax row, equal logits have
//   difference 0 also when infinite, so +inf logits share the probability
//   (one +inf at the target: loss 0) and a -inf logit has probability 0.
// - Per-element code uses selects of values already computed (no division or
//   product under a condition, no branch on alpha), so the CPU's plain loops
//   over arrays vectorise.
#pragma once

#include <cmath>
#include <limits>

#include "common/box_math.h"  // RF_HOST_DEVICE, rf_exp, rf_log, rf_abs

namespace retinaface {

// The reduction argument of the ops, parsed once on the host.
enum class FocalReduction : int { kNone = 0, kSum = 1, kMean = 2 };

RF_HOST_DEVICE float rf_log1p(float x) { return log1pf(x); }
RF_HOST_DEVICE double rf_log1p(double x) { return log1p(x); }
RF_HOST_DEVICE float rf_pow(float x, float y) { return powf(x, y); }
RF_HOST_DEVICE double rf_pow(double x, double y) { return pow(x, y); }

// The per-element functions below are forced inline on the host too: the
// CPU kernels call them inside loops that must vectorise (cpu/focal_loss.cpp),
// and GCC's inliner gives up on some of the many instantiations there
// otherwise, leaving a call (and a scalar loop) behind.
#if defined(__CUDACC__) || !defined(__GNUC__)
#define RF_FOCAL_INLINE RF_HOST_DEVICE
#else
#define RF_FOCAL_INLINE __attribute__((always_inline)) inline
#endif

// (1 - p_t)^gamma. gamma = 2 (the usual value) as a product: exact, cheaper
// than pow, and what torch computes for `** 2`.
template <typename T>
RF_FOCAL_INLINE T focal_modulator(T one_minus_pt, T gamma) {
  if (gamma == T(2)) return one_minus_pt * one_minus_pt;
  if (gamma == T(1)) return one_minus_pt;
  return rf_pow(one_minus_pt, gamma);  // pow(0, 0) = 1: gamma = 0 is cross-entropy
}

// The alpha weights of target 1 and target 0: (alpha, 1 - alpha), or (1, 1)
// when alpha < 0 (torchvision's "no weighting"). Resolved once per call, so
// the per-element maths has no branch on alpha (CPU loops vectorise).
template <typename T>
struct FocalAlpha {
  T positive, negative;
};
template <typename T>
RF_FOCAL_INLINE FocalAlpha<T> focal_alpha(T alpha) {
  if (alpha >= T(0)) return {alpha, T(1) - alpha};
  return {T(1), T(1)};
}

// torchvision's alpha_t = alpha * t + (1 - alpha) * (1 - t).
template <typename T>
RF_FOCAL_INLINE T sigmoid_alpha_weight(const FocalAlpha<T>& alpha, T target) {
  return alpha.positive * target + alpha.negative * (T(1) - target);
}

// ---------------------------------------------------------------- sigmoid

// One logit x against a target t in [0, 1] (soft targets allowed).
template <typename T>
struct SigmoidFocalTerms {
  T p, q;  // sigmoid(x) and 1 - sigmoid(x), each without cancellation
  T ce;    // binary cross-entropy with logits, -t log p - (1 - t) log q
  T m;     // 1 - p_t = p (1 - t) + q t
};

// From e = exp(-|x|) and log1p(e), which the CPU computes with the vectorisable
// polynomials of cpu/vector_math.h and the CUDA kernels with expf / log1pf.
template <typename T>
RF_FOCAL_INLINE SigmoidFocalTerms<T> sigmoid_focal_terms(T x, T t, T e, T log1p_e) {
  SigmoidFocalTerms<T> r;
  const T large = T(1) / (T(1) + e), small = e * large;
  r.p = x >= T(0) ? large : small;
  r.q = x >= T(0) ? small : large;
  // max(x, 0) - x t + log(1 + exp(-|x|)): no overflow, and exact 0 - 0 for a
  // saturated hard target. At x = +-inf its limit (inf - inf in the formula).
  const T infinity = std::numeric_limits<T>::infinity();
  const T finite_ce = (x > T(0) ? x : T(0)) - x * t + log1p_e;
  const T limit_ce = x > T(0) ? (t < T(1) ? infinity : T(0)) : (t > T(0) ? infinity : T(0));
  r.ce = rf_abs(x) == infinity ? limit_ce : finite_ce;
  r.m = r.p * (T(1) - t) + r.q * t;
  return r;
}

// alpha_t * ce * (1 - p_t)^gamma, torchvision's sigmoid_focal_loss per
// element, given modulator = focal_modulator(terms.m, gamma).
template <typename T>
RF_FOCAL_INLINE T sigmoid_focal_loss_value(const SigmoidFocalTerms<T>& s, T t, T modulator,
                                          const FocalAlpha<T>& alpha) {
  return sigmoid_alpha_weight(alpha, t) * (s.ce * modulator);
}

// d loss / d x = alpha_t m^gamma [(p - t) + gamma ce (1 - 2t) p q / m], using
// dm/dx = (1 - 2t) p q and m >= p q: p q / m is in [0, 1], and p q = 0 where m
// = 0, so a positive floor under the denominator gives the limit 0 there.
template <typename T>
RF_FOCAL_INLINE T sigmoid_focal_loss_grad(const SigmoidFocalTerms<T>& s, T t, T modulator,
                                         const FocalAlpha<T>& alpha, T gamma) {
  // The floor is the smallest positive value, so m > 0 divides exactly. (A
  // floor of 1 would be folded into a conditional division, and a division or
  // product under a condition is what stops compilers from vectorising.)
  const T floor = std::numeric_limits<T>::denorm_min();
  const T ratio = (s.p * s.q) / (s.m > floor ? s.m : floor);
  const T p_minus_t = s.p * (T(1) - t) - s.q * t;  // p - t without cancellation
  // ce is infinite only for an infinite logit, where ratio = 0: capping it
  // keeps gamma * ce * ratio at 0 there (also for gamma = 0) instead of NaN.
  const T ce_max = std::numeric_limits<T>::max();
  const T ce = s.ce < ce_max ? s.ce : ce_max;
  const T modulation = gamma * ce * (T(1) - T(2) * t) * ratio;
  return sigmoid_alpha_weight(alpha, t) * modulator * (p_minus_t + modulation);
}

// The same, from the logit and target alone (exp, log1p and pow inline).
template <typename T>
RF_FOCAL_INLINE T sigmoid_focal_loss_value(T x, T t, const FocalAlpha<T>& alpha, T gamma) {
  const T e = rf_exp(-rf_abs(x));
  const SigmoidFocalTerms<T> s = sigmoid_focal_terms(x, t, e, rf_log1p(e));
  return sigmoid_focal_loss_value(s, t, focal_modulator(s.m, gamma), alpha);
}
template <typename T>
RF_FOCAL_INLINE T sigmoid_focal_loss_grad(T x, T t, const FocalAlpha<T>& alpha, T gamma) {
  const T e = rf_exp(-rf_abs(x));
  const SigmoidFocalTerms<T> s = sigmoid_focal_terms(x, t, e, rf_log1p(e));
  return sigmoid_focal_loss_grad(s, t, focal_modulator(s.m, gamma), alpha, gamma);
}

// ---------------------------------------------------------------- softmax

// x_a - x_b between two logits of a row, 0 when they are equal, also when
// both are infinite (where the subtraction gives NaN).
template <typename T>
RF_FOCAL_INLINE T logit_difference(T a, T b) {
  return a == b ? T(0) : a - b;
}

// Detectron's softmax focal loss weighting: alpha for the foreground classes
// (label > 0), 1 - alpha for the background class 0; 1 when alpha < 0.
template <typename T>
RF_FOCAL_INLINE T softmax_alpha_weight(const FocalAlpha<T>& alpha, bool background) {
  return background ? alpha.negative : alpha.positive;
}

// Two classes (RetinaFace's case): with z = x_y - x_other, p_t = sigmoid(z),
// so the row is the sigmoid focal loss of z against target 1 (without the
// sigmoid's alpha): the same stable maths, one exp instead of two.
// d loss / d x_y = grad_z, d loss / d x_other = -grad_z.
template <typename T>
RF_FOCAL_INLINE T binary_softmax_focal_loss(const SigmoidFocalTerms<T>& s, T modulator,
                                           T alpha_t) {
  return alpha_t * (s.ce * modulator);
}
template <typename T>
RF_FOCAL_INLINE T binary_softmax_focal_grad(const SigmoidFocalTerms<T>& s, T modulator, T alpha_t,
                                           T gamma) {
  return alpha_t * sigmoid_focal_loss_grad(s, T(1), modulator, FocalAlpha<T>{T(1), T(1)}, gamma);
}

// A row of logits x against its target class y, from statistics the kernel
// gathers in one pass: the row maximum M, exp(x_y - M) and the sum of
// exp(x_c - M) over the other classes.
template <typename T>
struct SoftmaxFocalRow {
  T loss;        // alpha_t (1 - p_t)^gamma (-log p_t)
  T sum;         // sum over all classes of exp(x_c - M): p_c = exp(x_c - M) / sum
  T one_minus_pt;
  // d loss / d x_c = grad_factor * (p_c - [c == y]); for c == y that is
  // -grad_factor * one_minus_pt (no cancellation).
  T grad_factor;
};

// -log p_t from t = x_y - M, the sum of exp(x_c - M) over the other classes
// and log1p / log of the sums: when y is the maximum (t = 0) that is
// log1p(sum_others), which keeps the small values; otherwise log(sum) - t.
template <typename T>
RF_FOCAL_INLINE T softmax_focal_ce(T target_minus_max, T log1p_sum_others, T log_sum) {
  return target_minus_max == T(0) ? log1p_sum_others : log_sum - target_minus_max;
}

// The row's loss and gradient factor from exp(x_y - M), the sum of the
// other classes' exp(x_c - M) and ce = -log p_t (softmax_focal_ce).
template <typename T>
RF_FOCAL_INLINE SoftmaxFocalRow<T> softmax_focal_row(T target_exp, T sum_others, T ce, T alpha_t,
                                                    T gamma, bool with_grad) {
  SoftmaxFocalRow<T> r;
  r.sum = target_exp + sum_others;
  r.one_minus_pt = sum_others / r.sum;
  const T modulator = focal_modulator(r.one_minus_pt, gamma);
  r.loss = alpha_t * (modulator * ce);
  r.grad_factor = T(0);
  if (with_grad) {
    // d/dx_c [m^gamma ce] = (p_c - [c == y]) (m^gamma + gamma p_t ce m^(gamma-1))
    // = (p_c - [c == y]) m^gamma (1 + gamma p_t (ce / m)); ce / m = -log(1-m)/m
    // tends to 1 as m -> 0 and p_t ce -> 0 as p_t -> 0 (guarded: 0 * inf).
    const T pt = target_exp / r.sum;
    T extra = T(0);
    if (gamma != T(0) && pt > T(0)) {
      const T ce_over_m = r.one_minus_pt > T(0) ? ce / r.one_minus_pt : T(1);
      extra = gamma * pt * ce_over_m;
    }
    r.grad_factor = alpha_t * modulator * (T(1) + extra);
  }
  return r;
}

// The same from the row's statistics alone, computing exp and one log inline.
template <typename T>
RF_FOCAL_INLINE SoftmaxFocalRow<T> softmax_focal_row(T target_minus_max, T sum_others, T alpha_t,
                                                    T gamma, bool with_grad) {
  const T target_exp = rf_exp(target_minus_max);
  const T ce = target_minus_max == T(0) ? rf_log1p(sum_others)
                                        : rf_log(target_exp + sum_others) - target_minus_max;
  return softmax_focal_row(target_exp, sum_others, ce, alpha_t, gamma, with_grad);
}

}  // namespace retinaface
