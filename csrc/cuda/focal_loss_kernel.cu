// sigmoid_focal_loss / softmax_focal_loss on CUDA, forward and backward; none
// of the kernels needs the host (CUDA-graph capturable).
//
// Sigmoid: a thread per element (grid-stride). Softmax: a thread per row (the
// classes of a row in a register loop; C is small in detection: 2 for
// RetinaFace, 80 for COCO); two classes use the binary form (the sigmoid
// maths on x_y - x_other), as the CPU does. The maths is common/focal_math.h,
// shared with the CPU kernels.
//
// Reductions: each block sums its elements in double with a fixed shuffle
// tree into a partial; a single-block finalize kernel sums the partials in a
// fixed order and divides on the device (by the normalizer, read from device
// memory, or the count of elements for 'mean'). The grid of the partial
// kernel depends only on the problem size, so results do not depend on
// scheduling: no float atomics anywhere. The backward recounts the 'mean'
// divisor with integer atomics (exact).
#include "common/focal_math.h"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_utils.cuh"
#include "cuda/focal_loss_kernel.h"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;
constexpr int64_t kMaxReduceBlocks = 1024;

struct FocalPartial {
  double sum;
  long long count;  // elements (sigmoid) or rows (softmax) that count for 'mean'
};

int64_t reduce_blocks(int64_t items) {
  const int64_t blocks = ceil_div(items, static_cast<int64_t>(kThreads) * kItemsPerThread);
  return blocks < 1 ? 1 : (blocks > kMaxReduceBlocks ? kMaxReduceBlocks : blocks);
}

// block_sum_in_order (cuda/block_reduce.cuh) for this file's kThreads-thread blocks.
template <typename V>
__device__ __forceinline__ V block_sum(V value, V* warp_sums) {
  return block_sum_in_order<kThreads>(value, warp_sums);
}

// Writes this block's (sum, count) into partials[blockIdx.x]. Every thread of
// the block must call it.
__device__ __forceinline__ void store_block_partial(double sum, long long count,
                                                    FocalPartial* __restrict__ partials) {
  __shared__ double double_sums[kThreads / 32];
  __shared__ long long count_sums[kThreads / 32];
  sum = block_sum(sum, double_sums);
  count = block_sum(count, count_sums);
  if (threadIdx.x == 0) partials[blockIdx.x] = {sum, count};
}

// The divisor of 'none' / 'sum' (1 without a normalizer).
__device__ __forceinline__ double normalizer_value(const FocalNormalizer& n) {
  return n.device != nullptr ? *n.device : (n.present ? n.host : 1.0);
}

// ---------------------------------------------------------------- sigmoid

// Element i as (logit, target) in the compute type; false when it does not
// count (its row is ignored, or its label is invalid: the CPU raises there).
template <typename T>
__device__ __forceinline__ bool sigmoid_element(const T* __restrict__ x,
                                                const compute_t<T>* __restrict__ targets,
                                                const int64_t* __restrict__ labels,
                                                const FocalProblem& p, int64_t i,
                                                compute_t<T>& xi, compute_t<T>& ti) {
  using Acc = compute_t<T>;
  if (labels == nullptr) {
    xi = to_compute(x[i]);
    ti = targets[i];
    return true;
  }
  const int64_t row = i / p.classes;
  const int64_t c = i - row * p.classes;
  const int64_t label = labels[row];
  if (label == p.ignore_index) return false;
  const bool background = label == p.background_index;
  if (!background && (label < 0 || label >= p.classes)) return false;
  xi = to_compute(x[i]);
  ti = (!background && label == c) ? Acc(1) : Acc(0);
  return true;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sigmoid_reduce_kernel(const T* __restrict__ x, const compute_t<T>* __restrict__ targets,
                          const int64_t* __restrict__ labels, FocalProblem p, int64_t n,
                          FocalPartial* __restrict__ partials) {
  using Acc = compute_t<T>;
  const FocalAlpha<Acc> alpha = focal_alpha(static_cast<Acc>(p.alpha));
  const Acc gamma = static_cast<Acc>(p.gamma);
  double sum = 0;
  long long count = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    Acc xi, ti;
    if (!sigmoid_element(x, targets, labels, p, i, xi, ti)) continue;
    sum += static_cast<double>(sigmoid_focal_loss_value(xi, ti, alpha, gamma));
    ++count;
  }
  store_block_partial(sum, count, partials);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sigmoid_none_kernel(const T* __restrict__ x, const compute_t<T>* __restrict__ targets,
                        const int64_t* __restrict__ labels, FocalProblem p, int64_t n,
                        FocalNormalizer normalizer, compute_t<T>* __restrict__ out) {
  using Acc = compute_t<T>;
  const FocalAlpha<Acc> alpha = focal_alpha(static_cast<Acc>(p.alpha));
  const Acc gamma = static_cast<Acc>(p.gamma);
  const Acc divisor = static_cast<Acc>(normalizer_value(normalizer));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    Acc xi, ti;
    if (!sigmoid_element(x, targets, labels, p, i, xi, ti)) {
      out[i] = Acc(0);
      continue;
    }
    const Acc loss = sigmoid_focal_loss_value(xi, ti, alpha, gamma);
    out[i] = normalizer.present ? loss / divisor : loss;
  }
}

