// Box maths shared by the CPU and CUDA kernels: the one source of truth for
// IoU, encoding and decoding. Plain C++ with no torch headers, so nvcc can
// compile it anywhere.
//
// Every formula follows biubug6/Pytorch_Retinaface's order of float32
// operations, so the CPU results equal the pure-PyTorch reference bit for bit
// where no transcendental is involved (exp/log may differ by an ulp from
// PyTorch's vectorised ones). CUDA builds must keep that order too: compile
// with -fmad=false (see setup.py), otherwise nvcc fuses a*b+c into an FMA and
// rounds differently.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define RF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RF_HOST_DEVICE inline
#endif

namespace retinaface {

// Every function is a template over the compute type T: float for float32,
// float16 and bfloat16 inputs (which accumulate in float32), double for
// float64 (gradcheck). rf_exp/rf_log pick expf/logf or exp/log.
RF_HOST_DEVICE float rf_exp(float x) { return expf(x); }
RF_HOST_DEVICE double rf_exp(double x) { return exp(x); }
RF_HOST_DEVICE float rf_log(float x) { return logf(x); }
RF_HOST_DEVICE double rf_log(double x) { return log(x); }
RF_HOST_DEVICE float rf_abs(float x) { return fabsf(x); }
RF_HOST_DEVICE double rf_abs(double x) { return fabs(x); }

template <typename T>
struct BoxT {
  T x1, y1, x2, y2;
};
using Box = BoxT<float>;

// min/max that propagate NaN like torch.min/torch.max (fminf would hide it).
template <typename T>
RF_HOST_DEVICE T nan_min(T a, T b) {
  return (a < b || a != a) ? a : b;
}
template <typename T>
RF_HOST_DEVICE T nan_max(T a, T b) {
  return (a > b || a != a) ? a : b;
}
// torch.clamp(x, min=0): NaN stays NaN.
template <typename T>
RF_HOST_DEVICE T clamp_positive(T x) {
  return x < T(0) ? T(0) : x;
}

// biubug6 point_form: (cx, cy, w, h) -> (x1, y1, x2, y2).
template <typename T>
RF_HOST_DEVICE BoxT<T> prior_corners(T cx, T cy, T w, T h) {
  return {cx - w / T(2), cy - h / T(2), cx + w / T(2), cy + h / T(2)};
}

template <typename T>
RF_HOST_DEVICE T box_area(const BoxT<T>& b) {
  return (b.x2 - b.x1) * (b.y2 - b.y1);
}

// xyxy IoU, no +1, no epsilon; union = (area_a + area_b) - inter as biubug6's
// jaccard and torchvision's box_iou compute it.
template <typename T>
RF_HOST_DEVICE T box_iou(const BoxT<T>& a, const BoxT<T>& b, T area_a, T area_b) {
  const T iw = clamp_positive(nan_min(a.x2, b.x2) - nan_max(a.x1, b.x1));
  const T ih = clamp_positive(nan_min(a.y2, b.y2) - nan_max(a.y1, b.y1));
  const T inter = iw * ih;
  return inter / ((area_a + area_b) - inter);
}
template <typename T>
RF_HOST_DEVICE T box_iou(const BoxT<T>& a, const BoxT<T>& b) {
  return box_iou(a, b, box_area(a), box_area(b));
}

// A ground-truth box the matcher may use: finite, positive width and height.
// Degenerate boxes are ignored by matching (biubug6 would encode log(0) = -inf
// for them); see retinaface_ext/ops/match.py.
template <typename T>
RF_HOST_DEVICE bool is_valid_box(const BoxT<T>& b) {
  const T w = b.x2 - b.x1, h = b.y2 - b.y1;
  // Written so that NaN compares false; w < inf also rejects infinite corners.
  return w > T(0) && h > T(0) && w < T(INFINITY) && h < T(INFINITY);
}

// Smallest width/height ratio encode() takes the log of, so that a zero-area
// ground-truth box gives a large finite target instead of -inf.
constexpr double kMinEncodedRatio = 1e-6;

// biubug6 encode(): xyxy ground truth -> (dx, dy, dw, dh) against a prior.
template <typename T>
RF_HOST_DEVICE void encode_box(const BoxT<T>& gt, T pcx, T pcy, T pw, T ph, T var0, T var1,
                               T* out) {
  out[0] = ((gt.x1 + gt.x2) / T(2) - pcx) / (var0 * pw);
  out[1] = ((gt.y1 + gt.y2) / T(2) - pcy) / (var0 * ph);
  const T min_ratio = T(kMinEncodedRatio);
  const T rw = (gt.x2 - gt.x1) / pw;
  const T rh = (gt.y2 - gt.y1) / ph;
  out[2] = rf_log(rw > min_ratio ? rw : min_ratio) / var1;
  out[3] = rf_log(rh > min_ratio ? rh : min_ratio) / var1;
}

// biubug6 decode(): (dx, dy, dw, dh) -> xyxy, in its order of operations.
template <typename T>
RF_HOST_DEVICE BoxT<T> decode_box(const T* loc, T pcx, T pcy, T pw, T ph, T var0, T var1) {
  const T cx = pcx + loc[0] * var0 * pw;
  const T cy = pcy + loc[1] * var0 * ph;
  const T w = pw * rf_exp(loc[2] * var1);
  const T h = ph * rf_exp(loc[3] * var1);
  const T x1 = cx - w / T(2);
  const T y1 = cy - h / T(2);
  return {x1, y1, x1 + w, y1 + h};
}

// biubug6 encode_landm(): 5 points (x0, y0 .. x4, y4) -> offsets.
template <typename T>
RF_HOST_DEVICE void encode_landmarks(const T* pts, T pcx, T pcy, T pw, T ph, T var0, T* out) {
  for (int k = 0; k < 5; ++k) {
    out[2 * k] = (pts[2 * k] - pcx) / (var0 * pw);
    out[2 * k + 1] = (pts[2 * k + 1] - pcy) / (var0 * ph);
  }
}

// biubug6 decode_landm().
template <typename T>
RF_HOST_DEVICE void decode_landmarks(const T* offsets, T pcx, T pcy, T pw, T ph, T var0, T* out) {
  for (int k = 0; k < 5; ++k) {
    out[2 * k] = pcx + offsets[2 * k] * var0 * pw;
    out[2 * k + 1] = pcy + offsets[2 * k + 1] * var0 * ph;
  }
}

// Smooth L1 (beta = 1) and its derivative, as torch.nn.functional.smooth_l1_loss.
template <typename T>
RF_HOST_DEVICE T smooth_l1(T d) {
  const T a = rf_abs(d);
  return a < T(1) ? T(0.5) * a * a : a - T(0.5);
}
template <typename T>
RF_HOST_DEVICE T smooth_l1_grad(T d) {
  return d < T(-1) ? T(-1) : (d > T(1) ? T(1) : d);
}

}  // namespace retinaface
