// mobilenet_stem on the CPU: BGR uint8 images -> the output of MobileNetV1-0.25's
// first four layers (stage1[:4]: conv 3x3/2, then depthwise-separable blocks
// with strides 1, 2, 1), BatchNorm folded into the weights, LeakyReLU after
// every convolution, the mean subtracted on the way in.
//
// Why fused: these layers run at 1/2 and 1/4 of the image resolution with only
// 8-32 channels, so run layer by layer they are bound by memory traffic (and
// onnxruntime's blocked layout pads the 8-channel maps to 16). Here every tile
// of the output is computed row by row: each layer keeps only the three rows
// its 3x3 consumer needs, so no intermediate map leaves the cache, and the
// uint8 image is read once.
//
// Layout: a row of a layer is one plane per channel, columns contiguous, so all
// the arithmetic is on consecutive columns, a vector register at a time (GCC
// vector extensions, compiled for AVX-512, AVX2 and SSE2: StemKernels). A row
// shorter than a multiple of the vector ends with a vector that overlaps the
// previous one (it recomputes a few columns; the results are the same). The input of a
// stride-2 layer is kept as even-column and odd-column planes, so its 3x3
// windows are three contiguous loads too. Each depthwise-separable block runs
// two vectors of columns at a time, its depthwise results in a small tile for
// the pointwise conv.
//
// Tiles: an image is split into strips of kStripColumns output columns (and,
// when there are more threads than strips, into bands of rows); each tile
// recomputes the few columns and rows of its neighbours that its 3x3 windows
// reach, so tiles are independent and the result does not depend on the
// tiling or the thread count. Tiles run on ATen's inter-op pool, not OpenMP
// (parallel_for_interop in cpu/parallel.h says why).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/mobilenet_stem_checks.h"
#include "cpu/cpu_isa.h"
#include "cpu/parallel.h"
#include "cpu/vector_math.h"