// ---------------------------------------------------------------- softmax

// The focal terms of a row against its label y (CPU: cpu/focal_loss.cpp
// softmax_row, the same order of operations).
template <typename T>
__device__ __forceinline__ SoftmaxFocalRow<compute_t<T>> softmax_row(
    const T* __restrict__ xr, int64_t classes, int64_t y, const FocalAlpha<compute_t<T>>& alpha,
    compute_t<T> gamma,
    bool with_grad, compute_t<T>& row_max) {
  using Acc = compute_t<T>;
  Acc m = to_compute(xr[0]);
  for (int64_t c = 1; c < classes; ++c) m = nan_max(m, static_cast<Acc>(to_compute(xr[c])));
  Acc others = 0;
  for (int64_t c = 0; c < classes; ++c) {
    if (c != y) others += rf_exp(logit_difference(static_cast<Acc>(to_compute(xr[c])), m));
  }
  row_max = m;
  return softmax_focal_row(logit_difference(static_cast<Acc>(to_compute(xr[y])), m), others,
                           softmax_alpha_weight(alpha, y == 0), gamma, with_grad);
}

// Two classes (RetinaFace): the sigmoid maths on z = x_y - x_other
// (focal_math.h binary_softmax_*, as on the CPU). -> the loss; grad_z =
// d loss / d x_y = -d loss / d x_other when with_grad.
template <typename T>
__device__ __forceinline__ compute_t<T> binary_softmax_row(const T* __restrict__ xr, int64_t y,
                                                          const FocalAlpha<compute_t<T>>& alpha,
                                                          compute_t<T> gamma, bool with_grad,
                                                          compute_t<T>& grad_z) {
  using Acc = compute_t<T>;
  const Acc z = logit_difference(static_cast<Acc>(to_compute(xr[y])),
                                 static_cast<Acc>(to_compute(xr[1 - y])));
  const Acc e = rf_exp(-rf_abs(z));
  const SigmoidFocalTerms<Acc> s = sigmoid_focal_terms(z, Acc(1), e, rf_log1p(e));
  const Acc modulator = focal_modulator(s.m, gamma);
  const Acc alpha_t = softmax_alpha_weight(alpha, y == 0);
  if (with_grad) grad_z = binary_softmax_focal_grad(s, modulator, alpha_t, gamma);
  return binary_softmax_focal_loss(s, modulator, alpha_t);
}

// The loss of a row that counts, by the binary or the general maths.
template <typename T>
__device__ __forceinline__ compute_t<T> softmax_row_loss(const T* __restrict__ xr, int64_t classes,
                                                        int64_t y,
                                                        const FocalAlpha<compute_t<T>>& alpha,
                                                        compute_t<T> gamma) {
  compute_t<T> unused;
  if (classes == 2) return binary_softmax_row(xr, y, alpha, gamma, false, unused);
  return softmax_row(xr, classes, y, alpha, gamma, false, unused).loss;
}

__device__ __forceinline__ bool softmax_row_counts(int64_t label, const FocalProblem& p) {
  return label != p.ignore_index && label >= 0 && label < p.classes;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_reduce_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                          FocalProblem p, FocalPartial* __restrict__ partials) {
  using Acc = compute_t<T>;
  const FocalAlpha<Acc> alpha = focal_alpha(static_cast<Acc>(p.alpha));
  const Acc gamma = static_cast<Acc>(p.gamma);
  double sum = 0;
  long long count = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; r < p.rows;
       r += stride) {
    const int64_t label = labels[r];
    if (!softmax_row_counts(label, p)) continue;
    sum += static_cast<double>(softmax_row_loss(logits + r * p.classes, p.classes, label, alpha,
                                                gamma));
    ++count;
  }
  store_block_partial(sum, count, partials);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_none_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                        FocalProblem p, FocalNormalizer normalizer,
                        compute_t<T>* __restrict__ out) {
  using Acc = compute_t<T>;
  const FocalAlpha<Acc> alpha = focal_alpha(static_cast<Acc>(p.alpha));
  const Acc gamma = static_cast<Acc>(p.gamma);
  const Acc divisor = static_cast<Acc>(normalizer_value(normalizer));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; r < p.rows;
       r += stride) {
    const int64_t label = labels[r];
    if (!softmax_row_counts(label, p)) {
      out[r] = Acc(0);
      continue;
    }
    const Acc loss = softmax_row_loss(logits + r * p.classes, p.classes, label, alpha, gamma);
    out[r] = normalizer.present ? loss / divisor : loss;
  }
}

