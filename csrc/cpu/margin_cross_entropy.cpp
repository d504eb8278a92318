// margin_cross_entropy on the CPU: combined-margin softmax cross-entropy
// (ArcFace / CosFace / SphereFace, common/margin_math.h) fused per row.
//
// Forward, per row (rows handed to the threads by at::parallel_for): one pass
// over the C cosines in chunks of kChunk columns with an online max and
// sum-exp (a chunk's max is found first, the running sum rescaled when it
// grows, then the chunk's exponentials are summed while it is still in L1).
// The target column gets the margined logit s * (g(x) - m3), every other
// column s * x. Nothing of size [N, C] is allocated: the outputs are the
// per-row loss, max, sum-exp and target logit.
//
// Backward, per row: every element of d cos_logits is written once,
//   d x_j = s * exp(z_j - max) * (g_loss / sumexp + g_sumexp)
// plus, on the target column, (g_target - g_loss) and the factor g'(x_t)
// (exact mode) or 1 (straight-through) on the whole target element.
//
// The exponentials run in the vector loops below, which GCC vectorises and
// compiles for AVX-512, AVX2 and the baseline ISA (picked at load time), with
// the polynomial exp of cpu/vector_math.h since the compiler cannot vectorise
// expf.
// Results do not depend on the number of threads (rows are independent and
// each row is summed in a fixed order); they may differ in the last bits
// between machines with different vector units.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/margin_cross_entropy_checks.h"
#include "common/margin_math.h"
#include "cpu/vector_math.h"


namespace retinaface {
namespace margin_cpu {

// Independent accumulators per loop, so the reductions vectorise without
// reassociating float additions (16 = one AVX-512 register of floats).
constexpr int kLanes = 16;

// max of x[0..n), -inf for n = 0 (NaN is skipped here; the sums propagate it).
RF_VECTOR_CLONES float max_of(const float* x, int64_t n) {
  float acc[kLanes];
  for (int k = 0; k < kLanes; ++k) acc[k] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] = x[j + k] > acc[k] ? x[j + k] : acc[k];
  }
  for (; j < n; ++j) acc[0] = x[j] > acc[0] ? x[j] : acc[0];
  float m = acc[0];
  for (int k = 1; k < kLanes; ++k) m = acc[k] > m ? acc[k] : m;
  return m;
}

// sum of exp(s * x[j] - shift) over j < n.
RF_VECTOR_CLONES float sum_exp(const float* x, int64_t n, float s, float shift) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += vec::exp(s * x[j + k] - shift);
  }
  for (; j < n; ++j) acc[0] += vec::exp(s * x[j] - shift);
  float total = 0.0f;
  for (int k = 0; k < kLanes; ++k) total += acc[k];
  return total;
}

// out[j] = coef * exp(s * x[j] - shift).
RF_VECTOR_CLONES void scaled_exp(const float* x, int64_t n, float s, float shift, float coef,
                                 float* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = coef * vec::exp(s * x[j] - shift);
}

// float64 (gradcheck, tests): plain loops with the libm exp.
double max_of(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}
double sum_exp(const double* x, int64_t n, double s, double shift) {
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) total += std::exp(s * x[j] - shift);
  return total;
}
void scaled_exp(const double* x, int64_t n, double s, double shift, double coef, double* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = coef * std::exp(s * x[j] - shift);
}

}  // namespace margin_cpu

namespace {

using margin_cpu::max_of;
using margin_cpu::scaled_exp;
using margin_cpu::sum_exp;

// Columns per step of the online max / sum-exp: 16 KiB of floats, so the
// second look at a chunk (its exponentials after its max) hits L1.
constexpr int64_t kChunk = 4096;

// The chunk x[0..n) in the compute type T: the row itself when it already is
// T, else converted into buf (float16 / bfloat16).
template <typename T, typename scalar_t>
const T* chunk_in_compute_type(const scalar_t* x, int64_t n, T* buf) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return x;
  } else {
    for (int64_t k = 0; k < n; ++k) buf[k] = static_cast<T>(x[k]);
    return buf;
  }
}

// The column of the row's target inside this shard of classes, or -1 when
// the label is -1 or a class of another shard.
inline int64_t local_target(int64_t label, int64_t class_offset, int64_t num_local) {
  return (label >= class_offset && label - class_offset < num_local) ? label - class_offset : -1;
}

