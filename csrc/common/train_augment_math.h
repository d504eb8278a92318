// The arithmetic of biubug6's training augmentation (data/data_augment.py,
// `preproc`) on uint8 images, as OpenCV computes it, shared by the CPU kernel
// (csrc/cpu/train_augment.cpp) and the CUDA kernel
// (csrc/cuda/train_augment_kernel.cu). Plain C++ (no torch headers).
//
// biubug6 crops a square (or pads the image to one with the mean colour),
// distorts the colours (brightness, contrast: numpy float64 maps, truncated
// back to uint8; saturation and hue on cv2.cvtColor's 8-bit HSV, H in 0..179),
// mirrors, and cv2.resize-s to the training size with one of five
// interpolations. Every per-value step is a 256-entry table here; the HSV
// round trip and the five resizes follow OpenCV's integer / float32 steps
// (the BGR2HSV division tables, the HSV2BGR float path of its AVX2 build, the
// 11-bit fixed-point resize coefficients and their vertical passes), so the
// results equal cv2's bit for bit except where OpenCV itself hands the work
// to Intel IPP (INTER_CUBIC in the opencv-python wheels): see
// tests/test_train_augment.py and README.md for the measured differences.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Forced inline on the host too: the CPU kernel's vectorised loops are
// compiled per ISA (RF_VECTOR_CLONES), and a clone cannot inline a plain
// inline function of the default target (see csrc/cpu/vector_math.h).
#if defined(__CUDACC__)
#define RF_AUG_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define RF_AUG_HD __attribute__((always_inline)) inline
#else
#define RF_AUG_HD inline
#endif

