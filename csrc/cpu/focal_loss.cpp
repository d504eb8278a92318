// sigmoid_focal_loss / softmax_focal_loss and their backward ops on the CPU.
//
// The maths (stable sigmoid / log-softmax, finite gradients for gamma < 1)
// is in common/focal_math.h, shared with the CUDA kernels. Here: the passes.
// Work is split into chunks of rows (about kChunkElements elements) handed to
// the threads by at::parallel_for. The transcendentals (exp(-|x|) and its
// log1p for the sigmoid and the two-class softmax, pow for a gamma other than
// 0, 1 and 2; exp(x - max) and one log per row for the general softmax) are
// ATen ops, whose runtime-dispatched SIMD kernels are an order of magnitude
// faster than scalar expf/log1pf in a loop; the sigmoid's run on each chunk's
// cache-resident buffers. What is left is branch-free arithmetic in plain
// loops over arrays, which the compiler vectorises (see focal_math.h on why
// the maths is written with selects of computed values), writing the loss or
// the gradient once.
//
// Reductions sum each chunk (fixed size) in double with eight interleaved
// accumulators in a fixed order, then the chunks in order: the result does
// not depend on the number of threads. Label values are validated here (the
// CUDA kernels cannot report them without a host sync and ignore invalid
// labels instead).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "common/focal_loss_checks.h"
#include "common/focal_math.h"

namespace retinaface {
namespace {

// About this many elements per task and per partial sum.
constexpr int64_t kChunkElements = 16384;

struct Partial {
  double sum = 0;
  int64_t count = 0;  // elements (sigmoid) or rows (softmax) that count for 'mean'
};

int64_t rows_per_chunk(int64_t classes) {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(classes, 1));
}

// fn(first_row, end_row) -> Partial over fixed chunks of [0, rows), summed in
// chunk order (deterministic whatever the thread count).
template <typename F>
Partial reduce_chunks(int64_t rows, int64_t chunk_rows, const F& fn) {
  const int64_t chunks = rows == 0 ? 0 : (rows + chunk_rows - 1) / chunk_rows;
  std::vector<Partial> partials(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      partials[c] = fn(c * chunk_rows, std::min(rows, (c + 1) * chunk_rows));
    }
  });
  Partial total;
  for (const Partial& p : partials) {
    total.sum += p.sum;
    total.count += p.count;
  }
  return total;
}

