// sigmoid_focal_loss / softmax_focal_loss and their backward ops on the CPU.
//
// The maths (stable sigmoid / log-softmax, finite gradients for gamma < 1)
// is in common/focal_math.h, shared with the CUDA kernels. Here: the passes.
// Each element's (sigmoid) or row's (softmax) loss or gradient is computed
// in one loop over the data, with the transcendentals of cpu/vector_math.h
// (polynomial exp / log / log1p / pow on the float's bits), so the float32
// loops vectorise; RF_VECTOR_CLONES compiles them for AVX-512, AVX2 and the
// baseline ISA. float64 runs the same loops with libm (scalar). Half inputs
// are converted to float32 first. The loops:
// - sigmoid, float targets: per element, straight from inputs and targets
//   to the loss or the gradient.
// - sigmoid, integer labels: per block of rows (about kBlock elements, in L1)
//   the one-hot targets are written (-1 on ignored rows, masked to 0 in the
//   loop), then the same element loop.
// - two-class softmax: per row, vectorised over rows: z = x_y - x_other and
//   the sigmoid maths of z (focal_math.h binary_softmax_*), the two gradient
//   entries written at once.
// - general softmax: per row the max and the sum of exp(x - max) over the
//   other classes (16 lanes, the row in L1; the backward keeps the
//   exponentials in the gradient's row), then per block of rows, vectorised
//   over rows, -log p_t, the modulator and the loss or gradient factor, then
//   (backward) the row's exponentials scaled in place.
//
// Reductions sum fixed chunks of rows (in double, per block with eight
// interleaved accumulators, blocks in order), then the chunks in order: the
// result does not depend on the number of threads. Label values are
// validated here (the CUDA kernels cannot report them without a host sync
// and ignore invalid labels instead).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "common/focal_loss_checks.h"
#include "common/focal_math.h"
#include "cpu/vector_math.h"

namespace retinaface {
namespace {

// About this many elements per task and per partial sum.
constexpr int64_t kChunkElements = 16384;
// About this many elements per block of a chunk: its scratch (one-hot
// targets, losses, a backward's rows of exponentials) stays in L1.
constexpr int64_t kBlock = 1024;
constexpr int64_t kSoftmaxBlock = 4096;

struct Partial {
  double sum = 0;
  int64_t count = 0;  // elements (sigmoid) or rows (softmax) that count for 'mean'
};

int64_t rows_per_chunk(int64_t classes) {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(classes, 1));
}

// fn(first_row, end_row) over the fixed chunks of [0, rows), on the threads.
// Fixed chunks (and blocks inside them) also fix where each element falls
// in the vector loops (main body or remainder, whose roundings may differ in
// the last bit): results do not depend on the thread count.
template <typename F>
void for_each_chunk(int64_t rows, int64_t chunk_rows, const F& fn) {
  const int64_t chunks = rows == 0 ? 0 : (rows + chunk_rows - 1) / chunk_rows;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      fn(c * chunk_rows, std::min(rows, (c + 1) * chunk_rows));
    }
  });
}

// fn(first_row, end_row) -> Partial over fixed chunks of [0, rows), summed in
// chunk order (deterministic whatever the thread count).
template <typename F>
Partial reduce_chunks(int64_t rows, int64_t chunk_rows, const F& fn) {
  const int64_t chunks = rows == 0 ? 0 : (rows + chunk_rows - 1) / chunk_rows;
  std::vector<Partial> partials(chunks);
  for_each_chunk(rows, chunk_rows, [&](int64_t r0, int64_t r1) {
    partials[r0 / chunk_rows] = fn(r0, r1);
  });
  Partial total;
  for (const Partial& p : partials) {
    total.sum += p.sum;
    total.count += p.count;
  }
  return total;
}

