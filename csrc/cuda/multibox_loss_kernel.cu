// multibox_loss on CUDA: biubug6's MultiBoxLoss in three forward kernels and
// two backward kernels, none of which needs the host (CUDA-graph capturable).
//
// Forward (matching ran before, through the dispatcher):
//   1. prior_terms_kernel, a block per (image, tile of priors): per prior the
//      log-sum-exp of conf; background priors get their mining rank key, the
//      positives their cross-entropy and smooth L1 terms with the targets
//      encoded on the fly (common/box_math.h). Per-block partial sums.
//      The rank is the CPU kernel's (cpu/multibox_loss.cpp): with two
//      classes the logit difference conf[1] - conf[0], whose softplus is the
//      mining loss, so CPU and GPU rank exactly the same values; with more
//      classes the mining loss itself.
//   2. select_negatives_kernel, a block per image: k from the image's
//      positive count, the block radix select of hard_negative_select.cuh on
//      the keys, -2 written to the selected unused priors, and the sum of
//      their mining loss (= their cross-entropy, target class 0; recovered
//      from the key, through a softplus for two classes).
//   3. finalize_kernel, one block: the partials summed in a fixed order, N and
//      N1 counted, the losses divided on the device.
// No float atomics anywhere: the result does not depend on scheduling.
//
// Backward: count_positives_kernel recounts N and N1 from prior_assignment
// (integer atomics: exact), then gradient_kernel writes every gradient
// element once, zeros outside the positives and hard negatives.
#include <cmath>

#include "common/box_math.h"
#include "common/hard_negative.h"
#include "common/two_class_softmax.h"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_utils.cuh"
#include "cuda/hard_negative_select.cuh"
#include "cuda/multibox_loss_kernel.h"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPriorsPerThread = 4;
constexpr int kTile = kThreads * kPriorsPerThread;  // priors per block
constexpr int64_t kUnusedPrior = -1;
constexpr int64_t kHardNegative = -2;
// biubug6 sets conf_t[pos] = 1 whatever the label (1 with landmarks, -1 without).
constexpr int kFaceClass = 1;

struct LossPartial {
  double loc, conf, landm;
  long long num_pos, num_landm;
};

template <typename T>
using key_t = decltype(selection_key(loss_t<T>(0)));

// log/log1p of a float evaluated in double and rounded once, as exp_rounded
// (common/two_class_softmax.h): the correctly rounded value except in
// astronomically rare cases, so the mining losses agree with the CPU's (glibc)
// to the last bit as often as possible; hard negative selection compares them
// exactly.
__device__ __forceinline__ float log_rn(float x) { return static_cast<float>(log(static_cast<double>(x))); }
__device__ __forceinline__ double log_rn(double x) { return log(x); }
__device__ __forceinline__ float log1p_rn(float x) { return static_cast<float>(log1p(static_cast<double>(x))); }
__device__ __forceinline__ double log1p_rn(double x) { return log1p(x); }

// The two-class mining loss from the rank d = conf[1] - conf[0], in the CPU
// kernel's order of operations (cpu/multibox_loss.cpp: TwoClassMining).
template <typename Acc>
__device__ __forceinline__ Acc softplus_of_rank(Acc d) {
  return (d < Acc(0) ? Acc(0) : d) + log1p_rn(exp_rounded(-rf_abs(d)));
}

// logsumexp over the classes of one prior, in the CPU kernel's order of
// operations (cpu/multibox_loss.cpp: log_sum_exp).
template <typename Acc, typename T>
__device__ __forceinline__ Acc log_sum_exp(const T* x, int num_classes) {
  if (num_classes == 2) {
    const Acc a = to_compute(x[0]), b = to_compute(x[1]);
    return nan_max(a, b) + log1p_rn(exp_rounded(-rf_abs(a - b)));
  }
  Acc m = to_compute(x[0]);
  for (int c = 1; c < num_classes; ++c) m = nan_max(m, static_cast<Acc>(to_compute(x[c])));
  Acc sum = 0;
  for (int c = 0; c < num_classes; ++c) sum += exp_rounded(static_cast<Acc>(to_compute(x[c])) - m);
  return m + log_rn(sum);
}