namespace retinaface {
namespace augment {

// Columns of one image's row of the float64 params tensor [B, kParamColumns].
// The photometric values are the identity when a step was not drawn
// (brightness 0, contrast 1, saturation 1, hue 0): applying them changes
// nothing, exactly.
enum ParamColumn : int {
  kLeft = 0,         // the region of the source image that is used: x, y, width, height
  kTop = 1,
  kRegionWidth = 2,
  kRegionHeight = 3,
  kSide = 4,         // the square canvas the region is placed in (top-left), rest = fill
  kMirror = 5,       // 1: flip the canvas horizontally
  kInterpolation = 6,  // index into biubug6's list, see Interpolation
  kContrastLast = 7,   // 1: brightness, HSV, contrast (biubug6's second branch)
  kBrightness = 8,     // added (float64), clipped, truncated
  kContrast = 9,       // multiplied
  kSaturation = 10,    // multiplies S of the 8-bit HSV
  kHue = 11,           // added to H, modulo 180
  kParamColumns = 12,
};

// biubug6's interp_methods order.
enum Interpolation : int { kLinear = 0, kCubic = 1, kArea = 2, kNearest = 3, kLanczos4 = 4 };

struct Params {
  int left, top, region_width, region_height, side;
  bool mirror;
  int interpolation;
  bool contrast_last;
  double brightness, contrast, saturation;
  int hue;
};

// x clamped into [lo, hi] (NaN gives lo).
RF_AUG_HD double clamp_double(double x, double lo, double hi) { return x > lo ? (x < hi ? x : hi) : lo; }

RF_AUG_HD Params read_params(const double* row) {
  Params p;
  p.left = static_cast<int>(row[kLeft]);
  p.top = static_cast<int>(row[kTop]);
  p.region_width = static_cast<int>(row[kRegionWidth]);
  p.region_height = static_cast<int>(row[kRegionHeight]);
  p.side = static_cast<int>(row[kSide]);
  p.mirror = row[kMirror] != 0.0;
  p.interpolation = static_cast<int>(row[kInterpolation]);
  p.contrast_last = row[kContrastLast] != 0.0;
  // Past these bounds v + brightness and v * contrast (saturation) saturate
  // for every v in 0..255 exactly as at the bounds, and inside them the
  // conversions to int below cannot overflow (1e10 must give 255, not INT_MIN).
  p.brightness = clamp_double(row[kBrightness], -256.0, 256.0);
  p.contrast = clamp_double(row[kContrast], -1.0, 256.0);
  p.saturation = clamp_double(row[kSaturation], -1.0, 256.0);
  p.hue = static_cast<int>(row[kHue]);
  return p;
}

RF_AUG_HD int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
RF_AUG_HD uint8_t saturate_u8(int v) { return static_cast<uint8_t>(clamp_int(v, 0, 255)); }

// Round half to even, as OpenCV's cvRound / saturate_cast and SIMD v_round.
RF_AUG_HD int round_even(float x) {
#if defined(__CUDA_ARCH__)
  return __float2int_rn(x);
#else
  return static_cast<int>(std::nearbyint(x));
#endif
}
RF_AUG_HD int round_even(double x) {
#if defined(__CUDA_ARCH__)
  return __double2int_rn(x);
#else
  return static_cast<int>(std::nearbyint(x));
#endif
}

// ---------------------------------------------------------------- photometric

// biubug6's _convert on one value: float64 v * alpha + beta, clipped to
// [0, 255], truncated to uint8 (numpy's float -> uint8 assignment).
// Truncating first and clamping the integer is the same (read_params bounds
// alpha and beta, so |v * alpha + beta| stays far inside int range) and keeps
// the CPU loops free of float branches.
RF_AUG_HD int convert_value(int v, double alpha, double beta) {
  return clamp_int(static_cast<int>(static_cast<double>(v) * alpha + beta), 0, 255);
}

// OpenCV's RGB2HSV_b tables (hsv_shift 12, hrange 180): round((255 << 12) / v)
// and round((180 << 12) / (6 diff)), as integer divisions (no ties occur).
RF_AUG_HD int hsv_saturation_divisor(int v) { return v == 0 ? 0 : (2 * (255 << 12) + v) / (2 * v); }
RF_AUG_HD int hsv_hue_divisor(int diff) { return diff == 0 ? 0 : (2 * 122880 + diff) / (2 * diff); }

// Where bgr_to_hsv takes those divisors from: the tables (the CUDA kernel
// keeps them in shared memory) ...
struct HsvDivisorTables {
  const int* saturation;
  const int* hue;
  RF_AUG_HD int saturation_divisor(int v) const { return saturation[v]; }
  RF_AUG_HD int hue_divisor(int diff) const { return hue[diff]; }
};

// ... or one float32 division each, for CPU vector loops, where a table
// lookup is a gather (scalarised by the compiler). The same integers:
// numerator and denominator are exact in float32 (< 2^24, <= 510), and a
// quotient n / d that is not an integer lies at least 1 / d from the next
// integer, while the rounded quotient is off by at most 0.125 / d, so
// truncation gives the integer division (test_all_colours_through_the_hsv_round_trip
// meets every v and diff). At v = 0 or diff = 0 they differ from the tables'
// 0, without effect: bgr_to_hsv multiplies those divisors by diff = 0 and by
// h = 0. (No select there: GCC would turn it into a branch around the
// division and stop vectorising.)
struct HsvDivisorsComputed {
  RF_AUG_HD static int quotient(int numerator, int denominator) {
    return static_cast<int>(static_cast<float>(numerator) / static_cast<float>(denominator));
  }
  RF_AUG_HD int saturation_divisor(int v) const { return quotient(2 * (255 << 12) + v, 2 * (v > 1 ? v : 1)); }
  RF_AUG_HD int hue_divisor(int diff) const { return quotient(2 * 122880 + diff, 2 * (diff > 1 ? diff : 1)); }
};

// cv2.cvtColor(COLOR_BGR2HSV) of one 8-bit pixel (RGB2HSV_b, hrange 180).
template <typename Divisors>
RF_AUG_HD void bgr_to_hsv(int b, int g, int r, const Divisors& divisors, int* h_out, int* s_out,
                          int* v_out) {
  int v = b > g ? b : g;
  v = v > r ? v : r;
  int vmin = b < g ? b : g;
  vmin = vmin < r ? vmin : r;
  const int diff = v - vmin;
  const int vr = v == r ? -1 : 0;
  const int vg = v == g ? -1 : 0;
  const int s = (diff * divisors.saturation_divisor(v) + (1 << 11)) >> 12;
  int h = (vr & (g - b)) + (~vr & ((vg & (b - r + 2 * diff)) + (~vg & (r - g + 4 * diff))));
  h = (h * divisors.hue_divisor(diff) + (1 << 11)) >> 12;
  h += h < 0 ? 180 : 0;
  *h_out = h;
  *s_out = s;
  *v_out = v;
}

// 1 - s * f rounded once, as the fused multiply-add of OpenCV's AVX2 HSV2BGR.
// kHardwareFma (CPU code compiled for an FMA unit): the instruction itself.
// Otherwise the float64 product is exact (24 x 24 bits) and the float64
// subtraction rounds to a value whose float32 rounding equals the FMA's for
// every (S, H) of 8-bit HSV (checked exhaustively, see the tests).
template <bool kHardwareFma = false>
RF_AUG_HD float one_minus_product(float s, float f) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(-s, f, 1.0f);
#else
  if constexpr (kHardwareFma) {
    return __builtin_fmaf(-s, f, 1.0f);
  } else {
    return static_cast<float>(1.0 - static_cast<double>(s) * static_cast<double>(f));
  }
#endif
}

// a if c else b, as a blend (keeps the CPU loop branch-free so it vectorises).
RF_AUG_HD float select(bool c, float a, float b) {
#if defined(__CUDA_ARCH__)
  return c ? a : b;
#else
  int32_t ai, bi;
  std::memcpy(&ai, &a, sizeof ai);
  std::memcpy(&bi, &b, sizeof bi);
  const int32_t mask = -static_cast<int32_t>(c);
  const int32_t ri = (ai & mask) | (bi & ~mask);
  float r;
  std::memcpy(&r, &ri, sizeof r);
  return r;
#endif
}

// cv2.cvtColor(COLOR_HSV2BGR) of one 8-bit pixel: OpenCV's HSV2RGB_b (float32
// steps with FMA, as its AVX2 / AVX-512 builds), bit-exact. Its SIMD loop
// truncates to uint8 (kRound = false); the last pixels of a row that do not
// fill a SIMD step (see opencv_hsv_block_pixels) take its scalar code, which
// rounds (kRound = true). h is in [0, 180) (the callers reduce it), so hue < 6
// and OpenCV's sector (its floor reduced mod 6) is the floor itself.
template <bool kRound, bool kHardwareFma = false>
RF_AUG_HD void hsv_to_bgr(int h, int s, int v, int* b_out, int* g_out, int* r_out) {
  const float hue = static_cast<float>(h) * (6.0f / 180.0f);
  const float sector_start = static_cast<float>(static_cast<int>(hue));
  const float fraction = hue - sector_start;
  const float sat = static_cast<float>(s) * (1.0f / 255.0f);
  const float val = static_cast<float>(v) * (1.0f / 255.0f);
  const float tab0 = val;
  const float tab1 = val * (1.0f - sat);
  const float tab2 = val * one_minus_product<kHardwareFma>(sat, fraction);
  const float tab3 = val * one_minus_product<kHardwareFma>(sat, 1.0f - fraction);
  const float sector = sector_start;
  const float b = select(sector < 2.0f, tab1,
                         select(sector == 2.0f, tab3, select(sector > 4.0f, tab2, tab0)));
  const float g = select(sector < 1.0f, tab3,
                         select(sector < 3.0f, tab0, select(sector == 3.0f, tab2, tab1)));
  const float r = select(sector < 1.0f, tab0,
                         select(sector == 1.0f, tab2,
                                select(sector < 4.0f, tab1, select(sector == 4.0f, tab3, tab0))));
  if (kRound) {
    *b_out = saturate_u8(round_even(b * 255.0f));
    *g_out = saturate_u8(round_even(g * 255.0f));
    *r_out = saturate_u8(round_even(r * 255.0f));
  } else {
    *b_out = static_cast<int>(b * 255.0f);
    *g_out = static_cast<int>(g * 255.0f);
    *r_out = static_cast<int>(r * 255.0f);
  }
}

#if !defined(__CUDA_ARCH__)
// Pixels per SIMD step of OpenCV's HSV2RGB_b on this CPU (4 float32 vectors:
// 64 with AVX-512, 32 with AVX2, 16 with SSE / NEON). cv2.cvtColor converts
// row by row, so a row's last width % this pixels are rounded, not truncated.
inline int opencv_hsv_block_pixels() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl")) {
    return 64;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 32;
#endif
  return 16;
}
#endif

