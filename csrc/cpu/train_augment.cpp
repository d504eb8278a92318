// train_augment on the CPU: biubug6's `preproc` pixels in one pass per image.
//
// The output is produced row by row. Each source row of the square canvas
// (the crop, or the image padded with the mean colour) is distorted once,
// when the resize first needs it (so a downscale skips the rows it does not
// read), and resampled horizontally into a small ring buffer of rows; the
// vertical pass combines them and the converted row is written straight into
// the output (uint8 HWC, or float CHW minus the mean). The mirror is folded
// into the horizontal taps. Nothing of image size is allocated besides the
// output. The arithmetic is csrc/common/train_augment_math.h (OpenCV's). The
// distortion and the horizontal taps have AVX2 / AVX-512 variants, picked at
// run time (vector_isa), all bit-identical to the baseline code.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <climits>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "common/train_augment_checks.h"
#include "common/train_augment_math.h"
#include "cpu/cpu_isa.h"
#include "cpu/parallel.h"
#include "cpu/vector_math.h"

namespace retinaface {
namespace {

using namespace augment;

// Loops that index the source row through a table (the horizontal taps) run
// faster as scalar code than as vector gathers on the CPUs we measured
// (AMD EPYC: 0.36 ms vs 1.3 ms for the 450-row horizontal pass of a
// 450 -> 640 linear resize), so the fallback pass is kept out of the
// vectoriser; the fast pass permutes registers instead (HorizontalPass).
#if defined(__GNUC__) && !defined(__clang__)
#define RF_SCALAR_LOOP __attribute__((optimize("no-tree-vectorize")))
#else
#define RF_SCALAR_LOOP
#endif

// ---------------------------------------------------------------- distortion
//
// biubug6's _distort of one row, from the interleaved uint8 source straight
// into three int32 planes, in one vectorised loop per pixel. Its per-value
// steps are computed, not looked up (a table lookup in a vector loop is a
// gather, slow on many CPUs): brightness is an integer add (see
// brightness_shift), contrast and saturation the float64 multiply of
// convert_value. A step that was not drawn is compiled out (the loop is
// instantiated per combination), and the HSV2BGR multiply-adds use the FMA
// instruction where the CPU has one (the float64 emulation otherwise): the
// same bits either way.

// The steps that were drawn, as template flags of the row loop.
enum DistortStep : int {
  kBrightnessStep = 1,      // brightness (an integer shift, clamped)
  kContrastFirstStep = 2,   // contrast before the HSV round trip
  kSaturationStep = 4,
  kContrastLastStep = 8,    // contrast after it
  kDistortVariants = 16,
};

struct DistortValues {
  // convert_value(v, 1, beta) truncates v + beta towards zero and clamps it
  // to 0..255: for v + beta >= 0 that is v + floor(beta); below 0 both give 0.
  int brightness;
  double contrast, saturation;
  int hue;  // in [0, 180)

