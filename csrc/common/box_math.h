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

struct Box {
  float x1, y1, x2, y2;
};

// min/max that propagate NaN like torch.min/torch.max (fminf would hide it).
RF_HOST_DEVICE float nan_min(float a, float b) {
  return (a < b || a != a) ? a : b;
}
RF_HOST_DEVICE float nan_max(float a, float b) {
  return (a > b || a != a) ? a : b;
}
// torch.clamp(x, min=0): NaN stays NaN.
RF_HOST_DEVICE float clamp_positive(float x) {
  return x < 0.0f ? 0.0f : x;
}

// biubug6 point_form: (cx, cy, w, h) -> (x1, y1, x2, y2).
RF_HOST_DEVICE Box prior_corners(float cx, float cy, float w, float h) {
  return {cx - w / 2.0f, cy - h / 2.0f, cx + w / 2.0f, cy + h / 2.0f};
}

RF_HOST_DEVICE float box_area(const Box& b) {
  return (b.x2 - b.x1) * (b.y2 - b.y1);
}

// xyxy IoU, no +1, no epsilon; union = (area_a + area_b) - inter as biubug6's
// jaccard and torchvision's box_iou compute it.
RF_HOST_DEVICE float box_iou(const Box& a, const Box& b, float area_a, float area_b) {
  const float iw = clamp_positive(nan_min(a.x2, b.x2) - nan_max(a.x1, b.x1));
  const float ih = clamp_positive(nan_min(a.y2, b.y2) - nan_max(a.y1, b.y1));
  const float inter = iw * ih;
  return inter / ((area_a + area_b) - inter);
}
RF_HOST_DEVICE float box_iou(const Box& a, const Box& b) {
  return box_iou(a, b, box_area(a), box_area(b));
}

// A ground-truth box the matcher may use: finite, positive width and height.
// Degenerate boxes are ignored by matching (biubug6 would encode log(0) = -inf
// for them); see retinaface_ext/ops/match.py.
RF_HOST_DEVICE bool is_valid_box(const Box& b) {
  // Written so that NaN compares false.
  return (b.x2 - b.x1) > 0.0f && (b.y2 - b.y1) > 0.0f &&
         (b.x2 - b.x1) < INFINITY && (b.y2 - b.y1) < INFINITY;
}

// Smallest width/height ratio encode() takes the log of, so that a zero-area
// ground-truth box gives a large finite target instead of -inf.
constexpr float kMinEncodedRatio = 1e-6f;

// biubug6 encode(): xyxy ground truth -> (dx, dy, dw, dh) against a prior.
RF_HOST_DEVICE void encode_box(const Box& gt, float pcx, float pcy, float pw, float ph,
                               float var0, float var1, float* out) {
  out[0] = ((gt.x1 + gt.x2) / 2.0f - pcx) / (var0 * pw);
  out[1] = ((gt.y1 + gt.y2) / 2.0f - pcy) / (var0 * ph);
  const float rw = (gt.x2 - gt.x1) / pw;
  const float rh = (gt.y2 - gt.y1) / ph;
  out[2] = logf(rw > kMinEncodedRatio ? rw : kMinEncodedRatio) / var1;
  out[3] = logf(rh > kMinEncodedRatio ? rh : kMinEncodedRatio) / var1;
}

// biubug6 decode(): (dx, dy, dw, dh) -> xyxy, in its order of operations.
RF_HOST_DEVICE Box decode_box(const float* loc, float pcx, float pcy, float pw, float ph,
                              float var0, float var1) {
  const float cx = pcx + loc[0] * var0 * pw;
  const float cy = pcy + loc[1] * var0 * ph;
  const float w = pw * expf(loc[2] * var1);
  const float h = ph * expf(loc[3] * var1);
  const float x1 = cx - w / 2.0f;
  const float y1 = cy - h / 2.0f;
  return {x1, y1, x1 + w, y1 + h};
}

// biubug6 encode_landm(): 5 points (x0, y0 .. x4, y4) -> offsets.
RF_HOST_DEVICE void encode_landmarks(const float* pts, float pcx, float pcy, float pw,
                                     float ph, float var0, float* out) {
  for (int k = 0; k < 5; ++k) {
    out[2 * k] = (pts[2 * k] - pcx) / (var0 * pw);
    out[2 * k + 1] = (pts[2 * k + 1] - pcy) / (var0 * ph);
  }
}

// biubug6 decode_landm().
RF_HOST_DEVICE void decode_landmarks(const float* offsets, float pcx, float pcy, float pw,
                                     float ph, float var0, float* out) {
  for (int k = 0; k < 5; ++k) {
    out[2 * k] = pcx + offsets[2 * k] * var0 * pw;
    out[2 * k + 1] = pcy + offsets[2 * k + 1] * var0 * ph;
  }
}

// Smooth L1 (beta = 1) and its derivative, as torch.nn.functional.smooth_l1_loss.
RF_HOST_DEVICE float smooth_l1(float d) {
  const float a = fabsf(d);
  return a < 1.0f ? 0.5f * d * d : a - 0.5f;
}
RF_HOST_DEVICE float smooth_l1_grad(float d) {
  return d < -1.0f ? -1.0f : (d > 1.0f ? 1.0f : d);
}

}  // namespace retinaface
