// prior_box on CUDA: the checks and count shared with the CPU kernel, the
// level table (passed by value to the kernel: no host-to-device copy), the
// launch on the current stream. The BackendSelect kernel that routes
// device="cuda" here is in csrc/cpu/prior_box.cpp.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "common/prior_box_checks.h"
#include "cuda/prior_box_kernel.h"

namespace retinaface {
namespace {

at::Tensor prior_box_cuda(int64_t height, int64_t width, at::IntArrayRef min_sizes,
                          at::IntArrayRef sizes_per_level, at::IntArrayRef steps, bool clip,
                          std::optional<at::Device> device) {
  const int64_t count = checked_prior_count(height, width, min_sizes, sizes_per_level, steps);
  TORCH_CHECK(device.has_value() && device->is_cuda(), "prior_box(): expected a CUDA device, got ",
              device.has_value() ? device->str() : "None");
  const auto options = at::TensorOptions().dtype(at::kFloat).device(*device);
  if (steps.size() > static_cast<size_t>(cuda::kMaxPriorLevels) ||
      min_sizes.size() > static_cast<size_t>(cuda::kMaxPriorSizes)) {
    // More levels or sizes than the kernel's parameter table holds: computed
    // on the CPU and copied.
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("retinaface::prior_box", "")
                               .typed<at::Tensor(int64_t, int64_t, at::IntArrayRef, at::IntArrayRef,
                                                 at::IntArrayRef, bool, std::optional<at::Device>)>();
    return op.call(height, width, min_sizes, sizes_per_level, steps, clip, at::Device(at::kCPU))
        .to(options);
  }
  const c10::cuda::CUDAGuard guard(*device);
  auto priors = at::empty({count, 4}, options);

  cuda::PriorLevels levels{};
  levels.num_levels = static_cast<int>(steps.size());
  levels.height = static_cast<double>(height);
  levels.width = static_cast<double>(width);
  levels.clip = clip;
  int first_size = 0;
  for (int k = 0; k < levels.num_levels; ++k) {
    const int64_t cols = prior_grid_cells(width, steps[k]);
    levels.cols[k] = cols;
    levels.step[k] = static_cast<double>(steps[k]);
    levels.first_size[k] = first_size;
    levels.num_sizes[k] = static_cast<int>(sizes_per_level[k]);
    levels.first_prior[k + 1] = levels.first_prior[k] +
                                prior_grid_cells(height, steps[k]) * cols * sizes_per_level[k];
    first_size += levels.num_sizes[k];
  }
  for (size_t s = 0; s < min_sizes.size(); ++s) levels.min_size[s] = static_cast<double>(min_sizes[s]);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(priors.device().index()).stream();
  const cudaError_t err = cuda::launch_prior_box(levels, priors.mutable_data_ptr<float>(), stream);
  TORCH_CHECK(err == cudaSuccess, "prior_box(): CUDA launch failed: ", cudaGetErrorString(err));
  return priors;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("prior_box", &prior_box_cuda);
}

}  // namespace retinaface
