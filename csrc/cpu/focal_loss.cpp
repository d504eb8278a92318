// sigmoid_focal_loss / softmax_focal_loss and their backward ops on the CPU.
//
// The maths (stable sigmoid / log-softmax, finite gradients for gamma < 1)
// is in common/focal_math.h, shared with the CUDA kernels. Here: the loops.
// Elements (sigmoid) or rows (softmax) are split into chunks of a fixed size
// handed to the threads by at::parallel_for; a reduction sums each chunk in
// double and then the chunks in order, so the result does not depend on the
// number of threads. Label values are validated here (the CUDA kernels cannot
// report them without a host sync and ignore invalid labels instead).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common/focal_loss_checks.h"
#include "common/focal_math.h"

namespace retinaface {
namespace {

// About this many loss elements per task and per partial sum.
constexpr int64_t kChunkElements = 16384;

struct Partial {
  double sum = 0;
  int64_t count = 0;  // elements that count for reduction='mean'
};

// fn(begin, end) -> Partial over fixed chunks of [0, n) rows, summed in chunk
// order (deterministic whatever the thread count).
template <typename F>
Partial reduce_rows(int64_t n, int64_t rows_per_chunk, const F& fn) {
  const int64_t chunks = n == 0 ? 0 : (n + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<Partial> partials(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      partials[c] = fn(c * rows_per_chunk, std::min(n, (c + 1) * rows_per_chunk));
    }
  });
  Partial total;
  for (const Partial& p : partials) {
    total.sum += p.sum;
    total.count += p.count;
  }
  return total;
}

template <typename F>
void for_rows(int64_t n, int64_t rows_per_chunk, const F& fn) {
  at::parallel_for(0, n, rows_per_chunk, fn);
}

int64_t rows_per_chunk(int64_t classes) {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(classes, 1));
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

// ---------------------------------------------------------------- sigmoid

// The class of row `label` that is positive, -1 for background; checks the
// label (an ignored row never gets here).
int64_t positive_class(int64_t label, int64_t classes, int64_t background_index,
                       int64_t ignore_index, const char* op) {
  if (label == background_index) return -1;
  TORCH_CHECK(label >= 0 && label < classes, op,
              "(): targets must hold class indices in [0, ", classes, "), background_index ",
              background_index, " or ignore_index ", ignore_index, ", got ", label);
  return label;
}

struct SigmoidArgs {
  FocalShape shape;
  at::Tensor inputs, targets;  // contiguous; targets in the compute type or int64
  double alpha, gamma;
  int64_t background_index, ignore_index;
};

SigmoidArgs sigmoid_args(const FocalShape& shape, const at::Tensor& inputs,
                         const at::Tensor& targets, double alpha, double gamma,
                         int64_t background_index, int64_t ignore_index) {
  const auto compute_type = focal_loss_dtype(inputs);
  return {shape,
          inputs.contiguous(),
          shape.labels ? targets.to(at::kLong).contiguous() : targets.to(compute_type).contiguous(),
          alpha,
          gamma,
          background_index,
          ignore_index};
}

// Visits the elements of rows [begin, end): fn(element index, x, t) for every
// element that counts; ignored rows get skip(first element, classes).
template <typename scalar_t, typename Fn, typename Skip>
void visit_sigmoid_rows(const SigmoidArgs& a, int64_t begin, int64_t end, const char* op,
                        const Fn& fn, const Skip& skip) {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* x = a.inputs.data_ptr<scalar_t>();
  if (!a.shape.labels) {
    const T* t = a.targets.data_ptr<T>();
    for (int64_t i = begin; i < end; ++i) fn(i, static_cast<T>(x[i]), t[i]);
    return;
  }
  const int64_t classes = a.shape.classes;
  const int64_t* labels = a.targets.data_ptr<int64_t>();
  for (int64_t r = begin; r < end; ++r) {
    const int64_t label = labels[r];
    if (label == a.ignore_index) {
      skip(r * classes, classes);
      continue;
    }
    const int64_t positive =
        positive_class(label, classes, a.background_index, a.ignore_index, op);
    for (int64_t c = 0; c < classes; ++c) {
      const int64_t i = r * classes + c;
      fn(i, static_cast<T>(x[i]), c == positive ? T(1) : T(0));
    }
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
  const SigmoidArgs a =
      sigmoid_args(shape, inputs, targets, alpha, gamma, background_index, ignore_index);
  const int64_t chunk = rows_per_chunk(shape.classes);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "focal_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const T alpha_t = static_cast<T>(alpha), gamma_t = static_cast<T>(gamma);
    if (reduction == FocalReduction::kNone) {
      out = at::empty(inputs.sizes(), inputs.options().dtype(focal_loss_dtype(inputs)));
      T* o = out.data_ptr<T>();
      const T divisor = static_cast<T>(normalizer_value(normalizer));
      const bool divide = normalizer.has_value();
      for_rows(shape.rows, chunk, [&](int64_t begin, int64_t end) {
        visit_sigmoid_rows<scalar_t>(
            a, begin, end, op,
            [&](int64_t i, T x, T t) {
              const T loss = sigmoid_focal_loss_value(x, t, alpha_t, gamma_t);
              o[i] = divide ? loss / divisor : loss;
            },
            [&](int64_t first, int64_t n) { std::fill(o + first, o + first + n, T(0)); });
      });
      return;
    }
    const Partial total = reduce_rows(shape.rows, chunk, [&](int64_t begin, int64_t end) {
      Partial p;
      visit_sigmoid_rows<scalar_t>(
          a, begin, end, op,
          [&](int64_t, T x, T t) {
            p.sum += static_cast<double>(sigmoid_focal_loss_value(x, t, alpha_t, gamma_t));
            ++p.count;
          },
          [](int64_t, int64_t) {});
      return p;
    });
    out = reduced_loss(total, reduction, normalizer, inputs);
  });
  return out;
}