namespace retinaface {
namespace {

// Tile geometry works in units of 16 columns (a multiple of every ISA's lane
// count below): rows are at least this wide.
constexpr int64_t kLanes = 16;

// Output columns per strip: the recomputed border is ~7 columns of the
// half-resolution layers per strip (1.5% at 256), and a strip's rows (~400 KB
// for all layers' rings) stay in the L2 cache at any image width. 256 was
// 3-10% faster than 128 or 192 on photos of 512 to 1920 columns.
constexpr int64_t kStripColumns = 256;

// The vector kernels are templates on the lane count L, compiled once per ISA
// with vectors of its register width (AVX-512: 16 floats, AVX2: 8, SSE2: 4;
// see StemKernels): GCC splits a wider generic vector into scalar code for
// comparisons, loads and shuffles, which made one AVX-512-sized version 30x
// slower on AVX2.
template <int L>
struct Simd {
  typedef float F __attribute__((vector_size(L * sizeof(float))));
  typedef int32_t I __attribute__((vector_size(L * sizeof(int32_t))));
  static constexpr bool kMaskRegisters = L == 16;
  // Register blocking: 32 registers on AVX-512, 16 below.
  static constexpr int kConvColumns = L == 16 ? 2 : 1;     // conv: 8 x this accumulators
  static constexpr int kPointwiseBlock = L == 16 ? 8 : 4;  // pointwise: this x 2 accumulators
};

// Unaligned loads and stores, written in place: a function taking or returning
// a vector type would change the ABI between the ISAs (-Wpsabi).
#define STEM_LOAD(v, p) std::memcpy(&(v), (p), sizeof(v))
#define STEM_STORE(p, v) std::memcpy((p), &(v), sizeof(v))
// LeakyReLU. AVX-512 compares into a mask register and blends; below it, GCC
// makes a vector comparison lane by lane, so there it is a blend on the sign
// bit: v * slope where the sign bit is set, v elsewhere (the same values, -0.0
// and NaN included).
#define STEM_LEAKY_RELU(S, v, slope)                                                         \
  (S::kMaskRegisters                                                                         \
       ? ((v) > 0 ? (v) : (v) * (slope))                                                     \
       : ((typename S::F)((((typename S::I)((v) * (slope))) & (((typename S::I)(v)) >> 31)) | \
                          (((typename S::I)(v)) & ~(((typename S::I)(v)) >> 31)))))
// The start of the vector (of `width` columns) that covers column j of a row
// of `count` >= width columns: the last one is shifted back to end at the
// row's end (it recomputes a few columns; the results are the same).
RF_ALWAYS_INLINE int64_t vector_start(int64_t j, int64_t count, int64_t width) {
  return std::min(j, count - width);
}

// The three channels of n pixels, minus the mean, as three planes (a stride-3
// group load, which GCC vectorises for a function of its own with restrict
// pointers).
RF_VECTOR_CLONES void pixels_to_planes(const uint8_t* __restrict pixels, int64_t n, float m0,
                                       float m1, float m2, float* __restrict c0,
                                       float* __restrict c1, float* __restrict c2) {
  for (int64_t t = 0; t < n; ++t) {
    c0[t] = static_cast<float>(pixels[3 * t]) - m0;
    c1[t] = static_cast<float>(pixels[3 * t + 1]) - m1;
    c2[t] = static_cast<float>(pixels[3 * t + 2]) - m2;
  }
}

RF_VECTOR_CLONES void split_even_odd(const float* __restrict src, int64_t count,
                                     float* __restrict even, float* __restrict odd) {
  for (int64_t k = 0; k < count; ++k) {
    even[k] = src[2 * k];
    odd[k] = src[2 * k + 1];
  }
}

// Pixel values minus the mean for the input columns origin .. origin + 2 count - 1
// of one image row (0 outside the image), split into even and odd columns:
// planes [channel 0 even, channel 0 odd, channel 1 even, ...], `count` values each.
void convert_row(const uint8_t* row, int64_t width, int64_t origin, int64_t count,
                 const float* mean, float* scratch, float* planes, int64_t stride) {
  const int64_t columns = 2 * count;
  const int64_t begin = std::clamp<int64_t>(-origin, 0, columns);
  const int64_t end = std::clamp<int64_t>(width - origin, begin, columns);
  float* channel[3] = {scratch, scratch + columns, scratch + 2 * columns};
  for (float* c : channel) {
    std::fill(c, c + begin, 0.0f);
    std::fill(c + end, c + columns, 0.0f);
  }
  pixels_to_planes(row + 3 * (origin + begin), end - begin, mean[0], mean[1], mean[2],
                   channel[0] + begin, channel[1] + begin, channel[2] + begin);
  for (int c = 0; c < 3; ++c) {
    split_even_odd(channel[c], count, planes + (2 * c) * stride, planes + (2 * c + 1) * stride);
  }
}

// conv 3x3, stride 2, 3 -> 8 channels, + LeakyReLU, for output columns j .. j + L * V - 1.
// Output column k reads input columns 2k - 1, 2k, 2k + 1 = even[k], odd[k], even[k + 1] (the
// planes start one column left of the first output's window). weight [3][3][3][8] (IHWO: the
// eight outputs' weights of one tap are adjacent).
template <int L, int V>
RF_ALWAYS_INLINE void conv_columns(const float* const* rows, int64_t in_stride, int64_t j,
                                   const float* weight, const float* bias, float slope, float* out,
                                   int64_t out_stride) {
  using S = Simd<L>;
  typedef typename S::F F;
  constexpr int kOut = 8;
  F acc[kOut][V];
  for (int o = 0; o < kOut; ++o) {
    for (int v = 0; v < V; ++v) acc[o][v] = F{} + bias[o];
  }
  for (int ky = 0; ky < 3; ++ky) {
    if (rows[ky] == nullptr) continue;
    for (int c = 0; c < 3; ++c) {
      const float* even = rows[ky] + (2 * c) * in_stride + j;
      const float* odd = rows[ky] + (2 * c + 1) * in_stride + j;
      F x[3][V];
      for (int v = 0; v < V; ++v) {
        STEM_LOAD(x[0][v], even + v * L);
        STEM_LOAD(x[1][v], odd + v * L);
        STEM_LOAD(x[2][v], even + v * L + 1);
      }
      const float* w = weight + (c * 3 + ky) * 3 * kOut;
      for (int o = 0; o < kOut; ++o) {
        for (int v = 0; v < V; ++v) {
          acc[o][v] += x[0][v] * w[o] + x[1][v] * w[kOut + o] + x[2][v] * w[2 * kOut + o];
        }
      }
    }
  }
  for (int o = 0; o < kOut; ++o) {
    for (int v = 0; v < V; ++v) {
      const F y = STEM_LEAKY_RELU(S, acc[o][v], slope);
      STEM_STORE(out + o * out_stride + j + v * L, y);
    }
  }
}

// The conv for one output row of `count` >= kLanes columns; rows[ky] are the
// input rows 2r - 1 + ky as even/odd planes (null: outside the image).
template <int L>
RF_ALWAYS_INLINE void conv_row(const float* const* rows, int64_t in_stride, int64_t count,
                               const float* weight, const float* bias, float slope, float* out,
                               int64_t out_stride) {
  constexpr int V = Simd<L>::kConvColumns;
  if (count < V * L) {
    for (int64_t j0 = 0; j0 < count; j0 += L) {
      conv_columns<L, 1>(rows, in_stride, vector_start(j0, count, L), weight, bias, slope, out,
                         out_stride);
    }
    return;
  }
  for (int64_t j0 = 0; j0 < count; j0 += V * L) {
    conv_columns<L, V>(rows, in_stride, vector_start(j0, count, V * L), weight, bias, slope, out,
                       out_stride);
  }
}

// A depthwise-separable block for one row (block_columns, block_row): depthwise
// 3x3 + LeakyReLU, then pointwise (1x1) + LeakyReLU. The depthwise results of
// 2 L columns go through a small tile that stays in L1 on their way to the
// pointwise conv.
//
// Stride 1: rows[ky] hold the input row's channel planes and output column k
// reads input columns k .. k + 2 (the planes start one column left of the
// first window). Stride 2: rows[ky] hold each channel as an even-column and
// an odd-column plane (channel c at planes 2c, 2c + 1) and output column k
// reads even[k], odd[k], even[k + 1]. A null row is outside the image (zero).
// "halves": the output is written as even/odd planes too (plane 2o for the
// even columns of output channel o, 2o + 1 for the odd ones), the input layout
// of a stride-2 block.
//
// Weights: depthwise [C][9], pointwise transposed to [C][O] (one input
// channel's weights adjacent); O is a multiple of 8.
struct BlockWeights {
  const float* depthwise;
  const float* depthwise_bias;
  const float* pointwise;
  const float* pointwise_bias;
  int64_t in_channels, out_channels;
  float slope;
};

constexpr int kMaxBlockChannels = 32;

template <int L, int kStride, bool kHalves, int V>
RF_ALWAYS_INLINE void block_columns(const float* const* rows, int64_t in_stride, int64_t j,
                                    const BlockWeights& w, float* out, int64_t out_stride) {
  using S = Simd<L>;
  typedef typename S::F F;
  constexpr int kBlock = S::kPointwiseBlock;
  constexpr int64_t kTile = L * V;
  alignas(64) float tile[kMaxBlockChannels * kTile];
  const float slope = w.slope;
  for (int64_t c = 0; c < w.in_channels; ++c) {
    const float* k = w.depthwise + c * 9;
    for (int v = 0; v < V; ++v) {
      F acc = F{} + w.depthwise_bias[c];
      for (int ky = 0; ky < 3; ++ky) {
        if (rows[ky] == nullptr) continue;
        F x0, x1, x2;
        if (kStride == 1) {
          const float* x = rows[ky] + c * in_stride + j + v * L;
          STEM_LOAD(x0, x);
          STEM_LOAD(x1, x + 1);
          STEM_LOAD(x2, x + 2);
        } else {
          const float* even = rows[ky] + (2 * c) * in_stride + j + v * L;
          const float* odd = rows[ky] + (2 * c + 1) * in_stride + j + v * L;
          STEM_LOAD(x0, even);
          STEM_LOAD(x1, odd);
          STEM_LOAD(x2, even + 1);
        }
        acc += x0 * k[3 * ky] + x1 * k[3 * ky + 1] + x2 * k[3 * ky + 2];
      }
      const F y = STEM_LEAKY_RELU(S, acc, slope);
      STEM_STORE(tile + c * kTile + v * L, y);
    }
  }
  for (int64_t o0 = 0; o0 < w.out_channels; o0 += kBlock) {
    F acc[kBlock][V];
    for (int o = 0; o < kBlock; ++o) {
      for (int v = 0; v < V; ++v) acc[o][v] = F{} + w.pointwise_bias[o0 + o];
    }
    for (int64_t c = 0; c < w.in_channels; ++c) {
      F x[V];
      for (int v = 0; v < V; ++v) STEM_LOAD(x[v], tile + c * kTile + v * L);
      const float* p = w.pointwise + c * w.out_channels + o0;
      for (int o = 0; o < kBlock; ++o) {
        for (int v = 0; v < V; ++v) acc[o][v] += x[v] * p[o];
      }
    }
    for (int o = 0; o < kBlock; ++o) {
      alignas(64) float y[kTile];
      for (int v = 0; v < V; ++v) {
        const F activated = STEM_LEAKY_RELU(S, acc[o][v], slope);
        if constexpr (kHalves) {
          STEM_STORE(y + v * L, activated);
        } else {
          STEM_STORE(out + (o0 + o) * out_stride + j + v * L, activated);
        }
      }
      if constexpr (kHalves) {
        float* __restrict even = out + (2 * (o0 + o)) * out_stride + j / 2;
        float* __restrict odd = out + (2 * (o0 + o) + 1) * out_stride + j / 2;
        if constexpr (L == 16 && V == 2) {  // two-register permutes (vpermt2ps)
          typedef int32_t Indices __attribute__((vector_size(16 * sizeof(int32_t))));
          const Indices evens = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
          F low, high;
          STEM_LOAD(low, y);
          STEM_LOAD(high, y + L);
          const F even_values = __builtin_shuffle(low, high, evens);
          const F odd_values = __builtin_shuffle(low, high, evens + 1);
          STEM_STORE(even, even_values);
          STEM_STORE(odd, odd_values);
        } else {  // a stride-2 loop the vectoriser turns into the ISA's own permutes
          for (int i = 0; i < kTile / 2; ++i) {
            even[i] = y[2 * i];
            odd[i] = y[2 * i + 1];
          }
        }
      }
    }
  }
}

// The block for one row of `count` >= kLanes output columns, 2 L at a time
// (the last block shifted back to end at the row's end), L when the row is
// shorter. kHalves needs an even count >= kLanes (then 2 L divides neither
// start nor end oddly: every block starts at an even column).
template <int L, int kStride, bool kHalves>
RF_ALWAYS_INLINE void block_row(const float* const* rows, int64_t in_stride, int64_t count,
                                const BlockWeights& w, float* out, int64_t out_stride) {
  if (count < 2 * L) {
    for (int64_t j0 = 0; j0 < count; j0 += L) {
      block_columns<L, kStride, kHalves, 1>(rows, in_stride, vector_start(j0, count, L), w, out,
                                            out_stride);
    }
    return;
  }
  for (int64_t j0 = 0; j0 < count; j0 += 2 * L) {
    block_columns<L, kStride, kHalves, 2>(rows, in_stride, vector_start(j0, count, 2 * L), w, out,
                                          out_stride);
  }
}

typedef void (*BlockRowFn)(const float* const*, int64_t, int64_t, const BlockWeights&, float*,
                           int64_t);
typedef void (*ConvRowFn)(const float* const*, int64_t, int64_t, const float*, const float*,
                          float, float*, int64_t);

// The row kernels of one ISA: blocks 1 (stride 1, output as even/odd planes),
// 2 (stride 2) and 3 (stride 1), and the conv.
struct StemKernels {
  ConvRowFn conv;
  BlockRowFn block_to_halves, block_from_halves, block_stride1;
};

#define STEM_KERNELS(NAME, TARGET, L)                                                           \
  TARGET void NAME##_conv(const float* const* rows, int64_t in_stride, int64_t count,           \
                          const float* weight, const float* bias, float slope, float* out,     \
                          int64_t out_stride) {                                                 \
    conv_row<L>(rows, in_stride, count, weight, bias, slope, out, out_stride);                 \
  }                                                                                             \
  TARGET void NAME##_to_halves(const float* const* rows, int64_t in_stride, int64_t count,      \
                               const BlockWeights& w, float* out, int64_t out_stride) {         \
    block_row<L, 1, true>(rows, in_stride, count, w, out, out_stride);                         \
  }                                                                                             \
  TARGET void NAME##_from_halves(const float* const* rows, int64_t in_stride, int64_t count,    \
                                 const BlockWeights& w, float* out, int64_t out_stride) {       \
    block_row<L, 2, false>(rows, in_stride, count, w, out, out_stride);                        \
  }                                                                                             \
  TARGET void NAME##_stride1(const float* const* rows, int64_t in_stride, int64_t count,        \
                             const BlockWeights& w, float* out, int64_t out_stride) {           \
    block_row<L, 1, false>(rows, in_stride, count, w, out, out_stride);                        \
  }                                                                                             \
  constexpr StemKernels NAME##_kernels{NAME##_conv, NAME##_to_halves, NAME##_from_halves,       \
                                       NAME##_stride1};

