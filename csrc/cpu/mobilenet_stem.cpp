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
// the arithmetic is on 16 consecutive columns at a time (GCC vector extensions,
// compiled for AVX-512, AVX2 and the baseline ISA by RF_VECTOR_CLONES). A row
// shorter than a multiple of 16 ends with a vector that overlaps the previous
// one (it recomputes a few columns; the results are the same). The input of a
// stride-2 layer is kept as even-column and odd-column planes, so its 3x3
// windows are three contiguous loads too. Each depthwise-separable block runs
// 32 columns at a time, its depthwise results in a 4 KB tile for the
// pointwise conv.
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
#include <cstring>
#include <vector>

#include "common/mobilenet_stem_checks.h"
#include "cpu/parallel.h"
#include "cpu/vector_math.h"

namespace retinaface {
namespace {

constexpr int64_t kLanes = 16;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

// Output columns per strip: the recomputed border is ~7 columns of the
// half-resolution layers per strip (1.5% at 256), and a strip's rows (~400 KB
// for all layers' rings) stay in the L2 cache at any image width. 256 was
// 3-10% faster than 128 or 192 on photos of 512 to 1920 columns.
constexpr int64_t kStripColumns = 256;
// Pointwise output channels computed together (accumulators held in registers).
constexpr int kPointwiseBlock = 8;

// Unaligned loads and stores, written in place: a function taking or returning
// the vector type would change the ABI between the clones (-Wpsabi).
#define STEM_LOAD(v, p) std::memcpy(&(v), (p), sizeof(Lanes))
#define STEM_STORE(p, v) std::memcpy((p), &(v), sizeof(Lanes))
#define STEM_LEAKY_RELU(v, slope) ((v) > 0 ? (v) : (v) * (slope))
// The start of the vector that covers column j of a row of `count` >= kLanes
// columns: the last one is shifted back to end at the row's end.
RF_ALWAYS_INLINE int64_t vector_start(int64_t j, int64_t count) {
  return std::min(j, count - kLanes);
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

// conv 3x3, stride 2, 3 -> 8 channels, + LeakyReLU, for output columns j .. j + kLanes * V - 1.
// Output column k reads input columns 2k - 1, 2k, 2k + 1 = even[k], odd[k], even[k + 1] (the
// planes start one column left of the first output's window). weight [3][3][3][8] (IHWO: the
// eight outputs' weights of one tap are adjacent).
template <int V>
RF_ALWAYS_INLINE void conv_columns(const float* const* rows, int64_t in_stride, int64_t j,
                                   const float* weight, const float* bias, float slope, float* out,
                                   int64_t out_stride) {
  constexpr int kOut = 8;
  Lanes acc[kOut][V];
  for (int o = 0; o < kOut; ++o) {
    for (int v = 0; v < V; ++v) acc[o][v] = Lanes{} + bias[o];
  }
  for (int ky = 0; ky < 3; ++ky) {
    if (rows[ky] == nullptr) continue;
    for (int c = 0; c < 3; ++c) {
      const float* even = rows[ky] + (2 * c) * in_stride + j;
      const float* odd = rows[ky] + (2 * c + 1) * in_stride + j;
      Lanes x[3][V];
      for (int v = 0; v < V; ++v) {
        STEM_LOAD(x[0][v], even + v * kLanes);
        STEM_LOAD(x[1][v], odd + v * kLanes);
        STEM_LOAD(x[2][v], even + v * kLanes + 1);
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
      const Lanes y = STEM_LEAKY_RELU(acc[o][v], slope);
      STEM_STORE(out + o * out_stride + j + v * kLanes, y);
    }
  }
}

// The conv for one output row of `count` columns; rows[ky] are the input rows
// 2r - 1 + ky as even/odd planes (null: outside the image). Two vectors of
// columns at a time, so each weight is loaded once per 32 columns.
RF_VECTOR_CLONES void conv_row(const float* const* rows, int64_t in_stride, int64_t count,
                               const float* weight, const float* bias, float slope, float* out,
                               int64_t out_stride) {
  if (count < 2 * kLanes) {
    for (int64_t j0 = 0; j0 < count; j0 += kLanes) {
      conv_columns<1>(rows, in_stride, vector_start(j0, count), weight, bias, slope, out,
                      out_stride);
    }
    return;
  }
  for (int64_t j0 = 0; j0 < count; j0 += 2 * kLanes) {
    conv_columns<2>(rows, in_stride, std::min(j0, count - 2 * kLanes), weight, bias, slope, out,
                    out_stride);
  }
}

// A depthwise-separable block for one row: depthwise 3x3 + LeakyReLU, then
// pointwise (1x1) + LeakyReLU, kLanes * V columns at a time. The depthwise
// results of those columns go through a small tile that stays in L1 on their
// way to the pointwise conv.
//
// kStride 1: rows[ky] hold the input row's channel planes and output column k
// reads input columns k .. k + 2 (the planes start one column left of the
// first window). kStride 2: rows[ky] hold each channel as an even-column and an
// odd-column plane (channel c at planes 2c, 2c + 1) and output column k reads
// even[k], odd[k], even[k + 1]. A null row is outside the image (zero).
//
// kHalves: the output is written as even/odd planes too (plane 2o for the even
// columns of output channel o, 2o + 1 for the odd ones), the input layout of
// a stride-2 block; j must then be even.
//
// Weights: depthwise [C][9], pointwise transposed to [C][O] (one input
// channel's weights adjacent); O is a multiple of kPointwiseBlock.
struct BlockWeights {
  const float* depthwise;
  const float* depthwise_bias;
  const float* pointwise;
  const float* pointwise_bias;
  int64_t in_channels, out_channels;
  float slope;
};

constexpr int kMaxBlockChannels = 32;

template <int kStride, bool kHalves, int V>
RF_ALWAYS_INLINE void block_columns(const float* const* rows, int64_t in_stride, int64_t j,
                                    const BlockWeights& w, float* out, int64_t out_stride) {
  constexpr int64_t kTile = kLanes * V;
  alignas(64) float tile[kMaxBlockChannels * kTile];
  const float slope = w.slope;
  for (int64_t c = 0; c < w.in_channels; ++c) {
    const float* k = w.depthwise + c * 9;
    for (int v = 0; v < V; ++v) {
      Lanes acc = Lanes{} + w.depthwise_bias[c];
      for (int ky = 0; ky < 3; ++ky) {
        if (rows[ky] == nullptr) continue;
        Lanes x0, x1, x2;
        if (kStride == 1) {
          const float* x = rows[ky] + c * in_stride + j + v * kLanes;
          STEM_LOAD(x0, x);
          STEM_LOAD(x1, x + 1);
          STEM_LOAD(x2, x + 2);
        } else {
          const float* even = rows[ky] + (2 * c) * in_stride + j + v * kLanes;
          const float* odd = rows[ky] + (2 * c + 1) * in_stride + j + v * kLanes;
          STEM_LOAD(x0, even);
          STEM_LOAD(x1, odd);
          STEM_LOAD(x2, even + 1);
        }
        acc += x0 * k[3 * ky] + x1 * k[3 * ky + 1] + x2 * k[3 * ky + 2];
      }
      const Lanes y = STEM_LEAKY_RELU(acc, slope);
      STEM_STORE(tile + c * kTile + v * kLanes, y);
    }
  }
  for (int64_t o0 = 0; o0 < w.out_channels; o0 += kPointwiseBlock) {
    Lanes acc[kPointwiseBlock][V];
    for (int o = 0; o < kPointwiseBlock; ++o) {
      for (int v = 0; v < V; ++v) acc[o][v] = Lanes{} + w.pointwise_bias[o0 + o];
    }
    for (int64_t c = 0; c < w.in_channels; ++c) {
      Lanes x[V];
      for (int v = 0; v < V; ++v) STEM_LOAD(x[v], tile + c * kTile + v * kLanes);
      const float* p = w.pointwise + c * w.out_channels + o0;
      for (int o = 0; o < kPointwiseBlock; ++o) {
        for (int v = 0; v < V; ++v) acc[o][v] += x[v] * p[o];
      }
    }
    for (int o = 0; o < kPointwiseBlock; ++o) {
      Lanes y[V];
      for (int v = 0; v < V; ++v) y[v] = STEM_LEAKY_RELU(acc[o][v], slope);
      if constexpr (kHalves) {
        static_assert(V == 2, "even/odd output needs two vectors of columns");
        typedef int32_t Indices __attribute__((vector_size(kLanes * sizeof(int32_t))));
        const Indices evens = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
        const Indices odds = evens + 1;
        const Lanes even = __builtin_shuffle(y[0], y[1], evens);
        const Lanes odd = __builtin_shuffle(y[0], y[1], odds);
        STEM_STORE(out + (2 * (o0 + o)) * out_stride + j / 2, even);
        STEM_STORE(out + (2 * (o0 + o) + 1) * out_stride + j / 2, odd);
      } else {
        for (int v = 0; v < V; ++v) STEM_STORE(out + (o0 + o) * out_stride + j + v * kLanes, y[v]);
      }
    }
  }
}

// The block for one row of `count` >= kLanes output columns: 32 at a time
// (the last block shifted back to end at the row's end), 16 when the row is
// shorter than 32. kHalves needs an even count >= 32.
template <int kStride, bool kHalves>
RF_ALWAYS_INLINE void block_row(const float* const* rows, int64_t in_stride, int64_t count,
                                const BlockWeights& w, float* out, int64_t out_stride) {
  if (!kHalves && count < 2 * kLanes) {
    for (int64_t j0 = 0; j0 < count; j0 += kLanes) {
      block_columns<kStride, false, 1>(rows, in_stride, vector_start(j0, count), w, out,
                                       out_stride);
    }
    return;
  }
  for (int64_t j0 = 0; j0 < count; j0 += 2 * kLanes) {
    block_columns<kStride, kHalves, 2>(rows, in_stride, std::min(j0, count - 2 * kLanes), w, out,
                                       out_stride);
  }
}

// Block 1 (stride 1, output as even/odd planes for block 2), block 2 (stride
// 2) and block 3 (stride 1).
RF_VECTOR_CLONES void block_row_to_halves(const float* const* rows, int64_t in_stride,
                                          int64_t count, const BlockWeights& w, float* out,
                                          int64_t out_stride) {
  block_row<1, true>(rows, in_stride, count, w, out, out_stride);
}
RF_VECTOR_CLONES void block_row_from_halves(const float* const* rows, int64_t in_stride,
                                            int64_t count, const BlockWeights& w, float* out,
                                            int64_t out_stride) {
  block_row<2, false>(rows, in_stride, count, w, out, out_stride);
}
RF_VECTOR_CLONES void block_row_stride1(const float* const* rows, int64_t in_stride,
                                        int64_t count, const BlockWeights& w, float* out,
                                        int64_t out_stride) {
  block_row<1, false>(rows, in_stride, count, w, out, out_stride);
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
      block_row_stride1(rows, c.stride(), d_count, w_.blocks[2], target, target_stride);
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
      conv_row(rows, input_->stride(), a_count_, w_.conv, w_.conv_bias, w_.slope, out,
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
      block_row_to_halves(rows, a_->stride(), b_count_, w_.blocks[0], out, b_->stride());
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
      block_row_from_halves(rows, b_->stride(), c_count_, w_.blocks[1], out, c_->stride());
      c_->zero_outside(out, c_count_, c_origin_, w4_);
    }
  }

  const uint8_t* image_;
  const StemWeights& w_;
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
