// Argument checks of multibox_loss and multibox_loss_backward, shared by the
// CPU and CUDA registrations so both reject the same inputs with the same
// messages. Only checks that need no device data live here: the CPU also
// checks the values of gt_counts and prior_assignment, which a CUDA kernel
// could only do with a host sync.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/checks.h"

namespace retinaface {

inline std::string dims_str(std::initializer_list<int64_t> dims, const char* last) {
  std::string s = "[";
  for (int64_t d : dims) s += std::to_string(d) + ", ";
  return s + last + "]";
}

// Shape, dtype and device checks shared by the forward and the backward.
// Sizes are taken from loc ([B, P, 4]) and gt_boxes ([B, G, 4]), so messages
// give the numbers, e.g. "conf must have shape [2, 16800, C], got [2, 100, 2]".
inline void check_predictions_and_targets(const char* op, const at::Tensor& loc, const at::Tensor& conf,
                                   const at::Tensor& landms, const at::Tensor& priors,
                                   const at::Tensor& gt_boxes, const at::Tensor& gt_landms,
                                   const at::Tensor& gt_labels) {
  check_shape(op, "loc", loc, {-1, -1, 4}, "[B, P, 4]");
  const int64_t batch = loc.size(0), num_priors = loc.size(1);
  check_shape(op, "conf", conf, {batch, num_priors, -1},
              dims_str({batch, num_priors}, "C").c_str());
  TORCH_CHECK(conf.size(2) >= 2, op, "(): conf must have at least 2 classes (background, face), got ",
              shape_str(conf));
  check_shape(op, "landms", landms, {batch, num_priors, 10},
              dims_str({batch, num_priors}, "10").c_str());
  check_shape(op, "priors", priors, {num_priors, 4}, dims_str({num_priors}, "4").c_str());
  check_shape(op, "gt_boxes", gt_boxes, {batch, -1, 4}, dims_str({batch}, "G, 4").c_str());
  const int64_t max_gt = gt_boxes.size(1);
  check_shape(op, "gt_landms", gt_landms, {batch, max_gt, 10},
              dims_str({batch, max_gt}, "10").c_str());
  check_shape(op, "gt_labels", gt_labels, {batch, max_gt}, dims_str({batch}, std::to_string(max_gt).c_str()).c_str());

  check_floating(op, "loc", loc);
  check_dtype(op, "conf", conf, loc.scalar_type());
  check_dtype(op, "landms", landms, loc.scalar_type());
  check_floating(op, "priors", priors);
  check_floating(op, "gt_boxes", gt_boxes);
  check_floating(op, "gt_landms", gt_landms);
  TORCH_CHECK(at::isFloatingType(gt_labels.scalar_type()) ||
                  at::isIntegralType(gt_labels.scalar_type(), /*includeBool=*/false),
              op, "(): gt_labels must be a floating or integer tensor, got ",
              gt_labels.scalar_type());

  check_same_device(op, "conf", conf, "loc", loc);
  check_same_device(op, "landms", landms, "loc", loc);
  check_same_device(op, "priors", priors, "loc", loc);
  check_same_device(op, "gt_boxes", gt_boxes, "loc", loc);
  check_same_device(op, "gt_landms", gt_landms, "loc", loc);
  check_same_device(op, "gt_labels", gt_labels, "loc", loc);
}

// Everything multibox_loss checks before it runs.
inline void check_multibox_loss_args(const at::Tensor& loc, const at::Tensor& conf,
                                     const at::Tensor& landms, const at::Tensor& priors,
                                     const at::Tensor& gt_boxes, const at::Tensor& gt_landms,
                                     const at::Tensor& gt_labels, const at::Tensor& gt_counts,
                                     double threshold, double min_best_iou, int64_t neg_pos_ratio,
                                     at::ArrayRef<double> variances) {
  const char* op = "multibox_loss";
  check_predictions_and_targets(op, loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels);
  check_shape(op, "gt_counts", gt_counts, {loc.size(0)},
              dims_str({}, std::to_string(loc.size(0)).c_str()).c_str());
  check_integral(op, "gt_counts", gt_counts);
  check_same_device(op, "gt_counts", gt_counts, "loc", loc);
  check_unit_interval(op, "threshold", threshold);
  check_unit_interval(op, "min_best_iou", min_best_iou);
  TORCH_CHECK(neg_pos_ratio >= 0, op, "(): neg_pos_ratio must be >= 0, got ", neg_pos_ratio);
  check_variances(op, variances);
}

// The incoming gradient of one of the 0-dim losses.
inline void check_loss_grad(const char* name, const at::Tensor& grad, const at::Tensor& loc) {
  TORCH_CHECK(grad.numel() == 1, "multibox_loss_backward(): ", name,
              " must have one element (the gradient of a 0-dim loss), got shape ",
              shape_str(grad));
  check_floating("multibox_loss_backward", name, grad);
  check_same_device("multibox_loss_backward", name, grad, "loc", loc);
}

// Everything multibox_loss_backward checks before it runs.
inline void check_multibox_loss_backward_args(
    const at::Tensor& grad_loss_l, const at::Tensor& grad_loss_c,
    const at::Tensor& grad_loss_landm, const at::Tensor& loc, const at::Tensor& conf,
    const at::Tensor& landms, const at::Tensor& priors, const at::Tensor& gt_boxes,
    const at::Tensor& gt_landms, const at::Tensor& gt_labels, const at::Tensor& prior_assignment,
    at::ArrayRef<double> variances) {
  const char* op = "multibox_loss_backward";
  check_predictions_and_targets(op, loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels);
  check_shape(op, "prior_assignment", prior_assignment, {loc.size(0), loc.size(1)},
              dims_str({loc.size(0)}, std::to_string(loc.size(1)).c_str()).c_str());
  check_dtype(op, "prior_assignment", prior_assignment, at::kLong);
  check_same_device(op, "prior_assignment", prior_assignment, "loc", loc);
  check_variances(op, variances);
  check_loss_grad("grad_loss_l", grad_loss_l, loc);
  check_loss_grad("grad_loss_c", grad_loss_c, loc);
  check_loss_grad("grad_loss_landm", grad_loss_landm, loc);
}

}  // namespace retinaface
