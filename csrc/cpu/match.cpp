// match on the CPU: biubug6's matching for a padded batch of ground truth.
// BRUTE FORCE (G x P IoUs per image) - to be replaced by the grid-window version.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/box_math.h"
#include "common/checks.h"

namespace retinaface {
namespace {

at::Tensor match_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                     const at::Tensor& priors, double threshold, double min_best_iou) {
  check_shape("match", "gt_boxes", gt_boxes, {-1, -1, 4}, "[B, G, 4]");
  check_shape("match", "gt_counts", gt_counts, {gt_boxes.size(0)}, "[B]");
  check_shape("match", "priors", priors, {-1, 4}, "[P, 4]");
  check_floating("match", "gt_boxes", gt_boxes);
  check_floating("match", "priors", priors);
  check_same_device("match", "gt_counts", gt_counts, "gt_boxes", gt_boxes);
  check_same_device("match", "priors", priors, "gt_boxes", gt_boxes);

  const auto gt = gt_boxes.to(at::kFloat).contiguous();
  const auto counts = gt_counts.to(at::kLong).contiguous();
  const auto pr = priors.to(at::kFloat).contiguous();
  const int64_t batch = gt.size(0), max_gt = gt.size(1), num_priors = pr.size(0);
  const int64_t* count_ptr = counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(count_ptr[b] >= 0 && count_ptr[b] <= max_gt, "match(): gt_counts[", b,
                "] must be in [0, ", max_gt, "] (the padded G of gt_boxes), got ", count_ptr[b]);
  }
  auto assigned = at::full({batch, num_priors}, -1, counts.options());

  std::vector<Box> prior_boxes(num_priors);
  std::vector<float> prior_areas(num_priors);
  const float* p = pr.data_ptr<float>();
  for (int64_t i = 0; i < num_priors; ++i) {
    prior_boxes[i] = prior_corners(p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]);
    prior_areas[i] = box_area(prior_boxes[i]);
  }

  const Box* gt_ptr = reinterpret_cast<const Box*>(gt.data_ptr<float>());
  int64_t* out = assigned.data_ptr<int64_t>();
  const float thr = static_cast<float>(threshold), min_best = static_cast<float>(min_best_iou);

  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> overlap(num_priors);
    std::vector<int64_t> best_truth(num_priors);
    for (int64_t b = begin; b < end; ++b) {
      const Box* boxes = gt_ptr + b * max_gt;
      const int64_t g = count_ptr[b];
      std::fill(overlap.begin(), overlap.end(), 0.0f);
      std::fill(best_truth.begin(), best_truth.end(), 0);
      std::vector<int64_t> best_prior(g, -1);
      std::vector<float> best_prior_iou(g, 0.0f);
      for (int64_t j = 0; j < g; ++j) {
        if (!is_valid_box(boxes[j])) continue;
        const float area = box_area(boxes[j]);
        int64_t arg = 0;
        float best = -1.0f;
        for (int64_t i = 0; i < num_priors; ++i) {
          const float iou = box_iou(boxes[j], prior_boxes[i], area, prior_areas[i]);
          if (iou > best) best = iou, arg = i;
          if (iou > overlap[i]) overlap[i] = iou, best_truth[i] = j;
        }
        best_prior[j] = arg;
        best_prior_iou[j] = best;
      }
      bool any_valid = false;
      for (int64_t j = 0; j < g; ++j) {
        if (best_prior[j] >= 0 && best_prior_iou[j] >= min_best) {
          overlap[best_prior[j]] = 2.0f;
          any_valid = true;
        }
      }
      if (!any_valid) continue;
      for (int64_t j = 0; j < g; ++j) {
        if (best_prior[j] >= 0) best_truth[best_prior[j]] = j;
      }
      int64_t* row = out + b * num_priors;
      for (int64_t i = 0; i < num_priors; ++i) {
        row[i] = overlap[i] < thr ? -1 : best_truth[i];
      }
    }
  });
  return assigned;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("match", &match_cpu);
}

}  // namespace retinaface