STEM_KERNELS(baseline, , 4)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
STEM_KERNELS(avx2, __attribute__((target("avx2,fma"))), 8)
STEM_KERNELS(avx512, __attribute__((target("avx512f"))), 16)
#endif

// The best kernels the CPU runs, lowered by RETINAFACE_CPU_ISA (cpu/cpu_isa.h;
// read once) for tests of the paths a machine would not take.
const StemKernels& choose_stem_kernels() {
  CpuIsa supported = CpuIsa::baseline;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (__builtin_cpu_supports("avx512f")) {
    supported = CpuIsa::avx512;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    supported = CpuIsa::avx2;
  }
  switch (capped_by_environment(supported)) {
    case CpuIsa::avx512:
      return avx512_kernels;
    case CpuIsa::avx2:
      return avx2_kernels;
    case CpuIsa::baseline:
      break;
  }
#endif
  return baseline_kernels;
}

const StemKernels& stem_kernels() {
  static const StemKernels& chosen = choose_stem_kernels();
  return chosen;
}

// The rows of one layer inside a tile: a ring of the last `depth` rows, each
// `channels` planes of `stride` floats. The columns of a layer's rows are the
// layer's columns origin .. origin + count - 1.
class RowRing {
 public:
  RowRing(int64_t channels, int64_t count, int64_t depth)
      : channels_(channels), stride_(count + kLanes), depth_(depth),
        data_(static_cast<size_t>(channels * stride_ * depth), 0.0f) {}
  float* row(int64_t r) { return data_.data() + (r % depth_) * channels_ * stride_; }
  int64_t stride() const { return stride_; }
  // Zeroes the columns outside the layer (they are the next layer's zero padding).
  void zero_outside(float* row, int64_t count, int64_t origin, int64_t width) const {
    const int64_t begin = std::clamp<int64_t>(-origin, 0, count);
    const int64_t end = std::clamp<int64_t>(width - origin, begin, count);
    for (int64_t c = 0; c < channels_; ++c) {
      std::fill(row + c * stride_, row + c * stride_ + begin, 0.0f);
      std::fill(row + c * stride_ + end, row + c * stride_ + count, 0.0f);
    }
  }
  // The same for a row stored as even/odd column planes (channel c at planes 2c, 2c + 1).
  void zero_outside_halves(float* row, int64_t count, int64_t origin, int64_t width) const {
    const int64_t begin = std::clamp<int64_t>(-origin, 0, count);
    const int64_t end = std::clamp<int64_t>(width - origin, begin, count);
    for (int64_t c = 0; c < channels_ / 2; ++c) {
      for (int64_t k = 0; k < begin; ++k) row[(2 * c + (k & 1)) * stride_ + k / 2] = 0.0f;
      for (int64_t k = end; k < count; ++k) row[(2 * c + (k & 1)) * stride_ + k / 2] = 0.0f;
    }
  }

