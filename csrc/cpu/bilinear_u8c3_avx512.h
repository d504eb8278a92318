// align_faces' bilinear loop with AVX-512 (BW, VL, VBMI, VNNI) and BMI2, 16
// crop pixels per step. Included by cpu/bilinear_u8c3_simd.h only, which
// defines RowBlock and the contract.
//
// Per pixel: the position in 1/32 pixel, x32 = (row_x + column_x[x]) >> 5,
// ix = x32 >> 5, fx = x32 & 31 (the same for y). For each channel, one
// 32-bit lane per pixel holds its four neighbours (top-left, top-right,
// bottom-left, bottom-right) as bytes; vpmaddubsw with the bytes
// (32 - fx, fx, 32 - fx, fx) gives the two row sums as int16 (at most
// 255 * 32), and vpdpwssd with (32 - fy, fy) and the rounding term gives
// common/align_math.h's sum w p + 512 over the four, exactly (scaled by 2^6,
// which puts the result, >> 10, in the lane's byte 2 for the final permutes).
//
// Where the neighbours come from, per step of 16 pixels:
// - a window: when the 16 pixels' columns span at most 20 source pixels and
//   their rows at most 2 (crops that enlarge the face: small faces), the two
//   or three source rows are loaded once (masked loads of exactly the bytes
//   needed) and byte permutes (vpermt2b over two 64-byte rows) pick every
//   lane's neighbours. Cheaper than gathers, which is most of the speed-up
//   on a crowd of small faces;
// - gathers otherwise: 8 bytes per pixel and row, at 3 ix in the top row
//   (B0 G0 R0 B1 G1 R1 . .), which ends at most 2 bytes into the next row,
//   and at 3 ix - 2 in the bottom row (. . B0 G0 R0 B1 G1 R1), which starts
//   at least 3 W - 2 bytes into the image and ends in its own row.
// Reads never leave the image (ix <= W - 2 and iy <= H - 2 in a block).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "common/align_math.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
// GCC 12's own intrinsics headers trip this (the undefined vector of a gather).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define RF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,bmi2")))
#define RF_AVX512_INLINE \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,bmi2"), always_inline)) inline