// Sum of v[0, n) in double: eight interleaved accumulators (so the adds do
// not wait on each other), combined in a fixed order.
template <typename T>
double ordered_sum(const T* v, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(v[i + k]);
  }
  for (int k = 0; i < n; ++i, ++k) acc[k] += static_cast<double>(v[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

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

// out[i] = m[i]^gamma (focal_modulator's values; out may be m): the usual
// gammas as arithmetic, any other with ATen's vectorised pow.
template <typename T>
void apply_modulator(const T* m, T* out, int64_t n, double gamma) {
  if (gamma == 2) {
    for (int64_t i = 0; i < n; ++i) out[i] = m[i] * m[i];
  } else if (gamma == 1) {
    if (out != m) std::copy(m, m + n, out);
  } else if (gamma == 0) {
    std::fill(out, out + n, T(1));  // 0^0 = 1: cross-entropy
  } else {
    const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    auto out_tensor = at::from_blob(out, {n}, options);
    at::pow_out(out_tensor, at::from_blob(const_cast<T*>(m), {n}, options), gamma);
  }
}

// e[i] = exp(-|v[i]|) and l[i] = log1p(e[i]) for a chunk of values, with
// ATen's vectorised kernels on the chunk's buffers (which stay in cache).
template <typename T>
void exp_neg_abs_and_log1p(const T* v, int64_t n, std::vector<T>& e, std::vector<T>& l) {
  e.resize(n);
  l.resize(n);
  for (int64_t i = 0; i < n; ++i) e[i] = -rf_abs(v[i]);
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto e_tensor = at::from_blob(e.data(), {n}, options);
  e_tensor.exp_();
  auto l_tensor = at::from_blob(l.data(), {n}, options);
  at::log1p_out(l_tensor, e_tensor);
}

// The stable sigmoid terms of elements [0, n) of logits x against targets t
// (t == nullptr: target 1), and their modulator m^gamma into modulator.
template <typename T>
void sigmoid_modulators(const T* x, const T* t, const T* e, const T* l, int64_t n, double gamma,
                        T* modulator) {
  for (int64_t i = 0; i < n; ++i) {
    modulator[i] = sigmoid_focal_terms(x[i], t != nullptr ? t[i] : T(1), e[i], l[i]).m;
  }
  apply_modulator(modulator, modulator, n, gamma);
}

// ---------------------------------------------------------------- sigmoid

// Everything a sigmoid pass reads, in the compute type T, contiguous.
struct SigmoidData {
  FocalShape shape;
  at::Tensor x;        // the logits
  at::Tensor targets;  // float targets (T), or labels (int64)
  double alpha, gamma;
  int64_t background_index, ignore_index;
};

SigmoidData sigmoid_data(const FocalShape& shape, const at::Tensor& inputs,
                         const at::Tensor& targets, double alpha, double gamma,
                         int64_t background_index, int64_t ignore_index) {
  const auto type = focal_loss_dtype(inputs);
  SigmoidData d;
  d.shape = shape;
  d.x = inputs.to(type).contiguous();
  d.targets = shape.labels ? targets.to(at::kLong).contiguous() : targets.to(type).contiguous();
  d.alpha = alpha;
  d.gamma = gamma;
  d.background_index = background_index;
  d.ignore_index = ignore_index;
  return d;
}

// Scratch of one chunk of rows: exp(-|x|) and its log1p, one-hot targets and
// which elements count (label path only), and the modulators.
template <typename T>
struct SigmoidChunk {
  int64_t first = 0, size = 0;  // elements [first, first + size)
  const T* targets = nullptr;
  const unsigned char* counts = nullptr;  // null: every element counts
  int64_t counted = 0;
  std::vector<T> exp_neg_abs, log1p_exp, target_storage, modulator;
  std::vector<unsigned char> count_storage;
};

// Fills targets from the labels of rows [r0, r1); -> the number of elements
// that count.
template <typename T>
int64_t fill_label_targets(const SigmoidData& d, int64_t r0, int64_t r1,
                           std::vector<T>& targets, std::vector<unsigned char>& counts,
                           const char* op) {
  const int64_t classes = d.shape.classes;
  const int64_t* labels = d.targets.data_ptr<int64_t>();
  targets.assign((r1 - r0) * classes, T(0));
  counts.assign((r1 - r0) * classes, 1);
  int64_t counted = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t label = labels[r], offset = (r - r0) * classes;
    if (label == d.ignore_index) {
      std::fill_n(counts.begin() + offset, classes, 0);
      continue;
    }
    counted += classes;
    if (label == d.background_index) continue;
    TORCH_CHECK(label >= 0 && label < classes, op, "(): targets must hold class indices in [0, ",
                classes, "), background_index ", d.background_index, " or ignore_index ",
                d.ignore_index, ", got ", label);
    targets[offset + label] = T(1);
  }
  return counted;
}

// The chunk of rows [r0, r1): its targets and its modulators.
template <typename T>
void prepare_sigmoid_chunk(const SigmoidData& d, int64_t r0, int64_t r1, const char* op,
                           SigmoidChunk<T>& c) {
  c.first = r0 * d.shape.classes;
  c.size = (r1 - r0) * d.shape.classes;
  if (d.shape.labels) {
    c.counted = fill_label_targets(d, r0, r1, c.target_storage, c.count_storage, op);
    c.targets = c.target_storage.data();
    c.counts = c.count_storage.data();
  } else {
    c.counted = c.size;
    c.targets = d.targets.data_ptr<T>() + c.first;
    c.counts = nullptr;
  }
  const T* x = d.x.data_ptr<T>() + c.first;
  exp_neg_abs_and_log1p(x, c.size, c.exp_neg_abs, c.log1p_exp);
  c.modulator.resize(c.size);
  sigmoid_modulators(x, c.targets, c.exp_neg_abs.data(), c.log1p_exp.data(), c.size, d.gamma,
                     c.modulator.data());
}

// out[i] = loss of element c.first + i, 0 where it does not count.
template <typename T>
void sigmoid_chunk_losses(const SigmoidData& d, const SigmoidChunk<T>& c, T* out) {
  const T* x = d.x.data_ptr<T>() + c.first;
  const T* e = c.exp_neg_abs.data();
  const T* l = c.log1p_exp.data();
  const T* t = c.targets;
  const T* mod = c.modulator.data();
  const FocalAlpha<T> alpha = focal_alpha(static_cast<T>(d.alpha));
  for (int64_t i = 0; i < c.size; ++i) {
    out[i] = sigmoid_focal_loss_value(sigmoid_focal_terms(x[i], t[i], e[i], l[i]), t[i], mod[i],
                                      alpha);
  }
  if (c.counts != nullptr) {
    for (int64_t i = 0; i < c.size; ++i) out[i] = c.counts[i] ? out[i] : T(0);
  }
}

// out[i] = d loss / d x of element c.first + i (before the incoming gradient
// and the masking of ignored rows). Values are locals, not captures, so the
// compiler can keep them in registers and vectorise.
template <typename T>
void sigmoid_chunk_grads(const SigmoidData& d, const SigmoidChunk<T>& c, T* out) {
  const T* x = d.x.data_ptr<T>() + c.first;
  const T* e = c.exp_neg_abs.data();
  const T* l = c.log1p_exp.data();
  const T* t = c.targets;
  const T* mod = c.modulator.data();
  const FocalAlpha<T> alpha = focal_alpha(static_cast<T>(d.alpha));
  const T gamma = static_cast<T>(d.gamma);
  for (int64_t i = 0; i < c.size; ++i) {
    out[i] = sigmoid_focal_loss_grad(sigmoid_focal_terms(x[i], t[i], e[i], l[i]), t[i], mod[i],
                                     alpha, gamma);
  }
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
  const SigmoidData d =
      sigmoid_data(shape, inputs, targets, alpha, gamma, background_index, ignore_index);
  const int64_t chunk_rows = rows_per_chunk(shape.classes);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    using T = scalar_t;
    if (reduction == FocalReduction::kNone) {
      out = at::empty(inputs.sizes(), d.x.options());
      T* o = out.data_ptr<T>();
      const bool divide = normalizer.has_value();
      const T divisor = static_cast<T>(normalizer_value(normalizer));
      at::parallel_for(0, shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
        SigmoidChunk<T> c;
        prepare_sigmoid_chunk(d, r0, r1, op, c);
        T* dst = o + c.first;
        sigmoid_chunk_losses(d, c, dst);
        if (divide) {
          for (int64_t i = 0; i < c.size; ++i) dst[i] = dst[i] / divisor;
        }
      });
      return;
    }
    const Partial total = reduce_chunks(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      SigmoidChunk<T> c;
      prepare_sigmoid_chunk(d, r0, r1, op, c);
      std::vector<T> losses(c.size);
      sigmoid_chunk_losses(d, c, losses.data());
      return Partial{ordered_sum(losses.data(), c.size), c.counted};
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
  const SigmoidData d =
      sigmoid_data(shape, inputs, targets, alpha, gamma, background_index, ignore_index);
  const int64_t chunk_rows = rows_per_chunk(shape.classes);
  const auto upstream = grad.to(d.x.scalar_type()).contiguous();
  double divisor = normalizer_value(normalizer);
  if (reduction == FocalReduction::kMean) {
    // What the forward divided by: the elements that count (validates labels).
    const Partial counted = reduce_chunks(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      if (!shape.labels) return Partial{0, (r1 - r0) * shape.classes};
      std::vector<float> targets;
      std::vector<unsigned char> counts;
      return Partial{0, fill_label_targets(d, r0, r1, targets, counts, op)};
    });
    divisor = static_cast<double>(std::max<int64_t>(counted.count, 1));
  }
  auto grad_input = at::empty(inputs.sizes(), d.x.options());
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "sigmoid_focal_loss_backward_cpu", [&] {
    using T = scalar_t;
    const T* g = upstream.data_ptr<T>();
    T* gi = grad_input.data_ptr<T>();
    const bool per_element = reduction == FocalReduction::kNone;
    const T divisor_t = static_cast<T>(divisor);
    // d(sum / divisor) = grad / divisor, rounded once as the reference's division does.
    const T scale = per_element ? T(0) : static_cast<T>(static_cast<double>(g[0]) / divisor);
    at::parallel_for(0, shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      SigmoidChunk<T> c;
      prepare_sigmoid_chunk(d, r0, r1, op, c);
      T* dst = gi + c.first;
      sigmoid_chunk_grads(d, c, dst);
      if (per_element) {
        const T* gc = g + c.first;
        for (int64_t i = 0; i < c.size; ++i) dst[i] = dst[i] * (gc[i] / divisor_t);
      } else {
        for (int64_t i = 0; i < c.size; ++i) dst[i] = dst[i] * scale;
      }
      if (c.counts != nullptr) {
        for (int64_t i = 0; i < c.size; ++i) dst[i] = c.counts[i] ? dst[i] : T(0);
      }
    });
  });
  return in_input_dtype(grad_input, inputs);
}

