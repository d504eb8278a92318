// The pieces of hard negative mining that CPU and CUDA must agree on bit for
// bit: the order-preserving selection key of a mining loss and the number of
// negatives k. Plain C++ usable from host and device code (no torch headers).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/box_math.h"  // RF_HOST_DEVICE

namespace retinaface {

RF_HOST_DEVICE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
#endif
}

RF_HOST_DEVICE float bits_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
#endif
}

RF_HOST_DEVICE uint64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
#endif
}

RF_HOST_DEVICE double bits_double(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
#endif
}

// Integer key with the order torch.sort(descending=True) gives the losses:
// larger loss -> larger key, every NaN is the largest value (and NaNs tie),
// -0.0 ties with +0.0. Float losses get 32-bit keys, double losses 64-bit
// keys, so no two distinct values share a key.
RF_HOST_DEVICE uint32_t selection_key(float x) {
  if (x != x) return 0xFFFFFFFFu;
  if (x == 0.0f) x = 0.0f;  // -0.0 -> +0.0
  const uint32_t bits = float_bits(x);
  // IEEE sign-magnitude -> unsigned order: flip negatives entirely, set the
  // sign bit of positives.
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

RF_HOST_DEVICE uint64_t selection_key(double x) {
  if (x != x) return ~uint64_t(0);
  if (x == 0.0) x = 0.0;
  const uint64_t bits = double_bits(x);
  const uint64_t sign = uint64_t(1) << 63;
  return (bits & sign) ? ~bits : (bits | sign);
}

// The loss a key was made from (a NaN for the NaN key, +0.0 for either zero):
// lets a kernel keep only the keys and still sum the selected losses.
RF_HOST_DEVICE float selection_key_value(uint32_t key) {
  if (key == 0xFFFFFFFFu) return bits_float(0x7FC00000u);
  return bits_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

RF_HOST_DEVICE double selection_key_value(uint64_t key) {
  const uint64_t sign = uint64_t(1) << 63;
  if (key == ~uint64_t(0)) return bits_double(0x7FF8000000000000ull);
  return bits_double((key & sign) ? (key & ~sign) : ~key);
}

// Number of hard negatives biubug6 keeps for an image with num_pos positives
// among num_priors priors: min(ratio * num_pos, num_priors - 1), never < 0.
RF_HOST_DEVICE int64_t num_hard_negatives(int64_t num_pos, int64_t ratio, int64_t num_priors) {
  if (num_pos <= 0 || ratio <= 0 || num_priors <= 1) return 0;
  // Compare before multiplying so that a huge ratio cannot overflow.
  return ratio > (num_priors - 1) / num_pos ? num_priors - 1 : ratio * num_pos;
}

}  // namespace retinaface