// Sum of v[0, n) in double: eight interleaved accumulators (so the adds do
// not wait on each other and vectorise), combined in a fixed order.
template <typename T>
RF_ALWAYS_INLINE double ordered_sum_impl(const T* v, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(v[i + k]);
  }
  for (int k = 0; i < n; ++i, ++k) acc[k] += static_cast<double>(v[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}
RF_VECTOR_CLONES double ordered_sum(const float* v, int64_t n) { return ordered_sum_impl(v, n); }
double ordered_sum(const double* v, int64_t n) { return ordered_sum_impl(v, n); }

double normalizer_value(const std::optional<at::Tensor>& normalizer) {
  // The CPU kernel only sees CPU tensors: reading the value is no device sync.
  return normalizer.has_value() ? normalizer->item<double>() : 1.0;
}

at::Tensor reduced_loss(const Partial& total, FocalReduction reduction,
                        const std::optional<at::Tensor>& normalizer, const at::Tensor& input) {
  const double divisor = reduction == FocalReduction::kMean
                             ? static_cast<double>(std::max<int64_t>(total.count, 1))
                             : normalizer_value(normalizer);
  return at::scalar_tensor(total.sum / divisor, input.options().dtype(focal_loss_dtype(input)));
}

// The gradient in the compute type -> the input's dtype (a no-op for
// float32/float64; a vectorised conversion for half inputs).
at::Tensor in_input_dtype(const at::Tensor& grad, const at::Tensor& input) {
  return grad.to(input.scalar_type());
}

// ------------------------------------------------------- per-element maths

// gamma, resolved once per call into the loops' template argument:
// focal_modulator's special cases (exact products) and the general pow.
enum class Gamma { kZero, kOne, kTwo, kOther };

Gamma gamma_kind(double gamma) {
  if (gamma == 0) return Gamma::kZero;
  if (gamma == 1) return Gamma::kOne;
  if (gamma == 2) return Gamma::kTwo;
  return Gamma::kOther;
}

// One loop template instantiated for each gamma kind.
#define RF_FOR_GAMMA(kind, ...)                                    \
  switch (kind) {                                                  \
    case Gamma::kZero: {                                           \
      constexpr Gamma G = Gamma::kZero;                            \
      __VA_ARGS__;                                                 \
    } break;                                                       \
    case Gamma::kOne: {                                            \
      constexpr Gamma G = Gamma::kOne;                             \
      __VA_ARGS__;                                                 \
    } break;                                                       \
    case Gamma::kTwo: {                                            \
      constexpr Gamma G = Gamma::kTwo;                             \
      __VA_ARGS__;                                                 \
    } break;                                                       \
    case Gamma::kOther: {                                          \
      constexpr Gamma G = Gamma::kOther;                           \
      __VA_ARGS__;                                                 \
    } break;                                                       \
  }

// focal_modulator(m, gamma) for m = 1 - p_t in [0, 1]: the same values
// (m * m, m, 1 = 0^0 for cross-entropy), pow as exp(gamma log m).
template <Gamma G, typename T>
RF_ALWAYS_INLINE T modulator(T m, T gamma) {
  if constexpr (G == Gamma::kTwo) {
    return m * m;
  } else if constexpr (G == Gamma::kOne) {
    return m;
  } else if constexpr (G == Gamma::kZero) {
    return T(1);
  } else {
    return vec::pow_unit(m, gamma);
  }
}

// The call's alpha weights and gamma in the compute type.
template <typename T>
struct FocalParams {
  FocalAlpha<T> alpha;
  T gamma;
  Gamma kind;
};

template <typename T>
FocalParams<T> focal_params(double alpha, double gamma) {
  return {focal_alpha(static_cast<T>(alpha)), static_cast<T>(gamma), gamma_kind(gamma)};
}

// The stable sigmoid terms of logit x against target t.
template <typename T>
RF_ALWAYS_INLINE SigmoidFocalTerms<T> sigmoid_terms(T x, T t) {
  const T e = vec::exp(-rf_abs(x));
  return sigmoid_focal_terms(x, t, e, vec::log1p_unit(e));
}

// How a backward loop scales d loss / d x: by upstream[i] / divisor per
// element or row (reduction 'none'), or by one scale (a reduced loss).
template <typename T>
struct GradScale {
  const T* upstream;  // null: use scale
  T divisor, scale;
};

// ---------------------------------------------------------------- sigmoid

// out[i] = the loss of logit x[i] against target t[i]. kMasked: t[i] < 0
// marks an element of an ignored row (loss 0).
template <typename T, Gamma G, bool kMasked>
RF_ALWAYS_INLINE void sigmoid_losses_loop(const T* x, const T* t, int64_t n,
                                          const FocalParams<T>& p, T* out) {
  const FocalAlpha<T> alpha = p.alpha;
  const T gamma = p.gamma;
  for (int64_t i = 0; i < n; ++i) {
    const T target = kMasked ? vec::select(t[i] < T(0), T(0), t[i]) : t[i];
    const SigmoidFocalTerms<T> s = sigmoid_terms(x[i], target);
    const T loss = sigmoid_focal_loss_value(s, target, modulator<G>(s.m, gamma), alpha);
    out[i] = kMasked ? vec::select(t[i] < T(0), T(0), loss) : loss;
  }
}

// out[i] = d loss / d x[i] times the incoming gradient (per element, or the
// reduced loss's scale); 0 for masked elements.
template <typename T, Gamma G, bool kMasked, bool kPerElement>
RF_ALWAYS_INLINE void sigmoid_grads_loop(const T* x, const T* t, int64_t n,
                                         const FocalParams<T>& p, const GradScale<T>& g,
                                         T* out) {
  const FocalAlpha<T> alpha = p.alpha;
  const T gamma = p.gamma, divisor = g.divisor, scale = g.scale;
  const T* upstream = g.upstream;
  for (int64_t i = 0; i < n; ++i) {
    const T target = kMasked ? vec::select(t[i] < T(0), T(0), t[i]) : t[i];
    const SigmoidFocalTerms<T> s = sigmoid_terms(x[i], target);
    const T grad =
        sigmoid_focal_loss_grad(s, target, modulator<G>(s.m, gamma), alpha, gamma);
    // d(loss / divisor) = grad / divisor, rounded once as the reference's division does.
    const T v = kPerElement ? grad * (upstream[i] / divisor) : grad * scale;
    out[i] = kMasked ? vec::select(t[i] < T(0), T(0), v) : v;
  }
}

template <typename T>
RF_ALWAYS_INLINE void sigmoid_losses_any(const T* x, const T* t, int64_t n, bool masked,
                                         const FocalParams<T>& p, T* out) {
  RF_FOR_GAMMA(p.kind, masked ? sigmoid_losses_loop<T, G, true>(x, t, n, p, out)
                              : sigmoid_losses_loop<T, G, false>(x, t, n, p, out))
}
RF_VECTOR_CLONES void sigmoid_losses(const float* x, const float* t, int64_t n, bool masked,
                                     const FocalParams<float>& p, float* out) {
  sigmoid_losses_any(x, t, n, masked, p, out);
}
void sigmoid_losses(const double* x, const double* t, int64_t n, bool masked,
                    const FocalParams<double>& p, double* out) {
  sigmoid_losses_any(x, t, n, masked, p, out);
}

template <typename T>
RF_ALWAYS_INLINE void sigmoid_grads_any(const T* x, const T* t, int64_t n, bool masked,
                                        const FocalParams<T>& p, const GradScale<T>& g,
                                        T* out) {
  const bool per_element = g.upstream != nullptr;
  RF_FOR_GAMMA(p.kind,
               if (masked) {
                 per_element ? sigmoid_grads_loop<T, G, true, true>(x, t, n, p, g, out)
                             : sigmoid_grads_loop<T, G, true, false>(x, t, n, p, g, out);
               } else {
                 per_element ? sigmoid_grads_loop<T, G, false, true>(x, t, n, p, g, out)
                             : sigmoid_grads_loop<T, G, false, false>(x, t, n, p, g, out);
               })
}
RF_VECTOR_CLONES void sigmoid_grads(const float* x, const float* t, int64_t n, bool masked,
                                    const FocalParams<float>& p, const GradScale<float>& g,
                                    float* out) {
  sigmoid_grads_any(x, t, n, masked, p, g, out);
}
void sigmoid_grads(const double* x, const double* t, int64_t n, bool masked,
                   const FocalParams<double>& p, const GradScale<double>& g, double* out) {
  sigmoid_grads_any(x, t, n, masked, p, g, out);
}

// Everything a sigmoid pass reads, in the compute type, contiguous.
struct SigmoidData {
  FocalShape shape;
  at::Tensor x;        // the logits
  at::Tensor targets;  // float targets (compute type), or labels (int64)
  int64_t background_index, ignore_index;
};

SigmoidData sigmoid_data(const FocalShape& shape, const at::Tensor& inputs,
                         const at::Tensor& targets, int64_t background_index,
                         int64_t ignore_index) {
  const auto type = focal_loss_dtype(inputs);
  SigmoidData d;
  d.shape = shape;
  d.x = inputs.to(type).contiguous();
  d.targets = shape.labels ? targets.to(at::kLong).contiguous() : targets.to(type).contiguous();
  d.background_index = background_index;
  d.ignore_index = ignore_index;
  return d;
}

// One-hot targets of rows [r0, r1) into out ((r1 - r0) * classes values): 1
// at the label, 0 elsewhere and on background rows, -1 on ignored rows.
// -> the number of elements that count for 'mean'.
template <typename T>
int64_t fill_label_targets(const SigmoidData& d, int64_t r0, int64_t r1, const char* op, T* out) {
  const int64_t classes = d.shape.classes;
  const int64_t* labels = d.targets.data_ptr<int64_t>();
  int64_t counted = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t label = labels[r];
    T* row = out + (r - r0) * classes;
    if (label == d.ignore_index) {
      std::fill(row, row + classes, T(-1));
      continue;
    }
    std::fill(row, row + classes, T(0));
    counted += classes;
    if (label == d.background_index) continue;
    TORCH_CHECK(label >= 0 && label < classes, op, "(): targets must hold class indices in [0, ",
                classes, "), background_index ", d.background_index, " or ignore_index ",
                d.ignore_index, ", got ", label);
    row[label] = T(1);
  }
  return counted;
}

