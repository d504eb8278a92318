// align_faces on the CPU: faces in parallel (at::parallel_for); per face the
// similarity transform onto the template and the crop, with the maths of
// common/align_math.h. 3-channel uint8 images take an AVX-512 or AVX2 loop
// where the CPU has one (cpu/bilinear_u8c3_simd.h); everything else samples
// pixel by pixel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

#include "common/align_faces_checks.h"
#include "common/align_math.h"
#include "cpu/bilinear_u8c3_simd.h"

namespace retinaface {
namespace {

// An image of the batch: H x W pixels of C interleaved channels.
template <typename T>
struct ImageView {
  const T* data;
  int64_t height, width, channels;
};

// The fixed-point source positions of one face's crop: crop pixel (x, y) is
// at (row_x[y] + column_x[x], row_y[y] + column_y[x]) in 1/1024 pixel.
struct CropGrid {
  int64_t size = 0;
  std::vector<int32_t> column_x, column_y;
  std::vector<int64_t> row_x, row_y;

  void build(const double M[6], int64_t crop_size) {
    double inv[6];
    invert_affine(M, inv);
    size = crop_size;
    column_x.resize(size);
    column_y.resize(size);
    row_x.resize(size);
    row_y.resize(size);
    for (int64_t i = 0; i < size; ++i) column_x[i] = column_offset(inv[0], i);
    for (int64_t i = 0; i < size; ++i) column_y[i] = column_offset(inv[3], i);
    for (int64_t i = 0; i < size; ++i) row_x[i] = row_offset(inv[1], inv[2], i);
    for (int64_t i = 0; i < size; ++i) row_y[i] = row_offset(inv[4], inv[5], i);
  }
  BilinearTap tap(int64_t y, int64_t x) const {
    return bilinear_tap(to_fraction_position(row_x[y] + column_x[x]),
                        to_fraction_position(row_y[y] + column_y[x]));
  }
  // Whether every crop pixel's neighbourhood lies inside the image. A pixel's
  // source column and row are monotone in x and in y (rounded multiples plus
  // constants), so it is enough to look at the four corners.
  bool inside(int64_t height, int64_t width) const {
    const int64_t last = size - 1;
    return tap_inside(tap(0, 0), height, width) && tap_inside(tap(0, last), height, width) &&
           tap_inside(tap(last, 0), height, width) && tap_inside(tap(last, last), height, width);
  }
  // The columns [begin, end) of row y whose top-left neighbour has column in
  // [x_low, x_high] and row in [y_low, y_high]: an interval, since both are
  // monotone in x; binary searches find its ends.
  std::pair<int64_t, int64_t> columns_within(int64_t y, int64_t x_low, int64_t x_high,
                                             int64_t y_low, int64_t y_high) const {
    const auto source_x = [&](int64_t x) { return (row_x[y] + column_x[x]) >> kPositionBits; };
    const auto source_y = [&](int64_t x) { return (row_y[y] + column_y[x]) >> kPositionBits; };
    const auto [x_begin, x_end] = monotone_range(source_x, x_low, x_high);
    const auto [y_begin, y_end] = monotone_range(source_y, y_low, y_high);
    const int64_t begin = std::max(x_begin, y_begin);
    return {begin, std::max(begin, std::min(x_end, y_end))};
  }

