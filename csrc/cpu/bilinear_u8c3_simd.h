// The hot loop of align_faces on the CPU: bilinear samples of a 3-channel
// uint8 image (interleaved, BGR or RGB) for blocks of crop pixels whose 2x2
// neighbourhoods lie inside the image, with AVX-512 (BW, VL, VBMI, VNNI: Ice
// Lake, Zen 4 and later; cpu/bilinear_u8c3_avx512.h) or AVX2
// (cpu/bilinear_u8c3_avx2.h). Both do common/align_math.h's integer
// arithmetic, so every path gives the bytes of the scalar one
// (tests/test_align_faces.py runs each against the reference).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace retinaface {

enum class SimdLevel { none = 0, avx2 = 1, avx512 = 2 };

// Crop pixels to sample: rows r < rows and columns x < columns at positions
// (row_x[r] + column_x[x], row_y[r] + column_y[x]) in 1/1024 pixel, pixel
// (r, x) written to out[r * out_stride + 3 x ..]. Every pixel's 2x2
// neighbourhood lies inside the image, which has under 2^31 bytes.
struct RowBlock {
  const int32_t* row_x;
  const int32_t* row_y;
  int64_t rows;
  const int32_t* column_x;
  const int32_t* column_y;
  int64_t columns;
  uint8_t* out;
  int64_t out_stride;
};

}  // namespace retinaface

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "cpu/bilinear_u8c3_avx2.h"
#include "cpu/bilinear_u8c3_avx512.h"

namespace retinaface {

// What this CPU runs, decided once: the best of AVX-512, AVX2 and none,
// capped by the environment variable RETINAFACE_EXT_SIMD=avx2|none (for
// tests and comparisons).
inline SimdLevel cpu_simd_level() {
  static const SimdLevel level = [] {
    SimdLevel best = SimdLevel::none;
    if (__builtin_cpu_supports("avx2")) best = SimdLevel::avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("bmi2")) {
      best = SimdLevel::avx512;
    }
    const char* cap = std::getenv("RETINAFACE_EXT_SIMD");
    if (cap != nullptr && std::strcmp(cap, "none") == 0) return SimdLevel::none;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && best == SimdLevel::avx512) {
      return SimdLevel::avx2;
    }
    return best;
  }();
  return level;
}

// Samples the block with the level's loop; returns how many columns of each
// row it did: all of them, or 0 without SIMD or with fewer columns than one
// step (16 pixels with AVX-512, 8 with AVX2).
inline int64_t bilinear_block_u8c3(SimdLevel level, const uint8_t* image, int64_t width,
                                   const RowBlock& block) {
  switch (level) {
    case SimdLevel::avx512:
      return bilinear_block_u8c3_avx512(image, width, block);
    case SimdLevel::avx2:
      return bilinear_block_u8c3_avx2(image, width, block);
    default:
      return 0;
  }
}

}  // namespace retinaface

#else

namespace retinaface {
inline SimdLevel cpu_simd_level() { return SimdLevel::none; }
inline int64_t bilinear_block_u8c3(SimdLevel, const uint8_t*, int64_t, const RowBlock&) {
  return 0;
}
}  // namespace retinaface

#endif
