// Block-wide hard negative selection, shared by the hard_negative_mask kernel
// and the fused multibox_loss kernel (CUDA). One block selects one image.
//
// The set is the CPU's (cpu/hard_negative_mask.h): the k largest selection
// keys (common/hard_negative.h: NaN largest, -0 == +0), ties to the lower
// prior index. Found with a most-significant-digit-first radix select of the
// k-th largest key (11-bit digits: 3 histogram passes for 32-bit keys, 6 for
// 64-bit ones, histograms in shared memory), then one pass in index order
// that takes every larger key and the first `remaining` equal ones, ranked by
// a block-wide prefix sum over the equal-key flags.
#pragma once

#include <cstdint>

#include "common/hard_negative.h"
#include "cuda/cuda_utils.cuh"

namespace retinaface {
namespace cuda {

constexpr int kSelectThreads = 1024;
constexpr int kSelectWarps = kSelectThreads / 32;
constexpr int kDigitBits = 11;
constexpr int kRadix = 1 << kDigitBits;

template <typename Key>
struct SelectShared {
  unsigned int histogram[kRadix];
  int warp_totals[kSelectWarps];
  Key prefix;
  int remaining;  // equal-to-prefix keys still to take
  int num_equal;  // keys equal to the final prefix
  int64_t k;
};

// Exclusive prefix sum of one int per thread over the block, in thread order;
// *total gets the block's sum. Every thread of the block must call it.
__device__ __forceinline__ int block_exclusive_scan(int value, int* warp_totals, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inclusive = value;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int t = lane < kSelectWarps ? warp_totals[lane] : 0;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(0xFFFFFFFFu, t, offset);
      if (lane >= offset) t += up;
    }
    if (lane < kSelectWarps) warp_totals[lane] = t;  // inclusive over warps
  }
  __syncthreads();
  const int warp_offset = warp == 0 ? 0 : warp_totals[warp - 1];
  const int block_total = warp_totals[kSelectWarps - 1];
  __syncthreads();  // warp_totals is reused by the next call
  *total = block_total;
  return warp_offset + inclusive - value;
}

// Sum of one int per thread over the block (every thread gets it).
__device__ __forceinline__ int block_sum(int value, int* warp_totals) {
  int total;
  block_exclusive_scan(value, warp_totals, &total);
  return total;
}

// Radix select of the k-th largest of n keys (0 < k < n): leaves in `shared`
// the key itself (prefix), how many keys equal to it belong to the top k
// (remaining) and how many there are (num_equal). load_key(i) gives key i.
template <typename Key, typename LoadKey>
__device__ void block_radix_select(const LoadKey& load_key, int n, int k, SelectShared<Key>& shared) {
  constexpr int kKeyBits = 8 * sizeof(Key);
  const int lane = threadIdx.x & 31;
  Key prefix = 0, mask = 0;
  int remaining = k;
  for (int high = kKeyBits; high > 0;) {
    const int shift = high - kDigitBits > 0 ? high - kDigitBits : 0;
    const int radix = 1 << (high - shift);
    for (int d = threadIdx.x; d < radix; d += kSelectThreads) shared.histogram[d] = 0;
    __syncthreads();
    // Every lane runs the same number of iterations, so the warp-wide
    // intrinsics below see the whole warp.
    for (int base = 0; base < n; base += kSelectThreads) {
      const int i = base + threadIdx.x;
      const Key key = i < n ? load_key(i) : Key(0);
      const bool counted = i < n && (key & mask) == prefix;
      const unsigned int digit = static_cast<unsigned int>((key >> shift) & Key(radix - 1));
      // Losses cluster in a few digits (the exponent bits first): one shared
      // atomic per distinct digit of the warp instead of one per key.
      const unsigned int voters = __ballot_sync(0xFFFFFFFFu, counted);
      if (counted) {
        const unsigned int peers = __match_any_sync(voters, digit);
        if (__ffs(peers) - 1 == lane) atomicAdd(&shared.histogram[digit], static_cast<unsigned int>(__popc(peers)));
      }
    }
    __syncthreads();
    // Thread t owns the bins radix-1-t*per, radix-1-t*per-1, ... (high digits
    // first); a prefix sum over the threads gives the count of keys above.
    const int per_thread = (radix + kSelectThreads - 1) / kSelectThreads;
    const int first = radix - 1 - static_cast<int>(threadIdx.x) * per_thread;
    int own = 0;
    for (int j = 0; j < per_thread; ++j) {
      const int d = first - j;
      if (d >= 0) own += static_cast<int>(shared.histogram[d]);
    }
    int unused_total;
    int above = block_exclusive_scan(own, shared.warp_totals, &unused_total);
    for (int j = 0; j < per_thread; ++j) {
      const int d = first - j;
      if (d < 0) break;
      const int count = static_cast<int>(shared.histogram[d]);
      // Exactly one bin holds the k-th largest key among those with this prefix.
      if (above < remaining && above + count >= remaining) {
        shared.prefix = prefix | (Key(d) << shift);
        shared.remaining = remaining - above;
        shared.num_equal = count;
      }
      above += count;
    }
    __syncthreads();
    prefix = shared.prefix;
    remaining = shared.remaining;
    mask |= Key(radix - 1) << shift;
    high = shift;
    __syncthreads();  // everyone has read shared.* before the next pass writes
  }
}

// Visits every i in [0, n) once as visit(i, key, selected), where selected
// marks the k largest keys (ties: lower index). k = min(k, n) is allowed to be
// 0 or n. Every thread of the block (kSelectThreads) must call it.
template <typename Key, typename LoadKey, typename Visit>
__device__ void block_select_top_k(const LoadKey& load_key, int n, int64_t k,
                                   SelectShared<Key>& shared, const Visit& visit) {
  if (k <= 0 || k >= n) {
    const bool all = k >= n;
    for (int i = threadIdx.x; i < n; i += kSelectThreads) visit(i, load_key(i), all);
    return;
  }
  block_radix_select<Key>(load_key, n, static_cast<int>(k), shared);
  const Key threshold = shared.prefix;
  const int take = shared.remaining;
  if (take == shared.num_equal) {
    // Every key equal to the threshold is taken: no ranking needed.
    for (int i = threadIdx.x; i < n; i += kSelectThreads) {
      const Key key = load_key(i);
      visit(i, key, key >= threshold);
    }
    return;
  }
  int taken = 0;  // equal keys at indices below this chunk
  for (int base = 0; base < n; base += kSelectThreads) {
    const int i = base + threadIdx.x;
    const Key key = i < n ? load_key(i) : Key(0);
    const bool equal = i < n && key == threshold;
    int chunk_equal;
    const int rank = taken + block_exclusive_scan(equal ? 1 : 0, shared.warp_totals, &chunk_equal);
    if (i < n) visit(i, key, key > threshold || (equal && rank < take));
    taken += chunk_equal;
  }
}

}  // namespace cuda
}  // namespace retinaface