// fn(first_element, n, targets, masked) over rows [r0, r1) in blocks of about
// kBlock elements: the float targets themselves, or the block's one-hot
// targets from the labels. -> the elements that count for 'mean'.
template <typename T, typename F>
int64_t for_each_sigmoid_block(const SigmoidData& d, int64_t r0, int64_t r1, const char* op,
                               const F& fn) {
  const int64_t classes = d.shape.classes;
  const int64_t block_rows = std::max<int64_t>(1, kBlock / std::max<int64_t>(classes, 1));
  std::vector<T> one_hot(d.shape.labels ? std::min(block_rows, r1 - r0) * classes : 0);
  int64_t counted = 0;
  for (int64_t a = r0; a < r1; a += block_rows) {
    const int64_t b = std::min(r1, a + block_rows), n = (b - a) * classes;
    if (d.shape.labels) {
      counted += fill_label_targets(d, a, b, op, one_hot.data());
      fn(a * classes, n, static_cast<const T*>(one_hot.data()), true);
    } else {
      counted += n;
      fn(a * classes, n, static_cast<const T*>(d.targets.data_ptr<T>() + a * classes), false);
    }
  }
  return counted;
}

at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& inputs, const at::Tensor& targets,
                                  double alpha, double gamma, c10::string_view reduction_name,
                                  const std::optional<at::Tensor>& normalizer,
                                  int64_t background_index, int64_t ignore_index) {
  const char* op = "sigmoid_focal_loss";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape = check_sigmoid_focal_loss_args(op, inputs, targets, normalizer, alpha,
                                                         gamma, reduction, background_index,
                                                         ignore_index);
  const SigmoidData d = sigmoid_data(shape, inputs, targets, background_index, ignore_index);
  const int64_t chunk_rows = rows_per_chunk(shape.classes);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    using T = scalar_t;
    const FocalParams<T> p = focal_params<T>(alpha, gamma);
    const T* x = d.x.data_ptr<T>();
    if (reduction == FocalReduction::kNone) {
      out = at::empty(inputs.sizes(), d.x.options());
      T* o = out.data_ptr<T>();
      const bool divide = normalizer.has_value();
      const T divisor = static_cast<T>(normalizer_value(normalizer));
      for_each_chunk(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
        for_each_sigmoid_block<T>(d, r0, r1, op, [&](int64_t first, int64_t n, const T* t,
                                                     bool masked) {
          T* dst = o + first;
          sigmoid_losses(x + first, t, n, masked, p, dst);
          if (divide) {
            for (int64_t i = 0; i < n; ++i) dst[i] = dst[i] / divisor;
          }
        });
      });
      return;
    }
    const Partial total = reduce_chunks(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      T losses[kBlock];
      std::vector<T> wide;  // a row of more than kBlock classes
      Partial part;
      part.count = for_each_sigmoid_block<T>(d, r0, r1, op, [&](int64_t first, int64_t n,
                                                               const T* t, bool masked) {
        T* buf = losses;
        if (n > kBlock) {
          wide.resize(n);
          buf = wide.data();
        }
        sigmoid_losses(x + first, t, n, masked, p, buf);
        part.sum += ordered_sum(buf, n);
      });
      return part;
    });
    out = reduced_loss(total, reduction, normalizer, inputs);
  });
  return out;
}

