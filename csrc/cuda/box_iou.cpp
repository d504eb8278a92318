// box_iou on CUDA: argument checks (shared with the CPU kernel), dtype
// handling and the launch on the current stream. The kernel is csrc/cuda/box_iou_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "common/box_iou_checks.h"
#include "cuda/box_iou_kernel.h"

namespace retinaface {
namespace {

template <typename T, typename CudaT>
void launch(const at::Tensor& a, const at::Tensor& b, at::Tensor& iou, cudaStream_t stream) {
  const cudaError_t err = cuda::launch_box_iou<CudaT>(
      reinterpret_cast<const CudaT*>(a.const_data_ptr<T>()),
      reinterpret_cast<const CudaT*>(b.const_data_ptr<T>()), a.size(0), b.size(0),
      reinterpret_cast<CudaT*>(iou.mutable_data_ptr<T>()), stream);
  TORCH_CHECK(err == cudaSuccess, "box_iou(): CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_args(boxes1, boxes2);
  const c10::cuda::CUDAGuard guard(boxes1.device());

  // The kernel reads both inputs in one element type. Mixed dtypes are rare
  // and the inputs small next to the [N, M] output, so they go through
  // float32, which is where the CPU kernel computes anyway (same values).
  at::Tensor a = boxes1, b = boxes2;
  if (a.scalar_type() != b.scalar_type()) {
    a = a.to(at::kFloat);
    b = b.to(at::kFloat);
  }
  a = a.contiguous();
  b = b.contiguous();
  at::Tensor iou = at::empty({a.size(0), b.size(0)}, a.options());
  if (iou.numel() > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(boxes1.device().index()).stream();
    switch (a.scalar_type()) {
      case at::kFloat:
        launch<float, float>(a, b, iou, stream);
        break;
      case at::kDouble:
        launch<double, double>(a, b, iou, stream);
        break;
      case at::kHalf:
        launch<at::Half, __half>(a, b, iou, stream);
        break;
      case at::kBFloat16:
        launch<at::BFloat16, __nv_bfloat16>(a, b, iou, stream);
        break;
      default:
        TORCH_CHECK(false, "box_iou(): unsupported dtype ", a.scalar_type());
    }
  }
  return iou.to(boxes1.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
}

}  // namespace retinaface