// ---------------------------------------------------------------- softmax

void check_softmax_label(int64_t label, int64_t classes, int64_t ignore_index, const char* op) {
  TORCH_CHECK(label >= 0 && label < classes, op, "(): labels must be in [0, ", classes,
              ") or ignore_index ", ignore_index, ", got ", label);
}

// What the loss and gradient passes of a softmax read, in the compute type T.
// Two classes: z = x_y - x_other per row, exp(-|z|) and its log1p (the
// sigmoid maths, focal_math.h binary_softmax_*). Otherwise: exp(x - max) of
// every element, and per row exp(x_y - max), the sum of the other classes'
// exp, -log p_t (ATen over whole tensors).
struct SoftmaxData {
  FocalShape shape;
  at::Tensor x, labels;  // [R, C] compute type, [R] int64
  bool binary;
  at::Tensor z, alpha_t;                              // binary: [R] each
  at::Tensor shifted_exp, target_exp, sum_others, ce;  // general: [R, C], [R] x 3
};

template <typename T>
void binary_softmax_stats(SoftmaxData& d, double alpha, int64_t ignore_index, const char* op) {
  const int64_t rows = d.shape.rows;
  d.z = at::empty({rows}, d.x.options());
  d.alpha_t = at::empty({rows}, d.x.options());
  const T* x = d.x.data_ptr<T>();
  const int64_t* y = d.labels.data_ptr<int64_t>();
  T* z = d.z.data_ptr<T>();
  T* alpha_t = d.alpha_t.data_ptr<T>();
  const FocalAlpha<T> weights = focal_alpha(static_cast<T>(alpha));
  at::parallel_for(0, rows, kChunkElements, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t label = y[r];
      if (label == ignore_index) {
        label = 0;  // any class: the row is masked out
      } else {
        check_softmax_label(label, 2, ignore_index, op);
      }
      z[r] = x[2 * r + label] - x[2 * r + 1 - label];
      alpha_t[r] = softmax_alpha_weight(weights, label == 0);
    }
  });
}