// ---------------------------------------------------------------- resize

constexpr int kCoefBits = 11;  // INTER_RESIZE_COEF_BITS
constexpr int kCoefScale = 1 << kCoefBits;
constexpr int kMaxTaps = 8;

RF_AUG_HD int taps_of(int interpolation) {
  return interpolation == kCubic ? 4 : (interpolation == kLanczos4 ? 8 : (interpolation == kNearest ? 1 : 2));
}

RF_AUG_HD void cubic_coefficients(float x, float* c) {
  const float A = -0.75f;
  c[0] = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
  c[1] = ((A + 2) * x - (A + 3)) * x * x + 1;
  c[2] = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
  c[3] = 1.f - c[0] - c[1] - c[2];
}

RF_AUG_HD void lanczos4_coefficients(float x, float* c) {
  const double kPi = 3.1415926535897932384626433832795;
  const double s45 = 0.70710678118654752440084436210485;
  const double cs[8][2] = {{1, 0}, {-s45, -s45}, {0, 1}, {s45, -s45},
                           {-1, 0}, {s45, s45}, {0, -1}, {-s45, s45}};
  float sum = 0;
  const double y0 = -(x + 3) * kPi * 0.25, s0 = sin(y0), c0 = cos(y0);
  for (int i = 0; i < 8; ++i) {
    const float y0_ = (x + 3 - i);
    if (fabsf(y0_) >= 1e-6f) {
      const double y = -y0_ * kPi * 0.25;
      c[i] = static_cast<float>((cs[i][0] * s0 + cs[i][1] * c0) / (y * y));
    } else {
      c[i] = 1e30f;  // the tap on the sample itself
    }
    sum += c[i];
  }
  sum = 1.f / sum;
  for (int i = 0; i < 8; ++i) c[i] *= sum;
}

