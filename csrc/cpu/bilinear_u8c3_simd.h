// The hot loop of align_faces on the CPU: bilinear samples of a 3-channel
// uint8 image (interleaved, BGR or RGB) for blocks of crop pixels whose 2x2
// neighbourhoods lie inside the image, with AVX-512 (BW, VL, VBMI, VNNI: Ice
// Lake, Zen 4 and later; cpu/bilinear_u8c3_avx512.h) or AVX2
// (cpu/bilinear_u8c3_avx2.h). Both do common/align_math.h's integer
// arithmetic, so every path gives the bytes of the scalar one
// (tests/test_align_faces.py runs each against the reference).
#pragma once

#include <cstdint>

#include "common/align_math.h"
#include "cpu/cpu_isa.h"

namespace retinaface {

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

namespace retinaface {

// prefetcht0 as inline assembly: GCC 12 drops __builtin_prefetch loops in
// some inlining contexts (it did in this kernel).
inline void prefetch_line(const uint8_t* p) {
  asm volatile("prefetcht0 %0" : : "m"(*p));
}

// Asks the caches for the image bytes a block reads, before its loop: the box
// spanned by its corner pixels' neighbourhoods (source column and row are
// monotone along crop rows and columns), if under 64 KiB. On a crowd of
// small faces each face's region otherwise comes from memory row by row as
// the loop reaches it, which costs about as much as the arithmetic; this way
// the loads overlap the first rows' work.
inline void prefetch_block_sources(const uint8_t* image, int64_t width, const RowBlock& block) {
  if (block.rows <= 0 || block.columns <= 0) return;
  constexpr int shift = kPositionBits;  // 1/1024 pixel -> pixel
  const int64_t last_row = block.rows - 1, last_column = block.columns - 1;
  const int64_t xs[4] = {(int64_t{block.row_x[0]} + block.column_x[0]) >> shift,
                         (int64_t{block.row_x[0]} + block.column_x[last_column]) >> shift,
                         (int64_t{block.row_x[last_row]} + block.column_x[0]) >> shift,
                         (int64_t{block.row_x[last_row]} + block.column_x[last_column]) >> shift};
  const int64_t ys[4] = {(int64_t{block.row_y[0]} + block.column_y[0]) >> shift,
                         (int64_t{block.row_y[0]} + block.column_y[last_column]) >> shift,
                         (int64_t{block.row_y[last_row]} + block.column_y[0]) >> shift,
                         (int64_t{block.row_y[last_row]} + block.column_y[last_column]) >> shift};
  int64_t x_low = xs[0], x_high = xs[0], y_low = ys[0], y_high = ys[0];
  for (int k = 1; k < 4; ++k) {
    x_low = xs[k] < x_low ? xs[k] : x_low;
    x_high = xs[k] > x_high ? xs[k] : x_high;
    y_low = ys[k] < y_low ? ys[k] : y_low;
    y_high = ys[k] > y_high ? ys[k] : y_high;
  }
  const int64_t begin = 3 * x_low, end = 3 * (x_high + 2);  // the bytes of each source row
  if ((y_high + 2 - y_low) * (end - begin) > (int64_t{1} << 16)) return;
  for (int64_t y = y_low; y <= y_high + 1; ++y) {
    const uint8_t* row = image + y * 3 * width;
    for (int64_t b = begin; b < end; b += 64) prefetch_line(row + b);
    prefetch_line(row + end - 1);
  }
}

}  // namespace retinaface

#include "cpu/bilinear_u8c3_avx2.h"
#include "cpu/bilinear_u8c3_avx512.h"

namespace retinaface {

// What this CPU runs, decided once: the best of AVX-512, AVX2 and the
// baseline, capped by RETINAFACE_CPU_ISA (cpu/cpu_isa.h).
inline CpuIsa cpu_simd_level() {
  static const CpuIsa level = [] {
    CpuIsa best = CpuIsa::baseline;
    if (__builtin_cpu_supports("avx2")) best = CpuIsa::avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("bmi2")) {
      best = CpuIsa::avx512;
    }
    return capped_by_environment(best);
  }();
  return level;
}

// Samples the block with the level's loop; returns how many columns of each
// row it did: all of them, or 0 without SIMD or with fewer columns than one
// step (16 pixels with AVX-512, 8 with AVX2).
inline int64_t bilinear_block_u8c3(CpuIsa level, const uint8_t* image, int64_t width,
                                   const RowBlock& block) {
  switch (level) {
    case CpuIsa::avx512:
      return bilinear_block_u8c3_avx512(image, width, block);
    case CpuIsa::avx2:
      return bilinear_block_u8c3_avx2(image, width, block);
    default:
      return 0;
  }
}

}  // namespace retinaface

#else

namespace retinaface {
inline CpuIsa cpu_simd_level() { return CpuIsa::baseline; }
inline int64_t bilinear_block_u8c3(CpuIsa, const uint8_t*, int64_t, const RowBlock&) {
  return 0;
}
}  // namespace retinaface

#endif