  explicit DistortValues(const Params& p)
      : brightness(static_cast<int>(std::floor(p.brightness))), contrast(p.contrast),
        saturation(p.saturation), hue(((p.hue % 180) + 180) % 180) {}
};

inline int distort_steps(const Params& p) {
  int steps = 0;
  if (p.brightness != 0.0) steps |= kBrightnessStep;
  if (p.contrast != 1.0) steps |= p.contrast_last ? kContrastLastStep : kContrastFirstStep;
  if (p.saturation != 1.0) steps |= kSaturationStep;
  return steps;
}

template <int kSteps, bool kHardwareFma, bool kRound>
RF_ALWAYS_INLINE void distort_pixels(int begin, int end, const DistortValues* __restrict d,
                                     int32_t* __restrict b_io, int32_t* __restrict g_io,
                                     int32_t* __restrict r_io) {
  const int brightness = d->brightness, hue_shift = d->hue;
  const double contrast = d->contrast, saturation = d->saturation;
  for (int i = begin; i < end; ++i) {
    int b = b_io[i], g = g_io[i], r = r_io[i];
    if constexpr ((kSteps & kBrightnessStep) != 0) {
      b = clamp_int(b + brightness, 0, 255);
      g = clamp_int(g + brightness, 0, 255);
      r = clamp_int(r + brightness, 0, 255);
    }
    if constexpr ((kSteps & kContrastFirstStep) != 0) {
      b = convert_value(b, contrast, 0.0);
      g = convert_value(g, contrast, 0.0);
      r = convert_value(r, contrast, 0.0);
    }
    int h, s, v;
    bgr_to_hsv(b, g, r, HsvDivisorsComputed{}, &h, &s, &v);
    h += hue_shift;  // (h + hue) mod 180
    h -= h >= 180 ? 180 : 0;
    if constexpr ((kSteps & kSaturationStep) != 0) s = convert_value(s, saturation, 0.0);
    hsv_to_bgr<kRound, kHardwareFma>(h, s, v, &b, &g, &r);
    if constexpr ((kSteps & kContrastLastStep) != 0) {
      b = convert_value(b, contrast, 0.0);
      g = convert_value(g, contrast, 0.0);
      r = convert_value(r, contrast, 0.0);
    }
    b_io[i] = b;
    g_io[i] = g;
    r_io[i] = r;
  }
}

// Pixels from round_from on are in cv2.cvtColor's scalar tail (see hsv_to_bgr).
template <int kSteps, bool kHardwareFma>
RF_ALWAYS_INLINE void distort_row_impl(const uint8_t* __restrict src, int n, int round_from,
                                       const DistortValues* __restrict d, int32_t* __restrict b,
                                       int32_t* __restrict g, int32_t* __restrict r) {
  // A 64-bit index: with -fwrapv an int 3 * i may wrap, which stops the vectoriser.
  for (int64_t i = 0; i < n; ++i) {
    b[i] = src[3 * i];
    g[i] = src[3 * i + 1];
    r[i] = src[3 * i + 2];
  }
  distort_pixels<kSteps, kHardwareFma, false>(0, round_from, d, b, g, r);
  distort_pixels<kSteps, kHardwareFma, true>(round_from, n, d, b, g, r);
}

using DistortRowFn = void (*)(const uint8_t*, int, int, const DistortValues*, int32_t*, int32_t*, int32_t*);

// One function per ISA and step combination, picked at run time
// (RF_VECTOR_CLONES cannot be used: its AVX2 clone has no FMA).
#define RF_DISTORT_ROW(name, attributes, fma)                                                                 \
  template <int kSteps>                                                                                      \
  attributes void name(const uint8_t* src, int n, int round_from, const DistortValues* d, int32_t* b,       \
                       int32_t* g, int32_t* r) {                                                             \
    distort_row_impl<kSteps, fma>(src, n, round_from, d, b, g, r);                                           \
  }

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RF_HAS_ISA_VARIANTS 1
RF_DISTORT_ROW(distort_row_avx512, __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"))), true)
RF_DISTORT_ROW(distort_row_avx2, __attribute__((target("avx2,fma"))), true)
#endif
#if defined(__FMA__) || defined(__aarch64__)
RF_DISTORT_ROW(distort_row_baseline, , true)
#else
RF_DISTORT_ROW(distort_row_baseline, , false)
#endif

template <int... kSteps>
constexpr std::array<DistortRowFn, sizeof...(kSteps)> distort_functions(CpuIsa isa, std::integer_sequence<int, kSteps...>) {
#if defined(RF_HAS_ISA_VARIANTS)
  if (isa == CpuIsa::avx512) return {&distort_row_avx512<kSteps>...};
  if (isa == CpuIsa::avx2) return {&distort_row_avx2<kSteps>...};
#endif
  return {&distort_row_baseline<kSteps>...};
}

// AVX-512, AVX2 + FMA or the baseline build, capped by RETINAFACE_CPU_ISA
// (cpu/cpu_isa.h); decided once.
CpuIsa vector_isa() {
  static const CpuIsa isa = [] {
    CpuIsa best = CpuIsa::baseline;
#if defined(RF_HAS_ISA_VARIANTS)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      best = CpuIsa::avx512;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      best = CpuIsa::avx2;
    }
#endif
    return capped_by_environment(best);
  }();
  return isa;
}

DistortRowFn distort_row_function(int steps) {
  static const auto functions = distort_functions(vector_isa(), std::make_integer_sequence<int, kDistortVariants>());
  return functions[steps];
}

// Values readable past the end of a canvas row: the vector horizontal pass
// loads windows of 2 x 16 values, some of them beyond the last plane (their
// lanes are never selected).
constexpr int kRowPadding = 32;

// Rows of the canvas before the mirror, as three int32 planes of `side`
// values: the region's pixels distorted, the rest of the square the fill.
class CanvasRows {
 public:
  CanvasRows(const uint8_t* image, int64_t image_width, const Params& p, const uint8_t* fill)
      : image_(image), image_width_(image_width), p_(p), values_(p), distort_(distort_row_function(distort_steps(p))),
        buffer_(static_cast<size_t>(p.side) * 3 + kRowPadding), fill_row_(static_cast<size_t>(p.side) * 3 + kRowPadding) {
    for (int c = 0; c < 3; ++c) {
      std::fill_n(&fill_row_[static_cast<size_t>(c) * p.side], p.side, fill[c]);
      std::fill_n(&buffer_[static_cast<size_t>(c) * p.side], p.side, fill[c]);
    }
    static const int block_pixels = opencv_hsv_block_pixels();
    round_from_ = p.region_width / block_pixels * block_pixels;
  }

