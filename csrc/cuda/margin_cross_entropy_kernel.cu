// margin_cross_entropy on CUDA: the CPU kernel's semantics
// (csrc/cpu/margin_cross_entropy.cpp, common/margin_math.h) in two kernels.
//
// Forward: one block per row. Each thread keeps an online (max, sum-exp) over
// the columns it strides through (one read of the row, coalesced, one exp per
// column), then the pairs are merged by a fixed shuffle tree and the warps in
// order: deterministic, no float atomics. Thread 0 writes the row's outputs.
//
// Backward: a 2-D grid of (column tiles, rows); every gradient element is
// written once from the per-row max and sum-exp the forward saved.
#include "common/margin_math.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/margin_cross_entropy_kernel.h"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kColumnsPerThread = 4;
constexpr int kTile = kThreads * kColumnsPerThread;  // columns per backward block
constexpr unsigned int kMaxForwardBlocks = 1u << 20;
constexpr unsigned int kMaxGridY = 65535;

template <typename Acc>
struct MaxSum {
  Acc max, sum;
};

// The (max, sum-exp) of the union of two sets of logits.
template <typename Acc>
__device__ __forceinline__ MaxSum<Acc> merge(MaxSum<Acc> a, MaxSum<Acc> b) {
  const Acc m = a.max > b.max ? a.max : b.max;
  if (m == -INFINITY) return {m, Acc(0)};  // both empty: no exp(-inf - -inf)
  return {m, a.sum * rf_exp(a.max - m) + b.sum * rf_exp(b.max - m)};
}

