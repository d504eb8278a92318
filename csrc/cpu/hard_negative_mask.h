// Hard negative selection, shared by the hard_negative_mask op and the fused
// multibox_loss kernel (CPU).
//
// biubug6 mines negatives with a double sort: rank every prior by its
// confidence loss (positives zeroed), descending, and keep the priors whose
// rank is below k. With a stable sort that is "the k largest losses, ties to
// the lower prior index, NaN largest". We compute the same set with a radix
// select on an order-preserving integer key: a few histogram passes over the
// losses instead of two O(P log P) sorts.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/hard_negative.h"

namespace retinaface {

// selection_key() and num_hard_negatives() live in common/hard_negative.h,
// shared with the CUDA kernels.

// at::parallel_for grain over images: threads only pay off when each chunk
// has some thousands of priors (small problems, e.g. gradcheck, stay serial).
inline int64_t images_per_task(int64_t num_priors) {
  constexpr int64_t kMinPriorsPerTask = 16384;
  return std::max<int64_t>(1, kMinPriorsPerTask / std::max<int64_t>(num_priors, 1));
}

// Reusable scratch for select_top_k: one per thread, reused across images so
// the kernels allocate once per thread, not once per image.
template <typename Loss>
struct TopKScratch {
  using Key = std::conditional_t<std::is_same<Loss, double>::value, uint64_t, uint32_t>;
  std::vector<Key> keys;
  std::vector<int64_t> candidates;  // indices whose key shares the digits found so far
  std::vector<int64_t> histogram;
};

// Calls on_select(i) exactly once, in increasing i, for each of the k entries
// of loss[0..n) that come first in the order (loss descending, NaN first,
// index ascending). loss is the mining loss with positives already zeroed.
template <typename Loss, typename OnSelect>
void select_top_k(const Loss* loss, int64_t n, int64_t k, TopKScratch<Loss>& scratch,
                  OnSelect&& on_select) {
  using Key = typename TopKScratch<Loss>::Key;
  if (k <= 0 || n <= 0) return;
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) on_select(i);
    return;
  }
  constexpr int kKeyBits = 8 * sizeof(Key);
  constexpr int kDigitBits = 11;  // 2048-bin histogram: fits in L1
  constexpr int64_t kRadix = int64_t(1) << kDigitBits;
  scratch.keys.resize(n);
  scratch.histogram.resize(kRadix);
  Key* keys = scratch.keys.data();
  int64_t* histogram = scratch.histogram.data();

  // Finds, in histogram[0..radix), the digit of the `remaining`-th largest
  // key and how many keys with that digit still belong to the top k.
  const auto find_digit = [&](int64_t radix, int64_t& remaining) {
    int64_t digit = radix - 1;
    for (; digit > 0 && histogram[digit] < remaining; --digit) remaining -= histogram[digit];
    return digit;
  };

  // Most significant digit first. The first pass computes the keys and their
  // top digit over all n entries; later passes only visit the candidates that
  // share every digit found so far (usually a small fraction of n).
  int shift = kKeyBits - kDigitBits;
  std::fill(histogram, histogram + kRadix, int64_t(0));
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = selection_key(loss[i]);
    ++histogram[keys[i] >> shift];
  }
  int64_t remaining = k;
  Key prefix = Key(find_digit(kRadix, remaining)) << shift;
  auto& candidates = scratch.candidates;
  candidates.clear();
  for (int64_t i = 0; i < n; ++i) {
    if ((keys[i] >> shift) == (prefix >> shift)) candidates.push_back(i);
  }
  while (shift > 0) {
    const int high = shift;
    shift = std::max(0, high - kDigitBits);
    const int64_t radix = int64_t(1) << (high - shift);
    std::fill(histogram, histogram + radix, int64_t(0));
    for (int64_t i : candidates) ++histogram[(keys[i] >> shift) & Key(radix - 1)];
    prefix |= Key(find_digit(radix, remaining)) << shift;
    size_t kept = 0;
    for (int64_t i : candidates) {
      if ((keys[i] >> shift) == (prefix >> shift)) candidates[kept++] = i;
    }
    candidates.resize(kept);
  }
  // prefix is now the k-th largest key: take every larger key and the first
  // `remaining` equal ones, lower index first (the stable sort's tie order).
  for (int64_t i = 0; i < n; ++i) {
    if (keys[i] > prefix) {
      on_select(i);
    } else if (keys[i] == prefix && remaining > 0) {
      on_select(i);
      --remaining;
    }
  }
}

}  // namespace retinaface