 private:
  int64_t channels_, stride_, depth_;
  std::vector<float> data_;
};

struct StemWeights {
  const float* conv;       // [3][3][3][8] (IHWO)
  const float* conv_bias;  // [8]
  BlockWeights blocks[3];
  float mean[3];
  float slope;
};

// One tile: output rows [row_begin, row_end) and columns [col_begin, col_end)
// of one image. Layers: I (input planes), A (conv, 8 x H/2), B (block 1,
// 16 x H/2, stored as even/odd column planes), C (block 2, 32 x H/4), then
// block 3 writes the output.
class StemTile {
 public:
  StemTile(const uint8_t* image, int64_t height, int64_t width, const StemWeights& w)
      : image_(image), w_(w), height_(height), width_(width), h2_((height + 1) / 2),
        w2_((width + 1) / 2), h4_((h2_ + 1) / 2), w4_((w2_ + 1) / 2) {}

  void run(int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end, float* out) {
    // Column windows, from the output back to the input: each layer starts one
    // column left of its consumer's first 3x3 window (twice as far for a
    // stride-2 consumer), so every read below is at index k + 0..2 (or
    // even[k], odd[k], even[k + 1]).
    const int64_t out_count = col_end - col_begin;
    const int64_t d_count = std::max(out_count, kLanes);
    c_origin_ = col_begin - 1;
    c_count_ = d_count + 2;
    b_origin_ = 2 * c_origin_ - 1;
    b_count_ = 2 * c_count_ + 2;  // even, as the even/odd planes need
    a_origin_ = b_origin_ - 1;
    a_count_ = b_count_ + 2;
    in_origin_ = 2 * a_origin_ - 1;
    in_count_ = a_count_ + 1;  // even / odd input columns per plane

    RowRing input(6, in_count_, 3), a(8, a_count_, 3), b(32, b_count_ / 2 + 1, 3),
        c(32, c_count_, 3), d(32, d_count, 1);
    std::vector<float> scratch(static_cast<size_t>(3 * 2 * in_count_));
    input_ = &input;
    a_ = &a;
    b_ = &b;
    c_ = &c;
    scratch_ = scratch.data();
    // The first row each layer needs for output row row_begin (clamped below by 0).
    next_c_ = std::max<int64_t>(0, row_begin - 1);
    next_b_ = std::max<int64_t>(0, 2 * next_c_ - 1);
    next_a_ = std::max<int64_t>(0, next_b_ - 1);
    next_input_ = std::max<int64_t>(0, 2 * next_a_ - 1);

    // Rows of at least kLanes columns are written to the output directly;
    // narrower ones (tiny images) go through d.
    const bool direct = out_count == d_count;
    for (int64_t q = row_begin; q < row_end; ++q) {
      compute_c(q + 1);
      const float* rows[3] = {q >= 1 ? c.row(q - 1) : nullptr, c.row(q),
                              q + 1 < h4_ ? c.row(q + 1) : nullptr};
      float* target = direct ? out + q * w4_ + col_begin : d.row(0);
      const int64_t target_stride = direct ? h4_ * w4_ : d.stride();
      kernels_.block_stride1(rows, c.stride(), d_count, w_.blocks[2], target, target_stride);
      if (!direct) {
        for (int64_t ch = 0; ch < kStemOutputChannels; ++ch) {
          std::memcpy(out + (ch * h4_ + q) * w4_ + col_begin, d.row(0) + ch * d.stride(),
                      static_cast<size_t>(out_count) * sizeof(float));
        }
      }
    }
  }

