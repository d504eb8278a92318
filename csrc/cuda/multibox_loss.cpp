// multibox_loss / multibox_loss_backward: registration of the CUDA kernels
// (csrc/cuda/multibox_loss_kernel.cu).
//
// Nothing here reads device memory on the host: matching runs through the
// dispatcher (the CUDA match kernel for CUDA tensors), the counts N and N1,
// the number of hard negatives and the incoming loss gradients are all read
// by the kernels, and every output has a static shape. Unlike the CPU, the
// values of gt_counts and prior_assignment are not validated (that would need
// a host sync): match() handles the counts, and a corrupt prior_assignment
// entry is treated as an unused prior.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/multibox_loss_checks.h"
#include "cuda/device_type.h"
#include "cuda/multibox_loss_kernel.h"

namespace retinaface {
namespace {

using cuda::device_cptr;
using cuda::device_mptr;
using cuda::dispatch_device_type;

using MatchSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                  double);

at::Tensor match_through_dispatcher(const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                                    const at::Tensor& priors, double threshold,
                                    double min_best_iou) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("retinaface::match", "")
                             .typed<MatchSignature>();
  return op.call(gt_boxes, gt_counts, priors, threshold, min_best_iou);
}

// Sizes the kernels index with 32-bit integers (B * P and beyond are 64-bit).
cuda::LossSizes loss_sizes(const char* op, const at::Tensor& loc, const at::Tensor& conf,
                           const at::Tensor& gt_boxes) {
  const cuda::LossSizes sizes{loc.size(0), loc.size(1), conf.size(2), gt_boxes.size(1)};
  constexpr int64_t kLimit = std::numeric_limits<int32_t>::max() / 2;
  TORCH_CHECK(sizes.batch < kLimit && sizes.num_priors < kLimit && sizes.num_classes < kLimit &&
                  sizes.max_gt < kLimit && sizes.batch * (sizes.num_priors / 1024 + 1) < kLimit,
              op, "(): inputs are too large for the CUDA kernels: loc ", shape_str(loc), ", conf ",
              shape_str(conf), ", gt_boxes ", shape_str(gt_boxes));
  return sizes;
}

