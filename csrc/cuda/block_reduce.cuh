// Deterministic block reductions shared by the loss kernels (focal_loss_kernel.cu,
// multibox_loss_kernel.cu). Plain CUDA, no torch headers.
#pragma once

#include <cuda_runtime.h>

namespace retinaface {
namespace cuda {

// Sum of `value` over the block, in a fixed order (a shuffle tree in each
// warp, then the warps in index order), so the result does not depend on
// scheduling: no float atomics. kBlockThreads is the block size (a multiple
// of 32, all threads active); warp_sums is shared memory for kBlockThreads /
// 32 values. The result is valid in thread 0 only. Every thread of the block
// must call it (it synchronises the block twice; warp_sums may be reused
// right after it returns).
template <int kBlockThreads, typename V>
__device__ __forceinline__ V block_sum_in_order(V value, V* warp_sums) {
  static_assert(kBlockThreads % 32 == 0 && kBlockThreads <= 1024, "whole warps, one block");
  constexpr int kWarps = kBlockThreads / 32;
  for (int offset = 16; offset > 0; offset >>= 1) {
    value += __shfl_down_sync(0xFFFFFFFFu, value, offset);
  }
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = value;
  __syncthreads();
  V total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  }
  __syncthreads();
  return total;
}

}  // namespace cuda
}  // namespace retinaface