 private:
  void compute_input(int64_t last) {
    for (; next_input_ <= std::min(last, height_ - 1); ++next_input_) {
      convert_row(image_ + next_input_ * width_ * 3, width_, in_origin_, in_count_, w_.mean,
                  scratch_, input_->row(next_input_), input_->stride());
    }
  }

  void compute_a(int64_t last) {
    for (; next_a_ <= std::min(last, h2_ - 1); ++next_a_) {
      const int64_t y = 2 * next_a_;
      compute_input(y + 1);
      const float* rows[3] = {y >= 1 ? input_->row(y - 1) : nullptr, input_->row(y),
                              y + 1 < height_ ? input_->row(y + 1) : nullptr};
      float* out = a_->row(next_a_);
      kernels_.conv(rows, input_->stride(), a_count_, w_.conv, w_.conv_bias, w_.slope, out,
                    a_->stride());
      a_->zero_outside(out, a_count_, a_origin_, w2_);
    }
  }

  void compute_b(int64_t last) {
    for (; next_b_ <= std::min(last, h2_ - 1); ++next_b_) {
      const int64_t y = next_b_;
      compute_a(y + 1);
      const float* rows[3] = {y >= 1 ? a_->row(y - 1) : nullptr, a_->row(y),
                              y + 1 < h2_ ? a_->row(y + 1) : nullptr};
      float* out = b_->row(y);
      kernels_.block_to_halves(rows, a_->stride(), b_count_, w_.blocks[0], out, b_->stride());
      b_->zero_outside_halves(out, b_count_, b_origin_, w2_);
    }
  }