  int stride() const { return p_.side; }

  const int32_t* row(int y) {
    if (y >= p_.region_height) return fill_row_.data();
    if (y != cached_) {
      const uint8_t* src = image_ + ((p_.top + y) * image_width_ + p_.left) * 3;
      int32_t* out = buffer_.data();
      distort_(src, p_.region_width, round_from_, &values_, out, out + p_.side, out + 2 * p_.side);
      cached_ = y;
    }
    return buffer_.data();
  }

 private:
  const uint8_t* image_;
  int64_t image_width_;
  Params p_;
  DistortValues values_;
  DistortRowFn distort_;
  std::vector<int32_t> buffer_, fill_row_;
  int round_from_;
  int cached_ = -1;
};

RF_VECTOR_CLONES void planes_to_float(const uint8_t* __restrict line, int n, float m, float* __restrict out) {
  for (int x = 0; x < n; ++x) out[x] = static_cast<float>(line[x]) - m;
}

// Writes finished rows (three uint8 planes of `size` values) into the output:
// HWC uint8, or CHW minus the mean.
class OutputRows {
 public:
  OutputRows(at::Tensor& out, int64_t image, int size, const float* mean)
      : dtype_(out.scalar_type()), size_(size), mean_{mean[0], mean[1], mean[2]} {
    const int64_t image_values = static_cast<int64_t>(size) * size * 3;
    base_ = static_cast<char*>(out.data_ptr()) + image * image_values * out.element_size();
  }

  void write(int y, const uint8_t* line) const {
    const int64_t plane = static_cast<int64_t>(size_) * size_;
    const int64_t offset = static_cast<int64_t>(y) * size_;
    switch (dtype_) {
      case at::kByte: {
        uint8_t* dst = reinterpret_cast<uint8_t*>(base_) + offset * 3;
        for (int64_t x = 0; x < size_; ++x) {  // 64-bit: see distort_row_impl
          dst[3 * x] = line[x];
          dst[3 * x + 1] = line[size_ + x];
          dst[3 * x + 2] = line[2 * size_ + x];
        }
        break;
      }
      case at::kFloat:
        for (int c = 0; c < 3; ++c) {
          planes_to_float(line + c * size_, size_, mean_[c], reinterpret_cast<float*>(base_) + c * plane + offset);
        }
        break;
      case at::kHalf:
        planes(reinterpret_cast<at::Half*>(base_) + offset, plane, line);
        break;
      default:
        planes(reinterpret_cast<at::BFloat16*>(base_) + offset, plane, line);
        break;
    }
  }

