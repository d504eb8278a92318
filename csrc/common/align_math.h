// Face alignment maths shared by the CPU and CUDA kernels of align_faces (and
// mirrored by retinaface_ext/reference/align_faces.py): the least-squares
// similarity transform of five landmarks onto a template, in closed form, and
// OpenCV's fixed-point bilinear warpAffine. Plain C++ with no torch headers.
//
// Everything here is double or integer arithmetic, except the weighted sum of
// floating images (bilinear_sum), so CPU, CUDA and the reference agree bit
// for bit: the rounding to fixed point is IEEE double arithmetic in one
// written order (CUDA builds use -fmad=false, see setup.py) and the rest is
// exact integer arithmetic.
#pragma once

#include <cmath>
#include <cstdint>

#ifndef RF_HOST_DEVICE
#if defined(__CUDACC__)
#define RF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RF_HOST_DEVICE inline
#endif
#endif

namespace retinaface {

constexpr int kAlignPoints = 5;

// ------------------------------------------------------------ the transform
// M maps image pixels to crop pixels: crop = (M[0] x + M[1] y + M[2],
// M[3] x + M[4] y + M[5]), the 2x3 matrix of cv2.warpAffine and of
// insightface's estimate_norm.
//
// The least-squares similarity (rotation, uniform scale, translation; no
// reflection) taking points src[i] to dst[i] is Umeyama's (1991) estimate with
// scaling, which scikit-image's SimilarityTransform computes with an SVD. In
// two dimensions it has a closed form: with p_i = src_i - mean(src) and
// q_i = dst_i - mean(dst), Umeyama maximises trace(R^T C) over rotations R,
// C = sum q_i p_i^T, which for R = rotation(theta) is
// 2 (P cos(theta) + Q sin(theta)) with P = sum p_i . q_i, Q = sum p_i x q_i:
// theta = atan2(Q, P) whatever the sign of det C (the case Umeyama's SVD
// treats apart), and the scale is sqrt(P^2 + Q^2) / sum |p_i|^2. So
//   [[a, -b], [b, a]] = [[P, -Q], [Q, P]] / sum |p_i|^2,
//   t = mean(dst) - [[a, -b], [b, a]] mean(src).
//
// Returns false, with M all NaN (as scikit-image gives), when the transform
// is not defined or not invertible: all source points equal (e.g. biubug6's
// -1 landmarks of a face without landmarks), a NaN or inf coordinate, or a
// template whose points are all equal.
RF_HOST_DEVICE bool similarity_transform(const double src[2 * kAlignPoints],
                                         const double dst[2 * kAlignPoints], double M[6]) {
  double src_x = 0, src_y = 0, dst_x = 0, dst_y = 0;
  for (int i = 0; i < kAlignPoints; ++i) {
    src_x += src[2 * i];
    src_y += src[2 * i + 1];
    dst_x += dst[2 * i];
    dst_y += dst[2 * i + 1];
  }
  src_x /= kAlignPoints;
  src_y /= kAlignPoints;
  dst_x /= kAlignPoints;
  dst_y /= kAlignPoints;
  double dot = 0, cross = 0, norm = 0;
  for (int i = 0; i < kAlignPoints; ++i) {
    const double px = src[2 * i] - src_x, py = src[2 * i + 1] - src_y;
    const double qx = dst[2 * i] - dst_x, qy = dst[2 * i + 1] - dst_y;
    dot += px * qx + py * qy;
    cross += px * qy - py * qx;
    norm += px * px + py * py;
  }
  const double a = dot / norm, b = cross / norm;
  M[0] = a;
  M[1] = -b;
  M[2] = dst_x - (a * src_x - b * src_y);
  M[3] = b;
  M[4] = a;
  M[5] = dst_y - (b * src_x + a * src_y);
  // fabs(NaN) < inf is false too.
  const bool valid = a * a + b * b > 0 && fabs(a) < INFINITY && fabs(b) < INFINITY &&
                     fabs(M[2]) < INFINITY && fabs(M[5]) < INFINITY;
  if (!valid) {
    for (int k = 0; k < 6; ++k) M[k] = NAN;
  }
  return valid;
}

// The inverse (crop -> image) as cv2.warpAffine computes it, in its order of
// double operations (the fixed-point positions below round these values).
RF_HOST_DEVICE void invert_affine(const double M[6], double inv[6]) {
  double d = M[0] * M[4] - M[1] * M[3];
  d = d != 0 ? 1.0 / d : 0.0;
  inv[0] = M[4] * d;
  inv[1] = M[1] * -d;
  inv[3] = M[3] * -d;
  inv[4] = M[0] * d;
  inv[2] = -inv[0] * M[2] - inv[1] * M[5];
  inv[5] = -inv[3] * M[2] - inv[4] * M[5];
}

// --------------------------------------------------------- the sampling
// OpenCV's warpAffine (INTER_LINEAR, BORDER_CONSTANT 0) up to 4.10, the
// arithmetic insightface's crops (and the ArcFace training sets) were made
// with. The source position of crop pixel (x, y), inv * (x, y, 1), is carried
// in 1/1024 pixel (kPositionBits) as the sum of a per-row and a per-column
// integer, then cut to 1/32 pixel (kFractionBits); the bilinear weights of a
// 1/32 position are exact integers summing to 1024 (OpenCV's 15-bit weights
// are the same values times 32). There is no half-pixel offset: crop pixel
// (x, y) samples image coordinate inv * (x, y, 1), pixel centres at integers.
// OpenCV 4.11+ computes positions and weights in float32 instead; its crops
// differ from these by about 0.05 gray levels on average on real faces
// (tests/test_align_faces.py bounds the difference).
constexpr int kFractionBits = 5;
constexpr int kFractionOne = 1 << kFractionBits;  // 32
constexpr int kPositionBits = 10;
constexpr double kPositionScale = 1 << kPositionBits;  // 1024
constexpr int kRowRounding = 1 << (kPositionBits - kFractionBits - 1);  // 16: round to 1/32
constexpr int kWeightBits = 2 * kFractionBits;                           // weights sum to 1024

// cvRound + saturate_cast<int>: nearest, ties to even, clamped to int32 (NaN
// gives INT32_MIN). Clamping first gives the same result. Adding and
// subtracting 1.5 * 2^52 then rounds to an integer with the current rounding
// mode, nearest-even, like rint; written without branches or a libm call so
// that loops over it vectorise.
RF_HOST_DEVICE int32_t round_to_int32(double v) {
  v = v > -2147483648.0 ? v : -2147483648.0;  // NaN too
  v = v < 2147483647.0 ? v : 2147483647.0;
  constexpr double kRoundingBias = 6755399441055744.0;  // 1.5 * 2^52
  return static_cast<int32_t>((v + kRoundingBias) - kRoundingBias);
}

// The per-column and per-row parts of the source position, in 1/1024 pixel.
RF_HOST_DEVICE int32_t column_offset(double coefficient, int64_t x) {
  return round_to_int32(coefficient * static_cast<double>(x) * kPositionScale);
}
RF_HOST_DEVICE int64_t row_offset(double coefficient, double constant, int64_t y) {
  return static_cast<int64_t>(
             round_to_int32((coefficient * static_cast<double>(y) + constant) * kPositionScale)) +
         kRowRounding;
}

// A source position in 1/32 pixel (row_offset + column_offset, cut to 1/32),
// split into the top-left pixel and the weights of its 2x2 neighbourhood
// w[0] (ix, iy), w[1] (ix + 1, iy), w[2] (ix, iy + 1), w[3] (ix + 1, iy + 1).
struct BilinearTap {
  int64_t ix, iy;
  int32_t w[4];
};

// 1/1024 -> 1/32 pixel, rounded down (an arithmetic shift, as OpenCV's).
RF_HOST_DEVICE int64_t to_fraction_position(int64_t position) {
  return position >> (kPositionBits - kFractionBits);
}

RF_HOST_DEVICE BilinearTap bilinear_tap(int64_t x32, int64_t y32) {
  BilinearTap tap;
  tap.ix = x32 >> kFractionBits;
  tap.iy = y32 >> kFractionBits;
  const int32_t fx = static_cast<int32_t>(x32 & (kFractionOne - 1));
  const int32_t fy = static_cast<int32_t>(y32 & (kFractionOne - 1));
  tap.w[0] = (kFractionOne - fx) * (kFractionOne - fy);
  tap.w[1] = fx * (kFractionOne - fy);
  tap.w[2] = (kFractionOne - fx) * fy;
  tap.w[3] = fx * fy;
  return tap;
}

// uint8 images: OpenCV's (sum w15 p + 2^14) >> 15 with w15 = 32 w, i.e.
// (sum w p + 512) >> 10. p are the four neighbours (0 outside the image).
RF_HOST_DEVICE int32_t bilinear_sum_u8(const int32_t p[4], const int32_t w[4]) {
  const int32_t sum = p[0] * w[0] + p[1] * w[1] + p[2] * w[2] + p[3] * w[3];
  return (sum + (1 << (kWeightBits - 1))) >> kWeightBits;
}

// Floating images: OpenCV's float weights are these weights / 1024 (exact),
// summed in this order in the compute type (float; double for double).
template <typename T>
RF_HOST_DEVICE T bilinear_sum(const T p[4], const int32_t w[4]) {
  const T scale = T(1) / T(1 << kWeightBits);
  return p[0] * (static_cast<T>(w[0]) * scale) + p[1] * (static_cast<T>(w[1]) * scale) +
         p[2] * (static_cast<T>(w[2]) * scale) + p[3] * (static_cast<T>(w[3]) * scale);
}

// Whether the 2x2 neighbourhood of a tap lies inside an H x W image (then no
// neighbour needs the zero border).
RF_HOST_DEVICE bool tap_inside(const BilinearTap& tap, int64_t height, int64_t width) {
  return tap.ix >= 0 && tap.ix < width - 1 && tap.iy >= 0 && tap.iy < height - 1;
}

}  // namespace retinaface
