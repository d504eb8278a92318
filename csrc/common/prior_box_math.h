// One RetinaFace prior, shared by the CPU and CUDA kernels so both give
// biubug6's values bit for bit. Plain C++, no torch headers.
#pragma once

#include <cstdint>

#include "common/box_math.h"

namespace retinaface {

// Writes (cx, cy, w, h) of min size `min_size` in cell (row, col) of a level
// with stride `step`, for an image of height x width. biubug6 computes these in
// Python floats (double) and rounds once to float32; so do we (IEEE double
// division on both devices, no FMA: see -fmad=false in setup.py).
RF_HOST_DEVICE void prior_at(int64_t row, int64_t col, double step, double min_size, double height,
                             double width, bool clip, float* out) {
  const float v[4] = {static_cast<float>((col + 0.5) * step / width),
                      static_cast<float>((row + 0.5) * step / height),
                      static_cast<float>(min_size / width), static_cast<float>(min_size / height)};
  for (int c = 0; c < 4; ++c) {
    // clamp(0, 1), written so a NaN could not turn into a bound (none occurs here).
    out[c] = clip ? (v[c] < 0.0f ? 0.0f : (v[c] > 1.0f ? 1.0f : v[c])) : v[c];
  }
}

}  // namespace retinaface