namespace retinaface {
namespace avx512_detail {

struct alignas(64) Bytes64 {
  int8_t b[64];
};
struct alignas(64) Ints32 {
  int32_t v[32];
};

// Gathers: pixels 0-7 in one register, 8-15 in another, 8 bytes each. Lane
// k's bytes (0, 1) = channel c of its top-left and top-right neighbours (from
// the top-row reads, which start at the pixel), or bytes (2, 3) = the bottom
// ones (bottom-row reads start 2 bytes before the pixel).
constexpr Bytes64 gathered_neighbours(bool bottom, int channel) {
  Bytes64 t{};
  const int at = bottom ? 2 : 0;
  for (int k = 0; k < 16; ++k) {
    const int left = (k < 8 ? 8 * k : 64 + 8 * (k - 8)) + at + channel;
    t.b[4 * k + at] = static_cast<int8_t>(left);
    t.b[4 * k + at + 1] = static_cast<int8_t>(left + 3);
  }
  return t;
}

// Window: lane k's offset into the tables (3 dx, plus 64 dy with three rows)
// is repeated in its four bytes, and this is added per channel: with two rows
// (tables: row 0, row 1) the neighbours are at (c, c + 3, 64 + c, 67 + c);
// with three rows the top pair comes from (row 0, row 1) and the bottom pair
// from (row 1, row 2) at the same offsets, (c, c + 3, c, c + 3).
constexpr int32_t window_two_rows(int c) {
  return c | (c + 3) << 8 | (64 + c) << 16 | (67 + c) << 24;
}
constexpr int32_t window_three_rows(int c) { return c | (c + 3) << 8 | c << 16 | (c + 3) << 24; }

// vpshufb pattern: byte 0 of each 32-bit lane into all its four bytes.
constexpr Bytes64 repeat_low_byte() {
  Bytes64 t{};
  for (int i = 0; i < 64; ++i) t.b[i] = static_cast<int8_t>(i / 4 * 4 % 16);
  return t;
}

// The results sit in byte 2 of each lane (see kResultShift). Byte 2 of the
// blue and green lanes -> B0 G0 B1 G1 ..; those and byte 2 of the red lanes
// -> B0 G0 R0 B1 .., 48 bytes.
constexpr Bytes64 pack_blue_green() {
  Bytes64 t{};
  for (int k = 0; k < 16; ++k) {
    t.b[2 * k] = static_cast<int8_t>(4 * k + 2);
    t.b[2 * k + 1] = static_cast<int8_t>(64 + 4 * k + 2);
  }
  return t;
}
constexpr Bytes64 pack_pixels() {
  Bytes64 t{};
  for (int k = 0; k < 16; ++k) {
    t.b[3 * k] = static_cast<int8_t>(2 * k);
    t.b[3 * k + 1] = static_cast<int8_t>(2 * k + 1);
    t.b[3 * k + 2] = static_cast<int8_t>(64 + 4 * k + 2);
  }
  return t;
}

// The vertical weights are scaled by 2^6, so that sum w p + 512, scaled
// alike, has the result (>> 10) in bits 16-23, byte 2 of the lane, where the
// packing permutes pick it: no shift. (32 - f) 2^6 <= 2048 fits int16.
constexpr int kResultShift = 16 - kWeightBits;

// Weights by fraction f, as vpermt2d tables (which read the low 5 bits of
// the index, so x32 and y32 index them directly): bytes (32 - f, f, 32 - f, f)
// and int16 (32 - f, f) << kResultShift.
constexpr Ints32 weight_bytes() {
  Ints32 t{};
  for (int f = 0; f < 32; ++f) {
    const int g = kFractionOne - f;
    t.v[f] = g | f << 8 | g << 16 | f << 24;
  }
  return t;
}
constexpr Ints32 weight_words() {
  Ints32 t{};
  for (int f = 0; f < 32; ++f) t.v[f] = (kFractionOne - f) << kResultShift | f << (16 + kResultShift);
  return t;
}

inline constexpr Bytes64 kGathered[2][3] = {
    {gathered_neighbours(false, 0), gathered_neighbours(false, 1), gathered_neighbours(false, 2)},
    {gathered_neighbours(true, 0), gathered_neighbours(true, 1), gathered_neighbours(true, 2)}};
inline constexpr Bytes64 kRepeatLowByte = repeat_low_byte();
inline constexpr Bytes64 kPackBlueGreen = pack_blue_green();
inline constexpr Bytes64 kPackPixels = pack_pixels();
inline constexpr Ints32 kWeightBytes = weight_bytes();
inline constexpr Ints32 kWeightWords = weight_words();

constexpr __mmask64 kTopPair = 0x3333333333333333ull;  // bytes 0, 1 of each lane
constexpr __mmask64 kBottomPair = ~kTopPair;
constexpr __mmask64 kPixels48 = (__mmask64{1} << 48) - 1;  // 16 pixels' bytes

// A value the compiler must keep (in a register, or spilled to memory):
// without this it rebuilds loop constants in the loop with vpbroadcastd,
// which competes with the permutes for their port.
RF_AVX512_INLINE __m512i opaque(__m512i v) {
  asm("" : "+v"(v));
  return v;
}

struct Tables {
  __m512i gathered[2][3], repeat_low, pack_blue_green, pack, weight_bytes[2], weight_words[2];
  __m512i two_rows[3], three_rows[3], three, rounding, stride, bottom_start;