 private:
  template <typename T>
  void planes(T* out, int64_t plane, const uint8_t* line) const {
    for (int c = 0; c < 3; ++c) {
      for (int x = 0; x < size_; ++x) {
        out[c * plane + x] = static_cast<T>(static_cast<float>(line[c * size_ + x]) - mean_[c]);
      }
    }
  }

  at::ScalarType dtype_;
  int size_;
  float mean_[3];
  char* base_;
};

// Downscale by an integer factor k: block means (integer_area_mean) of int64
// sums: OpenCV's int32 sums wrap from k = 2902 on (a 2902 x 2902 white block
// comes out black); below that the results are the same.
void integer_area_rows(CanvasRows& canvas, const Params& p, int size, int k, int y0, int y1, uint8_t* line,
                       const OutputRows& out) {
  std::vector<int64_t> sums(static_cast<size_t>(size) * 3);
  const float scale = 1.f / static_cast<float>(int64_t{k} * k);
  const int stride = canvas.stride();
  for (int y = y0; y < y1; ++y) {
    std::fill(sums.begin(), sums.end(), 0);
    for (int j = 0; j < k; ++j) {
      const int32_t* row = canvas.row(y * k + j);
      for (int c = 0; c < 3; ++c) {
        for (int x = 0; x < size; ++x) {
          for (int i = 0; i < k; ++i) sums[c * size + x] += row[c * stride + mirrored(p, x * k + i)];
        }
      }
    }
    for (int i = 0; i < size * 3; ++i) line[i] = integer_area_mean(sums[i], k, scale);
    out.write(y, line);
  }
}


// Horizontal pass of the fixed-point resize on the three planes:
// out_c[x] = sum_k row_c[offset[k][x]] * coef[k][x] (tap-major tables).
template <int K>
RF_SCALAR_LOOP void horizontal_fixed(const int32_t* __restrict row, int stride, const int32_t* __restrict offset,
                                       const int32_t* __restrict coef, int size, int32_t* __restrict out) {
  const int32_t *b = row, *g = row + stride, *r = row + 2 * stride;
  for (int x = 0; x < size; ++x) {
    int32_t sb = 0, sg = 0, sr = 0;
    for (int k = 0; k < K; ++k) {
      const int32_t o = offset[k * size + x], c = coef[k * size + x];
      sb += b[o] * c;
      sg += g[o] * c;
      sr += r[o] * c;
    }
    out[x] = sb;
    out[size + x] = sg;
    out[2 * size + x] = sr;
  }
}

// The same pass with vectors of L outputs and no gathers: the taps of L
// consecutive outputs lie in a window of 2 L source values (checked when the
// plan is made), which two vector loads bring in; each tap is then a
// two-vector permute (vpermt2d / vpermd) by a precomputed index vector, a
// multiply and an add. The sums are the scalar pass's, exactly (int32).
template <int L, typename Coef = int32_t>
struct HorizontalPlan {
  int blocks = 0;
  std::vector<int32_t> window;  // [blocks]: first source index of each block's window
  std::vector<int32_t> index;   // [blocks][K][L]: tap positions in the window (0 .. 2 L - 1)
  std::vector<Coef> coef;       // [blocks][K][L]

