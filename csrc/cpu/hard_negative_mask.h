// Hard negative selection, shared by the hard_negative_mask op and the fused
// multibox_loss kernel (CPU).
//
// biubug6 mines negatives with a double sort: rank every prior by its
// confidence loss (positives zeroed), descending, and keep the priors whose
// rank is below k. With a stable sort that is "the k largest losses, ties to
// the lower prior index, NaN largest". We compute the same set with a radix
// select on an order-preserving integer key (common/hard_negative.h) instead
// of two O(P log P) sorts.
//
// The selection touches every prior twice: once when the caller hands over
// the keys (TopKSelector::add, which also counts their top digit, so the
// caller's own pass over the priors doubles as the first radix pass), and
// once in select(), which takes the priors whose top digit is larger than the
// k-th largest's outright and keeps those that share it as candidates. The
// lower digits are then resolved among the candidates only, usually a few
// percent of the priors.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
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

// One per task, reused across its images (it owns the scratch buffers); each
// image is begin(), add() for every entry, then one select():
//   selector.begin(n);
//   for (i = 0; i < n; ++i) selector.add(i, selection_key(loss_i));
//   selector.select(k, on_select);
template <typename Loss>
class TopKSelector {
 public:
  using Key = std::conditional_t<std::is_same<Loss, double>::value, uint64_t, uint32_t>;

  void begin(int64_t n) {
    TORCH_CHECK(n <= int64_t(std::numeric_limits<uint32_t>::max()),
                "hard negative mining supports up to 2^32 - 1 priors per image, got ", n);
    n_ = n;
    keys_.resize(n);
    histograms_.assign(kLanes * kRadix, 0u);
  }

  // Entries may come in any order, but every i in [0, n) exactly once.
  void add(int64_t i, Key key) {
    keys_[i] = key;
    // Consecutive entries usually share the top digit; four interleaved
    // histograms keep their increments from waiting on each other.
    ++histograms_[(i & (kLanes - 1)) * kRadix + (key >> kTopShift)];
  }

  // Calls on_select(i) exactly once for each of the k entries that come first
  // in the order (key descending, index ascending), in an order that depends
  // only on the keys. k is clamped to [0, n].
  template <typename OnSelect>
  void select(int64_t k, OnSelect&& on_select) {
    const int64_t n = n_;
    if (k <= 0 || n <= 0) return;
    if (k >= n) {
      for (int64_t i = 0; i < n; ++i) on_select(i);
      return;
    }
    uint32_t* histogram = histograms_.data();
    for (int lane = 1; lane < kLanes; ++lane) {
      for (int64_t d = 0; d < kRadix; ++d) histogram[d] += histograms_[lane * kRadix + d];
    }
    int64_t remaining = k;  // how many of the top k still lie among the candidates
    const Key top_digit = find_digit(histogram, kRadix, remaining);
    Key prefix = top_digit << kTopShift;

    // Second and last pass over all n entries, branch-free: a larger top
    // digit is selected, an equal one is a candidate.
    selected_.resize(n);
    candidates_.resize(n);
    int64_t num_selected = 0, num_candidates = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Key digit = keys_[i] >> kTopShift;
      selected_[num_selected] = i;
      num_selected += digit > top_digit;
      candidates_[num_candidates] = i;
      num_candidates += digit == top_digit;
    }

    // Lower digits, among the candidates only (they stay in index order).
    int shift = kTopShift;
    while (shift > 0) {
      const int high = shift;
      shift = std::max(0, high - kDigitBits);
      const int64_t radix = int64_t(1) << (high - shift);
      std::fill(histogram, histogram + radix, 0u);
      for (int64_t c = 0; c < num_candidates; ++c) {
        ++histogram[(keys_[candidates_[c]] >> shift) & Key(radix - 1)];
      }
      const Key digit = find_digit(histogram, radix, remaining);
      prefix |= digit << shift;
      int64_t kept = 0;
      for (int64_t c = 0; c < num_candidates; ++c) {
        const int64_t i = candidates_[c];
        const Key d = (keys_[i] >> shift) & Key(radix - 1);
        if (d > digit) {
          selected_[num_selected++] = i;
        } else if (d == digit) {
          candidates_[kept++] = i;
        }
      }
      num_candidates = kept;
    }
    // Every candidate now has the k-th largest key: the first `remaining`
    // of them in index order complete the top k (the stable sort's ties).
    for (int64_t c = 0; c < remaining; ++c) selected_[num_selected++] = candidates_[c];
    for (int64_t s = 0; s < num_selected; ++s) on_select(selected_[s]);
  }

 private:
  static constexpr int kKeyBits = 8 * sizeof(Key);
  static constexpr int kDigitBits = 11;  // 2048-bin histograms fit in L1
  static constexpr int64_t kRadix = int64_t(1) << kDigitBits;
  static constexpr int kTopShift = kKeyBits - kDigitBits;
  static constexpr int kLanes = 4;

  // The digit of the `remaining`-th largest key in histogram[0..radix), and
  // how many keys with that digit still belong to the top k.
  static Key find_digit(const uint32_t* histogram, int64_t radix, int64_t& remaining) {
    int64_t digit = radix - 1;
    for (; digit > 0 && histogram[digit] < remaining; --digit) remaining -= histogram[digit];
    return Key(digit);
  }

  int64_t n_ = 0;
  std::vector<Key> keys_;
  std::vector<uint32_t> histograms_;  // kLanes interleaved histograms of kRadix bins
  std::vector<int64_t> selected_, candidates_;
};

}  // namespace retinaface