// block_sum_in_order (cuda/block_reduce.cuh) for this file's kThreads-thread blocks.
template <typename V>
__device__ __forceinline__ V block_sum(V value, V* warp_sums) {
  return block_sum_in_order<kThreads>(value, warp_sums);
}

// ------------------------------------------------------------------ forward

template <typename T>
__global__ void __launch_bounds__(kThreads)
    prior_terms_kernel(const T* __restrict__ loc, const T* __restrict__ conf,
                       const T* __restrict__ landms, const loss_t<T>* __restrict__ priors,
                       const BoxT<loss_t<T>>* __restrict__ gt_boxes,
                       const loss_t<T>* __restrict__ gt_landms,
                       const loss_t<T>* __restrict__ gt_labels, int num_priors, int num_classes,
                       int max_gt, int tiles_per_image, loss_t<T> var0, loss_t<T> var1,
                       int64_t* __restrict__ assignment, key_t<T>* __restrict__ keys,
                       LossPartial* __restrict__ partials) {
  using Acc = loss_t<T>;
  __shared__ double double_sums[kThreads / 32];
  __shared__ long long count_sums[kThreads / 32];
  const int b = static_cast<int>(blockIdx.x / tiles_per_image);
  const int tile = static_cast<int>(blockIdx.x % tiles_per_image);
  double sum_loc = 0, sum_conf = 0, sum_landm = 0;
  long long num_pos = 0, num_landm = 0;
  for (int j = 0; j < kPriorsPerThread; ++j) {
    const int i = tile * kTile + j * kThreads + static_cast<int>(threadIdx.x);
    if (i >= num_priors) break;
    const int64_t row = static_cast<int64_t>(b) * num_priors + i;
    const T* x = conf + row * num_classes;
    const int64_t g = assignment[row];
    const int64_t face = static_cast<int64_t>(b) * max_gt + g;
    // g < max_gt always holds for match()'s output; the test keeps a corrupt
    // index from reading out of bounds.
    const Acc label = (g >= 0 && g < max_gt) ? gt_labels[face] : Acc(0);
    if (!(label != Acc(0))) {
      // Background (unmatched, or matched to a label-0 box): a mining
      // candidate with target class 0.
      if (g != kUnusedPrior) assignment[row] = kUnusedPrior;
      // Two classes need no log-sum-exp here (the rank is the difference).
      keys[row] = selection_key(
          num_classes == 2
              ? static_cast<Acc>(static_cast<Acc>(to_compute(x[1])) - static_cast<Acc>(to_compute(x[0])))
              : static_cast<Acc>(log_sum_exp<Acc>(x, num_classes) - static_cast<Acc>(to_compute(x[0]))));
      continue;
    }
    // biubug6 zeroes positives before mining: a loss of 0 is a rank of -inf
    // for two classes.
    keys[row] = selection_key(num_classes == 2 ? static_cast<Acc>(-INFINITY) : Acc(0));
    ++num_pos;
    sum_conf += static_cast<double>(log_sum_exp<Acc>(x, num_classes) -
                                    static_cast<Acc>(to_compute(x[kFaceClass])));

    const Acc* p = priors + 4 * static_cast<int64_t>(i);
    Acc target[10];
    encode_box(gt_boxes[face], p[0], p[1], p[2], p[3], var0, var1, target);
    const T* l = loc + row * 4;
    for (int d = 0; d < 4; ++d) {
      sum_loc += static_cast<double>(smooth_l1(static_cast<Acc>(to_compute(l[d])) - target[d]));
    }
    if (label > Acc(0)) {  // -1 marks a face without landmarks
      ++num_landm;
      encode_landmarks(gt_landms + face * 10, p[0], p[1], p[2], p[3], var0, target);
      const T* lm = landms + row * 10;
      for (int d = 0; d < 10; ++d) {
        sum_landm += static_cast<double>(smooth_l1(static_cast<Acc>(to_compute(lm[d])) - target[d]));
      }
    }
  }
  sum_loc = block_sum(sum_loc, double_sums);
  sum_conf = block_sum(sum_conf, double_sums);
  sum_landm = block_sum(sum_landm, double_sums);
  num_pos = block_sum(num_pos, count_sums);
  num_landm = block_sum(num_landm, count_sums);
  if (threadIdx.x == 0) partials[blockIdx.x] = {sum_loc, sum_conf, sum_landm, num_pos, num_landm};
}