// OpenCV's saturate_cast<short>(c * INTER_RESIZE_COEF_SCALE).
RF_AUG_HD int fixed_coefficient(float c) {
  return clamp_int(round_even(c * static_cast<float>(kCoefScale)), -32768, 32767);
}

// The taps of output index d of an axis resized from src to dst samples by
// cv2.resize's generic path (linear, cubic, Lanczos, and area when
// upscaling): returns the source index of tap 0 (taps at first + k, to be
// clamped into [0, src - 1]) and writes the fixed-point coefficients.
// OpenCV moves the out-of-range linear taps onto the border sample for the x
// axis only; rows are clamped when read (is_x_axis = false).
RF_AUG_HD int resize_taps(int d, int src, int dst, int interpolation, bool is_x_axis, int* coef) {
  const double inv_scale = static_cast<double>(dst) / src;
  const double scale = 1.0 / inv_scale;
  const int taps = taps_of(interpolation);
  int sx;
  float fx;
  if (interpolation == kArea) {
    sx = static_cast<int>(floor(d * scale));
    fx = static_cast<float>((d + 1) - (sx + 1) * inv_scale);
    fx = fx <= 0 ? 0.f : fx - floorf(fx);
  } else {
    fx = static_cast<float>((d + 0.5) * scale - 0.5);
    sx = static_cast<int>(floorf(fx));
    fx -= sx;
  }
  if (is_x_axis && (interpolation == kLinear || interpolation == kArea)) {
    if (sx < 0) fx = 0, sx = 0;
    if (sx >= src - 1) fx = 0, sx = src - 1;
  }
  float c[kMaxTaps];
  if (interpolation == kCubic) {
    cubic_coefficients(fx, c);
  } else if (interpolation == kLanczos4) {
    lanczos4_coefficients(fx, c);
  } else {
    c[0] = 1.f - fx;
    c[1] = fx;
  }
  for (int k = 0; k < taps; ++k) coef[k] = fixed_coefficient(c[k]);
  return sx - taps / 2 + 1;
}

// INTER_NEAREST: floor(d * src / dst) in OpenCV's float64 steps.
RF_AUG_HD int nearest_index(int d, int src, int dst) {
  const double ifx = 1.0 / (static_cast<double>(dst) / src);
  const int s = static_cast<int>(floor(d * ifx));
  return s < src - 1 ? s : src - 1;
}

// cv2.resize's integer-factor area path (downscale by exactly k, also taken
// by INTER_LINEAR when k == 2): 0 when the factor is not an integer.
// Column x of the canvas after biubug6's _mirror: the column it reads before.
RF_AUG_HD int mirrored(const Params& p, int x) { return p.mirror ? p.side - 1 - x : x; }