at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& inputs,
                                           const at::Tensor& targets, double alpha, double gamma,
                                           c10::string_view reduction_name,
                                           const std::optional<at::Tensor>& normalizer,
                                           int64_t background_index, int64_t ignore_index) {
  const char* op = "sigmoid_focal_loss_backward";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape = check_sigmoid_focal_loss_args(op, inputs, targets, normalizer, alpha,
                                                         gamma, reduction, background_index,
                                                         ignore_index);
  check_focal_grad(op, grad, inputs.sizes(), reduction, "inputs", inputs);
  const SigmoidData d = sigmoid_data(shape, inputs, targets, background_index, ignore_index);
  const int64_t chunk_rows = rows_per_chunk(shape.classes);
  const auto upstream = grad.to(d.x.scalar_type()).contiguous();
  double divisor = normalizer_value(normalizer);
  if (reduction == FocalReduction::kMean) {
    // What the forward divided by: the elements that count (the labels are
    // validated by the gradient pass).
    int64_t counted = shape.rows * shape.classes;
    if (shape.labels) {
      const int64_t* labels = d.targets.data_ptr<int64_t>();
      int64_t ignored = 0;
      for (int64_t r = 0; r < shape.rows; ++r) ignored += labels[r] == ignore_index;
      counted = (shape.rows - ignored) * shape.classes;
    }
    divisor = static_cast<double>(std::max<int64_t>(counted, 1));
  }
  auto grad_input = at::empty(inputs.sizes(), d.x.options());
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "sigmoid_focal_loss_backward_cpu", [&] {
    using T = scalar_t;
    const FocalParams<T> p = focal_params<T>(alpha, gamma);
    const T* x = d.x.data_ptr<T>();
    const T* g = upstream.data_ptr<T>();
    T* gi = grad_input.data_ptr<T>();
    const bool per_element = reduction == FocalReduction::kNone;
    const T divisor_t = static_cast<T>(divisor);
    // d(sum / divisor) = grad / divisor, rounded once as the reference's division does.
    const T scale = per_element ? T(0) : static_cast<T>(static_cast<double>(g[0]) / divisor);
    for_each_chunk(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      for_each_sigmoid_block<T>(d, r0, r1, op, [&](int64_t first, int64_t n, const T* t,
                                                   bool masked) {
        const GradScale<T> s{per_element ? g + first : nullptr, divisor_t, scale};
        sigmoid_grads(x + first, t, n, masked, p, s, gi + first);
      });
    });
  });
  return in_input_dtype(grad_input, inputs);
}

// ---------------------------------------------------------------- softmax

// Labels of rows [r0, r1) must be in [0, classes) or ignore_index. -> the
// rows that count (not ignored). The loop is branch-free (it vectorises);
// an invalid label is looked up only to report it.
int64_t check_softmax_labels(const int64_t* y, int64_t r0, int64_t r1, int64_t classes,
                             int64_t ignore_index, const char* op) {
  int64_t ignored = 0, invalid = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const bool ignore = y[r] == ignore_index;
    ignored += ignore;
    invalid += !ignore & (static_cast<uint64_t>(y[r]) >= static_cast<uint64_t>(classes));
  }
  if (invalid != 0) {
    for (int64_t r = r0; r < r1; ++r) {
      TORCH_CHECK(y[r] == ignore_index || (y[r] >= 0 && y[r] < classes), op,
                  "(): labels must be in [0, ", classes, ") or ignore_index ", ignore_index,
                  ", got ", y[r]);
    }
  }
  return (r1 - r0) - ignored;
}

// The labels of a block of rows as the softmax loops read them: the class,
// or -1 for an ignored row (labels validated before). 32-bit, so that the
// loops' comparisons vectorise on every ISA (SSE2 has no 64-bit compare).
void label_codes(const int64_t* y, int64_t n, int64_t ignore_index, int32_t* codes) {
  for (int64_t r = 0; r < n; ++r) {
    codes[r] = y[r] == ignore_index ? -1 : static_cast<int32_t>(y[r]);
  }
}