  // false when some block's taps span 2 L values or more (strong downscales).
  bool make(const int32_t* offset, const Coef* coef_k, int taps, int size) {
    blocks = (size + L - 1) / L;
    window.assign(blocks, 0);
    index.assign(static_cast<size_t>(blocks) * taps * L, 0);
    coef.assign(static_cast<size_t>(blocks) * taps * L, 0);
    for (int j = 0; j < blocks; ++j) {
      int lo = INT32_MAX, hi = INT32_MIN;
      for (int x = j * L; x < std::min(size, (j + 1) * L); ++x) {
        for (int k = 0; k < taps; ++k) {
          lo = std::min(lo, offset[k * size + x]);
          hi = std::max(hi, offset[k * size + x]);
        }
      }
      if (hi - lo >= 2 * L) return false;
      window[j] = lo;
      for (int k = 0; k < taps; ++k) {
        for (int l = 0; l < L; ++l) {
          const int x = j * L + l;
          if (x >= size) continue;  // lanes past the row: index 0, coefficient 0
          index[(static_cast<size_t>(j) * taps + k) * L + l] = offset[k * size + x] - lo;
          coef[(static_cast<size_t>(j) * taps + k) * L + l] = coef_k[k * size + x];
        }
      }
    }
    return true;
  }
};

// GCC vector extensions (__builtin_shuffle is GCC's), used by the ISA variants only.
#if defined(RF_HAS_ISA_VARIANTS)
template <int L>
struct Int32Vector;
template <>
struct Int32Vector<8> {
  typedef int32_t type __attribute__((vector_size(32)));
};
template <>
struct Int32Vector<16> {
  typedef int32_t type __attribute__((vector_size(64)));
};

template <int K, int L>
RF_ALWAYS_INLINE void horizontal_blocks_impl(const int32_t* __restrict row, int stride, const HorizontalPlan<L>& plan,
                                             int size, int32_t* __restrict out) {
  using Vec = typename Int32Vector<L>::type;
  const int full = size / L;
  for (int c = 0; c < 3; ++c) {
    const int32_t* plane = row + static_cast<int64_t>(c) * stride;
    int32_t* dst = out + static_cast<int64_t>(c) * size;
    for (int j = 0; j < plan.blocks; ++j) {
      Vec lo, hi;
      std::memcpy(&lo, plane + plan.window[j], sizeof lo);
      std::memcpy(&hi, plane + plan.window[j] + L, sizeof hi);
      const int32_t* index = &plan.index[static_cast<size_t>(j) * K * L];
      const int32_t* coef = &plan.coef[static_cast<size_t>(j) * K * L];
      Vec sum = {};
      for (int k = 0; k < K; ++k) {
        Vec i, w;
        std::memcpy(&i, index + k * L, sizeof i);
        std::memcpy(&w, coef + k * L, sizeof w);
        sum += __builtin_shuffle(lo, hi, i) * w;
      }
      if (j < full) {
        std::memcpy(dst + j * L, &sum, sizeof sum);
      } else {
        int32_t tail[L];
        std::memcpy(tail, &sum, sizeof sum);
        std::memcpy(dst + j * L, tail, sizeof(int32_t) * (size - j * L));
      }
    }
  }
}

template <int K>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"))) void horizontal_blocks_avx512(
    const int32_t* row, int stride, const HorizontalPlan<16>& plan, int size, int32_t* out) {
  horizontal_blocks_impl<K, 16>(row, stride, plan, size, out);
}
template <int K>
__attribute__((target("avx2,fma"))) void horizontal_blocks_avx2(const int32_t* row, int stride,
                                                                const HorizontalPlan<8>& plan, int size,
                                                                int32_t* out) {
  horizontal_blocks_impl<K, 8>(row, stride, plan, size, out);
}
#endif

// The horizontal pass of one image: the vector pass for this CPU where the
// plan allows it, else the scalar one.
template <int K>
class HorizontalPass {
 public:
  HorizontalPass(std::vector<int32_t> offset, std::vector<int32_t> coef, int size)
      : offset_(std::move(offset)), coef_(std::move(coef)), size_(size), isa_(vector_isa()) {
    if (isa_ == CpuIsa::avx512 && !plan16_.make(offset_.data(), coef_.data(), K, size)) isa_ = CpuIsa::baseline;
    if (isa_ == CpuIsa::avx2 && !plan8_.make(offset_.data(), coef_.data(), K, size)) isa_ = CpuIsa::baseline;
  }

  void operator()(const int32_t* row, int stride, int32_t* out) const {
#if defined(RF_HAS_ISA_VARIANTS)
    if (isa_ == CpuIsa::avx512) return horizontal_blocks_avx512<K>(row, stride, plan16_, size_, out);
    if (isa_ == CpuIsa::avx2) return horizontal_blocks_avx2<K>(row, stride, plan8_, size_, out);
#endif
    horizontal_fixed<K>(row, stride, offset_.data(), coef_.data(), size_, out);
  }

