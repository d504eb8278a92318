// hard_negative_mask: registration of the CUDA kernel (csrc/cuda/hard_negative_mask_kernel.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "common/hard_negative_mask_checks.h"
#include "cuda/hard_negative_mask_kernel.h"

namespace retinaface {
namespace {

template <typename T>
cudaError_t launch(const at::Tensor& loss, const at::Tensor& pos, int64_t neg_pos_ratio,
                   at::Tensor& mask, cudaStream_t stream) {
  return cuda::launch_hard_negative_mask<T>(
      reinterpret_cast<const T*>(loss.const_data_ptr()), pos.const_data_ptr<bool>(),
      loss.size(0), loss.size(1), neg_pos_ratio, mask.mutable_data_ptr<bool>(), stream);
}

at::Tensor hard_negative_mask_cuda(const at::Tensor& conf_loss, const at::Tensor& positive,
                                   int64_t neg_pos_ratio) {
  check_hard_negative_mask_args(conf_loss, positive, neg_pos_ratio);
  // One block per image, int prior indices inside a block (with headroom for
  // the block-stride loops).
  constexpr int64_t kLimit = std::numeric_limits<int32_t>::max() / 2;
  TORCH_CHECK(conf_loss.size(1) < kLimit && conf_loss.size(0) < kLimit,
              "hard_negative_mask(): conf_loss is too large for the CUDA kernel, got ",
              shape_str(conf_loss));
  const c10::cuda::CUDAGuard guard(conf_loss.device());
  const auto loss = conf_loss.contiguous();
  const auto pos = positive.contiguous();
  auto mask = at::empty(conf_loss.sizes(), pos.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  switch (loss.scalar_type()) {
    case at::kFloat: err = launch<float>(loss, pos, neg_pos_ratio, mask, stream); break;
    case at::kDouble: err = launch<double>(loss, pos, neg_pos_ratio, mask, stream); break;
    case at::kHalf: err = launch<__half>(loss, pos, neg_pos_ratio, mask, stream); break;
    case at::kBFloat16: err = launch<__nv_bfloat16>(loss, pos, neg_pos_ratio, mask, stream); break;
    default: TORCH_CHECK(false, "hard_negative_mask(): unexpected dtype ", loss.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, "hard_negative_mask(): CUDA launch failed: ",
              cudaGetErrorString(err));
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("hard_negative_mask", &hard_negative_mask_cuda);
}

}  // namespace retinaface