// Rows per parallel task: about 64k columns of work each.
inline int64_t rows_per_task(int64_t num_classes) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(num_classes, 1));
}

template <typename scalar_t>
void margin_forward_kernel(const at::Tensor& cos_logits, const int64_t* labels,
                           const MarginParams<at::opmath_type<scalar_t>>& p, int64_t class_offset,
                           at::Tensor& loss, at::Tensor& row_max, at::Tensor& row_sumexp,
                           at::Tensor& target_logit) {
  using T = at::opmath_type<scalar_t>;
  const int64_t rows = cos_logits.size(0), cols = cos_logits.size(1);
  const scalar_t* x_ptr = cos_logits.const_data_ptr<scalar_t>();
  T* loss_ptr = loss.mutable_data_ptr<T>();
  T* max_ptr = row_max.mutable_data_ptr<T>();
  T* sum_ptr = row_sumexp.mutable_data_ptr<T>();
  T* target_ptr = target_logit.mutable_data_ptr<T>();
  const T s = p.s;

  at::parallel_for(0, rows, rows_per_task(cols), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(std::is_same_v<T, scalar_t> ? 0 : kChunk);
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* x = x_ptr + i * cols;
      const int64_t t = local_target(labels[i], class_offset, cols);
      const T z_t = t >= 0 ? margin_target_logit(static_cast<T>(x[t]), p) : T(0);
      T m = -std::numeric_limits<T>::infinity();
      double sum = 0.0;
      for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
        const int64_t n = std::min(kChunk, cols - c0);
        const T* v = chunk_in_compute_type(x + c0, n, buf.data());
        // The target column is left out of the vector loops: [0, a_len) and
        // [b_begin, n) are the plain columns of the chunk.
        const bool target_here = t >= c0 && t < c0 + n;
        const int64_t a_len = target_here ? t - c0 : n;
        const int64_t b_begin = target_here ? a_len + 1 : n;
        // s > 0, and rounding is monotone: max(s * x) = s * max(x).
        T chunk_max = s * std::max(max_of(v, a_len), max_of(v + b_begin, n - b_begin));
        if (target_here && z_t > chunk_max) chunk_max = z_t;
        if (chunk_max > m) {
          sum *= std::exp(static_cast<double>(m) - static_cast<double>(chunk_max));
          m = chunk_max;
        }
        double chunk_sum = static_cast<double>(sum_exp(v, a_len, s, m)) +
                           static_cast<double>(sum_exp(v + b_begin, n - b_begin, s, m));
        if (target_here) chunk_sum += static_cast<double>(rf_exp(z_t - m));
        sum += chunk_sum;
      }
      max_ptr[i] = m;
      sum_ptr[i] = static_cast<T>(sum);
      target_ptr[i] = z_t;
      loss_ptr[i] = t >= 0 ? static_cast<T>((static_cast<double>(m) + std::log(sum)) -
                                            static_cast<double>(z_t))
                           : T(0);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> margin_cross_entropy_cpu(
    const at::Tensor& cos_logits, const at::Tensor& labels, double s, double m1, double m2,
    double m3, int64_t class_offset, int64_t num_classes, bool /*exact_gradient*/) {
  check_margin_cross_entropy_args(cos_logits, labels, s, m1, m2, m3, class_offset, num_classes);
  const auto labels_long = labels.to(at::kLong).contiguous();
  check_margin_labels_cpu(labels_long, num_classes);

  const auto x = cos_logits.contiguous();
  const auto options = x.options().dtype(margin_loss_dtype(x.scalar_type()));
  const int64_t rows = x.size(0);
  auto loss = at::empty({rows}, options), row_max = at::empty({rows}, options),
       row_sumexp = at::empty({rows}, options), target_logit = at::empty({rows}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "margin_cross_entropy_cpu", [&] {
                                    using T = at::opmath_type<scalar_t>;
                                    margin_forward_kernel<scalar_t>(
                                        x, labels_long.const_data_ptr<int64_t>(),
                                        make_margin_params<T>(s, m1, m2, m3), class_offset, loss,
                                        row_max, row_sumexp, target_logit);
                                  });
  return {loss, row_max, row_sumexp, target_logit};
}

// ---------------------------------------------------------------- backward

template <typename scalar_t>
void margin_backward_kernel(const at::Tensor& cos_logits, const int64_t* labels,
                            const at::Tensor& grad_loss, const at::Tensor& grad_sumexp,
                            const at::Tensor& grad_target, const at::Tensor& row_max,
                            const at::Tensor& row_sumexp,
                            const MarginParams<at::opmath_type<scalar_t>>& p,
                            int64_t class_offset, bool exact_gradient, at::Tensor& grad) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<T, scalar_t>;
  const int64_t rows = cos_logits.size(0), cols = cos_logits.size(1);
  const scalar_t* x_ptr = cos_logits.const_data_ptr<scalar_t>();
  const T* gl_ptr = grad_loss.const_data_ptr<T>();
  const T* gs_ptr = grad_sumexp.const_data_ptr<T>();
  const T* gt_ptr = grad_target.const_data_ptr<T>();
  const T* max_ptr = row_max.const_data_ptr<T>();
  const T* sum_ptr = row_sumexp.const_data_ptr<T>();
  scalar_t* grad_ptr = grad.mutable_data_ptr<scalar_t>();
  const T s = p.s;

  at::parallel_for(0, rows, rows_per_task(cols), [&](int64_t begin, int64_t end) {
    std::vector<T> in_buf(kDirect ? 0 : kChunk), out_buf(kDirect ? 0 : kChunk);
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* x = x_ptr + i * cols;
      scalar_t* dx = grad_ptr + i * cols;
      const int64_t t = local_target(labels[i], class_offset, cols);
      const T m = max_ptr[i], sum = sum_ptr[i];
      // A row without a target here has the constant loss 0: its g_loss is
      // dropped. d loss / d z_j = softmax_j - [j == t], d sumexp / d z_j =
      // exp(z_j - max) (max held fixed), d target / d z_t = 1.
      const T g_loss = t >= 0 ? gl_ptr[i] : T(0);
      const T a = g_loss / sum + gs_ptr[i];
      const T coef = s * a;
      for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
        const int64_t n = std::min(kChunk, cols - c0);
        const T* v = chunk_in_compute_type(x + c0, n, in_buf.data());
        if constexpr (kDirect) {
          scaled_exp(v, n, s, m, coef, dx + c0);
        } else {
          scaled_exp(v, n, s, m, coef, out_buf.data());
          for (int64_t k = 0; k < n; ++k) dx[c0 + k] = static_cast<scalar_t>(out_buf[k]);
        }
      }
      if (t >= 0) {
        const T x_t = static_cast<T>(x[t]);
        const T e_t = rf_exp(margin_target_logit(x_t, p) - m);
        const T dz_dx = exact_gradient ? s * margin_cosine_grad(x_t, p) : s;
        dx[t] = static_cast<scalar_t>(dz_dx * (e_t * a + (gt_ptr[i] - g_loss)));
      }
    }
  });
}