// Sum of v[0, n): four interleaved accumulators (the adds do not wait on
// each other), combined in a fixed order.
template <typename T>
T row_sum(const T* v, int64_t n) {
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += v[i];
    a1 += v[i + 1];
    a2 += v[i + 2];
    a3 += v[i + 3];
  }
  for (; i < n; ++i) a0 += v[i];
  return (a0 + a1) + (a2 + a3);
}

template <typename T>
void general_softmax_stats(SoftmaxData& d, int64_t ignore_index, const char* op) {
  const int64_t rows = d.shape.rows, classes = d.shape.classes;
  const auto row_max = at::amax(d.x, {1}, /*keepdim=*/true);
  d.shifted_exp = d.x - row_max;
  d.shifted_exp.exp_();
  auto target_minus_max = at::empty({rows}, d.x.options());
  d.sum_others = at::empty({rows}, d.x.options());
  d.target_exp = at::empty({rows}, d.x.options());
  const T* x = d.x.data_ptr<T>();
  const T* ez = d.shifted_exp.data_ptr<T>();
  const T* m = row_max.data_ptr<T>();
  const int64_t* y = d.labels.data_ptr<int64_t>();
  T* tmm = target_minus_max.data_ptr<T>();
  T* others = d.sum_others.data_ptr<T>();
  T* te = d.target_exp.data_ptr<T>();
  at::parallel_for(0, rows, rows_per_chunk(classes), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t label = y[r];
      if (label == ignore_index) {
        label = 0;
      } else {
        check_softmax_label(label, classes, ignore_index, op);
      }
      const T* er = ez + r * classes;
      others[r] = row_sum(er, label) + row_sum(er + label + 1, classes - label - 1);
      te[r] = er[label];
      tmm[r] = x[r * classes + label] - m[r];
    }
  });
  // -log p_t needs log1p(sum_others) or log(sum) per row: both are computed
  // (vectorised) and softmax_focal_ce picks.
  const auto log1p_others = at::log1p(d.sum_others);
  const auto log_sum = at::log(d.target_exp + d.sum_others);
  d.ce = at::empty({rows}, d.x.options());
  const T* l1p = log1p_others.data_ptr<T>();
  const T* ls = log_sum.data_ptr<T>();
  T* ce = d.ce.data_ptr<T>();
  at::parallel_for(0, rows, kChunkElements, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) ce[r] = softmax_focal_ce(tmm[r], l1p[r], ls[r]);
  });
}

