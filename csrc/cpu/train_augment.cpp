// train_augment on the CPU: biubug6's `preproc` pixels in one pass per image.
//
// The output is produced row by row. Each source row of the square canvas
// (the crop, or the image padded with the mean colour) is distorted once,
// when the resize first needs it (so a downscale skips the rows it does not
// read), and resampled horizontally into a small ring buffer of rows; the
// vertical pass combines them and the converted row is written straight into
// the output (uint8 HWC, or float CHW minus the mean). The mirror is folded
// into the horizontal taps. Nothing of image size is allocated besides the
// output. The arithmetic is csrc/common/train_augment_math.h (OpenCV's).
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "common/train_augment_checks.h"
#include "common/train_augment_math.h"
#include "cpu/vector_math.h"

namespace retinaface {
namespace {

using namespace augment;

struct HsvDivisors {
  int32_t saturation[256];
  int32_t hue[256];
  HsvDivisors() {
    for (int i = 0; i < 256; ++i) {
      saturation[i] = hsv_saturation_divisor(i);
      hue[i] = hsv_hue_divisor(i);
    }
  }
};

const HsvDivisors& hsv_divisors() {
  static const HsvDivisors divisors;
  return divisors;
}

// The photometric tables widened to int32, so the HSV loop below gathers
// from them (the vectoriser cannot gather bytes).
struct WideTables {
  int32_t saturation[256];
  int32_t hue[256];
};

constexpr int kDistortBlock = 256;  // pixels per pass of the vectorised HSV loop

// The HSV round trip of n <= kDistortBlock pixels held as int32 planes (in
// place). Branch-free, so GCC vectorises it (with gathers for the tables).
template <bool kRound>
RF_ALWAYS_INLINE void hsv_round_trip_loop(int32_t* __restrict b, int32_t* __restrict g,
                                          int32_t* __restrict r, int begin, int end,
                                          const int32_t* __restrict sdiv, const int32_t* __restrict hdiv,
                                          const WideTables* __restrict wide) {
  for (int i = begin; i < end; ++i) {
    int h, s, v, ob, og, orr;
    bgr_to_hsv(b[i], g[i], r[i], sdiv, hdiv, &h, &s, &v);
    hsv_to_bgr<kRound>(wide->hue[h], wide->saturation[s], v, &ob, &og, &orr);
    b[i] = ob;
    g[i] = og;
    r[i] = orr;
  }
}

// The HSV round trip of n <= kDistortBlock pixels held as int32 planes (in
// place); pixels from round_from on are rounded (OpenCV's scalar tail).
RF_VECTOR_CLONES void hsv_round_trip(int32_t* __restrict b, int32_t* __restrict g, int32_t* __restrict r,
                                     int n, int round_from, const int32_t* __restrict sdiv,
                                     const int32_t* __restrict hdiv, const WideTables* __restrict wide) {
  const int split = std::min(n, std::max(round_from, 0));
  hsv_round_trip_loop<false>(b, g, r, 0, split, sdiv, hdiv, wide);
  hsv_round_trip_loop<true>(b, g, r, split, n, sdiv, hdiv, wide);
}

// Distorts a row of n interleaved BGR pixels from `in` into `out`, as
// cv2.cvtColor converts a row of n pixels (see opencv_hsv_block_pixels).
void distort_pixels(const uint8_t* in, uint8_t* out, int64_t n, const PhotometricTables& t,
                    const WideTables& wide) {
  static const int block_pixels = opencv_hsv_block_pixels();
  const int64_t vector_end = n / block_pixels * block_pixels;
  const HsvDivisors& divisors = hsv_divisors();
  int32_t b[kDistortBlock], g[kDistortBlock], r[kDistortBlock];
  for (int64_t start = 0; start < n; start += kDistortBlock) {
    const int count = static_cast<int>(std::min<int64_t>(kDistortBlock, n - start));
    const uint8_t* src = in + start * 3;
    for (int i = 0; i < count; ++i) {
      b[i] = t.pre[src[3 * i]];
      g[i] = t.pre[src[3 * i + 1]];
      r[i] = t.pre[src[3 * i + 2]];
    }
    const int round_from = static_cast<int>(std::min<int64_t>(vector_end - start, count));
    hsv_round_trip(b, g, r, count, round_from, divisors.saturation, divisors.hue, &wide);
    uint8_t* dst = out + start * 3;
    for (int i = 0; i < count; ++i) {
      dst[3 * i] = t.post[b[i]];
      dst[3 * i + 1] = t.post[g[i]];
      dst[3 * i + 2] = t.post[r[i]];
    }
  }
}

// Rows of the canvas before the mirror: the region's pixels distorted, the
// rest of the side x side square the fill colour.
class CanvasRows {
 public:
  CanvasRows(const uint8_t* image, int64_t image_width, const Params& p, const uint8_t* fill)
      : image_(image), image_width_(image_width), p_(p), buffer_(static_cast<size_t>(p.side) * 3),
        fill_row_(static_cast<size_t>(p.side) * 3) {
    for (int v = 0; v < 256; ++v) photometric_entry(p, v, &tables_);
    for (int v = 0; v < 256; ++v) {
      wide_.saturation[v] = tables_.saturation[v];
      wide_.hue[v] = tables_.hue[v];
    }
    for (int x = 0; x < p.side; ++x) std::memcpy(&fill_row_[x * 3], fill, 3);
    std::memcpy(buffer_.data(), fill_row_.data(), buffer_.size());
  }