// Two classes: rows of (x_0, x_1) and label codes y (0, 1 or -1: ignored).
// z = x_y - x_other; the row is the sigmoid focal loss of z against target 1
// with the softmax's alpha_t (focal_math.h binary_softmax_*).
template <typename T>
RF_ALWAYS_INLINE T binary_logit(const T* x, bool label_one) {
  const T x0 = x[0], x1 = x[1];
  const T d = vec::select(x1 == x0, T(0), x1 - x0);  // logit_difference: inf - inf is 0 here
  return vec::select(label_one, d, -d);
}

template <typename T, Gamma G>
RF_ALWAYS_INLINE void binary_softmax_losses_loop(const T* x, const int32_t* y, int64_t n,
                                                 const FocalParams<T>& p, T* out) {
  const T alpha_pos = p.alpha.positive, alpha_neg = p.alpha.negative, gamma = p.gamma;
  for (int64_t r = 0; r < n; ++r) {
    const int32_t label = y[r];
    const T z = binary_logit(x + 2 * r, label == 1);
    const T alpha_t = vec::select(label == 0, alpha_neg, alpha_pos);
    const SigmoidFocalTerms<T> s = sigmoid_terms(z, T(1));
    const T loss = binary_softmax_focal_loss(s, modulator<G>(s.m, gamma), alpha_t);
    out[r] = vec::select(label < 0, T(0), loss);
  }
}

// gi: the rows' two gradient entries, d loss / d x_y = grad_z and d loss /
// d x_other = -grad_z (times the incoming gradient); 0 for ignored rows.
template <typename T, Gamma G, bool kPerRow>
RF_ALWAYS_INLINE void binary_softmax_grads_loop(const T* x, const int32_t* y, int64_t n,
                                                const FocalParams<T>& p, const GradScale<T>& g,
                                                T* gi) {
  const T alpha_pos = p.alpha.positive, alpha_neg = p.alpha.negative, gamma = p.gamma;
  const T divisor = g.divisor, scale = g.scale;
  const T* upstream = g.upstream;
  for (int64_t r = 0; r < n; ++r) {
    const int32_t label = y[r];
    const bool one = label == 1;
    const T z = binary_logit(x + 2 * r, one);
    const T alpha_t = vec::select(label == 0, alpha_neg, alpha_pos);
    const SigmoidFocalTerms<T> s = sigmoid_terms(z, T(1));
    const T grad_z = binary_softmax_focal_grad(s, modulator<G>(s.m, gamma), alpha_t, gamma);
    const T v = vec::select(label < 0, T(0),
                            grad_z * (kPerRow ? upstream[r] / divisor : scale));
    const T grad_1 = vec::select(one, v, -v);  // d / d x_1
    gi[2 * r] = -grad_1;
    gi[2 * r + 1] = grad_1;
  }
}

template <typename T>
RF_ALWAYS_INLINE void binary_softmax_losses_any(const T* x, const int32_t* y, int64_t n,
                                                const FocalParams<T>& p, T* out) {
  RF_FOR_GAMMA(p.kind, binary_softmax_losses_loop<T, G>(x, y, n, p, out))
}
RF_VECTOR_CLONES void binary_softmax_losses(const float* x, const int32_t* y, int64_t n,
                                            const FocalParams<float>& p, float* out) {
  binary_softmax_losses_any(x, y, n, p, out);
}
void binary_softmax_losses(const double* x, const int32_t* y, int64_t n,
                           const FocalParams<double>& p, double* out) {
  binary_softmax_losses_any(x, y, n, p, out);
}

template <typename T>
RF_ALWAYS_INLINE void binary_softmax_grads_any(const T* x, const int32_t* y, int64_t n,
                                               const FocalParams<T>& p, const GradScale<T>& g,
                                               T* gi) {
  RF_FOR_GAMMA(p.kind, g.upstream != nullptr
                           ? binary_softmax_grads_loop<T, G, true>(x, y, n, p, g, gi)
                           : binary_softmax_grads_loop<T, G, false>(x, y, n, p, g, gi))
}
RF_VECTOR_CLONES void binary_softmax_grads(const float* x, const int32_t* y, int64_t n,
                                           const FocalParams<float>& p, const GradScale<float>& g,
                                           float* gi) {
  binary_softmax_grads_any(x, y, n, p, g, gi);
}
void binary_softmax_grads(const double* x, const int32_t* y, int64_t n,
                          const FocalParams<double>& p, const GradScale<double>& g, double* gi) {
  binary_softmax_grads_any(x, y, n, p, g, gi);
}

// General softmax, step 1, per row of a block: the row max M, t = x_y - M,
// exp(x_c - M) into the row's exps (0 at y: the backward's gradient row, or
// a scratch row reused by every row of the forward) and their sum, the sum
// over the other classes. label: the row's class (any class for an ignored
// row). The max and the sum run on 16 lanes (GCC vector extensions, so they
// vectorise on every clone; the auto-vectoriser leaves such lane loops
// scalar once the exp loop sits next to them) and are combined in a fixed
// order. Class indices compare as 32-bit integers (classes < 2^31 is checked).
typedef float FloatLanes __attribute__((vector_size(64)));
constexpr int kLanes = sizeof(FloatLanes) / sizeof(float);

// v = p[0, kLanes) (unaligned), written in place: a function returning the
// vector type would change the ABI between the clones (-Wpsabi).
#define RF_LOAD_LANES(v, p) std::memcpy(&(v), (p), sizeof(FloatLanes))

