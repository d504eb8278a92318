// prior_box: the RetinaFace anchors for one image size, on the device asked for.
//
// The op takes no tensor, so the dispatcher cannot pick a backend from its
// inputs. As for ATen's factory functions (torch.empty(..., device=)), a
// BackendSelect kernel picks it from the `device` argument and redispatches:
// CPU here, CUDA in csrc/cuda/prior_box.cpp (computed on the GPU: no
// host-to-device copy, so a CUDA-graph capture of a step at a new size works),
// Meta to the fake kernel. A device with no kernel of ours (a CPU-only build
// on a CUDA machine, MPS, XPU) gets the CPU result copied to it.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>

#include "common/prior_box_checks.h"
#include "common/prior_box_math.h"

namespace retinaface {
namespace {

at::Tensor prior_box_cpu(int64_t height, int64_t width, at::IntArrayRef min_sizes,
                         at::IntArrayRef sizes_per_level, at::IntArrayRef steps, bool clip,
                         std::optional<at::Device> device) {
  const int64_t count = checked_prior_count(height, width, min_sizes, sizes_per_level, steps);
  auto priors = at::empty({count, 4}, at::TensorOptions().dtype(at::kFloat).device(at::kCPU));
  float* out = priors.data_ptr<float>();
  const int64_t* sizes = min_sizes.data();
  for (size_t k = 0; k < steps.size(); ++k) {
    const int64_t rows = prior_grid_cells(height, steps[k]);
    const int64_t cols = prior_grid_cells(width, steps[k]);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        for (int64_t a = 0; a < sizes_per_level[k]; ++a, out += 4) {
          prior_at(i, j, static_cast<double>(steps[k]), static_cast<double>(sizes[a]),
                   static_cast<double>(height), static_cast<double>(width), clip, out);
        }
      }
    }
    sizes += sizes_per_level[k];
  }
  return priors;
}

using PriorBoxFn = at::Tensor(int64_t, int64_t, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                              bool, std::optional<at::Device>);

at::Tensor prior_box_backend_select(c10::DispatchKeySet, int64_t height, int64_t width,
                                    at::IntArrayRef min_sizes, at::IntArrayRef sizes_per_level,
                                    at::IntArrayRef steps, bool clip,
                                    std::optional<at::Device> device) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("retinaface::prior_box", "")
                             .typed<PriorBoxFn>();
  const c10::DispatchKey key = c10::computeDispatchKey(std::nullopt, std::nullopt, device);
  if (key != c10::DispatchKey::CPU && !op.hasKernelForDispatchKey(key)) {
    return prior_box_cpu(height, width, min_sizes, sizes_per_level, steps, clip, std::nullopt)
        .to(*device);
  }
  return op.redispatch(c10::DispatchKeySet(key), height, width, min_sizes, sizes_per_level, steps,
                       clip, device);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, BackendSelect, m) {
  m.impl("prior_box", TORCH_FN(prior_box_backend_select));
}

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("prior_box", &prior_box_cpu);
}

}  // namespace retinaface
