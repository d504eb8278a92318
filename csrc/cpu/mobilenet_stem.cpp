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
// one (it recomputes a few columns; the results are the same).
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
// half-resolution layers per strip (3% at 128), and a strip's rows stay small
// enough for the L1/L2 caches at any image width.
constexpr int64_t kStripColumns = 128;
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
// planes start one column left of the first output's window). weight [8][3][3][3] (OIHW).
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
      for (int o = 0; o < kOut; ++o) {
        const float* w = weight + ((o * 3 + c) * 3 + ky) * 3;
        for (int v = 0; v < V; ++v) acc[o][v] += x[0][v] * w[0] + x[1][v] * w[1] + x[2][v] * w[2];
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

// depthwise 3x3, stride 1, + LeakyReLU: out[c][k] from rows[ky][c][k .. k + 2].
// weight [channels][9].
RF_VECTOR_CLONES void depthwise_row(const float* const* rows, int64_t in_stride, int64_t channels,
                                    int64_t count, const float* weight, const float* bias,
                                    float slope, float* out, int64_t out_stride) {
  for (int64_t c = 0; c < channels; ++c) {
    const float* w = weight + c * 9;
    for (int64_t j0 = 0; j0 < count; j0 += kLanes) {
      const int64_t j = vector_start(j0, count);
      Lanes acc = Lanes{} + bias[c];
      for (int ky = 0; ky < 3; ++ky) {
        if (rows[ky] == nullptr) continue;
        const float* x = rows[ky] + c * in_stride + j;
        Lanes x0, x1, x2;
        STEM_LOAD(x0, x);
        STEM_LOAD(x1, x + 1);
        STEM_LOAD(x2, x + 2);
        acc += x0 * w[3 * ky] + x1 * w[3 * ky + 1] + x2 * w[3 * ky + 2];
      }
      const Lanes y = STEM_LEAKY_RELU(acc, slope);
      STEM_STORE(out + c * out_stride + j, y);
    }
  }
}

// dst[c][k] = src[c][2 k] for k < count: a stride-1 depthwise row sampled at stride 2.
RF_VECTOR_CLONES void even_columns(const float* src, int64_t src_stride, int64_t channels,
                                   int64_t count, float* dst, int64_t dst_stride) {
  typedef int32_t Indices __attribute__((vector_size(kLanes * sizeof(int32_t))));
  const Indices evens = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t j0 = 0; j0 < count; j0 += kLanes) {
      const int64_t j = vector_start(j0, count);
      const float* s = src + c * src_stride + 2 * j;
      Lanes low, high;
      STEM_LOAD(low, s);
      STEM_LOAD(high, s + kLanes);
      const Lanes y = __builtin_shuffle(low, high, evens);
      STEM_STORE(dst + c * dst_stride + j, y);
    }
  }
}

// pointwise (1x1) conv + LeakyReLU for columns j .. j + kLanes * V - 1 and
// output channels o0 .. o0 + kPointwiseBlock - 1: out[o][k] = sum_c weight[o][c] in[c][k].
template <int V>
RF_ALWAYS_INLINE void pointwise_columns(const float* in, int64_t in_stride, int64_t in_channels,
                                        int64_t j, const float* weight, const float* bias,
                                        int64_t o0, float slope, float* out, int64_t out_stride) {
  Lanes acc[kPointwiseBlock][V];
  for (int o = 0; o < kPointwiseBlock; ++o) {
    for (int v = 0; v < V; ++v) acc[o][v] = Lanes{} + bias[o0 + o];
  }
  for (int64_t c = 0; c < in_channels; ++c) {
    Lanes x[V];
    for (int v = 0; v < V; ++v) STEM_LOAD(x[v], in + c * in_stride + j + v * kLanes);
    for (int o = 0; o < kPointwiseBlock; ++o) {
      const float w = weight[(o0 + o) * in_channels + c];
      for (int v = 0; v < V; ++v) acc[o][v] += x[v] * w;
    }
  }
  for (int o = 0; o < kPointwiseBlock; ++o) {
    for (int v = 0; v < V; ++v) {
      const Lanes y = STEM_LEAKY_RELU(acc[o][v], slope);
      STEM_STORE(out + (o0 + o) * out_stride + j + v * kLanes, y);
    }
  }
}