RF_ALWAYS_INLINE float row_max(const float* x, int32_t classes) {
  FloatLanes m = FloatLanes{} - std::numeric_limits<float>::infinity();
  int32_t c = 0;
  for (; c + kLanes <= classes; c += kLanes) {
    FloatLanes v;
    RF_LOAD_LANES(v, x + c);
    m = v > m ? v : m;
  }
  float result = -std::numeric_limits<float>::infinity();
  for (int k = 0; k < kLanes; ++k) result = m[k] > result ? m[k] : result;
  for (; c < classes; ++c) result = x[c] > result ? x[c] : result;
  return result;
}
RF_ALWAYS_INLINE double row_max(const double* x, int32_t classes) {
  double result = -std::numeric_limits<double>::infinity();
  for (int32_t c = 0; c < classes; ++c) result = x[c] > result ? x[c] : result;
  return result;
}

RF_ALWAYS_INLINE float row_sum(const float* e, int32_t classes) {
  FloatLanes acc = FloatLanes{};
  int32_t c = 0;
  for (; c + kLanes <= classes; c += kLanes) {
    FloatLanes v;
    RF_LOAD_LANES(v, e + c);
    acc += v;
  }
  float tail = 0.0f;
  for (; c < classes; ++c) tail += e[c];
  float result = 0.0f;
  for (int k = 0; k < kLanes; ++k) result += acc[k];
  return result + tail;
}
RF_ALWAYS_INLINE double row_sum(const double* e, int32_t classes) {
  double result = 0.0;
  for (int32_t c = 0; c < classes; ++c) result += e[c];
  return result;
}

template <typename T>
RF_ALWAYS_INLINE void softmax_row_stats(const T* x, int32_t classes, int32_t label, T* exps,
                                        T& target_minus_max, T& sum_others) {
  const T m = row_max(x, classes);
  // logit_difference as a select: a logit equal to the maximum is 0 from it, also when
  // both are +inf (all -inf: every logit is the maximum).
  for (int32_t c = 0; c < classes; ++c) {
    exps[c] = vec::select(c == label, T(0), vec::exp(vec::select(x[c] == m, T(0), x[c] - m)));
  }
  sum_others = row_sum(exps, classes);
  target_minus_max = logit_difference(x[label], m);
}

// Row r's exponentials go to exps + r * exps_stride: the block's gradient
// rows (backward, stride = classes), or one scratch row (forward, stride 0).
template <typename T>
RF_ALWAYS_INLINE void softmax_block_stats_any(const T* x, int64_t rows, int64_t classes,
                                              const int32_t* labels, T* exps, int64_t exps_stride,
                                              T* tmm, T* others) {
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t label = labels[r] < 0 ? 0 : labels[r];
    softmax_row_stats<T>(x + r * classes, static_cast<int32_t>(classes), label,
                         exps + r * exps_stride, tmm[r], others[r]);
  }
}
RF_VECTOR_CLONES void softmax_block_stats(const float* x, int64_t rows, int64_t classes,
                                          const int32_t* labels, float* exps,
                                          int64_t exps_stride, float* tmm, float* others) {
  softmax_block_stats_any(x, rows, classes, labels, exps, exps_stride, tmm, others);
}
void softmax_block_stats(const double* x, int64_t rows, int64_t classes, const int32_t* labels,
                         double* exps, int64_t exps_stride, double* tmm, double* others) {
  softmax_block_stats_any(x, rows, classes, labels, exps, exps_stride, tmm, others);
}

// Step 2, vectorised over the block's rows: from t = x_y - M and the sum of
// the other classes' exp(x_c - M), softmax_focal_row's values: the loss
// (kGrad false) or (kGrad true) the factor of the other classes' exp(x_c - M)
// and the target's gradient, times the incoming gradient. -log p_t is
// log1p(sum_others) when y is the maximum (t = 0, keeps the small values),
// else log(sum) - t: focal_math.h softmax_focal_ce's choice, written as a
// select (GCC sinks the logs into the branches of a `?:` and the loop no
// longer vectorises). y: label codes (-1: ignored row, values 0).
template <typename T, Gamma G, bool kGrad, bool kPerRow>
RF_ALWAYS_INLINE void softmax_rows_loop(const T* tmm, const T* others, const int32_t* y,
                                        int64_t n, const FocalParams<T>& p,
                                        const GradScale<T>& g, T* out, T* target_grad) {
  const T alpha_pos = p.alpha.positive, alpha_neg = p.alpha.negative, gamma = p.gamma;
  const T divisor = g.divisor, scale = g.scale;
  const T* upstream = g.upstream;
  for (int64_t r = 0; r < n; ++r) {
    const T t = tmm[r], sum_others = others[r];
    const T target_exp = vec::exp(t);
    const T sum = target_exp + sum_others;
    const T ce = vec::select(t == T(0), vec::log1p(sum_others), vec::log(sum) - t);
    const T one_minus_pt = sum_others / sum;
    const T mod = modulator<G>(one_minus_pt, gamma);
    const T alpha_t = vec::select(y[r] == 0, alpha_neg, alpha_pos);
    const bool ignored = y[r] < 0;
    if constexpr (!kGrad) {
      out[r] = vec::select(ignored, T(0), alpha_t * (mod * ce));
    } else {
      // softmax_focal_row's grad_factor: alpha_t m^gamma (1 + gamma p_t ce / m),
      // ce / m -> 1 as m -> 0, and no term where p_t = 0 or gamma = 0.
      const T pt = target_exp / sum;
      T extra = T(0);
      if constexpr (G != Gamma::kZero) {
        const bool positive_m = one_minus_pt > T(0);
        const T ce_over_m =
            vec::select(positive_m, ce / vec::select(positive_m, one_minus_pt, T(1)), T(1));
        extra = vec::select(pt > T(0), gamma * pt * ce_over_m, T(0));
      }
      const T factor =
          alpha_t * mod * (T(1) + extra) * (kPerRow ? upstream[r] / divisor : scale);
      // p_k - [k == y] = exp(x_k - M) / sum for the others; for the target
      // -(1 - p_t), without cancellation.
      out[r] = vec::select(ignored, T(0), factor / sum);
      target_grad[r] = vec::select(ignored, T(0), -one_minus_pt * factor);
    }
  }
}

