// prior_box argument checks and the prior count, shared by the CPU and CUDA
// kernels (the fake kernel in retinaface_ext/ops/prior_box.py says the same).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>

namespace retinaface {

constexpr int64_t kPriorBytes = 4 * sizeof(float);  // cx, cy, w, h in float32

// Rows or columns of a level: ceil(size / step), without the overflow of
// (size + step - 1) / step near INT64_MAX.
inline int64_t prior_grid_cells(int64_t size, int64_t step) {
  return size / step + (size % step != 0);
}

// Checks the arguments and returns the number of priors. The count (times 4
// values) is overflow-checked: a huge image_size is an error, not a wrapped
// count and a write past the end of the output.
inline int64_t checked_prior_count(int64_t height, int64_t width, at::IntArrayRef min_sizes,
                                   at::IntArrayRef sizes_per_level, at::IntArrayRef steps) {
  TORCH_CHECK(height > 0 && width > 0, "prior_box(): image_size must be positive, got (", height,
              ", ", width, ")");
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
  for (int64_t s : min_sizes) {
    TORCH_CHECK(s > 0, "prior_box(): min_sizes must be positive, got ", s);
  }

  uint64_t count = 0;
  bool overflow = false;
  for (size_t k = 0; k < steps.size(); ++k) {
    uint64_t cells = 0, level = 0;
    overflow |= c10::mul_overflows(static_cast<uint64_t>(prior_grid_cells(height, steps[k])),
                                   static_cast<uint64_t>(prior_grid_cells(width, steps[k])), &cells);
    overflow |= c10::mul_overflows(cells, static_cast<uint64_t>(sizes_per_level[k]), &level);
    overflow |= c10::add_overflows(count, level, &count);
  }
  // The output is float32 [count, 4]: its size in bytes must fit int64.
  overflow |= count > static_cast<uint64_t>(INT64_MAX / kPriorBytes);
  TORCH_CHECK(!overflow, "prior_box(): image_size (", height, ", ", width,
              ") gives too many priors: their size in bytes (", kPriorBytes,
              " per prior) overflows int64");
  return static_cast<int64_t>(count);
}

}  // namespace retinaface