// The pointwise conv for one row of `count` columns; out_channels is a
// multiple of kPointwiseBlock. Two vectors of columns at a time, so each
// weight is loaded once per 32 columns.
RF_VECTOR_CLONES void pointwise_row(const float* in, int64_t in_stride, int64_t in_channels,
                                    int64_t count, const float* weight, const float* bias,
                                    int64_t out_channels, float slope, float* out,
                                    int64_t out_stride) {
  for (int64_t o0 = 0; o0 < out_channels; o0 += kPointwiseBlock) {
    if (count < 2 * kLanes) {
      for (int64_t j0 = 0; j0 < count; j0 += kLanes) {
        pointwise_columns<1>(in, in_stride, in_channels, vector_start(j0, count), weight, bias, o0,
                             slope, out, out_stride);
      }
      continue;
    }
    for (int64_t j0 = 0; j0 < count; j0 += 2 * kLanes) {
      pointwise_columns<2>(in, in_stride, in_channels, std::min(j0, count - 2 * kLanes), weight,
                           bias, o0, slope, out, out_stride);
    }
  }
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

 private:
  int64_t channels_, stride_, depth_;
  std::vector<float> data_;
};

struct StemWeights {
  std::array<const float*, kStemLayers> weight;
  std::array<const float*, kStemLayers> bias;
  float mean[3];
  float slope;
};

// One tile: output rows [row_begin, row_end) and columns [col_begin, col_end)
// of one image. Layers: I (input planes), A (conv, 8 x H/2), B (block 1,
// 16 x H/2), C (block 2, 32 x H/4), D (block 3, the output).
class StemTile {
 public:
  StemTile(const uint8_t* image, int64_t height, int64_t width, const StemWeights& w)
      : image_(image), w_(w), height_(height), width_(width), h2_((height + 1) / 2),
        w2_((width + 1) / 2), h4_((h2_ + 1) / 2), w4_((w2_ + 1) / 2) {}

