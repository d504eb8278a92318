// margin_cross_entropy / margin_cross_entropy_backward: registration of the
// CUDA kernels (csrc/cuda/margin_cross_entropy_kernel.cu).
//
// No host sync: the label values are not checked here (that would read
// device memory); the kernel gives a row with a label outside
// [-1, num_classes) a NaN loss instead of the CPU's error.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/margin_cross_entropy_checks.h"
#include "cuda/device_type.h"
#include "cuda/margin_cross_entropy_kernel.h"

namespace retinaface {
namespace {

using cuda::device_cptr;
using cuda::device_mptr;
using cuda::dispatch_device_type;

cuda::MarginRows margin_rows(const char* op, const at::Tensor& cos_logits, int64_t class_offset,
                             int64_t num_classes) {
  constexpr int64_t kLimit = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(cos_logits.size(0) < kLimit && cos_logits.size(1) < kLimit, op,
              "(): cos_logits is too large for the CUDA kernels (each dimension must be < 2^31), got ",
              shape_str(cos_logits));
  return {cos_logits.size(0), cos_logits.size(1), class_offset, num_classes};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> margin_cross_entropy_cuda(
    const at::Tensor& cos_logits, const at::Tensor& labels, double s, double m1, double m2,
    double m3, int64_t class_offset, int64_t num_classes, bool /*exact_gradient*/) {
  const char* op = "margin_cross_entropy";
  check_margin_cross_entropy_args(cos_logits, labels, s, m1, m2, m3, class_offset, num_classes);
  const cuda::MarginRows shape = margin_rows(op, cos_logits, class_offset, num_classes);
  const c10::cuda::CUDAGuard guard(cos_logits.device());

  const auto x = cos_logits.contiguous();
  const auto labels_long = labels.to(at::kLong).contiguous();
  const auto options = x.options().dtype(margin_loss_dtype(x.scalar_type()));
  auto loss = at::empty({shape.rows}, options), row_max = at::empty({shape.rows}, options),
       row_sumexp = at::empty({shape.rows}, options),
       target_logit = at::empty({shape.rows}, options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  dispatch_device_type(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = cuda::compute_t<T>;
    err = cuda::launch_margin_cross_entropy_forward<T>(
        device_cptr<T>(x), labels_long.const_data_ptr<int64_t>(), shape,
        make_margin_params<Acc>(s, m1, m2, m3), device_mptr<Acc>(loss), device_mptr<Acc>(row_max),
        device_mptr<Acc>(row_sumexp), device_mptr<Acc>(target_logit), stream);
  });
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return {loss, row_max, row_sumexp, target_logit};
}

at::Tensor margin_cross_entropy_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& grad_sumexp, const at::Tensor& grad_target,
    const at::Tensor& cos_logits, const at::Tensor& labels, const at::Tensor& row_max,
    const at::Tensor& row_sumexp, double s, double m1, double m2, double m3, int64_t class_offset,
    bool exact_gradient) {
  const char* op = "margin_cross_entropy_backward";
  check_margin_cross_entropy_backward_args(grad_loss, grad_sumexp, grad_target, cos_logits, labels,
                                           row_max, row_sumexp, s, m1, m2, m3, class_offset);
  // The backward reads no total class count: labels outside this shard are
  // simply not targets here.
  const cuda::MarginRows shape =
      margin_rows(op, cos_logits, class_offset, std::numeric_limits<int64_t>::max());
  const c10::cuda::CUDAGuard guard(cos_logits.device());

  const auto x = cos_logits.contiguous();
  const auto labels_long = labels.to(at::kLong).contiguous();
  // Per-row upstream gradients may be expanded scalars (stride 0).
  const auto gl = grad_loss.contiguous(), gs = grad_sumexp.contiguous(),
             gt = grad_target.contiguous(), mx = row_max.contiguous(),
             sm = row_sumexp.contiguous();
  auto grad = at::empty(x.sizes(), x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  dispatch_device_type(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = cuda::compute_t<T>;
    err = cuda::launch_margin_cross_entropy_backward<T>(
        device_cptr<T>(x), labels_long.const_data_ptr<int64_t>(), device_cptr<Acc>(gl),
        device_cptr<Acc>(gs), device_cptr<Acc>(gt), device_cptr<Acc>(mx), device_cptr<Acc>(sm),
        shape, make_margin_params<Acc>(s, m1, m2, m3), exact_gradient, device_mptr<T>(grad),
        stream);
  });
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("margin_cross_entropy", &margin_cross_entropy_cuda);
  m.impl("margin_cross_entropy_backward", &margin_cross_entropy_backward_cuda);
}

}  // namespace retinaface