at::ScalarType loss_dtype(const at::Tensor& loc) {
  return loc.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Priors and ground truth in the loss type, contiguous (small tensors; the
// conversion is an asynchronous kernel at most).
struct Targets {
  at::Tensor priors, boxes, landms, labels;
  Targets(at::ScalarType type, const at::Tensor& p, const at::Tensor& b, const at::Tensor& l,
          const at::Tensor& lab)
      : priors(p.to(type).contiguous()),
        boxes(b.to(type).contiguous()),
        landms(l.to(type).contiguous()),
        labels(lab.to(type).contiguous()) {}
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multibox_loss_cuda(
    const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& landms,
    const at::Tensor& priors, const at::Tensor& gt_boxes, const at::Tensor& gt_landms,
    const at::Tensor& gt_labels, const at::Tensor& gt_counts, double threshold,
    double min_best_iou, int64_t neg_pos_ratio, at::ArrayRef<double> variances) {
  const char* op = "multibox_loss";
  check_multibox_loss_args(loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, gt_counts,
                           threshold, min_best_iou, neg_pos_ratio, variances);
  const cuda::LossSizes sizes = loss_sizes(op, loc, conf, gt_boxes);
  const c10::cuda::CUDAGuard guard(loc.device());

  const auto counts = gt_counts.to(at::kLong).contiguous();
  at::Tensor assignment =
      match_through_dispatcher(gt_boxes, counts, priors, threshold, min_best_iou).contiguous();
  const auto options = loc.options().dtype(loss_dtype(loc));
  if (sizes.batch == 0 || sizes.num_priors == 0) {
    return {at::zeros({}, options), at::zeros({}, options), at::zeros({}, options), assignment};
  }
  auto loss_l = at::empty({}, options), loss_c = at::empty({}, options),
       loss_landm = at::empty({}, options);
  const auto loc_c = loc.contiguous(), conf_c = conf.contiguous(), landms_c = landms.contiguous();
  const Targets gt(loss_dtype(loc), priors, gt_boxes, gt_landms, gt_labels);
  const bool double_precision = loc.scalar_type() == at::kDouble;
  auto workspace = at::empty(
      {static_cast<int64_t>(cuda::multibox_loss_forward_workspace_bytes(sizes, double_precision))},
      loc.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  dispatch_device_type(loc.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = cuda::loss_t<T>;
    err = cuda::launch_multibox_loss_forward<T>(
        device_cptr<T>(loc_c), device_cptr<T>(conf_c), device_cptr<T>(landms_c),
        device_cptr<Acc>(gt.priors), device_cptr<Acc>(gt.boxes), device_cptr<Acc>(gt.landms),
        device_cptr<Acc>(gt.labels), sizes, neg_pos_ratio, variances[0], variances[1],
        assignment.mutable_data_ptr<int64_t>(), workspace.mutable_data_ptr(),
        device_mptr<Acc>(loss_l), device_mptr<Acc>(loss_c), device_mptr<Acc>(loss_landm), stream);
  });
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return {loss_l, loss_c, loss_landm, assignment};
}

cuda::ScalarKind scalar_kind(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return cuda::ScalarKind::kFloat64;
    case at::kHalf: return cuda::ScalarKind::kFloat16;
    case at::kBFloat16: return cuda::ScalarKind::kBFloat16;
    default: return cuda::ScalarKind::kFloat32;  // check_loss_grad allows nothing else
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multibox_loss_backward_cuda(
    const at::Tensor& grad_loss_l, const at::Tensor& grad_loss_c,
    const at::Tensor& grad_loss_landm, const at::Tensor& loc, const at::Tensor& conf,
    const at::Tensor& landms, const at::Tensor& priors, const at::Tensor& gt_boxes,
    const at::Tensor& gt_landms, const at::Tensor& gt_labels, const at::Tensor& prior_assignment,
    at::ArrayRef<double> variances) {
  const char* op = "multibox_loss_backward";
  check_multibox_loss_backward_args(grad_loss_l, grad_loss_c, grad_loss_landm, loc, conf, landms,
                                    priors, gt_boxes, gt_landms, gt_labels, prior_assignment,
                                    variances);
  const cuda::LossSizes sizes = loss_sizes(op, loc, conf, gt_boxes);
  const c10::cuda::CUDAGuard guard(loc.device());

  const auto loc_c = loc.contiguous(), conf_c = conf.contiguous(), landms_c = landms.contiguous();
  auto d_loc = at::empty(loc.sizes(), loc_c.options());
  auto d_conf = at::empty(conf.sizes(), conf_c.options());
  auto d_landms = at::empty(landms.sizes(), landms_c.options());
  if (sizes.batch == 0 || sizes.num_priors == 0) return {d_loc, d_conf, d_landms};

  const auto assignment = prior_assignment.contiguous();
  const Targets gt(loss_dtype(loc), priors, gt_boxes, gt_landms, gt_labels);
  // The incoming gradients are read by the kernel where they are (numel 1,
  // any dtype the checks allow): no .item(), no conversion.
  const cuda::LossGrads grads{
      {grad_loss_l.const_data_ptr(), grad_loss_c.const_data_ptr(), grad_loss_landm.const_data_ptr()},
      {scalar_kind(grad_loss_l), scalar_kind(grad_loss_c), scalar_kind(grad_loss_landm)}};
  auto counts = at::empty({2}, loc.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  dispatch_device_type(loc.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = cuda::loss_t<T>;
    err = cuda::launch_multibox_loss_backward<T>(
        grads, device_cptr<T>(loc_c), device_cptr<T>(conf_c), device_cptr<T>(landms_c),
        device_cptr<Acc>(gt.priors), device_cptr<Acc>(gt.boxes), device_cptr<Acc>(gt.landms),
        device_cptr<Acc>(gt.labels), assignment.const_data_ptr<int64_t>(), sizes, variances[0],
        variances[1], reinterpret_cast<unsigned long long*>(counts.mutable_data_ptr<int64_t>()),
        device_mptr<T>(d_loc), device_mptr<T>(d_conf), device_mptr<T>(d_landms), stream);
  });
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return {d_loc, d_conf, d_landms};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("multibox_loss", &multibox_loss_cuda);
  m.impl("multibox_loss_backward", &multibox_loss_backward_cuda);
}

}  // namespace retinaface