template <typename Key>
__global__ void __launch_bounds__(kSelectThreads)
    select_negatives_kernel(const Key* __restrict__ keys, const LossPartial* __restrict__ partials,
                            int num_priors, int num_classes, int tiles_per_image,
                            int64_t neg_pos_ratio, int64_t* __restrict__ assignment,
                            double* __restrict__ negative_loss) {
  __shared__ SelectShared<Key> shared;
  __shared__ double warp_sums[kSelectWarps];
  const int b = static_cast<int>(blockIdx.x);
  if (threadIdx.x == 0) {
    long long num_pos = 0;
    for (int t = 0; t < tiles_per_image; ++t) {
      num_pos += partials[static_cast<int64_t>(b) * tiles_per_image + t].num_pos;
    }
    shared.k = num_hard_negatives(num_pos, neg_pos_ratio, num_priors);
  }
  __syncthreads();
  const int64_t k = shared.k;
  const int64_t offset = static_cast<int64_t>(b) * num_priors;
  const Key* image_keys = keys + offset;
  int64_t* assign = assignment + offset;
  double own_sum = 0;
  block_select_top_k<Key>(
      [&](int i) { return image_keys[i]; }, num_priors, k, shared,
      [&](int i, Key key, bool selected) {
        // A positive can rank among the top k only when k is close to P; it
        // then stays a positive (biubug6 takes the union pos | neg).
        if (selected && assign[i] < 0) {
          assign[i] = kHardNegative;
          const auto rank = selection_key_value(key);
          own_sum += static_cast<double>(num_classes == 2 ? softplus_of_rank(rank) : rank);
        }
      });
  // The select's block size: reduce with all its threads.
  const double total = block_sum_in_order<kSelectThreads>(own_sum, warp_sums);
  if (threadIdx.x == 0) negative_loss[b] = total;
}

template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const LossPartial* __restrict__ partials, int64_t num_partials,
                    const double* __restrict__ negative_loss, int batch, Acc* loss_l, Acc* loss_c,
                    Acc* loss_landm) {
  __shared__ double double_sums[kThreads / 32];
  __shared__ long long count_sums[kThreads / 32];
  double sum_loc = 0, sum_conf = 0, sum_landm = 0;
  long long num_pos = 0, num_landm = 0;
  for (int64_t j = threadIdx.x; j < num_partials; j += kThreads) {
    const LossPartial p = partials[j];
    sum_loc += p.loc;
    sum_conf += p.conf;
    sum_landm += p.landm;
    num_pos += p.num_pos;
    num_landm += p.num_landm;
  }
  for (int b = threadIdx.x; b < batch; b += kThreads) sum_conf += negative_loss[b];
  sum_loc = block_sum(sum_loc, double_sums);
  sum_conf = block_sum(sum_conf, double_sums);
  sum_landm = block_sum(sum_landm, double_sums);
  num_pos = block_sum(num_pos, count_sums);
  num_landm = block_sum(num_landm, count_sums);
  if (threadIdx.x == 0) {
    // N = max(#positives, 1), N1 = max(#label > 0, 1), divided in double as on the CPU.
    const double n = static_cast<double>(num_pos > 0 ? num_pos : 1);
    const double n1 = static_cast<double>(num_landm > 0 ? num_landm : 1);
    *loss_l = static_cast<Acc>(sum_loc / n);
    *loss_c = static_cast<Acc>(sum_conf / n);
    *loss_landm = static_cast<Acc>(sum_landm / n1);
  }
}

// Scratch layout: partials, then the per-image negative losses, then the keys.
struct ForwardWorkspace {
  LossPartial* partials;
  double* negative_loss;
  void* keys;
};

int64_t tiles_per_image(int64_t num_priors) { return ceil_div(num_priors, kTile); }

size_t align8(size_t bytes) { return (bytes + 7) / 8 * 8; }

