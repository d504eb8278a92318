// align_faces' bilinear loop with AVX2, 8 crop pixels per step. Included by
// cpu/bilinear_u8c3_simd.h only, which defines RowBlock and the contract.
//
// Per pixel: the position in 1/32 pixel, x32 = (row_x + column_x[x]) >> 5,
// ix = x32 >> 5, fx = x32 & 31 (the same for y). Each channel's neighbours
// (left, right) in a row sit in one 32-bit lane as two int16, and so do
// their weights, (32 - fx)(32 - fy), fx (32 - fy) in the top row and
// (32 - fx) fy, fx fy in the bottom one (at most 1024): one vpmaddwd per row
// and channel, the sum, then (sum + 512) >> 10.
//
// Reads: 4 bytes at 3 ix (B0 G0 R0 B1) and 4 at 3 ix + 2 (R0 B1 G1 R1) in
// each of the two rows, gathered; with ix <= W - 2 the second ends at
// 3 ix + 6 <= 3 W, inside the row. Byte shuffles then build the pairs.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/align_math.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
// GCC 12's own intrinsics headers trip this (the undefined vector of a gather).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace retinaface {
namespace avx2_detail {

#define RF_AVX2 __attribute__((target("avx2")))
#define RF_AVX2_INLINE __attribute__((target("avx2"), always_inline)) inline

// A vpshufb pattern putting byte `low` of every 32-bit word into the word's
// low int16 and byte `high` into its high int16 (-1: zero there).
RF_AVX2_INLINE __m256i pair_shuffle(int low, int high) {
  alignas(32) int8_t bytes[32];
  for (int word = 0; word < 8; ++word) {
    const int first = 4 * (word % 4);  // the word's first byte within its 128-bit lane
    bytes[4 * word] = static_cast<int8_t>(low < 0 ? -1 : first + low);
    bytes[4 * word + 1] = -1;
    bytes[4 * word + 2] = static_cast<int8_t>(high < 0 ? -1 : first + high);
    bytes[4 * word + 3] = -1;
  }
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(bytes));
}

// (top pairs . top weights + bottom pairs . bottom weights + 512) >> 10.
RF_AVX2_INLINE __m256i weighted(__m256i top, __m256i bottom, __m256i top_weights,
                                __m256i bottom_weights) {
  const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(top, top_weights),
                                       _mm256_madd_epi16(bottom, bottom_weights));
  return _mm256_srai_epi32(_mm256_add_epi32(sum, _mm256_set1_epi32(1 << (kWeightBits - 1))),
                           kWeightBits);
}

// f | f << 16 for values f in 32-bit lanes.
RF_AVX2_INLINE __m256i repeat(__m256i f) { return _mm256_or_si256(f, _mm256_slli_epi32(f, 16)); }

}  // namespace avx2_detail

RF_AVX2 inline int64_t bilinear_block_u8c3_avx2(const uint8_t* image, int64_t width,
                                                const RowBlock& block) {
  using namespace avx2_detail;
  constexpr int shift = kPositionBits - kFractionBits;
  const __m256i bytes_0_3 = pair_shuffle(0, 3);  // [B0 G0 R0 B1] -> blue; [R0 B1 G1 R1] -> red
  const __m256i green_left = pair_shuffle(1, -1), green_right = pair_shuffle(-1, 2);
  const __m256i pack = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,
                                        0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
  const __m256i fraction = _mm256_set1_epi32(kFractionOne - 1);
  const __m256i one = _mm256_set1_epi32(kFractionOne);
  const __m256i stride = _mm256_set1_epi32(static_cast<int32_t>(3 * width));
  const __m256i two = _mm256_set1_epi32(2);
  const int* base = reinterpret_cast<const int*>(image);
  const int64_t columns = block.columns;
  if (columns < 8) return 0;
  prefetch_block_sources(image, width, block);

  for (int64_t r = 0; r < block.rows; ++r) {
    const __m256i row_x = _mm256_set1_epi32(block.row_x[r]);
    const __m256i row_y = _mm256_set1_epi32(block.row_y[r]);
    uint8_t* out = block.out + r * block.out_stride;
    for (int64_t step = 0; step < columns; step += 8) {
      // The last step ends at the last column (overlapping the one before it
      // when columns is not a multiple of 8; those pixels come out the same).
      const int64_t x = step < columns - 8 ? step : columns - 8;
      const __m256i x32 = _mm256_srai_epi32(
          _mm256_add_epi32(row_x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block.column_x + x))),
          shift);
      const __m256i y32 = _mm256_srai_epi32(
          _mm256_add_epi32(row_y, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block.column_y + x))),
          shift);
      const __m256i ix = _mm256_srai_epi32(x32, kFractionBits);
      const __m256i iy = _mm256_srai_epi32(y32, kFractionBits);
      const __m256i top = _mm256_add_epi32(_mm256_mullo_epi32(iy, stride),
                                           _mm256_add_epi32(ix, _mm256_add_epi32(ix, ix)));
      const __m256i bottom = _mm256_add_epi32(top, stride);
      const __m256i top_a = _mm256_i32gather_epi32(base, top, 1);
      const __m256i top_b = _mm256_i32gather_epi32(base, _mm256_add_epi32(top, two), 1);
      const __m256i bottom_a = _mm256_i32gather_epi32(base, bottom, 1);
      const __m256i bottom_b = _mm256_i32gather_epi32(base, _mm256_add_epi32(bottom, two), 1);

      const __m256i fx = _mm256_and_si256(x32, fraction), fy = _mm256_and_si256(y32, fraction);
      const __m256i wx = _mm256_or_si256(_mm256_sub_epi32(one, fx), _mm256_slli_epi32(fx, 16));
      const __m256i top_weights = _mm256_mullo_epi16(wx, repeat(_mm256_sub_epi32(one, fy)));
      const __m256i bottom_weights = _mm256_mullo_epi16(wx, repeat(fy));
      const __m256i blue = weighted(_mm256_shuffle_epi8(top_a, bytes_0_3),
                                    _mm256_shuffle_epi8(bottom_a, bytes_0_3), top_weights,
                                    bottom_weights);
      const __m256i green = weighted(
          _mm256_or_si256(_mm256_shuffle_epi8(top_a, green_left),
                          _mm256_shuffle_epi8(top_b, green_right)),
          _mm256_or_si256(_mm256_shuffle_epi8(bottom_a, green_left),
                          _mm256_shuffle_epi8(bottom_b, green_right)),
          top_weights, bottom_weights);
      const __m256i red = weighted(_mm256_shuffle_epi8(top_b, bytes_0_3),
                                   _mm256_shuffle_epi8(bottom_b, bytes_0_3), top_weights,
                                   bottom_weights);
      // Lanes (B, G, R, 0) -> 12 bytes per 128-bit lane, stored exactly (24 bytes).
      const __m256i pixels = _mm256_shuffle_epi8(
          _mm256_or_si256(blue, _mm256_or_si256(_mm256_slli_epi32(green, 8),
                                                _mm256_slli_epi32(red, 16))),
          pack);
      const __m128i first = _mm256_castsi256_si128(pixels);
      const __m128i second = _mm256_extracti128_si256(pixels, 1);
      const int32_t first_tail = _mm_extract_epi32(first, 2);
      const int32_t second_tail = _mm_extract_epi32(second, 2);
      uint8_t* o = out + 3 * x;
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o), first);
      std::memcpy(o + 8, &first_tail, 4);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o + 12), second);
      std::memcpy(o + 20, &second_tail, 4);
    }
  }
  return columns;
}

#undef RF_AVX2
#undef RF_AVX2_INLINE

}  // namespace retinaface

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
