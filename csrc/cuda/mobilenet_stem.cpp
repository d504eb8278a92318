// mobilenet_stem on CUDA: the CPU's checks (common/mobilenet_stem_checks.h),
// scratch and output from the caching allocator (so CUDA-graph capture
// works), the launches on the current stream. Kernels: mobilenet_stem_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "common/mobilenet_stem_checks.h"
#include "cuda/mobilenet_stem_kernel.h"

namespace retinaface {
namespace {

at::Tensor mobilenet_stem_cuda(const at::Tensor& images_in, at::TensorList weights_in,
                               at::TensorList biases_in, at::ArrayRef<double> mean,
                               double negative_slope) {
  check_mobilenet_stem_args(images_in, weights_in, biases_in, mean, negative_slope);
  const c10::cuda::CUDAGuard guard(images_in.device());
  const at::Tensor images = images_in.contiguous();
  const int64_t batch = images.size(0), height = images.size(1), width = images.size(2);
  at::Tensor out = at::empty({batch, kStemOutputChannels, stem_output_size(height),
                              stem_output_size(width)},
                             images.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;

  std::vector<at::Tensor> keep;  // contiguous copies live until the launches are queued
  cuda::MobilenetStemParams params{};
  for (int k = 0; k < kStemLayers; ++k) {
    keep.push_back(weights_in[k].contiguous());
    params.weight[k] = keep.back().const_data_ptr<float>();
    keep.push_back(biases_in[k].contiguous());
    params.bias[k] = keep.back().const_data_ptr<float>();
  }
  for (int c = 0; c < 3; ++c) params.mean[c] = static_cast<float>(mean[c]);
  params.slope = static_cast<float>(negative_slope);
  at::Tensor workspace = at::empty({cuda::mobilenet_stem_workspace_floats(batch, height, width)},
                                   out.options());
  const cudaError_t err = cuda::launch_mobilenet_stem(
      images.const_data_ptr<uint8_t>(), batch, height, width, params,
      workspace.mutable_data_ptr<float>(), out.mutable_data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "mobilenet_stem(): CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("mobilenet_stem", &mobilenet_stem_cuda);
}

}  // namespace retinaface
