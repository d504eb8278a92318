// nms and batched_nms for the CUDA dispatch key: the same checks as the CPU
// registration (common/nms_checks.h), a stable descending sort of the scores
// with torch, then the kernels of nms_kernel.cu. The output length depends on the
// data, so the host reads back the kept count once; the finiteness flags come
// back in the same copy.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "common/nms_checks.h"
#include "cuda/device_type.h"
#include "cuda/nms_kernel.h"

namespace retinaface {
namespace {

using cuda::DeviceType;

// Error path only (the op fails anyway): the first non-finite element of the
// flagged row, for the same message as the CPU's.
void report_non_finite(const char* op, const char* name, const at::Tensor& values, int64_t row,
                       at::ScalarType compute) {
  const auto host = values.select(0, row).to(compute).to(at::kDouble).cpu().reshape({-1});
  const double* v = host.data_ptr<double>();
  for (int64_t k = 0; k < host.numel(); ++k) check_finite_value(op, name, v[k], row);
}

template <typename In, typename S, typename T>
cudaError_t launch(const at::Tensor& boxes, const at::Tensor& sorted_scores,
                   const at::Tensor& order, const at::Tensor& classes, T threshold,
                   at::Tensor& sorted_boxes, at::Tensor& sorted_classes, at::Tensor& mask,
                   at::Tensor& scan_scratch, at::Tensor& keep, at::Tensor& status,
                   cudaStream_t stream) {
  using DeviceIn = typename DeviceType<In>::type;
  return cuda::launch_nms<DeviceIn, S, T>(
      reinterpret_cast<const DeviceIn*>(boxes.data_ptr<In>()), sorted_scores.data_ptr<S>(),
      order.data_ptr<int64_t>(), classes.defined() ? classes.data_ptr<int64_t>() : nullptr,
      boxes.size(0), threshold, sorted_boxes.data_ptr<T>(),
      sorted_classes.defined() ? sorted_classes.data_ptr<int64_t>() : nullptr,
      reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()),
      scan_scratch.defined() ? scan_scratch.data_ptr() : nullptr, keep.data_ptr<int64_t>(),
      status.data_ptr<int64_t>(), stream);
}

template <typename S, typename T>
cudaError_t dispatch_boxes(const at::Tensor& boxes, const at::Tensor& sorted_scores,
                           const at::Tensor& order, const at::Tensor& classes, T threshold,
                           at::Tensor& sorted_boxes, at::Tensor& sorted_classes, at::Tensor& mask,
                           at::Tensor& scan_scratch, at::Tensor& keep, at::Tensor& status,
                           cudaStream_t stream) {
  switch (boxes.scalar_type()) {
    case at::kFloat:
      return launch<float, S, T>(boxes, sorted_scores, order, classes, threshold, sorted_boxes,
                                 sorted_classes, mask, scan_scratch, keep, status, stream);
    case at::kHalf:
      return launch<at::Half, S, T>(boxes, sorted_scores, order, classes, threshold,
                                    sorted_boxes, sorted_classes, mask, scan_scratch, keep,
                                    status, stream);
    case at::kBFloat16:
      return launch<at::BFloat16, S, T>(boxes, sorted_scores, order, classes, threshold,
                                        sorted_boxes, sorted_classes, mask, scan_scratch, keep,
                                        status, stream);
    default:
      TORCH_INTERNAL_ASSERT(false, "float64 boxes take the double path");
  }
}

// Boxes are computed in float32 (float32, float16, bfloat16) or float64, and
// the threshold is rounded to that type, as on the CPU.
at::Tensor run_nms(const char* op, const at::Tensor& boxes_in, const at::Tensor& scores,
                   const std::optional<at::Tensor>& idxs, double iou_threshold) {
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const int64_t n = boxes_in.size(0);
  const auto index_options = boxes_in.options().dtype(at::kLong);
  if (n == 0) return at::empty({0}, index_options);
  // Before any allocation: the [n, n / 64] mask of a larger n could not be
  // launched (and would not fit in memory anyway).
  TORCH_CHECK(n <= cuda::kMaxNmsBoxes, op, "(): the CUDA kernel takes at most ", cuda::kMaxNmsBoxes,
              " boxes (its suppression mask has n x n/64 words and a grid of n/64 x n/64 blocks, "
              "at most 65535 per dimension), got ", n,
              "; keep fewer candidates first (a score threshold or a pre-NMS top-k, as "
              "detect_postprocess does)");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Scores sort as float32 (exact for float16/bfloat16) or float64. Adding
  // zero turns -0.0 into +0.0, so that the two tie (broken by index) as in
  // the CPU's comparison, whatever the sort does with the sign bit.
  const auto key_dtype = scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto keys = scores.to(key_dtype) + 0;
  const auto [sorted_scores, order] = keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true);

  const bool is_double = boxes_in.scalar_type() == at::kDouble;
  const auto compute = is_double ? at::kDouble : at::kFloat;
  const auto boxes = boxes_in.contiguous();
  const auto classes = idxs ? idxs->to(at::kLong).contiguous() : at::Tensor();
  auto sorted_boxes = at::empty({n, 4}, boxes.options().dtype(compute));
  auto sorted_classes = idxs ? at::empty({n}, index_options) : at::Tensor();
  auto mask = at::empty({n, (n + 63) / 64}, index_options);
  const int64_t scratch_bytes = cuda::nms_scan_scratch_bytes(n);
  auto scan_scratch =
      scratch_bytes > 0 ? at::empty({scratch_bytes}, boxes.options().dtype(at::kByte)) : at::Tensor();
  auto keep = at::empty({n}, index_options);
  auto status = at::full({cuda::kNmsStatusSlots}, n, index_options);

  cudaError_t err;
  if (is_double) {
    const auto threshold = static_cast<double>(iou_threshold);
    err = key_dtype == at::kDouble
              ? launch<double, double, double>(boxes, sorted_scores, order, classes, threshold,
                                               sorted_boxes, sorted_classes, mask, scan_scratch,
                                               keep, status, stream)
              : launch<double, float, double>(boxes, sorted_scores, order, classes, threshold,
                                              sorted_boxes, sorted_classes, mask, scan_scratch,
                                              keep, status, stream);
  } else {
    const auto threshold = static_cast<float>(iou_threshold);
    err = key_dtype == at::kDouble
              ? dispatch_boxes<double, float>(boxes, sorted_scores, order, classes, threshold,
                                              sorted_boxes, sorted_classes, mask, scan_scratch,
                                              keep, status, stream)
              : dispatch_boxes<float, float>(boxes, sorted_scores, order, classes, threshold,
                                             sorted_boxes, sorted_classes, mask, scan_scratch,
                                             keep, status, stream);
  }
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));

  // The op's one host sync: kept count and finiteness flags together.
  const auto host_status = status.cpu();
  const int64_t* s = host_status.data_ptr<int64_t>();
  if (s[cuda::kNmsBadBoxRow] < n) {
    report_non_finite(op, "boxes", boxes, s[cuda::kNmsBadBoxRow], compute);
  }
  if (s[cuda::kNmsBadScoreRow] < n) {
    report_non_finite(op, "scores", scores, s[cuda::kNmsBadScoreRow], at::kDouble);
  }
  return keep.narrow(0, 0, s[cuda::kNmsKeptCount]);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_and_scores("nms", boxes, scores, iou_threshold);
  return run_nms("nms", boxes, scores, std::nullopt, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  check_boxes_and_scores("batched_nms", boxes, scores, iou_threshold);
  check_batched_nms_idxs(boxes, idxs);
  return run_nms("batched_nms", boxes, scores, idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace retinaface
