// Argument checks of mobilenet_stem, shared by the CPU kernel
// (csrc/cpu/mobilenet_stem.cpp) and the CUDA registration
// (csrc/cuda/mobilenet_stem.cpp) so both raise the same errors.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "common/checks.h"

namespace retinaface {

// MobileNetV1-0.25's first four layers: conv 3x3 / 2 (3 -> 8), then three
// depthwise-separable blocks: depthwise 3x3 / stride, pointwise 1x1.
constexpr int kStemLayers = 7;
constexpr int64_t kStemInChannels[kStemLayers] = {3, 1, 8, 1, 16, 1, 32};
constexpr int64_t kStemOutChannels[kStemLayers] = {8, 8, 16, 16, 32, 32, 32};
constexpr int64_t kStemKernel[kStemLayers] = {3, 3, 1, 3, 1, 3, 1};
constexpr const char* kStemLayerNames[kStemLayers] = {
    "conv 3x3/2", "depthwise 3x3/1", "pointwise", "depthwise 3x3/2", "pointwise",
    "depthwise 3x3/1", "pointwise"};
constexpr int64_t kStemOutputChannels = 32;

// ceil(size / 4): two stride-2 convolutions with kernel 3 and padding 1.
inline int64_t stem_output_size(int64_t size) { return ((size + 1) / 2 + 1) / 2; }

inline void check_mobilenet_stem_args(const at::Tensor& images, at::TensorList weights,
                                      at::TensorList biases, at::ArrayRef<double> mean,
                                      double negative_slope) {
  constexpr const char* op = "mobilenet_stem";
  check_shape(op, "images", images, {-1, -1, -1, 3}, "[B, H, W, 3]");
  check_dtype(op, "images", images, at::kByte);
  TORCH_CHECK(static_cast<int>(weights.size()) == kStemLayers, op, "(): weights must hold ",
              kStemLayers, " tensors (the folded conv weights of stage1[:4]), got ",
              weights.size());
  TORCH_CHECK(static_cast<int>(biases.size()) == kStemLayers, op, "(): biases must hold ",
              kStemLayers, " tensors, got ", biases.size());
  for (int k = 0; k < kStemLayers; ++k) {
    const std::string weight_name = "weights[" + std::to_string(k) + "]";
    const std::string bias_name = "biases[" + std::to_string(k) + "]";
    const int64_t out = kStemOutChannels[k], in = kStemInChannels[k], size = kStemKernel[k];
    const std::string expected = "[" + std::to_string(out) + ", " + std::to_string(in) + ", " +
                                 std::to_string(size) + ", " + std::to_string(size) + "] (" +
                                 kStemLayerNames[k] + ")";
    check_shape(op, weight_name.c_str(), weights[k], {out, in, size, size}, expected.c_str());
    check_dtype(op, weight_name.c_str(), weights[k], at::kFloat);
    check_same_device(op, weight_name.c_str(), weights[k], "images", images);
    const std::string bias_expected = "[" + std::to_string(out) + "]";
    check_shape(op, bias_name.c_str(), biases[k], {out}, bias_expected.c_str());
    check_dtype(op, bias_name.c_str(), biases[k], at::kFloat);
    check_same_device(op, bias_name.c_str(), biases[k], "images", images);
  }
  TORCH_CHECK(mean.size() == 3, op, "(): mean must have 3 values (one per channel), got ",
              mean.size());
  for (double m : mean) TORCH_CHECK(std::isfinite(m), op, "(): mean must be finite, got ", m);
  TORCH_CHECK(std::isfinite(negative_slope), op, "(): negative_slope must be finite, got ",
              negative_slope);
}

}  // namespace retinaface
