// Every schema of the retinaface op library, in one place.
//
// Kernels live elsewhere: csrc/cpu/<op>.cpp registers the CPU key and
// csrc/cuda/<op>.cpp the CUDA key. Fake (meta) implementations, autograd
// formulas and the Python API are in retinaface_ext/ops/<op>.py.
#include <torch/library.h>

TORCH_LIBRARY(retinaface, m) {
  // Priors (cx, cy, w, h), normalised, float32, for an image of height x width,
  // on `device` (default: CPU). min_sizes is flattened; sizes_per_level[k] of
  // them belong to steps[k].
  m.def(
      "prior_box(int height, int width, int[] min_sizes, int[] sizes_per_level, "
      "int[] steps, bool clip, Device? device=None) -> Tensor");

  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");

  // Assigned ground-truth index per prior, [B, P] int64, -1 = background.
  m.def(
      "match(Tensor gt_boxes, Tensor gt_counts, Tensor priors, float threshold, "
      "float min_best_iou) -> Tensor");

  m.def("encode(Tensor boxes, Tensor priors, float[] variances) -> Tensor");
  m.def("decode(Tensor loc, Tensor priors, float[] variances) -> Tensor");
  m.def("encode_landmarks(Tensor landmarks, Tensor priors, float[] variances) -> Tensor");
  m.def("decode_landmarks(Tensor landmarks, Tensor priors, float[] variances) -> Tensor");

  m.def("hard_negative_mask(Tensor conf_loss, Tensor positive, int neg_pos_ratio) -> Tensor");

  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");

  // -> (detections [B, K, 15], counts [B] int64), K = max_detections.
  m.def(
      "detect_postprocess(Tensor loc, Tensor conf, Tensor landms, Tensor priors, "
      "float score_threshold, float nms_threshold, int pre_nms_top_k, "
      "int max_detections, float[] variances) -> (Tensor, Tensor)");

  // MobileNetV1-0.25's first four layers (stage1[:4]) on BGR uint8 images
  // [B, H, W, 3], mean subtracted, BatchNorm folded into the 7 conv weights
  // and biases, LeakyReLU(negative_slope) after each -> float32
  // [B, 32, ceil(H / 4), ceil(W / 4)].
  m.def(
      "mobilenet_stem(Tensor images, Tensor[] weights, Tensor[] biases, float[] mean, "
      "float negative_slope) -> Tensor");

  // -> (loss_l, loss_c, loss_landm, prior_assignment). prior_assignment [B, P]
  // int64 is what the backward needs: >= 0 the ground truth a positive prior
  // is matched to, -1 an unused prior, -2 a mined hard negative.
  m.def(
      "multibox_loss(Tensor loc, Tensor conf, Tensor landms, Tensor priors, "
      "Tensor gt_boxes, Tensor gt_landms, Tensor gt_labels, Tensor gt_counts, "
      "float threshold, float min_best_iou, int neg_pos_ratio, float[] variances) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "multibox_loss_backward(Tensor grad_loss_l, Tensor grad_loss_c, "
      "Tensor grad_loss_landm, Tensor loc, Tensor conf, Tensor landms, "
      "Tensor priors, Tensor gt_boxes, Tensor gt_landms, Tensor gt_labels, "
      "Tensor prior_assignment, float[] variances) -> (Tensor, Tensor, Tensor)");

  // Combined-margin softmax cross-entropy (ArcFace / CosFace / SphereFace) on
  // cosine logits [N, C] whose columns are the classes [class_offset,
  // class_offset + C) of num_classes. -> per row (loss, max, sum-exp, target
  // logit) of the scaled, margined logits, [N] each. exact_gradient is read
  // by the autograd formula only.
  m.def(
      "margin_cross_entropy(Tensor cos_logits, Tensor labels, float s, float m1, float m2, "
      "float m3, int class_offset, int num_classes, bool exact_gradient) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // d cos_logits [N, C] from the per-row gradients of (loss, sum-exp, target
  // logit) and the saved per-row max and sum-exp.
  m.def(
      "margin_cross_entropy_backward(Tensor grad_loss, Tensor grad_sumexp, Tensor grad_target, "
      "Tensor cos_logits, Tensor labels, Tensor row_max, Tensor row_sumexp, float s, float m1, "
      "float m2, float m3, int class_offset, bool exact_gradient) -> Tensor");

  // Focal loss (RetinaNet). Losses in float32 (float64 for float64 inputs);
  // reduction is 'none', 'sum' or 'mean'; normalizer (one element, optional)
  // divides the result of 'none' / 'sum'. Integer sigmoid targets are class
  // labels of [..., C] inputs (background_index: all-zero row). Rows whose
  // label is ignore_index contribute nothing.
  m.def(
      "sigmoid_focal_loss(Tensor inputs, Tensor targets, float alpha, float gamma, "
      "str reduction, Tensor? normalizer, int background_index, int ignore_index) -> Tensor");
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad, Tensor inputs, Tensor targets, float alpha, "
      "float gamma, str reduction, Tensor? normalizer, int background_index, "
      "int ignore_index) -> Tensor");
  m.def(
      "softmax_focal_loss(Tensor logits, Tensor labels, float alpha, float gamma, "
      "str reduction, Tensor? normalizer, int ignore_index) -> Tensor");
  // biubug6's training augmentation (preproc) of uint8 images [B, H, W, 3] in
  // one pass, from the parameters it draws: params float64 [B, 12] (crop or
  // pad region, mirror, interpolation, photometric values; columns in
  // csrc/common/train_augment_math.h). -> uint8 [B, size, size, 3] (dtype
  // None / uint8) or [B, 3, size, size] float32 / float16 / bfloat16 minus mean.
  m.def(
      "train_augment(Tensor images, Tensor params, int size, float[] mean, "
      "ScalarType? dtype=None) -> Tensor");
  m.def(
      "softmax_focal_loss_backward(Tensor grad, Tensor logits, Tensor labels, float alpha, "
      "float gamma, str reduction, Tensor? normalizer, int ignore_index) -> Tensor");

  // Face alignment: images [B, H, W, C] (uint8 or floating), landmarks [N, 5, 2]
  // in pixels, image_index [N], face_template [5, 2] in crop pixels ->
  // (crops [N, size, size, C] in the images' dtype, transforms [N, 2, 3]
  // float64 image -> crop, NaN where undefined). Not differentiable.
  m.def(
      "align_faces(Tensor images, Tensor landmarks, Tensor image_index, int size, "
      "Tensor face_template) -> (Tensor, Tensor)");
}
