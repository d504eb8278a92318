// Argument checks of train_augment, shared by the CPU kernel
// (csrc/cpu/train_augment.cpp) and the CUDA registration
// (csrc/cuda/train_augment.cpp) so both raise the same errors.
//
// The values of params are checked where they are on the host: by the CPU
// kernel (check_train_augment_row) and by the Python API before it moves
// them to the device. The CUDA kernel must not synchronise to read them, so
// it clamps every source index into the image instead (never reads outside
// it; a bad row gives a wrong image, not a crash).
#pragma once

#include <cmath>
#include <optional>

#include "common/checks.h"
#include "common/train_augment_math.h"

namespace retinaface {

inline at::ScalarType train_augment_dtype(std::optional<at::ScalarType> dtype) {
  const at::ScalarType t = dtype.value_or(at::kByte);
  TORCH_CHECK(t == at::kByte || t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
              "train_augment(): dtype must be uint8 (HWC output), float32, float16 or bfloat16 "
              "(CHW minus the mean), got ",
              t);
  return t;
}

inline void check_train_augment_args(const at::Tensor& images, const at::Tensor& params, int64_t size,
                                     at::ArrayRef<double> mean) {
  check_shape("train_augment", "images", images, {-1, -1, -1, 3}, "[B, H, W, 3]");
  check_dtype("train_augment", "images", images, at::kByte);
  check_shape("train_augment", "params", params, {images.size(0), augment::kParamColumns},
              "[B, 12] (one row per image)");
  check_dtype("train_augment", "params", params, at::kDouble);
  check_same_device("train_augment", "params", params, "images", images);
  TORCH_CHECK(size > 0 && size <= 16384, "train_augment(): size must be in [1, 16384], got ", size);
  TORCH_CHECK(mean.size() == 3, "train_augment(): mean must have 3 values (B, G, R), got ",
              mean.size());
  for (double m : mean) {
    TORCH_CHECK(std::isfinite(m), "train_augment(): mean must be finite, got ", m);
  }
}

// One image's params row, on the host: integral where it must be, inside the
// image, finite.
inline void check_train_augment_row(const double* row, int64_t image, int64_t height, int64_t width) {
  using namespace augment;
  for (int c = 0; c < kParamColumns; ++c) {
    TORCH_CHECK(std::isfinite(row[c]), "train_augment(): params[", image, ", ", c,
                "] must be finite, got ", row[c]);
  }
  for (int c : {kLeft, kTop, kRegionWidth, kRegionHeight, kSide, kMirror, kInterpolation,
                kContrastLast, kHue}) {
    TORCH_CHECK(row[c] == std::floor(row[c]) && std::fabs(row[c]) < (1 << 24),
                "train_augment(): params[", image, ", ", c, "] must be an integer, got ", row[c]);
  }
  const double left = row[kLeft], top = row[kTop], rw = row[kRegionWidth], rh = row[kRegionHeight];
  TORCH_CHECK(rw >= 1 && rh >= 1 && left >= 0 && top >= 0 && left + rw <= width && top + rh <= height,
              "train_augment(): image ", image, ": the region (left ", left, ", top ", top, ", width ",
              rw, ", height ", rh, ") must lie inside the ", height, " x ", width, " image");
  TORCH_CHECK(row[kSide] >= std::max(rw, rh) && row[kSide] <= 65536, "train_augment(): image ", image,
              ": side must be in [max(region width, height), 65536], got ", row[kSide]);
  TORCH_CHECK(row[kInterpolation] >= 0 && row[kInterpolation] <= 4, "train_augment(): image ", image,
              ": interpolation must be 0..4 (linear, cubic, area, nearest, lanczos4), got ",
              row[kInterpolation]);
  TORCH_CHECK((row[kMirror] == 0 || row[kMirror] == 1) && (row[kContrastLast] == 0 || row[kContrastLast] == 1),
              "train_augment(): image ", image, ": mirror and contrast_last must be 0 or 1");
}

inline std::vector<int64_t> train_augment_output_shape(int64_t batch, int64_t size, at::ScalarType dtype) {
  if (dtype == at::kByte) return {batch, size, size, 3};
  return {batch, 3, size, size};
}

// The pad colour: biubug6 assigns the float mean into a uint8 array (truncation).
inline void train_augment_fill(at::ArrayRef<double> mean, uint8_t* fill) {
  for (int c = 0; c < 3; ++c) {
    fill[c] = static_cast<uint8_t>(std::min(255.0, std::max(0.0, mean[c])));
  }
}

}  // namespace retinaface