SoftmaxData softmax_data(const FocalShape& shape, const at::Tensor& logits,
                         const at::Tensor& labels, double alpha, int64_t ignore_index,
                         const char* op) {
  SoftmaxData d;
  d.shape = shape;
  d.x = logits.to(focal_loss_dtype(logits)).contiguous().view({shape.rows, shape.classes});
  d.labels = labels.to(at::kLong).contiguous();
  d.binary = shape.classes == 2;
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "softmax_focal_loss_cpu", [&] {
    if (d.binary) {
      binary_softmax_stats<scalar_t>(d, alpha, ignore_index, op);
    } else {
      general_softmax_stats<scalar_t>(d, ignore_index, op);
    }
  });
  return d;
}

// A chunk of rows [r0, r1) of a softmax pass.
template <typename T>
struct SoftmaxChunk {
  int64_t r0, r1;
  // binary: exp(-|z|), its log1p and (1 - p_t)^gamma per row
  std::vector<T> exp_neg_abs, log1p_exp, modulator;
};

template <typename T>
void prepare_softmax_chunk(const SoftmaxData& d, int64_t r0, int64_t r1, double gamma,
                           SoftmaxChunk<T>& c) {
  c.r0 = r0;
  c.r1 = r1;
  if (!d.binary) return;
  const T* z = d.z.data_ptr<T>() + r0;
  exp_neg_abs_and_log1p(z, r1 - r0, c.exp_neg_abs, c.log1p_exp);
  c.modulator.resize(r1 - r0);
  sigmoid_modulators<T>(z, nullptr, c.exp_neg_abs.data(), c.log1p_exp.data(), r1 - r0, gamma,
                        c.modulator.data());
}

