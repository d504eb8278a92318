// prior_box: the RetinaFace anchors for one image size.
//
// Registered for CompositeExplicitAutograd because the op takes no tensor to
// dispatch on: the priors are computed on the CPU (a few thousand values,
// normally once per image size) and the Python wrapper moves them to the
// requested device and dtype.
//
// Why there is no CUDA kernel: the schema has no tensor argument, so the
// dispatcher could only reach a CUDA kernel through a device argument, and the
// work does not warrant one: 16800 priors (640 x 640) are 269 KB, computed in
// microseconds on the CPU, and callers build them once per image size and keep
// them (biubug6 does the same). The price is one host-to-device copy when
// device="cuda" is asked for, which waits for the copy from pageable memory;
// so build the priors before a training loop or a CUDA-graph capture rather
// than inside it. tests/test_prior_box.py checks that the CUDA result equals
// the CPU one bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace retinaface {
namespace {

at::Tensor prior_box(int64_t height, int64_t width, at::IntArrayRef min_sizes,
                     at::IntArrayRef sizes_per_level, at::IntArrayRef steps, bool clip) {
  TORCH_CHECK(height > 0 && width > 0, "prior_box(): image_size must be positive, got (",
              height, ", ", width, ")");
  TORCH_CHECK(sizes_per_level.size() == steps.size(), "prior_box(): min_sizes has ",
              sizes_per_level.size(), " levels but steps has ", steps.size());
  int64_t total_sizes = 0;
  for (int64_t n : sizes_per_level) {
    TORCH_CHECK(n > 0, "prior_box(): every level needs at least one min_size");
    total_sizes += n;
  }
  TORCH_CHECK(total_sizes == static_cast<int64_t>(min_sizes.size()),
              "prior_box(): sizes_per_level adds up to ", total_sizes, " but min_sizes has ",
              min_sizes.size(), " values");
  for (int64_t s : steps) TORCH_CHECK(s > 0, "prior_box(): steps must be positive, got ", s);
  for (int64_t s : min_sizes) TORCH_CHECK(s > 0, "prior_box(): min_sizes must be positive, got ", s);

  int64_t count = 0;
  for (size_t k = 0; k < steps.size(); ++k) {
    const int64_t rows = (height + steps[k] - 1) / steps[k];
    const int64_t cols = (width + steps[k] - 1) / steps[k];
    count += rows * cols * sizes_per_level[k];
  }
  auto priors = at::empty({count, 4}, at::kFloat);
  float* out = priors.data_ptr<float>();

  // biubug6 computes these in Python floats (double) and rounds once to float32.
  const double h = static_cast<double>(height), w = static_cast<double>(width);
  const int64_t* sizes = min_sizes.data();
  for (size_t k = 0; k < steps.size(); ++k) {
    const int64_t rows = (height + steps[k] - 1) / steps[k];
    const int64_t cols = (width + steps[k] - 1) / steps[k];
    const double step = static_cast<double>(steps[k]);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        for (int64_t a = 0; a < sizes_per_level[k]; ++a) {
          const double m = static_cast<double>(sizes[a]);
          float v[4] = {static_cast<float>((j + 0.5) * step / w),
                        static_cast<float>((i + 0.5) * step / h), static_cast<float>(m / w),
                        static_cast<float>(m / h)};
          for (float x : v) *out++ = clip ? std::min(std::max(x, 0.0f), 1.0f) : x;
        }
      }
    }
    sizes += sizes_per_level[k];
  }
  return priors;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CompositeExplicitAutograd, m) {
  m.impl("prior_box", &prior_box);
}

}  // namespace retinaface
