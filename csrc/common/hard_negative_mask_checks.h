// Argument checks of hard_negative_mask, shared by the CPU and CUDA
// registrations so both reject the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

#include "common/checks.h"

namespace retinaface {

inline void check_hard_negative_mask_args(const at::Tensor& conf_loss, const at::Tensor& positive,
                                          int64_t neg_pos_ratio) {
  check_shape("hard_negative_mask", "conf_loss", conf_loss, {-1, -1}, "[B, P]");
  check_floating("hard_negative_mask", "conf_loss", conf_loss);
  TORCH_CHECK(positive.sizes() == conf_loss.sizes(),
              "hard_negative_mask(): positive must have the shape of conf_loss (",
              shape_str(conf_loss), "), got ", shape_str(positive));
  check_dtype("hard_negative_mask", "positive", positive, at::kBool);
  check_same_device("hard_negative_mask", "positive", positive, "conf_loss", conf_loss);
  TORCH_CHECK(neg_pos_ratio >= 0, "hard_negative_mask(): neg_pos_ratio must be >= 0, got ",
              neg_pos_ratio);
}

}  // namespace retinaface
