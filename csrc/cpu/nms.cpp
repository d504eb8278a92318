// nms and batched_nms on the CPU, torchvision semantics (see nms.h and
// retinaface_ext/ops/nms.py). Boxes are computed in float32 (float32, float16,
// bfloat16 inputs) or float64; the threshold is rounded to that type.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "common/box_math.h"
#include "common/checks.h"
#include "cpu/nms.h"
#include "common/nms_checks.h"

namespace retinaface {
namespace {

// Below this many boxes batched_nms runs its classes on one thread: the
// parallel region would cost more than it saves.
constexpr int64_t kParallelMinBoxes = 4096;

// The first non-finite element, row by row, is an error (see check_finite_value).
template <typename T>
void check_finite_rows(const char* op, const char* name, const T* data, int64_t rows,
                       int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t k = 0; k < cols; ++k) {
      const T value = data[i * cols + k];
      if (!std::isfinite(value)) check_finite_value(op, name, static_cast<double>(value), i);
    }
  }
}

std::vector<ScoredIndex<double>> sorted_by_score(const double* scores, int64_t n) {
  std::vector<ScoredIndex<double>> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = {scores[i], i};
  std::sort(order.begin(), order.end(), ranks_before<double>);
  return order;
}

at::Tensor to_index_tensor(const std::vector<int64_t>& values) {
  auto out = at::empty({static_cast<int64_t>(values.size())}, at::kLong);
  std::copy(values.begin(), values.end(), out.data_ptr<int64_t>());
  return out;
}

// Boxes in the compute type (contiguous, checked finite) and scores as
// float64, which holds every input score exactly, so ties are ties.
template <typename T>
std::pair<at::Tensor, at::Tensor> prepare(const char* op, const at::Tensor& boxes,
                                          const at::Tensor& scores) {
  auto b = boxes.to(c10::CppTypeToScalarType<T>::value).contiguous();
  auto s = scores.to(at::kDouble).contiguous();
  check_finite_rows(op, "boxes", b.template data_ptr<T>(), b.size(0), 4);
  check_finite_rows(op, "scores", s.data_ptr<double>(), s.size(0), 1);
  return {b, s};
}

template <typename T>
at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  const auto [b, s] = prepare<T>("nms", boxes, scores);
  const int64_t n = b.size(0);
  const auto* box = reinterpret_cast<const BoxT<T>*>(b.template data_ptr<T>());

  NmsCandidates<T> candidates;
  candidates.reserve(n);
  for (const auto& entry : sorted_by_score(s.template data_ptr<double>(), n)) {
    candidates.push_back(box[entry.index], entry.index);
  }
  std::vector<int64_t> kept;
  greedy_nms(candidates, static_cast<T>(iou_threshold), -1, kept);
  return to_index_tensor(kept);
}

// Per class NMS without cross-class work: one sort by (class, score rank)
// makes every class a contiguous run in score order, each run goes through
// greedy_nms on its own (classes in parallel), and the kept boxes of all
// classes are merged back into descending score order.
template <typename T>
at::Tensor batched_nms_impl(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  const auto [b, s] = prepare<T>("batched_nms", boxes, scores);
  const auto classes = idxs.to(at::kLong).contiguous();
  const int64_t n = b.size(0);
  const auto* box = reinterpret_cast<const BoxT<T>*>(b.template data_ptr<T>());
  const double* score = s.template data_ptr<double>();
  const int64_t* cls = classes.data_ptr<int64_t>();

  struct Entry {
    int64_t cls;
    ScoredIndex<double> rank;
  };
  std::vector<Entry> by_class(n);
  for (int64_t i = 0; i < n; ++i) by_class[i] = {cls[i], {score[i], i}};
  std::sort(by_class.begin(), by_class.end(), [](const Entry& x, const Entry& y) {
    return x.cls < y.cls || (x.cls == y.cls && ranks_before(x.rank, y.rank));
  });
  std::vector<int64_t> group_start;
  for (int64_t i = 0; i < n; ++i) {
    if (i == 0 || by_class[i].cls != by_class[i - 1].cls) group_start.push_back(i);
  }
  const int64_t num_groups = static_cast<int64_t>(group_start.size());
  group_start.push_back(n);

  std::vector<uint8_t> is_kept(n, 0);
  const T threshold = static_cast<T>(iou_threshold);
  const int64_t grain = n < kParallelMinBoxes ? std::max<int64_t>(num_groups, 1) : 1;
  at::parallel_for(0, num_groups, grain, [&](int64_t first, int64_t last) {
    NmsCandidates<T> candidates;
    std::vector<int64_t> kept;
    for (int64_t g = first; g < last; ++g) {
      candidates.clear();
      kept.clear();
      for (int64_t i = group_start[g]; i < group_start[g + 1]; ++i) {
        const int64_t index = by_class[i].rank.index;
        candidates.push_back(box[index], index);
      }
      greedy_nms(candidates, threshold, -1, kept);
      for (int64_t index : kept) is_kept[index] = 1;  // each index is in one class: no race
    }
  });

  std::vector<ScoredIndex<double>> kept;
  for (int64_t i = 0; i < n; ++i) {
    if (is_kept[i]) kept.push_back({score[i], i});
  }
  std::sort(kept.begin(), kept.end(), ranks_before<double>);
  std::vector<int64_t> result(kept.size());
  for (size_t k = 0; k < kept.size(); ++k) result[k] = kept[k].index;
  return to_index_tensor(result);
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_and_scores("nms", boxes, scores, iou_threshold);
  return boxes.scalar_type() == at::kDouble ? nms_impl<double>(boxes, scores, iou_threshold)
                                            : nms_impl<float>(boxes, scores, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  check_boxes_and_scores("batched_nms", boxes, scores, iou_threshold);
  check_batched_nms_idxs(boxes, idxs);
  return boxes.scalar_type() == at::kDouble
             ? batched_nms_impl<double>(boxes, scores, idxs, iou_threshold)
             : batched_nms_impl<float>(boxes, scores, idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace retinaface