 private:
  std::vector<int32_t> offset_, coef_;
  int size_;
  CpuIsa isa_;
  HorizontalPlan<16> plan16_;
  HorizontalPlan<8> plan8_;
};

// INTER_AREA's horizontal pass as K taps (the cells of each output, in
// OpenCV's order, padded with weight 0: a + v * 0 == a) of two-vector
// permutes, in float32 as OpenCV: a = a + v * alpha from a = 0. AVX2 without
// FMA on purpose, so that no multiply-add is fused.
#if defined(RF_HAS_ISA_VARIANTS)
constexpr int kAreaTaps = 4;

__attribute__((target("avx2"))) void area_horizontal_avx2(const int32_t* row, int stride,
                                                         const HorizontalPlan<8, float>& plan, int size, float* out) {
  using IVec = Int32Vector<8>::type;
  typedef float FVec __attribute__((vector_size(32)));
  const int full = size / 8;
  for (int c = 0; c < 3; ++c) {
    const int32_t* plane = row + static_cast<int64_t>(c) * stride;
    float* dst = out + static_cast<int64_t>(c) * size;
    for (int j = 0; j < plan.blocks; ++j) {
      IVec lo, hi;
      std::memcpy(&lo, plane + plan.window[j], sizeof lo);
      std::memcpy(&hi, plane + plan.window[j] + 8, sizeof hi);
      FVec sum = {};
      for (int k = 0; k < kAreaTaps; ++k) {
        IVec i;
        FVec w;
        std::memcpy(&i, &plan.index[(static_cast<size_t>(j) * kAreaTaps + k) * 8], sizeof i);
        std::memcpy(&w, &plan.coef[(static_cast<size_t>(j) * kAreaTaps + k) * 8], sizeof w);
        const FVec product = __builtin_convertvector(__builtin_shuffle(lo, hi, i), FVec) * w;
        sum = sum + product;
      }
      if (j < full) {
        std::memcpy(dst + j * 8, &sum, sizeof sum);
      } else {
        float tail[8];
        std::memcpy(tail, &sum, sizeof sum);
        std::memcpy(dst + j * 8, tail, sizeof(float) * (size - j * 8));
      }
    }
  }
}
#endif

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
    if (c.has_head) cells.push_back({mirrored(p, c.first_whole - 1), c.head_alpha});
    for (int s = c.first_whole; s < c.end_whole; ++s) cells.push_back({mirrored(p, s), c.whole_alpha});
    if (c.has_tail) cells.push_back({mirrored(p, c.end_whole), c.tail_alpha});
  }
  cells_begin[size] = static_cast<int>(cells.size());

  const int stride = canvas.stride();
  std::vector<float> buf(static_cast<size_t>(size) * 3), sum(static_cast<size_t>(size) * 3);
  int buf_row = -1;
#if defined(RF_HAS_ISA_VARIANTS)
  HorizontalPlan<8, float> plan;
  bool vector_pass = vector_isa() >= CpuIsa::avx2;
  if (vector_pass) {
    std::vector<int32_t> offset(static_cast<size_t>(kAreaTaps) * size, 0);
    std::vector<float> alpha(static_cast<size_t>(kAreaTaps) * size, 0.f);
    for (int x = 0; x < size && vector_pass; ++x) {
      const int count = cells_begin[x + 1] - cells_begin[x];
      vector_pass = count <= kAreaTaps;
      for (int k = 0; k < kAreaTaps && vector_pass; ++k) {
        const Cell& cell = cells[cells_begin[x] + std::min(k, count - 1)];
        offset[k * size + x] = cell.offset;  // padding taps: the last cell again, weight 0
        alpha[k * size + x] = k < count ? cell.alpha : 0.f;
      }
    }
    vector_pass = vector_pass && plan.make(offset.data(), alpha.data(), kAreaTaps, size);
  }