// The mean of a k x k block from its int64 sum (scale = 1 / k^2): k == 2
// rounds half up, as OpenCV's SIMD path; k > 2 rounds the float mean half to
// even. (OpenCV's int32 sums wrap from k = 2902 on; int64 ones do not.)
RF_AUG_HD uint8_t integer_area_mean(int64_t sum, int k, float scale) {
  return k == 2 ? static_cast<uint8_t>((sum + 2) >> 2) : saturate_u8(round_even(static_cast<float>(sum) * scale));
}

RF_AUG_HD int integer_area_factor(int src, int dst) {
  const double scale = 1.0 / (static_cast<double>(dst) / src);
  const int k = static_cast<int>(scale + 0.5);
  return fabs(scale - k) < 2.220446049250313e-16 ? k : 0;
}

// The source cells of output index d for INTER_AREA downscaling (OpenCV's
// computeResizeAreaTab): an optional partial head cell, whole cells, an
// optional partial tail cell, each with its float weight.
struct AreaCells {
  int first_whole, end_whole;  // whole cells [first_whole, end_whole)
  bool has_head, has_tail;     // head = first_whole - 1, tail = end_whole
  float head_alpha, whole_alpha, tail_alpha;
};

RF_AUG_HD AreaCells area_cells(int d, int src, int dst) {
  const double scale = 1.0 / (static_cast<double>(dst) / src);
  const double fsx1 = d * scale;
  const double fsx2 = fsx1 + scale;
  const double cell_width = scale < src - fsx1 ? scale : src - fsx1;
  int sx1 = static_cast<int>(ceil(fsx1)), sx2 = static_cast<int>(floor(fsx2));
  sx2 = sx2 < src - 1 ? sx2 : src - 1;
  sx1 = sx1 < sx2 ? sx1 : sx2;
  AreaCells cells;
  cells.first_whole = sx1;
  cells.end_whole = sx2;
  cells.has_head = sx1 - fsx1 > 1e-3;
  cells.head_alpha = static_cast<float>((sx1 - fsx1) / cell_width);
  cells.whole_alpha = static_cast<float>(1.0 / cell_width);
  cells.has_tail = fsx2 - sx2 > 1e-3;
  double tail = fsx2 - sx2 < 1.0 ? fsx2 - sx2 : 1.0;
  tail = tail < cell_width ? tail : cell_width;
  cells.tail_alpha = static_cast<float>(tail / cell_width);
  return cells;
}

// The vertical passes of the fixed-point resize, per output value, from the
// horizontal sums s_k of the rows and the row coefficients b_k.
//
// INTER_LINEAR / INTER_AREA (upscale): OpenCV's VResizeLinearVec_32s8u, which
// drops 4 bits before a 16-bit multiply-high. Its vector loops end with
// narrower vectors, so no value of a row takes the scalar code.
RF_AUG_HD uint8_t linear_vertical(int s0, int s1, int b0, int b1) {
  const int t0 = ((s0 >> 4) * b0) >> 16;
  const int t1 = ((s1 >> 4) * b1) >> 16;
  return saturate_u8((t0 + t1 + 2) >> 2);
}

// FixedPtCast<int, uchar, 22>: the scalar vertical pass (Lanczos everywhere,
// the tails of the SIMD loops otherwise).
RF_AUG_HD uint8_t fixed_vertical(int64_t sum) {
  return saturate_u8(static_cast<int>((sum + (int64_t(1) << 21)) >> 22));
}

// INTER_CUBIC: VResizeCubicVec_32s8u, float32 multiply-adds, rounded.
RF_AUG_HD uint8_t cubic_vertical(int s0, int s1, int s2, int s3, const float* b) {
  float v = static_cast<float>(s3) * b[3];
  float t = static_cast<float>(s2) * b[2];
  v = t + v;
  t = static_cast<float>(s1) * b[1];
  v = t + v;
  t = static_cast<float>(s0) * b[0];
  v = t + v;
  return saturate_u8(round_even(v));
}

RF_AUG_HD float cubic_row_weight(int b) {
  return static_cast<float>(b) * (1.f / (kCoefScale * kCoefScale));
}

// How many leading values of a row of `width` values OpenCV's SIMD cubic
// vertical pass handles (whole vectors of 8); the rest go through
// fixed_vertical.
RF_AUG_HD int cubic_simd_width(int width) { return width / 8 * 8; }

}  // namespace augment
}  // namespace retinaface
