// Argument checks of align_faces, shared by the CPU kernel (csrc/cpu/align_faces.cpp)
// and the CUDA registration (csrc/cuda/align_faces.cpp) so both raise the same
// errors. retinaface_ext/ops/align_faces.py repeats them for the fake and the
// reference fallback.
#pragma once

#include "common/checks.h"

namespace retinaface {

inline void check_align_faces_args(const at::Tensor& images, const at::Tensor& landmarks,
                                   const at::Tensor& image_index, int64_t size,
                                   const at::Tensor& face_template) {
  constexpr const char* op = "align_faces";
  check_shape(op, "images", images, {-1, -1, -1, -1}, "[B, H, W, C]");
  TORCH_CHECK(images.scalar_type() == at::kByte || images.scalar_type() == at::kFloat ||
                  images.scalar_type() == at::kDouble || images.scalar_type() == at::kHalf ||
                  images.scalar_type() == at::kBFloat16,
              op, "(): images must be uint8 or floating (float32, float64, float16 or bfloat16), got ",
              images.scalar_type());
  check_shape(op, "landmarks", landmarks, {-1, 5, 2}, "[N, 5, 2]");
  check_floating(op, "landmarks", landmarks);
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == landmarks.size(0), op,
              "(): image_index must have shape [N] with N = landmarks.size(0) = ", landmarks.size(0),
              ", got ", shape_str(image_index));
  check_integral(op, "image_index", image_index);
  check_shape(op, "template", face_template, {5, 2}, "[5, 2]");
  check_floating(op, "template", face_template);
  TORCH_CHECK(size > 0, op, "(): size must be positive, got ", size);
  check_same_device(op, "landmarks", landmarks, "images", images);
  check_same_device(op, "image_index", image_index, "images", images);
  check_same_device(op, "template", face_template, "images", images);
}

}  // namespace retinaface
