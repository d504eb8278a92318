// train_augment on CUDA: biubug6's preproc pixels for a batch of uint8 images
// already on the device, in one kernel.
//
// One thread computes one output pixel (3 channels) straight from the source
// image: for every resize tap it reads the source pixel (or the fill colour of
// the padded canvas), distorts it (csrc/common/train_augment_math.h) and
// accumulates in the CPU kernel's order and arithmetic, so the two agree bit
// for bit. The BGR2HSV divisor tables live in shared memory; a block never
// spans two images (grid.y = image).
#include "common/train_augment_math.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/train_augment_kernel.h"

namespace retinaface {
namespace cuda {
namespace {

using namespace augment;

constexpr int kThreads = 256;

struct Source {
  const uint8_t* image;
  int64_t height, width;
  Params p;
  int round_from;
  const int* sdiv;
  const int* hdiv;
  uint8_t fill[3];
};


// Canvas pixel (cx, cy) of the mirrored canvas, distorted (or the fill).
__device__ void canvas_pixel(const Source& s, int cx, int cy, int* bgr) {
  const int ux = mirrored(s.p, cx);
  if (ux >= s.p.region_width || cy >= s.p.region_height || ux < 0 || cy < 0) {
    bgr[0] = s.fill[0];
    bgr[1] = s.fill[1];
    bgr[2] = s.fill[2];
    return;
  }
  const int64_t x = min(static_cast<int64_t>(s.p.left) + ux, s.width - 1);
  const int64_t y = min(static_cast<int64_t>(s.p.top) + cy, s.height - 1);
  const uint8_t* px = s.image + (y * s.width + x) * 3;
  const Params& p = s.p;
  int in[3];
  for (int c = 0; c < 3; ++c) {
    const int bright = convert_value(px[c], 1.0, p.brightness);
    in[c] = p.contrast_last ? bright : convert_value(bright, p.contrast, 0.0);
  }
  int h, sat, v;
  bgr_to_hsv(in[0], in[1], in[2], HsvDivisorTables{s.sdiv, s.hdiv}, &h, &sat, &v);
  int hue = h + ((p.hue % 180) + 180) % 180;
  hue -= hue >= 180 ? 180 : 0;
  const int sat2 = convert_value(sat, p.saturation, 0.0);
  if (ux >= s.round_from) {
    hsv_to_bgr<true>(hue, sat2, v, &bgr[0], &bgr[1], &bgr[2]);
  } else {
    hsv_to_bgr<false>(hue, sat2, v, &bgr[0], &bgr[1], &bgr[2]);
  }
  if (p.contrast_last) {
    for (int c = 0; c < 3; ++c) bgr[c] = convert_value(bgr[c], p.contrast, 0.0);
  }
}

__device__ __forceinline__ int clamp_row(int v, int side) { return v < 0 ? 0 : (v >= side ? side - 1 : v); }

// The fixed-point resizes (linear, cubic, Lanczos, area upscaling).
__device__ void fixed_point_pixel(const Source& s, int x, int y, int size, uint8_t* out) {
  const Params& p = s.p;
  const int taps = taps_of(p.interpolation);
  int xc[kMaxTaps], yc[kMaxTaps];
  const int x0 = resize_taps(x, p.side, size, p.interpolation, true, xc);
  const int y0 = resize_taps(y, p.side, size, p.interpolation, false, yc);
  int rows[kMaxTaps][3];
  for (int ky = 0; ky < taps; ++ky) {
    const int cy = clamp_row(y0 + ky, p.side);
    int acc[3] = {0, 0, 0};
    for (int kx = 0; kx < taps; ++kx) {
      int bgr[3];
      canvas_pixel(s, clamp_row(x0 + kx, p.side), cy, bgr);
      for (int c = 0; c < 3; ++c) acc[c] += bgr[c] * xc[kx];
    }
    for (int c = 0; c < 3; ++c) rows[ky][c] = acc[c];
  }
  const int width = size * 3;
  const int tail_from = taps == 4 ? cubic_simd_width(width) : width;
  for (int c = 0; c < 3; ++c) {
    const int interleaved = 3 * x + c;
    if (taps == 2) {
      out[c] = linear_vertical(rows[0][c], rows[1][c], yc[0], yc[1]);
    } else if (taps == 4 && interleaved < tail_from) {
      float weight[4];
      for (int k = 0; k < 4; ++k) weight[k] = cubic_row_weight(yc[k]);
      out[c] = cubic_vertical(rows[0][c], rows[1][c], rows[2][c], rows[3][c], weight);
    } else {
      int64_t sum = 0;
      for (int k = 0; k < taps; ++k) sum += static_cast<int64_t>(rows[k][c]) * yc[k];
      out[c] = fixed_vertical(sum);
    }
  }
}

__device__ void area_pixel(const Source& s, int x, int y, int size, uint8_t* out) {
  const Params& p = s.p;
  const AreaCells cx = area_cells(x, p.side, size);
  const AreaCells cy = area_cells(y, p.side, size);
  float sum[3] = {0.f, 0.f, 0.f};
  bool first = true;
  const int y_first = cy.has_head ? cy.first_whole - 1 : cy.first_whole;
  const int y_end = cy.has_tail ? cy.end_whole + 1 : cy.end_whole;
  const int x_first = cx.has_head ? cx.first_whole - 1 : cx.first_whole;
  const int x_end = cx.has_tail ? cx.end_whole + 1 : cx.end_whole;
  for (int sy = y_first; sy < y_end; ++sy) {
    const float beta = (cy.has_head && sy == y_first) ? cy.head_alpha
                       : ((cy.has_tail && sy == y_end - 1) ? cy.tail_alpha : cy.whole_alpha);
    float buf[3] = {0.f, 0.f, 0.f};
    for (int sx = x_first; sx < x_end; ++sx) {
      const float alpha = (cx.has_head && sx == x_first) ? cx.head_alpha
                          : ((cx.has_tail && sx == x_end - 1) ? cx.tail_alpha : cx.whole_alpha);
      int bgr[3];
      canvas_pixel(s, sx, sy, bgr);  // sx is a mirrored-canvas column, as on the CPU
      for (int c = 0; c < 3; ++c) buf[c] = buf[c] + static_cast<float>(bgr[c]) * alpha;
    }
    for (int c = 0; c < 3; ++c) sum[c] = first ? beta * buf[c] : sum[c] + beta * buf[c];
    first = false;
  }
  for (int c = 0; c < 3; ++c) out[c] = saturate_u8(round_even(sum[c]));
}

// int64 sums, as the CPU kernel (see integer_area_rows there).
__device__ void integer_area_pixel(const Source& s, int x, int y, int k, uint8_t* out) {
  int64_t sum[3] = {0, 0, 0};
  for (int j = 0; j < k; ++j) {
    for (int i = 0; i < k; ++i) {
      int bgr[3];
      canvas_pixel(s, x * k + i, y * k + j, bgr);
      for (int c = 0; c < 3; ++c) sum[c] += bgr[c];
    }
  }
  const float scale = 1.f / static_cast<float>(static_cast<int64_t>(k) * k);
  for (int c = 0; c < 3; ++c) out[c] = integer_area_mean(sum[c], k, scale);
}

template <typename T>
__device__ __forceinline__ void store(T* out, int64_t image, int size, int x, int y, const uint8_t* bgr,
                                      const TrainAugmentConstants& k) {
  const int64_t plane = static_cast<int64_t>(size) * size;
  for (int c = 0; c < 3; ++c) {
    out[(image * 3 + c) * plane + static_cast<int64_t>(y) * size + x] =
        from_compute<T>(static_cast<float>(bgr[c]) - k.mean[c]);
  }
}

template <>
__device__ __forceinline__ void store<uint8_t>(uint8_t* out, int64_t image, int size, int x, int y,
                                               const uint8_t* bgr, const TrainAugmentConstants&) {
  uint8_t* dst = out + ((image * size + y) * static_cast<int64_t>(size) + x) * 3;
  dst[0] = bgr[0];
  dst[1] = bgr[1];
  dst[2] = bgr[2];
}

template <typename T>
__global__ void train_augment_kernel(const uint8_t* __restrict__ images, int64_t height, int64_t width,
                                     const double* __restrict__ params, int size, TrainAugmentConstants k,
                                     T* __restrict__ out) {
  __shared__ int sdiv[256], hdiv[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    sdiv[i] = hsv_saturation_divisor(i);
    hdiv[i] = hsv_hue_divisor(i);
  }
  __syncthreads();
  const int64_t image = blockIdx.y;
  Source s;
  s.image = images + image * height * width * 3;
  s.height = height;
  s.width = width;
  s.p = read_params(params + image * kParamColumns);
  // Never read outside the image, whatever the params say (they are checked on the host).
  s.p.left = clamp_int(s.p.left, 0, static_cast<int>(width) - 1);
  s.p.top = clamp_int(s.p.top, 0, static_cast<int>(height) - 1);
  s.p.region_width = clamp_int(s.p.region_width, 1, static_cast<int>(width) - s.p.left);
  s.p.region_height = clamp_int(s.p.region_height, 1, static_cast<int>(height) - s.p.top);
  s.p.side = max(s.p.side, max(s.p.region_width, s.p.region_height));
  s.p.interpolation = clamp_int(s.p.interpolation, 0, 4);
  s.round_from = s.p.region_width / k.hsv_block_pixels * k.hsv_block_pixels;
  s.sdiv = sdiv;
  s.hdiv = hdiv;
  s.fill[0] = k.fill[0];
  s.fill[1] = k.fill[1];
  s.fill[2] = k.fill[2];

  const int64_t pixels = static_cast<int64_t>(size) * size;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pixels;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int x = static_cast<int>(i % size), y = static_cast<int>(i / size);
    uint8_t bgr[3];
    const Params& p = s.p;
    const int area_factor = integer_area_factor(p.side, size);
    if (p.side == size || p.interpolation == kNearest) {
      const bool copy = p.side == size;
      int v[3];
      canvas_pixel(s, copy ? x : nearest_index(x, p.side, size), copy ? y : nearest_index(y, p.side, size), v);
      for (int c = 0; c < 3; ++c) bgr[c] = static_cast<uint8_t>(v[c]);
    } else if ((p.interpolation == kArea && p.side > size && area_factor > 0) ||
               (p.interpolation == kLinear && area_factor == 2)) {
      integer_area_pixel(s, x, y, area_factor, bgr);
    } else if (p.interpolation == kArea && p.side > size) {
      area_pixel(s, x, y, size, bgr);
    } else {
      fixed_point_pixel(s, x, y, size, bgr);
    }
    store<T>(out, image, size, x, y, bgr, k);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_train_augment(const uint8_t* images, int64_t batch, int64_t height, int64_t width,
                                 const double* params, int size, TrainAugmentConstants constants, T* out,
                                 cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  // x: the pixels of an image (grid-stride), y: the image (batch <= 65535, checked on the host).
  const dim3 grid(grid_for(static_cast<int64_t>(size) * size, kThreads), static_cast<unsigned int>(batch));
  train_augment_kernel<T><<<grid, kThreads, 0, stream>>>(images, height, width, params, size, constants, out);
  return cudaGetLastError();
}

template cudaError_t launch_train_augment<uint8_t>(const uint8_t*, int64_t, int64_t, int64_t, const double*, int,
                                                   TrainAugmentConstants, uint8_t*, cudaStream_t);
template cudaError_t launch_train_augment<float>(const uint8_t*, int64_t, int64_t, int64_t, const double*, int,
                                                 TrainAugmentConstants, float*, cudaStream_t);
template cudaError_t launch_train_augment<__half>(const uint8_t*, int64_t, int64_t, int64_t, const double*, int,
                                                  TrainAugmentConstants, __half*, cudaStream_t);
template cudaError_t launch_train_augment<__nv_bfloat16>(const uint8_t*, int64_t, int64_t, int64_t, const double*,
                                                         int, TrainAugmentConstants, __nv_bfloat16*, cudaStream_t);

}  // namespace cuda
}  // namespace retinaface