ForwardWorkspace carve_workspace(void* base, const LossSizes& s) {
  char* p = static_cast<char*>(base);
  ForwardWorkspace w;
  w.partials = reinterpret_cast<LossPartial*>(p);
  p += align8(sizeof(LossPartial) * static_cast<size_t>(s.batch * tiles_per_image(s.num_priors)));
  w.negative_loss = reinterpret_cast<double*>(p);
  p += align8(sizeof(double) * static_cast<size_t>(s.batch));
  w.keys = p;
  return w;
}

// ----------------------------------------------------------------- backward

__device__ __forceinline__ double read_scalar(const void* data, ScalarKind kind) {
  switch (kind) {
    case ScalarKind::kFloat64: return *static_cast<const double*>(data);
    case ScalarKind::kFloat16: return static_cast<double>(__half2float(*static_cast<const __half*>(data)));
    case ScalarKind::kBFloat16:
      return static_cast<double>(__bfloat162float(*static_cast<const __nv_bfloat16*>(data)));
    default: return static_cast<double>(*static_cast<const float*>(data));
  }
}

template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    count_positives_kernel(const int64_t* __restrict__ assignment,
                           const Acc* __restrict__ gt_labels, int num_priors, int max_gt,
                           int tiles_per_image, unsigned long long* __restrict__ counts) {
  __shared__ long long count_sums[kThreads / 32];
  const int b = static_cast<int>(blockIdx.x / tiles_per_image);
  const int tile = static_cast<int>(blockIdx.x % tiles_per_image);
  long long num_pos = 0, num_landm = 0;
  for (int j = 0; j < kPriorsPerThread; ++j) {
    const int i = tile * kTile + j * kThreads + static_cast<int>(threadIdx.x);
    if (i >= num_priors) break;
    const int64_t g = assignment[static_cast<int64_t>(b) * num_priors + i];
    if (g >= 0 && g < max_gt) {
      ++num_pos;
      num_landm += gt_labels[static_cast<int64_t>(b) * max_gt + g] > Acc(0) ? 1 : 0;
    }
  }
  num_pos = block_sum(num_pos, count_sums);
  num_landm = block_sum(num_landm, count_sums);
  // Integer atomics: exact, so the order does not matter.
  if (threadIdx.x == 0) {
    if (num_pos) atomicAdd(&counts[0], static_cast<unsigned long long>(num_pos));
    if (num_landm) atomicAdd(&counts[1], static_cast<unsigned long long>(num_landm));
  }
}