// ---------------------------------------------------------------- shared

template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const FocalPartial* __restrict__ partials, int64_t num_partials,
                    FocalReduction reduction, FocalNormalizer normalizer, Acc* __restrict__ out) {
  __shared__ double double_sums[kThreads / 32];
  __shared__ long long count_sums[kThreads / 32];
  double sum = 0;
  long long count = 0;
  for (int64_t j = threadIdx.x; j < num_partials; j += kThreads) {
    sum += partials[j].sum;
    count += partials[j].count;
  }
  sum = block_sum(sum, double_sums);
  count = block_sum(count, count_sums);
  if (threadIdx.x == 0) {
    // Divided in double, as on the CPU; 'mean' of nothing is 0, not NaN.
    const double divisor = reduction == FocalReduction::kMean
                               ? static_cast<double>(count > 0 ? count : 1)
                               : normalizer_value(normalizer);
    *out = static_cast<Acc>(sum / divisor);
  }
}

// Rows that count for 'mean' (sigmoid: not ignored, a class or the
// background; softmax: a class), added to *count with integer atomics.
__global__ void __launch_bounds__(kThreads)
    count_rows_kernel(const int64_t* __restrict__ labels, FocalProblem p, bool sigmoid,
                      unsigned long long* __restrict__ count) {
  __shared__ long long count_sums[kThreads / 32];
  long long own = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; r < p.rows;
       r += stride) {
    const int64_t label = labels[r];
    if (label == p.ignore_index) continue;
    if ((label >= 0 && label < p.classes) || (sigmoid && label == p.background_index)) ++own;
  }
  own = block_sum(own, count_sums);
  if (threadIdx.x == 0 && own > 0) atomicAdd(count, static_cast<unsigned long long>(own));
}