// The column of the row's target inside this shard, -1 if none.
__device__ __forceinline__ int64_t local_target(int64_t label, const MarginRows& shape) {
  return (label >= shape.class_offset && label - shape.class_offset < shape.cols)
             ? label - shape.class_offset
             : -1;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ cos_logits, const int64_t* __restrict__ labels,
                   MarginRows shape, MarginParams<compute_t<T>> p, compute_t<T>* __restrict__ loss,
                   compute_t<T>* __restrict__ row_max, compute_t<T>* __restrict__ row_sumexp,
                   compute_t<T>* __restrict__ target_logit) {
  using Acc = compute_t<T>;
  __shared__ MaxSum<Acc> warp_results[kWarps];
  for (int64_t row = blockIdx.x; row < shape.rows; row += gridDim.x) {
    const T* x = cos_logits + row * shape.cols;
    const int64_t label = labels[row];
    const int64_t t = local_target(label, shape);
    const Acc z_t = t >= 0 ? margin_target_logit(static_cast<Acc>(to_compute(x[t])), p) : Acc(0);

    MaxSum<Acc> own{-INFINITY, Acc(0)};
    for (int64_t j = threadIdx.x; j < shape.cols; j += kThreads) {
      const Acc z = j == t ? z_t : p.s * static_cast<Acc>(to_compute(x[j]));
      if (z > own.max) {
        own.sum = own.sum * rf_exp(own.max - z) + Acc(1);
        own.max = z;
      } else if (z != -INFINITY) {
        // A -inf logit adds exp(-inf) = 0; skipped, because while own.max is
        // still -inf (the thread's first columns) exp(-inf - -inf) is NaN.
        own.sum += rf_exp(z - own.max);
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const MaxSum<Acc> other{__shfl_down_sync(0xFFFFFFFFu, own.max, offset),
                              __shfl_down_sync(0xFFFFFFFFu, own.sum, offset)};
      own = merge(own, other);
    }
    if ((threadIdx.x & 31) == 0) warp_results[threadIdx.x >> 5] = own;
    __syncthreads();
    if (threadIdx.x == 0) {
      MaxSum<Acc> total = warp_results[0];
      for (int w = 1; w < kWarps; ++w) total = merge(total, warp_results[w]);
      row_max[row] = total.max;
      row_sumexp[row] = total.sum;
      target_logit[row] = z_t;
      // The device cannot raise: an invalid label makes the row's loss NaN.
      const bool valid = label == -1 || (label >= 0 && label < shape.num_classes);
      double value = 0.0;
      if (!valid) {
        value = NAN;
      } else if (t >= 0) {
        value = (static_cast<double>(total.max) + log(static_cast<double>(total.sum))) -
                static_cast<double>(z_t);
      }
      loss[row] = static_cast<Acc>(value);
    }
    __syncthreads();  // warp_results is reused by the next row
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ cos_logits, const int64_t* __restrict__ labels,
                    const compute_t<T>* __restrict__ grad_loss,
                    const compute_t<T>* __restrict__ grad_sumexp,
                    const compute_t<T>* __restrict__ grad_target,
                    const compute_t<T>* __restrict__ row_max,
                    const compute_t<T>* __restrict__ row_sumexp, MarginRows shape,
                    MarginParams<compute_t<T>> p, bool exact_gradient, T* __restrict__ grad) {
  using Acc = compute_t<T>;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int64_t row = blockIdx.y; row < shape.rows; row += gridDim.y) {
    const T* x = cos_logits + row * shape.cols;
    T* dx = grad + row * shape.cols;
    const int64_t t = local_target(labels[row], shape);
    const Acc m = row_max[row];
    // As on the CPU: a row without a target here has a constant loss of 0.
    const Acc g_loss = t >= 0 ? grad_loss[row] : Acc(0);
    const Acc a = g_loss / row_sumexp[row] + grad_sumexp[row];
    const Acc coef = p.s * a;
    for (int k = 0; k < kColumnsPerThread; ++k) {
      const int64_t j = tile_begin + k * kThreads + threadIdx.x;
      if (j >= shape.cols) break;
      const Acc xj = static_cast<Acc>(to_compute(x[j]));
      Acc value;
      if (j == t) {
        const Acc dz_dx = exact_gradient ? p.s * margin_cosine_grad(xj, p) : p.s;
        value = dz_dx * (rf_exp(margin_target_logit(xj, p) - m) * a + (grad_target[row] - g_loss));
      } else {
        value = coef * rf_exp(p.s * xj - m);
      }
      dx[j] = from_compute<T>(value);
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_margin_cross_entropy_forward(const T* cos_logits, const int64_t* labels,
                                                const MarginRows& shape,
                                                const MarginParams<compute_t<T>>& params,
                                                compute_t<T>* loss, compute_t<T>* row_max,
                                                compute_t<T>* row_sumexp,
                                                compute_t<T>* target_logit, cudaStream_t stream) {
  if (shape.rows <= 0) return cudaSuccess;
  const unsigned int blocks = static_cast<unsigned int>(
      shape.rows < kMaxForwardBlocks ? shape.rows : kMaxForwardBlocks);
  forward_kernel<T><<<blocks, kThreads, 0, stream>>>(cos_logits, labels, shape, params, loss,
                                                      row_max, row_sumexp, target_logit);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_margin_cross_entropy_backward(
    const T* cos_logits, const int64_t* labels, const compute_t<T>* grad_loss,
    const compute_t<T>* grad_sumexp, const compute_t<T>* grad_target,
    const compute_t<T>* row_max, const compute_t<T>* row_sumexp, const MarginRows& shape,
    const MarginParams<compute_t<T>>& params, bool exact_gradient, T* grad, cudaStream_t stream) {
  if (shape.rows <= 0 || shape.cols <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(ceil_div(shape.cols, kTile)),
                  static_cast<unsigned int>(shape.rows < kMaxGridY ? shape.rows : kMaxGridY));
  backward_kernel<T><<<grid, kThreads, 0, stream>>>(cos_logits, labels, grad_loss, grad_sumexp,
                                                     grad_target, row_max, row_sumexp, shape,
                                                     params, exact_gradient, grad);
  return cudaGetLastError();
}

#define RF_INSTANTIATE_MARGIN(T)                                                                \
  template cudaError_t launch_margin_cross_entropy_forward<T>(                                   \
      const T*, const int64_t*, const MarginRows&, const MarginParams<compute_t<T>>&,             \
      compute_t<T>*, compute_t<T>*, compute_t<T>*, compute_t<T>*, cudaStream_t);                \
  template cudaError_t launch_margin_cross_entropy_backward<T>(                                  \
      const T*, const int64_t*, const compute_t<T>*, const compute_t<T>*, const compute_t<T>*,    \
      const compute_t<T>*, const compute_t<T>*, const MarginRows&,                               \
      const MarginParams<compute_t<T>>&, bool, T*, cudaStream_t);

RF_INSTANTIATE_MARGIN(float)
RF_INSTANTIATE_MARGIN(double)
RF_INSTANTIATE_MARGIN(__half)
RF_INSTANTIATE_MARGIN(__nv_bfloat16)

#undef RF_INSTANTIATE_MARGIN

}  // namespace cuda
}  // namespace retinaface