template <typename T>
__device__ __forceinline__ void fill_zeros(T* out, int n) {
  for (int d = 0; d < n; ++d) out[d] = from_compute<T>(loss_t<T>(0));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gradient_kernel(LossGrads grads, const T* __restrict__ loc, const T* __restrict__ conf,
                    const T* __restrict__ landms, const loss_t<T>* __restrict__ priors,
                    const BoxT<loss_t<T>>* __restrict__ gt_boxes,
                    const loss_t<T>* __restrict__ gt_landms,
                    const loss_t<T>* __restrict__ gt_labels,
                    const int64_t* __restrict__ assignment, int64_t num_rows, int num_priors,
                    int num_classes, int max_gt, loss_t<T> var0, loss_t<T> var1,
                    const unsigned long long* __restrict__ counts, T* __restrict__ d_loc,
                    T* __restrict__ d_conf, T* __restrict__ d_landms) {
  using Acc = loss_t<T>;
  __shared__ Acc scales[3];
  if (threadIdx.x == 0) {
    // grad / N in double, then rounded, as the CPU kernel does.
    const double n = static_cast<double>(counts[0] > 0 ? counts[0] : 1);
    const double n1 = static_cast<double>(counts[1] > 0 ? counts[1] : 1);
    scales[0] = static_cast<Acc>(read_scalar(grads.data[0], grads.kind[0]) / n);
    scales[1] = static_cast<Acc>(read_scalar(grads.data[1], grads.kind[1]) / n);
    scales[2] = static_cast<Acc>(read_scalar(grads.data[2], grads.kind[2]) / n1);
  }
  __syncthreads();
  const Acc scale_l = scales[0], scale_c = scales[1], scale_landm = scales[2];

  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; row < num_rows;
       row += stride) {
    const int64_t g = assignment[row];
    T* dl = d_loc + row * 4;
    T* dc = d_conf + row * num_classes;
    T* dlm = d_landms + row * 10;
    // Anything but a positive or a hard negative gets no gradient (the CPU
    // rejects out-of-range values, which the device cannot report).
    if (g < kHardNegative || g == kUnusedPrior || g >= max_gt) {
      fill_zeros(dl, 4);
      fill_zeros(dc, num_classes);
      fill_zeros(dlm, 10);
      continue;
    }
    // Cross-entropy: d/dx_c = softmax_c - [c == target], times grad_c / N.
    const T* x = conf + row * num_classes;
    const int target = g >= 0 ? kFaceClass : 0;
    if (num_classes == 2) {
      // One exp, in the CPU kernel's formula (common/two_class_softmax.h):
      // the same gradient bit for bit.
      const Acc x0 = to_compute(x[0]), x1 = to_compute(x[1]);
      Acc p0, p1;
      two_class_softmax(x0, x1, &p0, &p1);
      dc[0] = from_compute<T>((p0 - Acc(target == 0 ? 1 : 0)) * scale_c);
      dc[1] = from_compute<T>((p1 - Acc(target == 1 ? 1 : 0)) * scale_c);
    } else {
      const Acc lse = log_sum_exp<Acc>(x, num_classes);
      for (int c = 0; c < num_classes; ++c) {
        const Acc softmax = exp_rounded(static_cast<Acc>(to_compute(x[c])) - lse);
        dc[c] = from_compute<T>((softmax - Acc(c == target ? 1 : 0)) * scale_c);
      }
    }
    if (g < 0) {  // hard negative: confidence only
      fill_zeros(dl, 4);
      fill_zeros(dlm, 10);
      continue;
    }
    const int64_t b = row / num_priors;
    const int64_t i = row - b * num_priors;
    const int64_t face = b * max_gt + g;
    const Acc* p = priors + 4 * i;
    Acc offsets[10];
    encode_box(gt_boxes[face], p[0], p[1], p[2], p[3], var0, var1, offsets);
    const T* l = loc + row * 4;
    for (int d = 0; d < 4; ++d) {
      dl[d] = from_compute<T>(smooth_l1_grad(static_cast<Acc>(to_compute(l[d])) - offsets[d]) * scale_l);
    }
    if (gt_labels[face] > Acc(0)) {
      encode_landmarks(gt_landms + face * 10, p[0], p[1], p[2], p[3], var0, offsets);
      const T* lm = landms + row * 10;
      for (int d = 0; d < 10; ++d) {
        dlm[d] = from_compute<T>(smooth_l1_grad(static_cast<Acc>(to_compute(lm[d])) - offsets[d]) *
                                 scale_landm);
      }
    } else {
      fill_zeros(dlm, 10);
    }
  }
}

}  // namespace

size_t multibox_loss_forward_workspace_bytes(const LossSizes& s, bool double_precision) {
  const size_t key_bytes = double_precision ? sizeof(uint64_t) : sizeof(uint32_t);
  return align8(sizeof(LossPartial) * static_cast<size_t>(s.batch * tiles_per_image(s.num_priors))) +
         align8(sizeof(double) * static_cast<size_t>(s.batch)) +
         key_bytes * static_cast<size_t>(s.batch * s.num_priors);
}