// Elements that count for reduction='mean' (validates the labels too).
int64_t sigmoid_mean_count(const SigmoidArgs& a, const char* op) {
  if (!a.shape.labels) return a.inputs.numel();
  const int64_t* labels = a.targets.data_ptr<int64_t>();
  const Partial total =
      reduce_rows(a.shape.rows, kChunkElements, [&](int64_t begin, int64_t end) {
        Partial p;
        for (int64_t r = begin; r < end; ++r) {
          if (labels[r] == a.ignore_index) continue;
          positive_class(labels[r], a.shape.classes, a.background_index, a.ignore_index, op);
          ++p.count;
        }
        return p;
      });
  return total.count * a.shape.classes;
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
  const SigmoidArgs a =
      sigmoid_args(shape, inputs, targets, alpha, gamma, background_index, ignore_index);
  const double divisor = reduction == FocalReduction::kMean
                             ? static_cast<double>(std::max<int64_t>(sigmoid_mean_count(a, op), 1))
                             : normalizer_value(normalizer);
  auto grad_input = at::empty(inputs.sizes(), a.inputs.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "focal_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const T alpha_t = static_cast<T>(alpha), gamma_t = static_cast<T>(gamma);
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    const auto upstream = grad.to(focal_loss_dtype(inputs)).contiguous();
    const T* g = upstream.data_ptr<T>();
    const bool per_element = reduction == FocalReduction::kNone;
    const T divisor_t = static_cast<T>(divisor);
    // d(sum / divisor) = grad / divisor, rounded once as the reference's division does.
    const T scale = per_element ? T(0) : static_cast<T>(static_cast<double>(g[0]) / divisor);
    for_rows(shape.rows, rows_per_chunk(shape.classes), [&](int64_t begin, int64_t end) {
      visit_sigmoid_rows<scalar_t>(
          a, begin, end, op,
          [&](int64_t i, T x, T t) {
            const T s = per_element ? g[i] / divisor_t : scale;
            gi[i] = static_cast<scalar_t>(sigmoid_focal_loss_grad(x, t, alpha_t, gamma_t) * s);
          },
          [&](int64_t first, int64_t n) { std::fill(gi + first, gi + first + n, scalar_t(0)); });
    });
  });
  return grad_input;
}

// ---------------------------------------------------------------- softmax

void check_softmax_label(int64_t label, int64_t classes, int64_t ignore_index, const char* op) {
  TORCH_CHECK(label >= 0 && label < classes, op, "(): labels must be in [0, ", classes,
              ") or ignore_index ", ignore_index, ", got ", label);
}

// The focal terms of row x (classes values) against its label y.
template <typename T, typename scalar_t>
SoftmaxFocalRow<T> softmax_row(const scalar_t* x, int64_t classes, int64_t y, T alpha, T gamma,
                               bool with_grad, T& row_max) {
  T m = static_cast<T>(x[0]);
  for (int64_t c = 1; c < classes; ++c) m = nan_max(m, static_cast<T>(x[c]));
  T others = 0;
  for (int64_t c = 0; c < classes; ++c) {
    if (c != y) others += rf_exp(static_cast<T>(x[c]) - m);
  }
  row_max = m;
  return softmax_focal_row(static_cast<T>(x[y]) - m, others, softmax_alpha_weight(alpha, y == 0),
                           gamma, with_grad);
}