 private:
  // [begin, end) where low <= f(x) <= high, for f monotone on [0, size).
  template <typename F>
  std::pair<int64_t, int64_t> monotone_range(const F& f, int64_t low, int64_t high) const {
    const auto first = [&](const auto& holds) {  // the first x where `holds` starts to hold
      int64_t lo = 0, hi = size;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (holds(f(mid))) hi = mid; else lo = mid + 1;
      }
      return lo;
    };
    const int64_t start = f(0), end = f(size - 1);
    if (std::min(start, end) >= low && std::max(start, end) <= high) return {0, size};  // all
    if (start >= end) {
      return {first([&](int64_t v) { return v <= high; }), first([&](int64_t v) { return v < low; })};
    }
    return {first([&](int64_t v) { return v >= low; }), first([&](int64_t v) { return v > high; })};
  }
};

// The compute type of a floating image: float, or double for double.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// One crop pixel. `inside`: the whole 2x2 neighbourhood is in the image;
// otherwise neighbours outside it read 0 (OpenCV's BORDER_CONSTANT 0).
template <typename T, bool inside>
inline void sample_pixel(const ImageView<T>& image, const BilinearTap& tap, T* out) {
  if (!inside && (tap.ix < -1 || tap.ix >= image.width || tap.iy < -1 || tap.iy >= image.height)) {
    for (int64_t c = 0; c < image.channels; ++c) out[c] = T(0);
    return;
  }
  const T* neighbour[4];
  for (int k = 0; k < 4; ++k) {
    const int64_t x = tap.ix + (k & 1), y = tap.iy + (k >> 1);
    const bool in = inside || (x >= 0 && x < image.width && y >= 0 && y < image.height);
    neighbour[k] = in ? image.data + (y * image.width + x) * image.channels : nullptr;
  }
  for (int64_t c = 0; c < image.channels; ++c) {
    if constexpr (std::is_same_v<T, uint8_t>) {
      int32_t p[4];
      for (int k = 0; k < 4; ++k) p[k] = (inside || neighbour[k]) ? neighbour[k][c] : 0;
      out[c] = static_cast<uint8_t>(bilinear_sum_u8(p, tap.w));
    } else {
      acc_t<T> p[4];
      for (int k = 0; k < 4; ++k) {
        p[k] = (inside || neighbour[k]) ? static_cast<acc_t<T>>(neighbour[k][c]) : acc_t<T>(0);
      }
      out[c] = static_cast<T>(bilinear_sum(p, tap.w));
    }
  }
}

// Crop pixels [begin, end) of row y, pixel by pixel.
template <typename T, bool inside>
void sample_pixels(const ImageView<T>& image, const CropGrid& grid, int64_t y, int64_t begin,
                   int64_t end, T* out_row) {
  for (int64_t x = begin; x < end; ++x) {
    sample_pixel<T, inside>(image, grid.tap(y, x), out_row + x * image.channels);
  }
}

// The SIMD level for this image: 3-channel uint8, under 2^31 bytes and 2^20
// pixels a side (the vector loops compute byte offsets and positions in
// 1/1024 pixel in int32), on a CPU that has one.
template <typename T>
CpuIsa simd_level(const ImageView<T>& image) {
  if constexpr (std::is_same_v<T, uint8_t>) {
    constexpr int64_t kSide = int64_t{1} << 20;
    if (image.channels == 3 && image.height * image.width * 3 < (int64_t{1} << 31) &&
        image.height < kSide && image.width < kSide) {
      return cpu_simd_level();
    }
  }
  return CpuIsa::baseline;
}

// Rows [first_row, last_row) and columns [first, last) of the crop, all
// inside the image, with the SIMD loop; returns how many columns it did
// from `first` (0 without SIMD or where the rows' offsets exceed int32).
int64_t sample_block_simd(CpuIsa simd, const ImageView<uint8_t>& image, const CropGrid& grid,
                          int64_t first_row, int64_t last_row, int64_t first, int64_t last,
                          uint8_t* crop, std::vector<int32_t>& rows32) {
  if (simd == CpuIsa::baseline || last_row <= first_row) return 0;
  const int64_t rows = last_row - first_row;
  rows32.resize(2 * rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row_x = grid.row_x[first_row + r], row_y = grid.row_y[first_row + r];
    if (row_x < INT32_MIN || row_x > INT32_MAX || row_y < INT32_MIN || row_y > INT32_MAX) return 0;
    rows32[r] = static_cast<int32_t>(row_x);
    rows32[rows + r] = static_cast<int32_t>(row_y);
  }
  const int64_t stride = 3 * grid.size;
  const RowBlock block{rows32.data(),          rows32.data() + rows,
                       rows,                   grid.column_x.data() + first,
                       grid.column_y.data() + first, last - first,
                       crop + first_row * stride + 3 * first, stride};
  return bilinear_block_u8c3(simd, image.data, image.width, block);
}

// One crop row of a crop that is not all inside the image. Its pixels whose
// neighbourhood is inside the image form an interval [first, last) (see
// columns_within), sampled without border tests (by the SIMD loop where it
// applies); those with some neighbour inside, [touch_first, touch_last)
// around it, with them; the rest are 0.
template <typename T>
void sample_row(const ImageView<T>& image, const CropGrid& grid, int64_t y, CpuIsa simd,
                T* crop, std::vector<int32_t>& rows32) {
  const int64_t size = grid.size, channels = image.channels;
  T* out_row = crop + y * size * channels;
  const auto [first, last] = grid.columns_within(y, 0, image.width - 2, 0, image.height - 2);
  const auto [touch_first, touch_last] =
      grid.columns_within(y, -1, image.width - 1, -1, image.height - 1);
  std::fill(out_row, out_row + touch_first * channels, T(0));
  std::fill(out_row + touch_last * channels, out_row + size * channels, T(0));
  if (first >= last) {
    sample_pixels<T, false>(image, grid, y, touch_first, touch_last, out_row);
    return;
  }
  sample_pixels<T, false>(image, grid, y, touch_first, first, out_row);
  int64_t done = first;
  if constexpr (std::is_same_v<T, uint8_t>) {
    done += sample_block_simd(simd, image, grid, y, y + 1, first, last, crop, rows32);
  }
  sample_pixels<T, true>(image, grid, y, done, last, out_row);
  sample_pixels<T, false>(image, grid, y, last, touch_last, out_row);
}

// Rows [first_row, last_row) of the crop, all inside the image: the SIMD
// loop, then pixel by pixel whatever it did not do.
template <typename T>
void sample_inside_rows(const ImageView<T>& image, const CropGrid& grid, int64_t first_row,
                        int64_t last_row, CpuIsa simd, T* crop, std::vector<int32_t>& rows32) {
  const int64_t size = grid.size;
  int64_t done = 0;
  if constexpr (std::is_same_v<T, uint8_t>) {
    done = sample_block_simd(simd, image, grid, first_row, last_row, 0, size, crop, rows32);
  }
  for (int64_t y = first_row; y < last_row; ++y) {
    sample_pixels<T, true>(image, grid, y, done, size, crop + y * size * image.channels);
  }
}

// One face's crop: runs of rows that lie inside the image go to
// sample_inside_rows together (all of them in the common case of a crop
// inside the image), the other rows to sample_row.
template <typename T>
void sample_crop(const ImageView<T>& image, const CropGrid& grid, T* crop,
                 std::vector<int32_t>& rows32) {
  const CpuIsa simd = simd_level(image);
  const int64_t size = grid.size;
  if (grid.inside(image.height, image.width)) {
    sample_inside_rows(image, grid, 0, size, simd, crop, rows32);
    return;
  }
  // A row is inside when its two end pixels are (the pixels between lie
  // between them, column and row being monotone along it).
  const auto row_inside = [&](int64_t y) {
    return tap_inside(grid.tap(y, 0), image.height, image.width) &&
           tap_inside(grid.tap(y, size - 1), image.height, image.width);
  };
  int64_t run_start = 0;
  for (int64_t y = 0; y <= size; ++y) {
    if (y < size && row_inside(y)) continue;
    sample_inside_rows(image, grid, run_start, y, simd, crop, rows32);
    if (y < size) sample_row(image, grid, y, simd, crop, rows32);
    run_start = y + 1;
  }
}

template <typename T>
void align_faces_kernel(const at::Tensor& images, const double* landmarks, const double* tmpl,
                        const int64_t* image_index, int64_t num_faces, int64_t size, T* crops,
                        double* transforms) {
  const int64_t height = images.size(1), width = images.size(2), channels = images.size(3);
  const T* data = images.const_data_ptr<T>();
  const int64_t crop_numel = size * size * channels;
  at::parallel_for(0, num_faces, 1, [&](int64_t begin, int64_t end) {
    CropGrid grid;
    std::vector<int32_t> rows32;
    for (int64_t face = begin; face < end; ++face) {
      double* M = transforms + 6 * face;
      T* crop = crops + face * crop_numel;
      if (!similarity_transform(landmarks + 2 * kAlignPoints * face, tmpl, M)) {
        std::memset(static_cast<void*>(crop), 0, crop_numel * sizeof(T));
        continue;
      }
      const ImageView<T> image{data + image_index[face] * height * width * channels, height, width,
                               channels};
      grid.build(M, size);
      sample_crop(image, grid, crop, rows32);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> align_faces_cpu(const at::Tensor& images,
                                                   const at::Tensor& landmarks,
                                                   const at::Tensor& image_index, int64_t size,
                                                   const at::Tensor& face_template) {
  check_align_faces_args(images, landmarks, image_index, size, face_template);
  const int64_t num_faces = landmarks.size(0), num_images = images.size(0);
  const at::Tensor index = image_index.to(at::kLong).contiguous();
  const int64_t* index_data = index.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < num_faces; ++i) {
    TORCH_CHECK(index_data[i] >= 0 && index_data[i] < num_images, "align_faces(): image_index[", i,
                "] = ", index_data[i], " is out of range for ", num_images, " images");
  }
  const at::Tensor source = images.contiguous();
  const at::Tensor points = landmarks.to(at::kDouble).contiguous();
  const at::Tensor destination = face_template.to(at::kDouble).contiguous();
  at::Tensor crops = at::empty({num_faces, size, size, images.size(3)}, images.options());
  at::Tensor transforms = at::empty({num_faces, 2, 3}, landmarks.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, images.scalar_type(),
                                  "align_faces", [&] {
                                    align_faces_kernel<scalar_t>(
                                        source, points.const_data_ptr<double>(),
                                        destination.const_data_ptr<double>(), index_data,
                                        num_faces, size, crops.mutable_data_ptr<scalar_t>(),
                                        transforms.mutable_data_ptr<double>());
                                  });
  return {crops, transforms};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("align_faces", &align_faces_cpu);
}

}  // namespace retinaface