  void compute_c(int64_t last) {
    for (; next_c_ <= std::min(last, h4_ - 1); ++next_c_) {
      const int64_t y = 2 * next_c_;
      compute_b(y + 1);
      const float* rows[3] = {y >= 1 ? b_->row(y - 1) : nullptr, b_->row(y),
                              y + 1 < h2_ ? b_->row(y + 1) : nullptr};
      float* out = c_->row(next_c_);
      kernels_.block_from_halves(rows, b_->stride(), c_count_, w_.blocks[1], out, c_->stride());
      c_->zero_outside(out, c_count_, c_origin_, w4_);
    }
  }

  const uint8_t* image_;
  const StemWeights& w_;
  const StemKernels& kernels_ = stem_kernels();
  int64_t height_, width_, h2_, w2_, h4_, w4_;
  int64_t c_origin_ = 0, c_count_ = 0, b_origin_ = 0, b_count_ = 0;
  int64_t a_origin_ = 0, a_count_ = 0, in_origin_ = 0, in_count_ = 0;
  int64_t next_input_ = 0, next_a_ = 0, next_b_ = 0, next_c_ = 0;
  RowRing *input_ = nullptr, *a_ = nullptr, *b_ = nullptr, *c_ = nullptr;
  float* scratch_ = nullptr;
};