at::Tensor margin_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& grad_sumexp, const at::Tensor& grad_target,
    const at::Tensor& cos_logits, const at::Tensor& labels, const at::Tensor& row_max,
    const at::Tensor& row_sumexp, double s, double m1, double m2, double m3, int64_t class_offset,
    bool exact_gradient) {
  check_margin_cross_entropy_backward_args(grad_loss, grad_sumexp, grad_target, cos_logits, labels,
                                           row_max, row_sumexp, s, m1, m2, m3, class_offset);
  const auto x = cos_logits.contiguous();
  const auto labels_long = labels.to(at::kLong).contiguous();
  const auto gl = grad_loss.contiguous(), gs = grad_sumexp.contiguous(),
             gt = grad_target.contiguous(), mx = row_max.contiguous(),
             sm = row_sumexp.contiguous();
  auto grad = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "margin_cross_entropy_backward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        margin_backward_kernel<scalar_t>(x, labels_long.const_data_ptr<int64_t>(), gl, gs, gt, mx,
                                         sm, make_margin_params<T>(s, m1, m2, m3), class_offset,
                                         exact_gradient, grad);
      });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("margin_cross_entropy", &margin_cross_entropy_cpu);
  m.impl("margin_cross_entropy_backward", &margin_cross_entropy_backward_cpu);
}

}  // namespace retinaface