  const uint8_t* row(int y) {
    if (y >= p_.region_height) return fill_row_.data();
    if (y != cached_) {
      const uint8_t* src = image_ + ((p_.top + y) * image_width_ + p_.left) * 3;
      distort_pixels(src, buffer_.data(), p_.region_width, tables_, wide_);
      cached_ = y;
    }
    return buffer_.data();
  }

 private:
  const uint8_t* image_;
  int64_t image_width_;
  Params p_;
  PhotometricTables tables_;
  WideTables wide_;
  std::vector<uint8_t> buffer_, fill_row_;
  int cached_ = -1;
};

// Writes finished uint8 rows into the output: HWC uint8, or CHW minus the mean.
class OutputRows {
 public:
  OutputRows(at::Tensor& out, int64_t image, int size, const float* mean)
      : dtype_(out.scalar_type()), size_(size), mean_{mean[0], mean[1], mean[2]} {
    const int64_t image_values = static_cast<int64_t>(size) * size * 3;
    base_ = static_cast<char*>(out.data_ptr()) + image * image_values * out.element_size();
  }

  void write(int y, const uint8_t* line) const {
    const int64_t plane = static_cast<int64_t>(size_) * size_;
    switch (dtype_) {
      case at::kByte:
        std::memcpy(base_ + static_cast<int64_t>(y) * size_ * 3, line, static_cast<size_t>(size_) * 3);
        break;
      case at::kFloat:
        planes(reinterpret_cast<float*>(base_), plane, y, line);
        break;
      case at::kHalf:
        planes(reinterpret_cast<at::Half*>(base_), plane, y, line);
        break;
      default:
        planes(reinterpret_cast<at::BFloat16*>(base_), plane, y, line);
        break;
    }
  }

 private:
  template <typename T>
  void planes(T* out, int64_t plane, int y, const uint8_t* line) const {
    for (int c = 0; c < 3; ++c) {
      T* dst = out + c * plane + static_cast<int64_t>(y) * size_;
      const float m = mean_[c];
      for (int x = 0; x < size_; ++x) dst[x] = static_cast<T>(static_cast<float>(line[3 * x + c]) - m);
    }
  }