at::Tensor softmax_focal_loss_cpu(const at::Tensor& logits, const at::Tensor& labels, double alpha,
                                  double gamma, c10::string_view reduction_name,
                                  const std::optional<at::Tensor>& normalizer,
                                  int64_t ignore_index) {
  const char* op = "softmax_focal_loss";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape =
      check_softmax_focal_loss_args(op, logits, labels, normalizer, alpha, gamma, reduction);
  const auto x_all = logits.contiguous();
  const auto y_all = labels.to(at::kLong).contiguous();
  const int64_t classes = shape.classes;
  const int64_t chunk = rows_per_chunk(classes);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "focal_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const T alpha_t = static_cast<T>(alpha), gamma_t = static_cast<T>(gamma);
    const scalar_t* x = x_all.data_ptr<scalar_t>();
    const int64_t* y = y_all.data_ptr<int64_t>();
    // loss of row r, or nothing for an ignored row
    const auto row_loss = [&](int64_t r, T& loss) {
      if (y[r] == ignore_index) return false;
      check_softmax_label(y[r], classes, ignore_index, op);
      T row_max;
      loss = softmax_row(x + r * classes, classes, y[r], alpha_t, gamma_t, false, row_max).loss;
      return true;
    };
    if (reduction == FocalReduction::kNone) {
      out = at::empty(labels.sizes(), logits.options().dtype(focal_loss_dtype(logits)));
      T* o = out.data_ptr<T>();
      const T divisor = static_cast<T>(normalizer_value(normalizer));
      const bool divide = normalizer.has_value();
      for_rows(shape.rows, chunk, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          T loss = 0;
          o[r] = row_loss(r, loss) ? (divide ? loss / divisor : loss) : T(0);
        }
      });
      return;
    }
    const Partial total = reduce_rows(shape.rows, chunk, [&](int64_t begin, int64_t end) {
      Partial p;
      for (int64_t r = begin; r < end; ++r) {
        T loss = 0;
        if (row_loss(r, loss)) {
          p.sum += static_cast<double>(loss);
          ++p.count;
        }
      }
      return p;
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
  const auto x_all = logits.contiguous();
  const auto y_all = labels.to(at::kLong).contiguous();
  const int64_t classes = shape.classes;
  const int64_t* y = y_all.data_ptr<int64_t>();

  double divisor = normalizer_value(normalizer);
  if (reduction == FocalReduction::kMean) {
    const Partial valid = reduce_rows(shape.rows, kChunkElements, [&](int64_t begin, int64_t end) {
      Partial p;
      for (int64_t r = begin; r < end; ++r) p.count += y[r] != ignore_index;
      return p;
    });
    divisor = static_cast<double>(std::max<int64_t>(valid.count, 1));
  }
  auto grad_input = at::empty(logits.sizes(), x_all.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "focal_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const T alpha_t = static_cast<T>(alpha), gamma_t = static_cast<T>(gamma);
    const scalar_t* x = x_all.data_ptr<scalar_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    const auto upstream = grad.to(focal_loss_dtype(logits)).contiguous();
    const T* g = upstream.data_ptr<T>();
    const bool per_row = reduction == FocalReduction::kNone;
    const T divisor_t = static_cast<T>(divisor);
    const T scale = per_row ? T(0) : static_cast<T>(static_cast<double>(g[0]) / divisor);
    for_rows(shape.rows, rows_per_chunk(classes), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = x + r * classes;
        scalar_t* gr = gi + r * classes;
        const int64_t label = y[r];
        if (label == ignore_index) {
          std::fill(gr, gr + classes, scalar_t(0));
          continue;
        }
        check_softmax_label(label, classes, ignore_index, op);
        T row_max;
        const SoftmaxFocalRow<T> row =
            softmax_row(xr, classes, label, alpha_t, gamma_t, true, row_max);
        const T factor = row.grad_factor * (per_row ? g[r] / divisor_t : scale);
        for (int64_t c = 0; c < classes; ++c) {
          // p_c - [c == y]; for the target, -(1 - p_t) computed without cancellation.
          const T dp = c == label ? -row.one_minus_pt
                                  : rf_exp(static_cast<T>(xr[c]) - row_max) / row.sum;
          gr[c] = static_cast<scalar_t>(dp * factor);
        }
      }
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cpu);
  m.impl("sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cpu);
  m.impl("softmax_focal_loss", &softmax_focal_loss_cpu);
  m.impl("softmax_focal_loss_backward", &softmax_focal_loss_backward_cpu);
}

}  // namespace retinaface
