// Box coding on the CPU: encode / decode of boxes and landmarks against priors.
//
// The first argument is [..., P, R] (R = 4 for boxes, 10 for landmarks) with
// any number of leading batch dims; priors [P, 4] (cx, cy, w, h), of any
// floating dtype, apply along the second-to-last dim. Every row is
// independent, so the kernel runs at::parallel_for over the flattened rows. float16/bfloat16 are computed in
// float32 (at::opmath_type), float64 in double, and the result is written in
// the input dtype. The maths is the shared csrc/common/box_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "common/box_coding_checks.h"
#include "common/box_math.h"

namespace retinaface {
namespace {

// Rows per parallel task: the per-row work is a few flops (plus an exp or log
// for boxes), so small inputs stay on one thread.
constexpr int64_t kRowsPerTask = 4096;

// Runs row_fn(in_row, pcx, pcy, pw, ph, var0, var1, out_row) over every row of
// input, in the compute type opmath_t. Rows are converted to opmath_t once on
// the way in and once on the way out, as the reference's .float() does. The
// priors are read in opmath_t whatever their dtype (converted up front: a
// no-op for float32 priors with float32/float16/bfloat16 input, the AMP case).
template <int64_t kInSize, int64_t kOutSize, typename RowFn>
at::Tensor map_rows(const at::Tensor& input, const at::Tensor& priors,
                    at::ArrayRef<double> variances, RowFn row_fn) {
  const auto in = input.contiguous();
  const auto pri = priors.to(coding_compute_dtype(input)).contiguous();
  auto output = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t num_priors = in.size(-2);
  const int64_t rows = in.numel() / kInSize;
  if (rows == 0) return output;

  // The dispatch name must be a literal; errors name the op in the checks above.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "box_coding", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    const opmath_t* prior_data = pri.const_data_ptr<opmath_t>();
    scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
    const opmath_t var0 = static_cast<opmath_t>(variances[0]);
    const opmath_t var1 = static_cast<opmath_t>(variances[1]);

    at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
      opmath_t in_row[kInSize];
      opmath_t out_row[kOutSize];
      int64_t p = begin % num_priors;  // walks the priors alongside the rows
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* src = in_data + r * kInSize;
        for (int64_t k = 0; k < kInSize; ++k) in_row[k] = static_cast<opmath_t>(src[k]);
        const opmath_t* prior = prior_data + p * 4;
        row_fn(in_row, prior[0], prior[1], prior[2], prior[3], var0, var1, out_row);
        scalar_t* dst = out_data + r * kOutSize;
        for (int64_t k = 0; k < kOutSize; ++k) dst[k] = static_cast<scalar_t>(out_row[k]);
        if (++p == num_priors) p = 0;
      }
    });
  });
  return output;
}

at::Tensor encode_cpu(const at::Tensor& boxes, const at::Tensor& priors,
                      at::ArrayRef<double> variances) {
  check_coding_args("encode", "boxes", boxes, priors, variances, 4);
  return map_rows<4, 4>(boxes, priors, variances,
                        [](const auto* b, auto pcx, auto pcy, auto pw, auto ph, auto var0,
                           auto var1, auto* out) {
                          using T = std::remove_cv_t<std::remove_pointer_t<decltype(b)>>;
                          const BoxT<T> gt{b[0], b[1], b[2], b[3]};
                          encode_box(gt, pcx, pcy, pw, ph, var0, var1, out);
                        });
}

at::Tensor decode_cpu(const at::Tensor& loc, const at::Tensor& priors,
                      at::ArrayRef<double> variances) {
  check_coding_args("decode", "loc", loc, priors, variances, 4);
  return map_rows<4, 4>(loc, priors, variances,
                        [](const auto* l, auto pcx, auto pcy, auto pw, auto ph, auto var0,
                           auto var1, auto* out) {
                          const auto box = decode_box(l, pcx, pcy, pw, ph, var0, var1);
                          out[0] = box.x1;
                          out[1] = box.y1;
                          out[2] = box.x2;
                          out[3] = box.y2;
                        });
}

// Landmarks use variances[0] only, as biubug6's encode_landm / decode_landm;
// variances[1] is still validated so every op accepts the same variances.
at::Tensor encode_landmarks_cpu(const at::Tensor& landmarks, const at::Tensor& priors,
                                at::ArrayRef<double> variances) {
  check_coding_args("encode_landmarks", "landmarks", landmarks, priors, variances, 10);
  return map_rows<10, 10>(landmarks, priors, variances,
                          [](const auto* pts, auto pcx, auto pcy, auto pw, auto ph, auto var0,
                             auto /*var1*/, auto* out) {
                            encode_landmarks(pts, pcx, pcy, pw, ph, var0, out);
                          });
}

at::Tensor decode_landmarks_cpu(const at::Tensor& landmarks, const at::Tensor& priors,
                                at::ArrayRef<double> variances) {
  check_coding_args("decode_landmarks", "landmarks", landmarks, priors, variances, 10);
  return map_rows<10, 10>(landmarks, priors, variances,
                          [](const auto* offsets, auto pcx, auto pcy, auto pw, auto ph,
                             auto var0, auto /*var1*/, auto* out) {
                            decode_landmarks(offsets, pcx, pcy, pw, ph, var0, out);
                          });
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("encode", &encode_cpu);
  m.impl("decode", &decode_cpu);
  m.impl("encode_landmarks", &encode_landmarks_cpu);
  m.impl("decode_landmarks", &decode_landmarks_cpu);
}

}  // namespace retinaface
