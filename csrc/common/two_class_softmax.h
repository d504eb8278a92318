// The softmax of two logits from one exponential, shared by the CPU and CUDA
// multibox_loss backward so both devices write the same gradient bit for bit.
#pragma once

#include <cmath>

#include "common/box_math.h"

namespace retinaface {

// exp evaluated in double and rounded once: the correctly rounded float
// (except in astronomically rare cases) on the CPU and on CUDA alike, where
// expf differs between glibc and CUDA in the last bit.
RF_HOST_DEVICE float exp_rounded(float x) { return static_cast<float>(exp(static_cast<double>(x))); }
RF_HOST_DEVICE double exp_rounded(double x) { return exp(x); }

// With e = exp(-|x1 - x0|), the larger logit's probability is 1 / (1 + e) and
// the other's e / (1 + e): no cancellation, no overflow.
template <typename T>
RF_HOST_DEVICE void two_class_softmax(T x0, T x1, T* p0, T* p1) {
  const T e = exp_rounded(-rf_abs(x1 - x0));
  const T large = T(1) / (T(1) + e), small = e / (T(1) + e);
  *p1 = x1 >= x0 ? large : small;
  *p0 = x1 >= x0 ? small : large;
}

}  // namespace retinaface