// Losses of the chunk's rows into dst (0 for ignored rows); -> rows that count.
template <typename T>
int64_t softmax_chunk_losses(const SoftmaxData& d, const SoftmaxChunk<T>& c, double alpha,
                             double gamma, int64_t ignore_index, T* dst) {
  const int64_t* y = d.labels.data_ptr<int64_t>();
  const FocalAlpha<T> alpha_v = focal_alpha(static_cast<T>(alpha));
  const T gamma_v = static_cast<T>(gamma);
  int64_t counted = 0;
  if (d.binary) {
    const int64_t n = c.r1 - c.r0;
    const T* z = d.z.data_ptr<T>() + c.r0;
    const T* e = c.exp_neg_abs.data();
    const T* l = c.log1p_exp.data();
    const T* alpha_t = d.alpha_t.data_ptr<T>() + c.r0;
    const T* mod = c.modulator.data();
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = binary_softmax_focal_loss(sigmoid_focal_terms(z[i], T(1), e[i], l[i]), mod[i],
                                         alpha_t[i]);
    }
  } else {
    const T* te = d.target_exp.data_ptr<T>();
    const T* others = d.sum_others.data_ptr<T>();
    const T* ce = d.ce.data_ptr<T>();
    for (int64_t r = c.r0; r < c.r1; ++r) {
      const T alpha_t = softmax_alpha_weight(alpha_v, y[r] == 0);
      dst[r - c.r0] = softmax_focal_row(te[r], others[r], ce[r], alpha_t, gamma_v, false).loss;
    }
  }
  for (int64_t r = c.r0; r < c.r1; ++r) {
    const bool counts = y[r] != ignore_index;
    counted += counts;
    dst[r - c.r0] = counts ? dst[r - c.r0] : T(0);
  }
  return counted;
}

// d loss / d (x_y - x_other) of the chunk's rows (two classes), before the
// incoming gradient and the masking of ignored rows.
template <typename T>
void binary_softmax_grads(const SoftmaxData& d, const SoftmaxChunk<T>& c, T gamma, T* out) {
  const int64_t n = c.r1 - c.r0;
  const T* z = d.z.data_ptr<T>() + c.r0;
  const T* e = c.exp_neg_abs.data();
  const T* l = c.log1p_exp.data();
  const T* alpha_t = d.alpha_t.data_ptr<T>() + c.r0;
  const T* mod = c.modulator.data();
  for (int64_t i = 0; i < n; ++i) {
    out[i] = binary_softmax_focal_grad(sigmoid_focal_terms(z[i], T(1), e[i], l[i]), mod[i],
                                       alpha_t[i], gamma);
  }
}

