// Argument checks of box_iou, shared by the CPU kernel (csrc/cpu/box_iou.cpp)
// and the CUDA registration (csrc/cuda/box_iou.cpp) so both raise the same errors.
#pragma once

#include "common/checks.h"

namespace retinaface {

inline void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_shape("box_iou", "boxes1", boxes1, {-1, 4}, "[N, 4]");
  check_shape("box_iou", "boxes2", boxes2, {-1, 4}, "[M, 4]");
  check_floating("box_iou", "boxes1", boxes1);
  check_floating("box_iou", "boxes2", boxes2);
  check_same_device("box_iou", "boxes2", boxes2, "boxes1", boxes1);
}

}  // namespace retinaface
