// box_iou on the CPU: [N, 4] x [M, 4] xyxy -> [N, M], computed in float32.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/box_iou_checks.h"
#include "common/box_math.h"

namespace retinaface {
namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_args(boxes1, boxes2);

  const auto a = boxes1.to(at::kFloat).contiguous();
  const auto b = boxes2.to(at::kFloat).contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  auto iou = at::empty({n, m}, a.options());
  const Box* pa = reinterpret_cast<const Box*>(a.data_ptr<float>());
  const Box* pb = reinterpret_cast<const Box*>(b.data_ptr<float>());
  float* out = iou.data_ptr<float>();
  std::vector<float> areas_b(m);
  for (int64_t j = 0; j < m; ++j) areas_b[j] = box_area(pb[j]);

  at::parallel_for(0, n, std::max<int64_t>(1, 4096 / std::max<int64_t>(m, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = begin; i < end; ++i) {
                       const float area_a = box_area(pa[i]);
                       for (int64_t j = 0; j < m; ++j) {
                         out[i * m + j] = box_iou(pa[i], pb[j], area_a, areas_b[j]);
                       }
                     }
                   });
  return iou.to(boxes1.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
}

}  // namespace retinaface