  at::ScalarType dtype_;
  int size_;
  float mean_[3];
  char* base_;
};

int mirrored(const Params& p, int x) { return p.mirror ? p.side - 1 - x : x; }

// side == size: cv2.resize copies.
void copy_rows(CanvasRows& canvas, const Params& p, int y0, int y1, uint8_t* line, const OutputRows& out) {
  for (int y = y0; y < y1; ++y) {
    const uint8_t* row = canvas.row(y);
    for (int x = 0; x < p.side; ++x) std::memcpy(line + 3 * x, row + 3 * mirrored(p, x), 3);
    out.write(y, line);
  }
}

void nearest_rows(CanvasRows& canvas, const Params& p, int size, int y0, int y1, uint8_t* line,
                  const OutputRows& out) {
  std::vector<int> offset(size);
  for (int x = 0; x < size; ++x) offset[x] = 3 * mirrored(p, nearest_index(x, p.side, size));
  for (int y = y0; y < y1; ++y) {
    const uint8_t* row = canvas.row(nearest_index(y, p.side, size));
    for (int x = 0; x < size; ++x) std::memcpy(line + 3 * x, row + offset[x], 3);
    out.write(y, line);
  }
}

// Downscale by an integer factor k: block means (k == 2 rounds half up, as
// OpenCV's SIMD path; k > 2 rounds the float mean half to even).
void integer_area_rows(CanvasRows& canvas, const Params& p, int size, int k, int y0, int y1, uint8_t* line,
                       const OutputRows& out) {
  std::vector<int32_t> sums(static_cast<size_t>(size) * 3);
  const float scale = 1.f / static_cast<float>(k * k);
  for (int y = y0; y < y1; ++y) {
    std::fill(sums.begin(), sums.end(), 0);
    for (int j = 0; j < k; ++j) {
      const uint8_t* row = canvas.row(y * k + j);
      for (int x = 0; x < size; ++x) {
        for (int i = 0; i < k; ++i) {
          const uint8_t* px = row + 3 * mirrored(p, x * k + i);
          sums[3 * x] += px[0];
          sums[3 * x + 1] += px[1];
          sums[3 * x + 2] += px[2];
        }
      }
    }
    for (int i = 0; i < size * 3; ++i) {
      line[i] = k == 2 ? static_cast<uint8_t>((sums[i] + 2) >> 2)
                       : saturate_u8(round_even(static_cast<float>(sums[i]) * scale));
    }
    out.write(y, line);
  }
}

// INTER_AREA downscale by a non-integer factor: OpenCV's resizeArea, float
// weights accumulated in its order.
void area_rows(CanvasRows& canvas, const Params& p, int size, int y0, int y1, uint8_t* line,
               const OutputRows& out) {
  struct Cell {
    int offset;
    float alpha;
  };
  std::vector<Cell> cells;
  std::vector<int> cells_begin(size + 1);
  for (int x = 0; x < size; ++x) {
    cells_begin[x] = static_cast<int>(cells.size());
    const AreaCells c = area_cells(x, p.side, size);
    if (c.has_head) cells.push_back({3 * mirrored(p, c.first_whole - 1), c.head_alpha});
    for (int s = c.first_whole; s < c.end_whole; ++s) cells.push_back({3 * mirrored(p, s), c.whole_alpha});
    if (c.has_tail) cells.push_back({3 * mirrored(p, c.end_whole), c.tail_alpha});
  }
  cells_begin[size] = static_cast<int>(cells.size());

  std::vector<float> buf(static_cast<size_t>(size) * 3), sum(static_cast<size_t>(size) * 3);
  int buf_row = -1;
  auto horizontal = [&](int sy) {
    if (sy == buf_row) return;
    const uint8_t* row = canvas.row(sy);
    for (int x = 0; x < size; ++x) {
      float a0 = 0.f, a1 = 0.f, a2 = 0.f;
      for (int k = cells_begin[x]; k < cells_begin[x + 1]; ++k) {
        const uint8_t* px = row + cells[k].offset;
        const float alpha = cells[k].alpha;
        a0 = a0 + px[0] * alpha;
        a1 = a1 + px[1] * alpha;
        a2 = a2 + px[2] * alpha;
      }
      buf[3 * x] = a0;
      buf[3 * x + 1] = a1;
      buf[3 * x + 2] = a2;
    }
    buf_row = sy;
  };
  for (int y = y0; y < y1; ++y) {
    const AreaCells c = area_cells(y, p.side, size);
    bool first = true;
    auto accumulate = [&](int sy, float beta) {
      horizontal(sy);
      for (int i = 0; i < size * 3; ++i) sum[i] = first ? beta * buf[i] : sum[i] + beta * buf[i];
      first = false;
    };
    if (c.has_head) accumulate(c.first_whole - 1, c.head_alpha);
    for (int s = c.first_whole; s < c.end_whole; ++s) accumulate(s, c.whole_alpha);
    if (c.has_tail) accumulate(c.end_whole, c.tail_alpha);
    for (int i = 0; i < size * 3; ++i) line[i] = saturate_u8(round_even(sum[i]));
    out.write(y, line);
  }
}

// Horizontal pass of the fixed-point resize: out[x] = sum_k row[tap k] * coef k.
template <int K>
void horizontal_fixed(const uint8_t* row, const int* offset, const int* coef, int size, int32_t* out) {
  for (int x = 0; x < size; ++x) {
    int32_t a0 = 0, a1 = 0, a2 = 0;
    for (int k = 0; k < K; ++k) {
      const uint8_t* px = row + offset[x * K + k];
      const int32_t c = coef[x * K + k];
      a0 += px[0] * c;
      a1 += px[1] * c;
      a2 += px[2] * c;
    }
    out[3 * x] = a0;
    out[3 * x + 1] = a1;
    out[3 * x + 2] = a2;
  }
}

// Linear, cubic, Lanczos and area upscaling: OpenCV's resizeGeneric with the
// horizontally resampled rows kept in a ring of K rows.
template <int K>
void fixed_point_rows(CanvasRows& canvas, const Params& p, int size, int y0, int y1, uint8_t* line,
                      const OutputRows& out) {
  const int interp = p.interpolation;
  const int width = size * 3;
  std::vector<int> x_offset(static_cast<size_t>(size) * K), x_coef(static_cast<size_t>(size) * K);
  for (int x = 0; x < size; ++x) {
    const int first = resize_taps(x, p.side, size, interp, /*is_x_axis=*/true, &x_coef[x * K]);
    for (int k = 0; k < K; ++k) {
      x_offset[x * K + k] = 3 * mirrored(p, clamp_int(first + k, 0, p.side - 1));
    }
  }
  std::vector<int32_t> ring(static_cast<size_t>(K) * width);
  int ring_row[K];
  std::fill(ring_row, ring_row + K, -1);
  auto horizontal_row = [&](int sy) -> const int32_t* {
    int32_t* slot = &ring[static_cast<size_t>(sy % K) * width];
    if (ring_row[sy % K] != sy) {
      horizontal_fixed<K>(canvas.row(sy), x_offset.data(), x_coef.data(), size, slot);
      ring_row[sy % K] = sy;
    }
    return slot;
  };
  const int simd_width = K == 2 ? linear_simd_width(width) : (K == 4 ? cubic_simd_width(width) : 0);
  for (int y = y0; y < y1; ++y) {
    int coef[K];
    const int first = resize_taps(y, p.side, size, interp, /*is_x_axis=*/false, coef);
    const int32_t* rows[K];
    for (int k = 0; k < K; ++k) rows[k] = horizontal_row(clamp_int(first + k, 0, p.side - 1));
    int i = 0;
    if (K == 2) {
      for (; i < simd_width; ++i) line[i] = linear_vertical(rows[0][i], rows[1 % K][i], coef[0], coef[1 % K]);
    } else if (K == 4) {
      float weight[4];
      for (int k = 0; k < 4; ++k) weight[k] = cubic_row_weight(coef[k % K]);
      for (; i < simd_width; ++i) {
        line[i] = cubic_vertical(rows[0][i], rows[1 % K][i], rows[2 % K][i], rows[3 % K][i], weight);
      }
    }
    for (; i < width; ++i) {
      int64_t sum = 0;
      for (int k = 0; k < K; ++k) sum += static_cast<int64_t>(rows[k][i]) * coef[k];
      line[i] = fixed_vertical(sum);
    }
    out.write(y, line);
  }
}

void augment_rows(const uint8_t* image, int64_t image_width, const Params& p, const uint8_t* fill, int size,
                  int y0, int y1, const OutputRows& out) {
  CanvasRows canvas(image, image_width, p, fill);
  std::vector<uint8_t> line(static_cast<size_t>(std::max(size, p.side)) * 3);
  if (p.side == size) return copy_rows(canvas, p, y0, y1, line.data(), out);
  const int area_factor = integer_area_factor(p.side, size);
  switch (p.interpolation) {
    case kNearest:
      return nearest_rows(canvas, p, size, y0, y1, line.data(), out);
    case kCubic:
      return fixed_point_rows<4>(canvas, p, size, y0, y1, line.data(), out);
    case kLanczos4:
      return fixed_point_rows<8>(canvas, p, size, y0, y1, line.data(), out);
    case kArea:
      if (p.side > size) {
        if (area_factor > 0) return integer_area_rows(canvas, p, size, area_factor, y0, y1, line.data(), out);
        return area_rows(canvas, p, size, y0, y1, line.data(), out);
      }
      return fixed_point_rows<2>(canvas, p, size, y0, y1, line.data(), out);
    default:  // kLinear
      if (area_factor == 2) return integer_area_rows(canvas, p, size, 2, y0, y1, line.data(), out);
      return fixed_point_rows<2>(canvas, p, size, y0, y1, line.data(), out);
  }
}

at::Tensor train_augment_cpu(const at::Tensor& images, const at::Tensor& params, int64_t size,
                             at::ArrayRef<double> mean, std::optional<at::ScalarType> dtype) {
  const at::ScalarType out_dtype = train_augment_dtype(dtype);
  check_train_augment_args(images, params, size, mean);
  const auto src = images.contiguous();
  const auto rows = params.contiguous();
  const int64_t batch = src.size(0), height = src.size(1), width = src.size(2);
  const double* row_ptr = rows.data_ptr<double>();
  for (int64_t b = 0; b < batch; ++b) {
    check_train_augment_row(row_ptr + b * kParamColumns, b, height, width);
  }
  at::Tensor out = at::empty(train_augment_output_shape(batch, size, out_dtype), src.options().dtype(out_dtype));
  if (batch == 0) return out;
  uint8_t fill[3];
  train_augment_fill(mean, fill);
  const float mean_f[3] = {static_cast<float>(mean[0]), static_cast<float>(mean[1]), static_cast<float>(mean[2])};
  const uint8_t* image_ptr = src.data_ptr<uint8_t>();
  const int out_size = static_cast<int>(size);
  // Work units: whole images on one thread; with more threads, bands of rows
  // (each band re-reads the few source rows it shares with its neighbour).
  const int64_t band = at::get_num_threads() > 1 ? 64 : out_size;
  const int64_t bands = (out_size + band - 1) / band;
  at::parallel_for(0, batch * bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / bands;
      const int y0 = static_cast<int>((unit % bands) * band);
      const int y1 = static_cast<int>(std::min<int64_t>(y0 + band, out_size));
      const Params p = read_params(row_ptr + b * kParamColumns);
      const OutputRows writer(out, b, out_size, mean_f);
      augment_rows(image_ptr + b * height * width * 3, width, p, fill, out_size, y0, y1, writer);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("train_augment", &train_augment_cpu);
}

}  // namespace retinaface