template <typename T>
RF_ALWAYS_INLINE void softmax_rows_any(const T* tmm, const T* others, const int32_t* y,
                                       int64_t n, const FocalParams<T>& p, const GradScale<T>* g,
                                       T* out, T* target_grad) {
  const GradScale<T> none{nullptr, T(1), T(0)};
  RF_FOR_GAMMA(
      p.kind,
      if (g == nullptr) {
        softmax_rows_loop<T, G, false, false>(tmm, others, y, n, p, none, out, target_grad);
      } else if (g->upstream != nullptr) {
        softmax_rows_loop<T, G, true, true>(tmm, others, y, n, p, *g, out, target_grad);
      } else {
        softmax_rows_loop<T, G, true, false>(tmm, others, y, n, p, *g, out, target_grad);
      })
}
RF_VECTOR_CLONES void softmax_rows(const float* tmm, const float* others, const int32_t* y,
                                   int64_t n, const FocalParams<float>& p,
                                   const GradScale<float>* g, float* out, float* target_grad) {
  softmax_rows_any(tmm, others, y, n, p, g, out, target_grad);
}
void softmax_rows(const double* tmm, const double* others, const int32_t* y, int64_t n,
                  const FocalParams<double>& p, const GradScale<double>* g, double* out,
                  double* target_grad) {
  softmax_rows_any(tmm, others, y, n, p, g, out, target_grad);
}

// Step 3 (backward): each row's exp(x_c - M) times its factor, the target's
// entry, zeros for ignored rows.
template <typename T>
RF_ALWAYS_INLINE void softmax_block_grads_any(T* gi, int64_t rows, int64_t classes,
                                              const int32_t* y, const T* factor,
                                              const T* target_grad) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = gi + r * classes;
    if (y[r] < 0) {
      std::fill(row, row + classes, T(0));
      continue;
    }
    const T f = factor[r];
    for (int64_t c = 0; c < classes; ++c) row[c] = row[c] * f;
    row[y[r]] = target_grad[r];
  }
}
RF_VECTOR_CLONES void softmax_block_grads(float* gi, int64_t rows, int64_t classes,
                                          const int32_t* y, const float* factor,
                                          const float* target_grad) {
  softmax_block_grads_any(gi, rows, classes, y, factor, target_grad);
}
void softmax_block_grads(double* gi, int64_t rows, int64_t classes, const int32_t* y,
                         const double* factor, const double* target_grad) {
  softmax_block_grads_any(gi, rows, classes, y, factor, target_grad);
}

// What the softmax passes read: logits [R, C] in the compute type, labels [R].
struct SoftmaxData {
  FocalShape shape;
  at::Tensor x, labels;
};

SoftmaxData softmax_data(const FocalShape& shape, const at::Tensor& logits,
                         const at::Tensor& labels, const char* op) {
  // The loops compare class indices as 32-bit integers.
  TORCH_CHECK(shape.classes <= std::numeric_limits<int32_t>::max(), op,
              "(): logits must have fewer than 2^31 classes, got ", shape.classes);
  SoftmaxData d;
  d.shape = shape;
  d.x = logits.to(focal_loss_dtype(logits)).contiguous().view({shape.rows, shape.classes});
  d.labels = labels.to(at::kLong).contiguous();
  return d;
}

// Rows per chunk: two classes are a few flops per row, more classes a
// chunk of about kChunkElements elements.
int64_t softmax_chunk_rows(int64_t classes) {
  return classes == 2 ? kChunkElements : rows_per_chunk(classes);
}
int64_t softmax_block_rows(int64_t classes) {
  return classes == 2 ? kBlock : std::max<int64_t>(1, kSoftmaxBlock / classes);
}

// The losses of rows [r0, r1) into out (0 for ignored rows). -> rows that count.
template <typename T>
int64_t softmax_losses(const SoftmaxData& d, int64_t r0, int64_t r1, const FocalParams<T>& p,
                       int64_t ignore_index, const char* op, T* out) {
  const int64_t classes = d.shape.classes, block = softmax_block_rows(classes);
  const T* x = d.x.data_ptr<T>();
  const int64_t* y = d.labels.data_ptr<int64_t>();
  const int64_t counted = check_softmax_labels(y, r0, r1, classes, ignore_index, op);
  std::vector<int32_t> codes(block);
  const int64_t general = classes == 2 ? 0 : block;
  std::vector<T> tmm(general), others(general), scratch(classes == 2 ? 0 : classes);
  for (int64_t a = r0; a < r1; a += block) {
    const int64_t n = std::min(r1, a + block) - a;
    label_codes(y + a, n, ignore_index, codes.data());
    if (classes == 2) {
      binary_softmax_losses(x + 2 * a, codes.data(), n, p, out + (a - r0));
      continue;
    }
    softmax_block_stats(x + a * classes, n, classes, codes.data(), scratch.data(), 0, tmm.data(),
                        others.data());
    softmax_rows(tmm.data(), others.data(), codes.data(), n, p,
                 static_cast<const GradScale<T>*>(nullptr), out + (a - r0),
                 static_cast<T*>(nullptr));
  }
  return counted;
}