  void run(int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end, float* out) {
    // Column windows, from the output back to the input: each layer starts one
    // column left of its consumer's first 3x3 window (twice as far for a
    // stride-2 consumer), so every read below is at index k + 0..2.
    const int64_t out_count = col_end - col_begin;
    d_count_ = std::max(out_count, kLanes);
    c_origin_ = col_begin - 1;
    c_count_ = d_count_ + 2;
    b_origin_ = 2 * c_origin_ - 1;
    b_count_ = 2 * c_count_ + 2;  // the stride-1 depthwise at 2 c_count positions reads 2 more
    a_origin_ = b_origin_ - 1;
    a_count_ = b_count_ + 2;
    in_origin_ = 2 * a_origin_ - 1;
    in_count_ = a_count_ + 1;  // even / odd input columns per plane

    RowRing input(6, in_count_, 3), a(8, a_count_, 3), b(16, b_count_, 3), c(32, c_count_, 3);
    RowRing depthwise(32, b_count_, 1), sampled(32, c_count_, 1), d(32, d_count_, 1);
    std::vector<float> scratch(static_cast<size_t>(3 * 2 * in_count_));
    input_ = &input;
    a_ = &a;
    b_ = &b;
    c_ = &c;
    depthwise_ = &depthwise;
    sampled_ = &sampled;
    scratch_ = scratch.data();
    // The first row each layer needs for output row row_begin (clamped below by 0).
    next_c_ = std::max<int64_t>(0, row_begin - 1);
    next_b_ = std::max<int64_t>(0, 2 * next_c_ - 1);
    next_a_ = std::max<int64_t>(0, next_b_ - 1);
    next_input_ = std::max<int64_t>(0, 2 * next_a_ - 1);

    for (int64_t q = row_begin; q < row_end; ++q) {
      compute_c(q + 1);
      const float* rows[3] = {q >= 1 ? c.row(q - 1) : nullptr, c.row(q),
                              q + 1 < h4_ ? c.row(q + 1) : nullptr};
      depthwise_row(rows, c.stride(), 32, d_count_, w_.weight[5], w_.bias[5], w_.slope,
                    depthwise.row(0), depthwise.stride());
      pointwise_row(depthwise.row(0), depthwise.stride(), 32, d_count_, w_.weight[6],
                    w_.bias[6], 32, w_.slope, d.row(0), d.stride());
      for (int64_t ch = 0; ch < kStemOutputChannels; ++ch) {
        std::memcpy(out + (ch * h4_ + q) * w4_ + col_begin, d.row(0) + ch * d.stride(),
                    static_cast<size_t>(out_count) * sizeof(float));
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
      conv_row(rows, input_->stride(), a_count_, w_.weight[0], w_.bias[0], w_.slope, out,
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
      depthwise_row(rows, a_->stride(), 8, b_count_, w_.weight[1], w_.bias[1], w_.slope,
                    depthwise_->row(0), depthwise_->stride());
      float* out = b_->row(y);
      pointwise_row(depthwise_->row(0), depthwise_->stride(), 8, b_count_, w_.weight[2],
                    w_.bias[2], 16, w_.slope, out, b_->stride());
      b_->zero_outside(out, b_count_, b_origin_, w2_);
    }
  }

  void compute_c(int64_t last) {
    for (; next_c_ <= std::min(last, h4_ - 1); ++next_c_) {
      const int64_t y = 2 * next_c_;
      compute_b(y + 1);
      const float* rows[3] = {y >= 1 ? b_->row(y - 1) : nullptr, b_->row(y),
                              y + 1 < h2_ ? b_->row(y + 1) : nullptr};
      // Stride 2: the stride-1 depthwise at 2 c_count positions, then its even columns.
      depthwise_row(rows, b_->stride(), 16, 2 * c_count_, w_.weight[3], w_.bias[3], w_.slope,
                    depthwise_->row(0), depthwise_->stride());
      even_columns(depthwise_->row(0), depthwise_->stride(), 16, c_count_, sampled_->row(0),
                   sampled_->stride());
      float* out = c_->row(next_c_);
      pointwise_row(sampled_->row(0), sampled_->stride(), 16, c_count_, w_.weight[4],
                    w_.bias[4], 32, w_.slope, out, c_->stride());
      c_->zero_outside(out, c_count_, c_origin_, w4_);
    }
  }

  const uint8_t* image_;
  const StemWeights& w_;
  int64_t height_, width_, h2_, w2_, h4_, w4_;
  int64_t d_count_ = 0, c_origin_ = 0, c_count_ = 0, b_origin_ = 0, b_count_ = 0;
  int64_t a_origin_ = 0, a_count_ = 0, in_origin_ = 0, in_count_ = 0;
  int64_t next_input_ = 0, next_a_ = 0, next_b_ = 0, next_c_ = 0;
  RowRing *input_ = nullptr, *a_ = nullptr, *b_ = nullptr, *c_ = nullptr;
  RowRing *depthwise_ = nullptr, *sampled_ = nullptr;
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

  // Kernel layouts: depthwise [C][9] and pointwise [O][C] are OIHW flattened.
  std::vector<at::Tensor> weights, biases;
  StemWeights w{};
  for (int k = 0; k < kStemLayers; ++k) {
    weights.push_back(weights_in[k].contiguous());
    biases.push_back(biases_in[k].contiguous());
    w.weight[k] = weights.back().const_data_ptr<float>();
    w.bias[k] = biases.back().const_data_ptr<float>();
  }
  for (int c = 0; c < 3; ++c) w.mean[c] = static_cast<float>(mean[c]);
  w.slope = static_cast<float>(negative_slope);

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