at::Tensor softmax_focal_loss_cpu(const at::Tensor& logits, const at::Tensor& labels, double alpha,
                                  double gamma, c10::string_view reduction_name,
                                  const std::optional<at::Tensor>& normalizer,
                                  int64_t ignore_index) {
  const char* op = "softmax_focal_loss";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape =
      check_softmax_focal_loss_args(op, logits, labels, normalizer, alpha, gamma, reduction);
  const SoftmaxData d = softmax_data(shape, logits, labels, alpha, ignore_index, op);
  const int64_t chunk_rows = kChunkElements;  // a row's loss is a few flops from here on
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "softmax_focal_loss_cpu", [&] {
    using T = scalar_t;
    if (reduction == FocalReduction::kNone) {
      out = at::empty(labels.sizes(), d.x.options());
      T* o = out.data_ptr<T>();
      const bool divide = normalizer.has_value();
      const T divisor = static_cast<T>(normalizer_value(normalizer));
      at::parallel_for(0, shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
        SoftmaxChunk<T> c;
        prepare_softmax_chunk(d, r0, r1, gamma, c);
        softmax_chunk_losses(d, c, alpha, gamma, ignore_index, o + r0);
        if (divide) {
          for (int64_t r = r0; r < r1; ++r) o[r] = o[r] / divisor;
        }
      });
      return;
    }
    const Partial total = reduce_chunks(shape.rows, chunk_rows, [&](int64_t r0, int64_t r1) {
      SoftmaxChunk<T> c;
      prepare_softmax_chunk(d, r0, r1, gamma, c);
      std::vector<T> losses(r1 - r0);
      const int64_t counted = softmax_chunk_losses(d, c, alpha, gamma, ignore_index, losses.data());
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
  const SoftmaxData d = softmax_data(shape, logits, labels, alpha, ignore_index, op);
  const int64_t classes = shape.classes;
  const int64_t* y = d.labels.data_ptr<int64_t>();
  double divisor = normalizer_value(normalizer);
  if (reduction == FocalReduction::kMean) {
    const Partial valid = reduce_chunks(shape.rows, kChunkElements, [&](int64_t r0, int64_t r1) {
      Partial p;
      for (int64_t r = r0; r < r1; ++r) p.count += y[r] != ignore_index;
      return p;
    });
    divisor = static_cast<double>(std::max<int64_t>(valid.count, 1));
  }
  const auto upstream = grad.to(d.x.scalar_type()).contiguous();
  // The general path writes in place of exp(x - max) (p_c = that / sum).
  at::Tensor grad_input = d.binary ? at::empty({shape.rows, classes}, d.x.options()) : d.shifted_exp;
  AT_DISPATCH_FLOATING_TYPES(d.x.scalar_type(), "softmax_focal_loss_backward_cpu", [&] {
    using T = scalar_t;
    const FocalAlpha<T> alpha_v = focal_alpha(static_cast<T>(alpha));
    const T gamma_v = static_cast<T>(gamma);
    const T* g = upstream.data_ptr<T>();
    T* gi = grad_input.data_ptr<T>();
    const bool per_row = reduction == FocalReduction::kNone;
    const T divisor_t = static_cast<T>(divisor);
    const T scale = per_row ? T(0) : static_cast<T>(static_cast<double>(g[0]) / divisor);
    at::parallel_for(0, shape.rows, d.binary ? kChunkElements : rows_per_chunk(classes),
                     [&](int64_t r0, int64_t r1) {
      SoftmaxChunk<T> c;
      prepare_softmax_chunk(d, r0, r1, gamma, c);
      if (d.binary) {
        const int64_t n = r1 - r0;
        std::vector<T> grad_z(n);
        binary_softmax_grads(d, c, gamma_v, grad_z.data());
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t label = y[r];
          const T v = label == ignore_index
                          ? T(0)
                          : grad_z[r - r0] * (per_row ? g[r] / divisor_t : scale);
          const int64_t target = label == 1 ? 1 : 0;  // an ignored row writes zeros anyway
          gi[2 * r + target] = v;
          gi[2 * r + 1 - target] = -v;
        }
        return;
      }
      const T* te = d.target_exp.data_ptr<T>();
      const T* others = d.sum_others.data_ptr<T>();
      const T* ce = d.ce.data_ptr<T>();
      for (int64_t r = r0; r < r1; ++r) {
        T* gr = gi + r * classes;
        const int64_t label = y[r];
        if (label == ignore_index) {
          std::fill(gr, gr + classes, T(0));
          continue;
        }
        const SoftmaxFocalRow<T> row = softmax_focal_row(
            te[r], others[r], ce[r], softmax_alpha_weight(alpha_v, label == 0), gamma_v, true);
        const T factor = row.grad_factor * (per_row ? g[r] / divisor_t : scale);
        // p_k - [k == y] = exp(x_k - max) / sum for the others; for the target
        // -(1 - p_t), computed without cancellation.
        const T other_factor = factor / row.sum;
        for (int64_t k = 0; k < classes; ++k) gr[k] = gr[k] * other_factor;
        gr[label] = -row.one_minus_pt * factor;
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