at::Tensor softmax_focal_loss_cpu(const at::Tensor& logits, const at::Tensor& labels, double alpha,
                                  double gamma, c10::string_view reduction_name,
                                  const std::optional<at::Tensor>& normalizer,
                                  int64_t ignore_index) {
  const char* op = "softmax_focal_loss";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape =
      check_softmax_focal_loss_args(op, logits, labels, normalizer, alpha, gamma, reduction);
  const SoftmaxData d = softmax_data(shape, logits, labels, op);
  const int64_t chunk_rows = softmax_chunk_rows(shape.classes);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "softmax_focal_loss_cpu", [&] {
    using T = scalar_t;
    const FocalParams<T> p = focal_params<T>(alpha, gamma);
    if (reduction == FocalReduction::kNone) {
      out = at::empty(labels.sizes(), d.x.options());
      T* o = out.data_ptr<T>();
      const bool divide = normalizer.has_value();
      const T divisor = static_cast<T>(normalizer_value(normalizer));
      for_each_chunk(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
        softmax_losses(d, r0, r1, p, ignore_index, op, o + r0);
        if (divide) {
          for (int64_t r = r0; r < r1; ++r) o[r] = o[r] / divisor;
        }
      });
      return;
    }
    const Partial total = reduce_chunks(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      std::vector<T> losses(r1 - r0);
      const int64_t counted = softmax_losses(d, r0, r1, p, ignore_index, op, losses.data());
      return Partial{ordered_sum(losses.data(), r1 - r0), counted};
    });
    out = reduced_loss(total, reduction, normalizer, logits);
  });
  return out;
}

at::Tensor softmax_focal_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                           const at::Tensor& labels, double alpha, double gamma,
                                           c10::string_view reduction_name,
                                           const std::optional<at::Tensor>& normalizer,
                                           int64_t ignore_index) {
  const char* op = "softmax_focal_loss_backward";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape =
      check_softmax_focal_loss_args(op, logits, labels, normalizer, alpha, gamma, reduction);
  check_focal_grad(op, grad, labels.sizes(), reduction, "logits", logits);
  const SoftmaxData d = softmax_data(shape, logits, labels, op);
  const int64_t classes = shape.classes;
  const int64_t* y = d.labels.data_ptr<int64_t>();
  const int64_t chunk_rows = softmax_chunk_rows(classes);
  double divisor = normalizer_value(normalizer);
  if (reduction == FocalReduction::kMean) {
    // What the forward divided by: the rows that count (validates the labels).
    const Partial valid = reduce_chunks(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      return Partial{0, check_softmax_labels(y, r0, r1, classes, ignore_index, op)};
    });
    divisor = static_cast<double>(std::max<int64_t>(valid.count, 1));
  }
  const auto upstream = grad.to(d.x.scalar_type()).contiguous();
  auto grad_input = at::empty({shape.rows, classes}, d.x.options());
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "softmax_focal_loss_backward_cpu", [&] {
    using T = scalar_t;
    const FocalParams<T> p = focal_params<T>(alpha, gamma);
    const T* x = d.x.data_ptr<T>();
    const T* g = upstream.data_ptr<T>();
    T* gi = grad_input.data_ptr<T>();
    const bool per_row = reduction == FocalReduction::kNone;
    const T divisor_t = static_cast<T>(divisor);
    const T scale = per_row ? T(0) : static_cast<T>(static_cast<double>(g[0]) / divisor);
    const int64_t block = softmax_block_rows(classes);
    for_each_chunk(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      check_softmax_labels(y, r0, r1, classes, ignore_index, op);
      const int64_t general = classes == 2 ? 0 : block;
      std::vector<int32_t> codes(block);
      std::vector<T> tmm(general), others(general), factor(general), target_grad(general);
      for (int64_t a = r0; a < r1; a += block) {
        const int64_t n = std::min(r1, a + block) - a;
        T* rows = gi + a * classes;
        const GradScale<T> s{per_row ? g + a : nullptr, divisor_t, scale};
        label_codes(y + a, n, ignore_index, codes.data());
        if (classes == 2) {
          binary_softmax_grads(x + 2 * a, codes.data(), n, p, s, rows);
          continue;
        }
        softmax_block_stats(x + a * classes, n, classes, codes.data(), rows, classes, tmm.data(),
                            others.data());
        softmax_rows(tmm.data(), others.data(), codes.data(), n, p, &s, factor.data(),
                     target_grad.data());
        softmax_block_grads(rows, n, classes, codes.data(), factor.data(), target_grad.data());
      }
    });
  });
  return in_input_dtype(grad_input.view(logits.sizes()), logits);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cpu);
  m.impl("sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cpu);
  m.impl("softmax_focal_loss", &softmax_focal_loss_cpu);
  m.impl("softmax_focal_loss_backward", &softmax_focal_loss_backward_cpu);
}

}  // namespace retinaface
