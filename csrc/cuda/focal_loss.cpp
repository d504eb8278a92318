// sigmoid_focal_loss / softmax_focal_loss and their backward ops:
// registration of the CUDA kernels (csrc/cuda/focal_loss_kernel.cu).
//
// Nothing here reads device memory on the host: a normalizer on the device and
// the incoming gradient are read by the kernels, the 'mean' divisor is counted
// on the device, and every output has a static shape (CUDA-graph
// capturable). A CPU normalizer is host memory, read here (no device sync).
// Unlike the CPU, label values are not validated (that would need a host
// sync): rows with an invalid label are ignored.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "common/focal_loss_checks.h"
#include "cuda/device_type.h"
#include "cuda/focal_loss_kernel.h"

namespace retinaface {
namespace {

using cuda::device_cptr;
using cuda::device_mptr;
using cuda::dispatch_device_type;

// The normalizer as the kernels read it. `storage` keeps the float64 device
// copy alive until the launch (the conversion is an asynchronous kernel).
cuda::FocalNormalizer focal_normalizer(const std::optional<at::Tensor>& normalizer,
                                       at::Tensor& storage) {
  if (!normalizer.has_value()) return {nullptr, 1.0, false};
  if (normalizer->is_cpu()) return {nullptr, normalizer->item<double>(), true};
  storage = normalizer->to(at::kDouble).contiguous();
  return {storage.const_data_ptr<double>(), 1.0, true};
}

cuda::FocalProblem focal_problem(const FocalShape& shape, double alpha, double gamma,
                                 FocalReduction reduction, int64_t background_index,
                                 int64_t ignore_index) {
  return {shape.rows, shape.classes, alpha, gamma, reduction, background_index, ignore_index};
}

// Sigmoid targets as the kernels take them: float targets in the compute
// type, or int64 labels.
at::Tensor sigmoid_targets(const FocalShape& shape, const at::Tensor& targets,
                           const at::Tensor& inputs) {
  return shape.labels ? targets.to(at::kLong).contiguous()
                      : targets.to(focal_loss_dtype(inputs)).contiguous();
}

at::Tensor reduced_output(FocalReduction reduction, at::IntArrayRef loss_shape,
                          const at::Tensor& input) {
  const auto options = input.options().dtype(focal_loss_dtype(input));
  return reduction == FocalReduction::kNone ? at::empty(loss_shape, options)
                                            : at::empty({}, options);
}

at::Tensor workspace_for(FocalReduction reduction, int64_t items, const at::Tensor& input) {
  const int64_t bytes = reduction == FocalReduction::kNone
                            ? 0
                            : static_cast<int64_t>(cuda::focal_loss_workspace_bytes(items));
  return at::empty({bytes}, input.options().dtype(at::kByte));
}

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& inputs, const at::Tensor& targets,
                                   double alpha, double gamma, c10::string_view reduction_name,
                                   const std::optional<at::Tensor>& normalizer,
                                   int64_t background_index, int64_t ignore_index) {
  const char* op = "sigmoid_focal_loss";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape = check_sigmoid_focal_loss_args(op, inputs, targets, normalizer, alpha,
                                                         gamma, reduction, background_index,
                                                         ignore_index);
  const c10::cuda::CUDAGuard guard(inputs.device());
  const auto x = inputs.contiguous();
  const auto t = sigmoid_targets(shape, targets, inputs);
  at::Tensor normalizer_storage;
  const cuda::FocalNormalizer norm = focal_normalizer(normalizer, normalizer_storage);
  const cuda::FocalProblem problem =
      focal_problem(shape, alpha, gamma, reduction, background_index, ignore_index);
  auto out = reduced_output(reduction, inputs.sizes(), inputs);
  auto workspace = workspace_for(reduction, inputs.numel(), inputs);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  dispatch_device_type(inputs.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = cuda::compute_t<T>;
    err = cuda::launch_sigmoid_focal_loss_forward<T>(
        device_cptr<T>(x), shape.labels ? nullptr : device_cptr<Acc>(t),
        shape.labels ? t.const_data_ptr<int64_t>() : nullptr, problem, norm,
        workspace.mutable_data_ptr(), device_mptr<Acc>(out), stream);
  });
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& inputs,
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
  const c10::cuda::CUDAGuard guard(inputs.device());
  const auto x = inputs.contiguous();
  auto grad_input = at::empty(inputs.sizes(), x.options());
  if (inputs.numel() == 0) return grad_input;
  const auto t = sigmoid_targets(shape, targets, inputs);
  // Read by the kernel where it is (the loss dtype; .to() is a no-op or an
  // asynchronous conversion).
  const auto upstream = grad.to(focal_loss_dtype(inputs)).contiguous();
  at::Tensor normalizer_storage;
  const cuda::FocalNormalizer norm = focal_normalizer(normalizer, normalizer_storage);
  const cuda::FocalProblem problem =
      focal_problem(shape, alpha, gamma, reduction, background_index, ignore_index);
  auto count = at::empty({1}, inputs.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  dispatch_device_type(inputs.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = cuda::compute_t<T>;
    err = cuda::launch_sigmoid_focal_loss_backward<T>(
        device_cptr<Acc>(upstream), device_cptr<T>(x), shape.labels ? nullptr : device_cptr<Acc>(t),
        shape.labels ? t.const_data_ptr<int64_t>() : nullptr, problem, norm,
        reinterpret_cast<unsigned long long*>(count.mutable_data_ptr<int64_t>()),
        device_mptr<T>(grad_input), stream);
  });
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return grad_input;
}