at::Tensor mobilenet_stem_cpu(const at::Tensor& images_in, at::TensorList weights_in,
                              at::TensorList biases_in, at::ArrayRef<double> mean,
                              double negative_slope) {
  check_mobilenet_stem_args(images_in, weights_in, biases_in, mean, negative_slope);
  const at::Tensor images = images_in.contiguous();
  const int64_t batch = images.size(0), height = images.size(1), width = images.size(2);
  const int64_t out_height = stem_output_size(height), out_width = stem_output_size(width);
  at::Tensor out = at::empty({batch, kStemOutputChannels, out_height, out_width},
                             images.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;

  // Kernel layouts: the conv IHWO and the pointwise weights [in][out] (transposed), the
  // depthwise ones [C][9] (OIHW flattened).
  std::vector<at::Tensor> weights, biases;
  for (int k = 0; k < kStemLayers; ++k) {
    const at::Tensor& weight = weights_in[k];
    if (k == 0) {
      weights.push_back(weight.permute({1, 2, 3, 0}).contiguous());
    } else if (kStemKernel[k] == 1) {
      weights.push_back(weight.flatten(1).t().contiguous());
    } else {
      weights.push_back(weight.contiguous());
    }
    biases.push_back(biases_in[k].contiguous());
  }
  StemWeights w{};
  w.conv = weights[0].const_data_ptr<float>();
  w.conv_bias = biases[0].const_data_ptr<float>();
  w.slope = static_cast<float>(negative_slope);
  for (int b = 0; b < 3; ++b) {
    const int dw = 1 + 2 * b, pw = 2 + 2 * b;
    w.blocks[b] = BlockWeights{weights[dw].const_data_ptr<float>(), biases[dw].const_data_ptr<float>(),
                               weights[pw].const_data_ptr<float>(), biases[pw].const_data_ptr<float>(),
                               kStemInChannels[pw], kStemOutChannels[pw], w.slope};
  }
  for (int c = 0; c < 3; ++c) w.mean[c] = static_cast<float>(mean[c]);

  const int64_t strips = (out_width + kStripColumns - 1) / kStripColumns;
  // Bands of rows only when strips and images leave threads idle.
  const int64_t threads = at::get_num_threads();
  const int64_t bands = std::clamp<int64_t>((threads + batch * strips - 1) / (batch * strips), 1,
                                            std::max<int64_t>(1, out_height / 8));
  const int64_t tiles = batch * bands * strips;
  const uint8_t* pixels = images.const_data_ptr<uint8_t>();
  float* output = out.mutable_data_ptr<float>();
  // Not at::parallel_for: see parallel_for_interop (onnxruntime runs right after this op).
  parallel_for_interop(tiles, [&](int64_t t) {
    const int64_t image = t / (bands * strips);
    const int64_t band = (t / strips) % bands, strip = t % strips;
    StemTile tile(pixels + image * height * width * 3, height, width, w);
    tile.run(out_height * band / bands, out_height * (band + 1) / bands, out_width * strip / strips,
             out_width * (strip + 1) / strips,
             output + image * kStemOutputChannels * out_height * out_width);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("mobilenet_stem", &mobilenet_stem_cpu);
}

}  // namespace retinaface