  RF_AVX512_INLINE explicit Tables(int64_t row_bytes) {
    stride = opaque(_mm512_set1_epi32(static_cast<int32_t>(row_bytes)));
    bottom_start = opaque(_mm512_set1_epi32(static_cast<int32_t>(row_bytes - 2)));
    for (int c = 0; c < 3; ++c) {
      two_rows[c] = opaque(_mm512_set1_epi32(window_two_rows(c)));
      three_rows[c] = opaque(_mm512_set1_epi32(window_three_rows(c)));
    }
    three = opaque(_mm512_set1_epi16(3));
    rounding = opaque(_mm512_set1_epi32(1 << (kWeightBits - 1 + kResultShift)));
    for (int row = 0; row < 2; ++row) {
      for (int c = 0; c < 3; ++c) gathered[row][c] = _mm512_load_si512(kGathered[row][c].b);
    }
    repeat_low = _mm512_load_si512(kRepeatLowByte.b);
    pack_blue_green = _mm512_load_si512(kPackBlueGreen.b);
    pack = _mm512_load_si512(kPackPixels.b);
    for (int half = 0; half < 2; ++half) {
      weight_bytes[half] = _mm512_load_si512(kWeightBytes.v + 16 * half);
      weight_words[half] = _mm512_load_si512(kWeightWords.v + 16 * half);
    }
  }
};

// The window of source rows y0, y0 + 1 (and y0 + 2 with three rows) from
// column x0, span_x + 2 pixels wide; dx = ix - x0 per lane.
RF_AVX512_INLINE void window_neighbours(const Tables& t, const uint8_t* source, int64_t stride,
                                        int32_t span_x, bool three_rows, __m512i dx, __m512i dy,
                                        __m512i* neighbours) {
  const __mmask64 bytes = _bzhi_u64(~0ull, 3 * (span_x + 2));
  const __m512i row0 = _mm512_maskz_loadu_epi8(bytes, source);
  const __m512i row1 = _mm512_maskz_loadu_epi8(bytes, source + stride);
  const __m512i three = t.three;
  if (!three_rows) {
    // 3 dx in all four bytes of the lane (3 dx < 64: no carries between bytes).
    const __m512i at = _mm512_mullo_epi16(_mm512_shuffle_epi8(dx, t.repeat_low), three);
    for (int c = 0; c < 3; ++c) {
      const __m512i index = _mm512_add_epi32(at, t.two_rows[c]);
      neighbours[c] = _mm512_permutex2var_epi8(row0, index, row1);
    }
    return;
  }
  const __m512i row2 = _mm512_maskz_loadu_epi8(bytes, source + 2 * stride);
  const __m512i at = _mm512_shuffle_epi8(
      _mm512_add_epi32(_mm512_mullo_epi16(dx, three), _mm512_slli_epi32(dy, 6)), t.repeat_low);
  for (int c = 0; c < 3; ++c) {
    const __m512i index = _mm512_add_epi32(at, t.three_rows[c]);
    neighbours[c] =
        _mm512_or_si512(_mm512_maskz_permutex2var_epi8(kTopPair, row0, index, row1),
                        _mm512_maskz_permutex2var_epi8(kBottomPair, row1, index, row2));
  }
}

RF_AVX512_INLINE void gathered_neighbours(const Tables& t, const uint8_t* image, __m512i x32,
                                          __m512i y32, __m512i* neighbours) {
  const __m512i ix = _mm512_srai_epi32(x32, kFractionBits);
  const __m512i iy = _mm512_srai_epi32(y32, kFractionBits);
  const __m512i top = _mm512_add_epi32(_mm512_mullo_epi32(iy, t.stride),
                                       _mm512_add_epi32(ix, _mm512_add_epi32(ix, ix)));
  const __m512i bottom = _mm512_add_epi32(top, t.bottom_start);
  const __m512i top_lo = _mm512_i32gather_epi64(_mm512_castsi512_si256(top), image, 1);
  const __m512i top_hi = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(top, 1), image, 1);
  const __m512i bottom_lo = _mm512_i32gather_epi64(_mm512_castsi512_si256(bottom), image, 1);
  const __m512i bottom_hi = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(bottom, 1), image, 1);
  for (int c = 0; c < 3; ++c) {
    neighbours[c] = _mm512_or_si512(
        _mm512_maskz_permutex2var_epi8(kTopPair, top_lo, t.gathered[0][c], top_hi),
        _mm512_maskz_permutex2var_epi8(kBottomPair, bottom_lo, t.gathered[1][c], bottom_hi));
  }
}

}  // namespace avx512_detail