// The factor every gradient element is multiplied by for 'sum' / 'mean'
// (grad / divisor, in double then rounded, as on the CPU), or for 'none' the
// divisor of grad[i]. Computed by thread 0 into shared memory.
template <typename Acc>
__device__ __forceinline__ Acc gradient_scale(const Acc* __restrict__ grad, const FocalProblem& p,
                                              const FocalNormalizer& normalizer,
                                              const unsigned long long* __restrict__ count,
                                              long long count_multiplier, double mean_divisor,
                                              Acc* shared_scale) {
  if (threadIdx.x == 0) {
    double divisor = normalizer_value(normalizer);
    if (p.reduction == FocalReduction::kMean) {
      if (count != nullptr) {
        const long long n = static_cast<long long>(*count) * count_multiplier;
        divisor = static_cast<double>(n > 0 ? n : 1);
      } else {
        divisor = mean_divisor;
      }
    }
    *shared_scale = p.reduction == FocalReduction::kNone
                        ? static_cast<Acc>(divisor)
                        : static_cast<Acc>(static_cast<double>(grad[0]) / divisor);
  }
  __syncthreads();
  return *shared_scale;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sigmoid_grad_kernel(const compute_t<T>* __restrict__ grad, const T* __restrict__ x,
                        const compute_t<T>* __restrict__ targets,
                        const int64_t* __restrict__ labels, FocalProblem p, int64_t n,
                        FocalNormalizer normalizer, const unsigned long long* __restrict__ count,
                        double mean_divisor, T* __restrict__ grad_input) {
  using Acc = compute_t<T>;
  __shared__ Acc shared_scale;
  const Acc scale = gradient_scale(grad, p, normalizer, count, p.classes, mean_divisor,
                                   &shared_scale);
  const bool per_element = p.reduction == FocalReduction::kNone;
  const FocalAlpha<Acc> alpha = focal_alpha(static_cast<Acc>(p.alpha));
  const Acc gamma = static_cast<Acc>(p.gamma);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    Acc xi, ti;
    if (!sigmoid_element(x, targets, labels, p, i, xi, ti)) {
      grad_input[i] = from_compute<T>(Acc(0));
      continue;
    }
    const Acc s = per_element ? grad[i] / scale : scale;
    grad_input[i] = from_compute<T>(sigmoid_focal_loss_grad(xi, ti, alpha, gamma) * s);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_grad_kernel(const compute_t<T>* __restrict__ grad, const T* __restrict__ logits,
                        const int64_t* __restrict__ labels, FocalProblem p,
                        FocalNormalizer normalizer, const unsigned long long* __restrict__ count,
                        T* __restrict__ grad_input) {
  using Acc = compute_t<T>;
  __shared__ Acc shared_scale;
  const Acc scale = gradient_scale(grad, p, normalizer, count, 1, 1.0, &shared_scale);
  const bool per_row = p.reduction == FocalReduction::kNone;
  const FocalAlpha<Acc> alpha = focal_alpha(static_cast<Acc>(p.alpha));
  const Acc gamma = static_cast<Acc>(p.gamma);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; r < p.rows;
       r += stride) {
    const T* xr = logits + r * p.classes;
    T* gr = grad_input + r * p.classes;
    const int64_t label = labels[r];
    if (!softmax_row_counts(label, p)) {
      for (int64_t c = 0; c < p.classes; ++c) gr[c] = from_compute<T>(Acc(0));
      continue;
    }
    const Acc incoming = per_row ? grad[r] / scale : scale;
    if (p.classes == 2) {
      Acc grad_z;
      binary_softmax_row(xr, label, alpha, gamma, true, grad_z);
      const Acc v = grad_z * incoming;
      gr[label] = from_compute<T>(v);
      gr[1 - label] = from_compute<T>(-v);
      continue;
    }
    Acc row_max;
    const SoftmaxFocalRow<Acc> row =
        softmax_row(xr, p.classes, label, alpha, gamma, true, row_max);
    const Acc factor = row.grad_factor * incoming;
    for (int64_t c = 0; c < p.classes; ++c) {
      // p_c - [c == y]; for the target, -(1 - p_t) without cancellation.
      const Acc dp = c == label ? -row.one_minus_pt
                                : rf_exp(logit_difference(static_cast<Acc>(to_compute(xr[c])), row_max)) /
                                      row.sum;
      gr[c] = from_compute<T>(dp * factor);
    }
  }
}

// Recounts the 'mean' divisor on the device when it depends on the labels.
cudaError_t launch_count_rows(const int64_t* labels, const FocalProblem& problem, bool sigmoid,
                              unsigned long long* count, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(count, 0, sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;
  count_rows_kernel<<<static_cast<unsigned int>(reduce_blocks(problem.rows)), kThreads, 0,
                      stream>>>(labels, problem, sigmoid, count);
  return cudaGetLastError();
}

// The forward's launches over `items` work items (elements or rows), shared
// by both ops: for 'none' launch_none(grid) writes the losses; otherwise
// launch_partials(blocks, partials) writes one partial per block and the
// finalize kernel reduces and divides them (with no items, it writes 0).
// Nothing is launched with an empty grid.
template <typename Acc, typename LaunchNone, typename LaunchPartials>
cudaError_t launch_focal_forward(int64_t items, const FocalProblem& problem,
                                 const FocalNormalizer& normalizer, void* workspace, Acc* out,
                                 cudaStream_t stream, const LaunchNone& launch_none,
                                 const LaunchPartials& launch_partials) {
  if (problem.reduction == FocalReduction::kNone) {
    if (items == 0) return cudaSuccess;
    launch_none(grid_for(items, kThreads));
    return cudaGetLastError();
  }
  auto* partials = static_cast<FocalPartial*>(workspace);
  int64_t blocks = 0;
  if (items > 0) {
    blocks = reduce_blocks(items);
    launch_partials(static_cast<unsigned int>(blocks), partials);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  finalize_kernel<Acc><<<1, kThreads, 0, stream>>>(partials, blocks, problem.reduction,
                                                    normalizer, out);
  return cudaGetLastError();
}

}  // namespace

size_t focal_loss_workspace_bytes(int64_t items) {
  return sizeof(FocalPartial) * static_cast<size_t>(reduce_blocks(items));
}

template <typename T>
cudaError_t launch_sigmoid_focal_loss_forward(const T* inputs, const compute_t<T>* targets,
                                              const int64_t* labels, const FocalProblem& problem,
                                              const FocalNormalizer& normalizer, void* workspace,
                                              compute_t<T>* out, cudaStream_t stream) {
  const int64_t n = problem.rows * problem.classes;
  return launch_focal_forward(
      n, problem, normalizer, workspace, out, stream,
      [&](unsigned int grid) {
        sigmoid_none_kernel<T><<<grid, kThreads, 0, stream>>>(inputs, targets, labels, problem, n,
                                                              normalizer, out);
      },
      [&](unsigned int blocks, FocalPartial* partials) {
        sigmoid_reduce_kernel<T><<<blocks, kThreads, 0, stream>>>(inputs, targets, labels,
                                                                  problem, n, partials);
      });
}

template <typename T>
cudaError_t launch_softmax_focal_loss_forward(const T* logits, const int64_t* labels,
                                              const FocalProblem& problem,
                                              const FocalNormalizer& normalizer, void* workspace,
                                              compute_t<T>* out, cudaStream_t stream) {
  return launch_focal_forward(
      problem.rows, problem, normalizer, workspace, out, stream,
      [&](unsigned int grid) {
        softmax_none_kernel<T><<<grid, kThreads, 0, stream>>>(logits, labels, problem, normalizer,
                                                              out);
      },
      [&](unsigned int blocks, FocalPartial* partials) {
        softmax_reduce_kernel<T><<<blocks, kThreads, 0, stream>>>(logits, labels, problem,
                                                                  partials);
      });
}

template <typename T>
cudaError_t launch_sigmoid_focal_loss_backward(const compute_t<T>* grad, const T* inputs,
                                               const compute_t<T>* targets, const int64_t* labels,
                                               const FocalProblem& problem,
                                               const FocalNormalizer& normalizer,
                                               unsigned long long* count, T* grad_input,
                                               cudaStream_t stream) {
  const int64_t n = problem.rows * problem.classes;
  if (n == 0) return cudaSuccess;
  const bool count_labels = problem.reduction == FocalReduction::kMean && labels != nullptr;
  if (count_labels) {
    const cudaError_t err = launch_count_rows(labels, problem, /*sigmoid=*/true, count, stream);
    if (err != cudaSuccess) return err;
  }
  // Float targets: every element counts for 'mean'.
  const double mean_divisor = static_cast<double>(n);
  sigmoid_grad_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      grad, inputs, targets, labels, problem, n, normalizer, count_labels ? count : nullptr,
      mean_divisor, grad_input);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_softmax_focal_loss_backward(const compute_t<T>* grad, const T* logits,
                                               const int64_t* labels, const FocalProblem& problem,
                                               const FocalNormalizer& normalizer,
                                               unsigned long long* count, T* grad_input,
                                               cudaStream_t stream) {
  if (problem.rows == 0) return cudaSuccess;
  const bool mean = problem.reduction == FocalReduction::kMean;
  if (mean) {
    const cudaError_t err = launch_count_rows(labels, problem, /*sigmoid=*/false, count, stream);
    if (err != cudaSuccess) return err;
  }
  softmax_grad_kernel<T><<<grid_for(problem.rows, kThreads), kThreads, 0, stream>>>(
      grad, logits, labels, problem, normalizer, mean ? count : nullptr, grad_input);
  return cudaGetLastError();
}

#define RF_INSTANTIATE(T)                                                                     \
  template cudaError_t launch_sigmoid_focal_loss_forward<T>(                                  \
      const T*, const compute_t<T>*, const int64_t*, const FocalProblem&,                     \
      const FocalNormalizer&, void*, compute_t<T>*, cudaStream_t);                            \
  template cudaError_t launch_softmax_focal_loss_forward<T>(                                  \
      const T*, const int64_t*, const FocalProblem&, const FocalNormalizer&, void*,           \
      compute_t<T>*, cudaStream_t);                                                           \
  template cudaError_t launch_sigmoid_focal_loss_backward<T>(                                 \
      const compute_t<T>*, const T*, const compute_t<T>*, const int64_t*, const FocalProblem&, \
      const FocalNormalizer&, unsigned long long*, T*, cudaStream_t);                         \
  template cudaError_t launch_softmax_focal_loss_backward<T>(                                 \
      const compute_t<T>*, const T*, const int64_t*, const FocalProblem&,                     \
      const FocalNormalizer&, unsigned long long*, T*, cudaStream_t);
RF_FOR_EACH_FLOATING_TYPE(RF_INSTANTIATE)
#undef RF_INSTANTIATE

}  // namespace cuda
}  // namespace retinaface