at::Tensor softmax_focal_loss_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                   double alpha, double gamma, c10::string_view reduction_name,
                                   const std::optional<at::Tensor>& normalizer,
                                   int64_t ignore_index) {
  const char* op = "softmax_focal_loss";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape =
      check_softmax_focal_loss_args(op, logits, labels, normalizer, alpha, gamma, reduction);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto x = logits.contiguous();
  const auto y = labels.to(at::kLong).contiguous();
  at::Tensor normalizer_storage;
  const cuda::FocalNormalizer norm = focal_normalizer(normalizer, normalizer_storage);
  const cuda::FocalProblem problem =
      focal_problem(shape, alpha, gamma, reduction, /*background_index=*/0, ignore_index);
  auto out = reduced_output(reduction, labels.sizes(), logits);
  auto workspace = workspace_for(reduction, shape.rows, logits);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  dispatch_device_type(logits.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = cuda::compute_t<T>;
    err = cuda::launch_softmax_focal_loss_forward<T>(device_cptr<T>(x), y.const_data_ptr<int64_t>(),
                                                     problem, norm, workspace.mutable_data_ptr(),
                                                     device_mptr<Acc>(out), stream);
  });
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor softmax_focal_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                            const at::Tensor& labels, double alpha, double gamma,
                                            c10::string_view reduction_name,
                                            const std::optional<at::Tensor>& normalizer,
                                            int64_t ignore_index) {
  const char* op = "softmax_focal_loss_backward";
  const FocalReduction reduction = parse_focal_reduction(op, reduction_name);
  const FocalShape shape =
      check_softmax_focal_loss_args(op, logits, labels, normalizer, alpha, gamma, reduction);
  check_focal_grad(op, grad, labels.sizes(), reduction, "logits", logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto x = logits.contiguous();
  auto grad_input = at::empty(logits.sizes(), x.options());
  if (shape.rows == 0) return grad_input;
  const auto y = labels.to(at::kLong).contiguous();
  const auto upstream = grad.to(focal_loss_dtype(logits)).contiguous();
  at::Tensor normalizer_storage;
  const cuda::FocalNormalizer norm = focal_normalizer(normalizer, normalizer_storage);
  const cuda::FocalProblem problem =
      focal_problem(shape, alpha, gamma, reduction, /*background_index=*/0, ignore_index);
  auto count = at::empty({1}, logits.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  dispatch_device_type(logits.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = cuda::compute_t<T>;
    err = cuda::launch_softmax_focal_loss_backward<T>(
        device_cptr<Acc>(upstream), device_cptr<T>(x), y.const_data_ptr<int64_t>(), problem, norm,
        reinterpret_cast<unsigned long long*>(count.mutable_data_ptr<int64_t>()),
        device_mptr<T>(grad_input), stream);
  });
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cuda);
  m.impl("sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cuda);
  m.impl("softmax_focal_loss", &softmax_focal_loss_cuda);
  m.impl("softmax_focal_loss_backward", &softmax_focal_loss_backward_cuda);
}

}  // namespace retinaface