template <typename T>
cudaError_t launch_multibox_loss_forward(const T* loc, const T* conf, const T* landms,
                                         const loss_t<T>* priors, const loss_t<T>* gt_boxes,
                                         const loss_t<T>* gt_landms, const loss_t<T>* gt_labels,
                                         const LossSizes& sizes, int64_t neg_pos_ratio,
                                         double var0, double var1, int64_t* assignment,
                                         void* workspace, loss_t<T>* loss_l, loss_t<T>* loss_c,
                                         loss_t<T>* loss_landm, cudaStream_t stream) {
  static_assert(sizeof(loss_t<T>) == sizeof(compute_t<T>), "loss type is the compute type");
  using Acc = loss_t<T>;
  using Key = key_t<T>;
  if (sizes.batch <= 0 || sizes.num_priors <= 0) return cudaSuccess;
  const int64_t tiles = tiles_per_image(sizes.num_priors);
  const int64_t blocks = sizes.batch * tiles;
  const ForwardWorkspace w = carve_workspace(workspace, sizes);
  Key* keys = static_cast<Key*>(w.keys);

  prior_terms_kernel<T><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      loc, conf, landms, priors, reinterpret_cast<const BoxT<Acc>*>(gt_boxes), gt_landms,
      gt_labels, static_cast<int>(sizes.num_priors), static_cast<int>(sizes.num_classes),
      static_cast<int>(sizes.max_gt), static_cast<int>(tiles), static_cast<Acc>(var0),
      static_cast<Acc>(var1), assignment, keys, w.partials);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  select_negatives_kernel<Key><<<static_cast<unsigned int>(sizes.batch), kSelectThreads, 0, stream>>>(
      keys, w.partials, static_cast<int>(sizes.num_priors), static_cast<int>(sizes.num_classes),
      static_cast<int>(tiles), neg_pos_ratio, assignment, w.negative_loss);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  finalize_kernel<Acc><<<1, kThreads, 0, stream>>>(w.partials, blocks, w.negative_loss,
                                                    static_cast<int>(sizes.batch), loss_l, loss_c,
                                                    loss_landm);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_multibox_loss_backward(const LossGrads& grads, const T* loc, const T* conf,
                                          const T* landms, const loss_t<T>* priors,
                                          const loss_t<T>* gt_boxes, const loss_t<T>* gt_landms,
                                          const loss_t<T>* gt_labels, const int64_t* assignment,
                                          const LossSizes& sizes, double var0, double var1,
                                          unsigned long long* counts, T* d_loc, T* d_conf,
                                          T* d_landms, cudaStream_t stream) {
  using Acc = loss_t<T>;
  if (sizes.batch <= 0 || sizes.num_priors <= 0) return cudaSuccess;
  const int64_t tiles = tiles_per_image(sizes.num_priors);
  cudaError_t err = cudaMemsetAsync(counts, 0, 2 * sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;
  count_positives_kernel<Acc><<<static_cast<unsigned int>(sizes.batch * tiles), kThreads, 0, stream>>>(
      assignment, gt_labels, static_cast<int>(sizes.num_priors), static_cast<int>(sizes.max_gt),
      static_cast<int>(tiles), counts);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const int64_t rows = sizes.batch * sizes.num_priors;
  gradient_kernel<T><<<grid_for(rows, kThreads), kThreads, 0, stream>>>(
      grads, loc, conf, landms, priors, reinterpret_cast<const BoxT<Acc>*>(gt_boxes), gt_landms,
      gt_labels, assignment, rows, static_cast<int>(sizes.num_priors),
      static_cast<int>(sizes.num_classes), static_cast<int>(sizes.max_gt), static_cast<Acc>(var0),
      static_cast<Acc>(var1), counts, d_loc, d_conf, d_landms);
  return cudaGetLastError();
}

#define RF_INSTANTIATE(T)                                                                         \
  template cudaError_t launch_multibox_loss_forward<T>(                                           \
      const T*, const T*, const T*, const loss_t<T>*, const loss_t<T>*, const loss_t<T>*,         \
      const loss_t<T>*, const LossSizes&, int64_t, double, double, int64_t*, void*, loss_t<T>*,  \
      loss_t<T>*, loss_t<T>*, cudaStream_t);                                                      \
  template cudaError_t launch_multibox_loss_backward<T>(                                          \
      const LossGrads&, const T*, const T*, const T*, const loss_t<T>*, const loss_t<T>*,         \
      const loss_t<T>*, const loss_t<T>*, const int64_t*, const LossSizes&, double, double,       \
      unsigned long long*, T*, T*, T*, cudaStream_t);
RF_FOR_EACH_FLOATING_TYPE(RF_INSTANTIATE)
#undef RF_INSTANTIATE

}  // namespace cuda
}  // namespace retinaface
