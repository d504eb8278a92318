// train_augment on CUDA: argument checks (shared with the CPU kernel), dtype
// handling and the launch on the current stream. The kernel is
// csrc/cuda/train_augment_kernel.cu. The params rows are not read here (that
// would synchronise): the Python API checks them on the host, the kernel
// clamps every read into the image.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <optional>

#include "common/train_augment_checks.h"
#include "cuda/train_augment_kernel.h"

namespace retinaface {
namespace {

template <typename T, typename CudaT>
void launch(const at::Tensor& images, const at::Tensor& params, int64_t size,
            const cuda::TrainAugmentConstants& constants, at::Tensor& out, cudaStream_t stream) {
  const cudaError_t err = cuda::launch_train_augment<CudaT>(
      images.const_data_ptr<uint8_t>(), images.size(0), images.size(1), images.size(2),
      params.const_data_ptr<double>(), static_cast<int>(size), constants,
      reinterpret_cast<CudaT*>(out.mutable_data_ptr<T>()), stream);
  TORCH_CHECK(err == cudaSuccess, "train_augment(): CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor train_augment_cuda(const at::Tensor& images, const at::Tensor& params, int64_t size,
                              at::ArrayRef<double> mean, std::optional<at::ScalarType> dtype) {
  const at::ScalarType out_dtype = train_augment_dtype(dtype);
  check_train_augment_args(images, params, size, mean);
  TORCH_CHECK(images.size(0) <= 65535, "train_augment(): at most 65535 images per call on CUDA (one grid row "
              "each), got ", images.size(0));
  const c10::cuda::CUDAGuard guard(images.device());
  const auto src = images.contiguous();
  const auto rows = params.contiguous();
  at::Tensor out = at::empty(train_augment_output_shape(src.size(0), size, out_dtype), src.options().dtype(out_dtype));
  cuda::TrainAugmentConstants constants;
  for (int c = 0; c < 3; ++c) constants.mean[c] = static_cast<float>(mean[c]);
  train_augment_fill(mean, constants.fill);
  constants.hsv_block_pixels = augment::opencv_hsv_block_pixels();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(images.device().index()).stream();
  switch (out_dtype) {
    case at::kByte:
      launch<uint8_t, uint8_t>(src, rows, size, constants, out, stream);
      break;
    case at::kFloat:
      launch<float, float>(src, rows, size, constants, out, stream);
      break;
    case at::kHalf:
      launch<at::Half, __half>(src, rows, size, constants, out, stream);
      break;
    default:
      launch<at::BFloat16, __nv_bfloat16>(src, rows, size, constants, out, stream);
      break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("train_augment", &train_augment_cuda);
}

}  // namespace retinaface