RF_AVX512 inline int64_t bilinear_block_u8c3_avx512(const uint8_t* image, int64_t width,
                                                    const RowBlock& block) {
  using namespace avx512_detail;
  constexpr int shift = kPositionBits - kFractionBits;  // 1/1024 -> 1/32 pixel
  const int64_t stride = 3 * width;
  const Tables t(stride);
  const __m512i rounding = t.rounding;

  const int64_t columns = block.columns;
  if (columns < 16) return 0;
  prefetch_block_sources(image, width, block);
  // Source columns and rows are monotone along a crop row: the first or the
  // last pixel of a step has the smallest.
  const int low_x = block.column_x[columns - 1] >= block.column_x[0] ? 0 : 15;
  const int low_y = block.column_y[columns - 1] >= block.column_y[0] ? 0 : 15;

  // Local copies: the stores through `out` could alias `block` for the compiler.
  const int32_t* const columns_x = block.column_x;
  const int32_t* const columns_y = block.column_y;
  for (int64_t r = 0; r < block.rows; ++r) {
    const int32_t row_x = block.row_x[r], row_y = block.row_y[r];
    const __m512i vrow_x = _mm512_set1_epi32(row_x), vrow_y = _mm512_set1_epi32(row_y);
    uint8_t* out = block.out + r * block.out_stride;
    for (int64_t step = 0; step < columns; step += 16) {
      // The last step ends at the last column (overlapping the one before it
      // when columns is not a multiple of 16; those pixels come out the same).
      const int64_t x = step < columns - 16 ? step : columns - 16;
      const int32_t* column_x = columns_x + x;
      const int32_t* column_y = columns_y + x;
      const __m512i x32 = _mm512_srai_epi32(_mm512_add_epi32(vrow_x, _mm512_loadu_si512(column_x)), shift);
      const __m512i y32 = _mm512_srai_epi32(_mm512_add_epi32(vrow_y, _mm512_loadu_si512(column_y)), shift);
      // The step's first source column and row, and how far they reach.
      const int32_t x0 = (row_x + column_x[low_x]) >> kPositionBits;
      const int32_t y0 = (row_y + column_y[low_y]) >> kPositionBits;
      const int32_t span_x = ((row_x + column_x[15 - low_x]) >> kPositionBits) - x0;
      const int32_t span_y = ((row_y + column_y[15 - low_y]) >> kPositionBits) - y0;

      __m512i neighbours[3];
      if (span_x <= 19 && span_y <= 1) {
        const __m512i dx = _mm512_srai_epi32(
            _mm512_sub_epi32(x32, _mm512_set1_epi32(x0 << kFractionBits)), kFractionBits);
        const __m512i dy = _mm512_srai_epi32(
            _mm512_sub_epi32(y32, _mm512_set1_epi32(y0 << kFractionBits)), kFractionBits);
        window_neighbours(t, image + y0 * stride + 3 * x0, stride, span_x, span_y == 1, dx, dy,
                          neighbours);
      } else {
        gathered_neighbours(t, image, x32, y32, neighbours);
      }

      // The permutes read the low 5 bits of x32 / y32: the fractions.
      const __m512i wx = _mm512_permutex2var_epi32(t.weight_bytes[0], x32, t.weight_bytes[1]);
      const __m512i wy = _mm512_permutex2var_epi32(t.weight_words[0], y32, t.weight_words[1]);
      __m512i channel[3];
      for (int c = 0; c < 3; ++c) {
        channel[c] = _mm512_dpwssd_epi32(rounding, _mm512_maddubs_epi16(neighbours[c], wx), wy);
      }
      const __m512i blue_green = _mm512_permutex2var_epi8(channel[0], t.pack_blue_green, channel[1]);
      _mm512_mask_storeu_epi8(out + 3 * x, kPixels48,
                              _mm512_permutex2var_epi8(blue_green, t.pack, channel[2]));
    }
  }
  return columns;
}

#undef RF_AVX512
#undef RF_AVX512_INLINE

}  // namespace retinaface

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