#endif
  auto horizontal = [&](int sy) {
    if (sy == buf_row) return;
    const int32_t* row = canvas.row(sy);
    buf_row = sy;
#if defined(RF_HAS_ISA_VARIANTS)
    if (vector_pass) return area_horizontal_avx2(row, stride, plan, size, buf.data());
#endif
    for (int c = 0; c < 3; ++c) {
      const int32_t* plane = row + c * stride;
      for (int x = 0; x < size; ++x) {
        float a = 0.f;
        for (int k = cells_begin[x]; k < cells_begin[x + 1]; ++k) {
          a = a + static_cast<float>(plane[cells[k].offset]) * cells[k].alpha;
        }
        buf[c * size + x] = a;
      }
    }
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

// side == size (cv2.resize copies) and INTER_NEAREST: out_c[x] = row_c[offset[x]],
// the horizontal pass with one tap of weight 1.
RF_VECTOR_CLONES void narrow_to_u8(const int32_t* __restrict values, int n, uint8_t* __restrict line) {
  for (int i = 0; i < n; ++i) line[i] = static_cast<uint8_t>(values[i]);
}

void gather_rows(CanvasRows& canvas, const Params& p, int size, bool nearest, int y0, int y1, uint8_t* line,
                 const OutputRows& out) {
  std::vector<int32_t> offset(size), ones(size, 1);
  for (int x = 0; x < size; ++x) offset[x] = mirrored(p, nearest ? nearest_index(x, p.side, size) : x);
  const HorizontalPass<1> pick(std::move(offset), std::move(ones), size);
  std::vector<int32_t> values(static_cast<size_t>(size) * 3);
  for (int y = y0; y < y1; ++y) {
    pick(canvas.row(nearest ? nearest_index(y, p.side, size) : y), canvas.stride(), values.data());
    narrow_to_u8(values.data(), size * 3, line);
    out.write(y, line);
  }
}

RF_VECTOR_CLONES void vertical_linear(const int32_t* __restrict r0, const int32_t* __restrict r1, int b0, int b1,
                                      int n, uint8_t* __restrict line) {
  for (int i = 0; i < n; ++i) line[i] = linear_vertical(r0[i], r1[i], b0, b1);
}

// No multiply-add contraction: GCC fuses the float products and sums into FMA
// in the AVX-512 clone (which has FMA), and OpenCV's cubic rounds each step.
#if defined(__GNUC__) && !defined(__clang__)
#define RF_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define RF_NO_FP_CONTRACT
#endif

RF_VECTOR_CLONES RF_NO_FP_CONTRACT void vertical_cubic(const int32_t* __restrict r0, const int32_t* __restrict r1,
                                     const int32_t* __restrict r2, const int32_t* __restrict r3,
                                     const float* __restrict weight, int n, uint8_t* __restrict line) {
  for (int i = 0; i < n; ++i) line[i] = cubic_vertical(r0[i], r1[i], r2[i], r3[i], weight);
}

// OpenCV's int accumulation of the Lanczos taps (cannot overflow: the taps'
// absolute sum is below 1.3 x 2048 on each axis).
RF_VECTOR_CLONES void vertical_lanczos(const int32_t* const* __restrict rows, const int* __restrict coef, int n,
                                       uint8_t* __restrict line) {
  const int32_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
  const int32_t *r4 = rows[4], *r5 = rows[5], *r6 = rows[6], *r7 = rows[7];
  const int c0 = coef[0], c1 = coef[1], c2 = coef[2], c3 = coef[3];
  const int c4 = coef[4], c5 = coef[5], c6 = coef[6], c7 = coef[7];
  for (int i = 0; i < n; ++i) {
    const int32_t sum = r0[i] * c0 + r1[i] * c1 + r2[i] * c2 + r3[i] * c3 + r4[i] * c4 + r5[i] * c5 +
                        r6[i] * c6 + r7[i] * c7;
    line[i] = saturate_u8((sum + (1 << 21)) >> 22);
  }
}

// Linear, cubic, Lanczos and area upscaling: OpenCV's resizeGeneric with the
// horizontally resampled rows kept in a ring of K rows.
template <int K>
void fixed_point_rows(CanvasRows& canvas, const Params& p, int size, int y0, int y1, uint8_t* line,
                      const OutputRows& out) {
  const int interp = p.interpolation;
  const int width = size * 3;
  std::vector<int32_t> x_offset(static_cast<size_t>(size) * K), x_coef(static_cast<size_t>(size) * K);
  for (int x = 0; x < size; ++x) {
    int coef[kMaxTaps];
    const int first = resize_taps(x, p.side, size, interp, /*is_x_axis=*/true, coef);
    for (int k = 0; k < K; ++k) {
      x_offset[k * size + x] = mirrored(p, clamp_int(first + k, 0, p.side - 1));
      x_coef[k * size + x] = coef[k];
    }
  }
  const HorizontalPass<K> horizontal(std::move(x_offset), std::move(x_coef), size);
  std::vector<int32_t> ring(static_cast<size_t>(K) * width);
  int ring_row[K];
  std::fill(ring_row, ring_row + K, -1);
  auto horizontal_row = [&](int sy) -> const int32_t* {
    int32_t* slot = &ring[static_cast<size_t>(sy % K) * width];
    if (ring_row[sy % K] != sy) {
      horizontal(canvas.row(sy), canvas.stride(), slot);
      ring_row[sy % K] = sy;
    }
    return slot;
  };
  // OpenCV's cubic SIMD pass covers whole vectors of 8 interleaved values; the
  // rest (interleaved index >= tail_from) takes the scalar fixed-point cast.
  const int tail_from = K == 4 ? cubic_simd_width(width) : width;
  for (int y = y0; y < y1; ++y) {
    int coef[kMaxTaps];
    const int first = resize_taps(y, p.side, size, interp, /*is_x_axis=*/false, coef);
    const int32_t* rows[K];
    for (int k = 0; k < K; ++k) rows[k] = horizontal_row(clamp_int(first + k, 0, p.side - 1));
    if constexpr (K == 2) {
      vertical_linear(rows[0], rows[1], coef[0], coef[1], width, line);
    } else if constexpr (K == 4) {
      float weight[4];
      for (int k = 0; k < 4; ++k) weight[k] = cubic_row_weight(coef[k]);
      vertical_cubic(rows[0], rows[1], rows[2], rows[3], weight, width, line);
    } else {
      vertical_lanczos(rows, coef, width, line);
    }
    for (int i = tail_from; i < width; ++i) {  // interleaved index i = 3 x + c
      const int planar = (i % 3) * size + i / 3;
      int64_t sum = 0;
      for (int k = 0; k < K; ++k) sum += static_cast<int64_t>(rows[k][planar]) * coef[k];
      line[planar] = fixed_vertical(sum);
    }
    out.write(y, line);
  }
}

void augment_rows(const uint8_t* image, int64_t image_width, const Params& p, const uint8_t* fill, int size,
                  int y0, int y1, const OutputRows& out) {
  CanvasRows canvas(image, image_width, p, fill);
  std::vector<uint8_t> line(static_cast<size_t>(size) * 3);
  if (p.side == size) return gather_rows(canvas, p, size, /*nearest=*/false, y0, y1, line.data(), out);
  const int area_factor = integer_area_factor(p.side, size);
  switch (p.interpolation) {
    case kNearest:
      return gather_rows(canvas, p, size, /*nearest=*/true, y0, y1, line.data(), out);
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
  // Work units: whole images, handed out on demand (their cost depends on the
  // drawn side and interpolation); bands of rows only when there are fewer
  // images than threads, since each band sets up the image's resize plan and
  // distorts the source rows it shares with its neighbours again.
  const int64_t band = batch < at::get_num_threads() ? 64 : out_size;
  const int64_t bands = (out_size + band - 1) / band;
  parallel_for_dynamic(batch * bands, 1, [&](int64_t begin, int64_t end) {
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
