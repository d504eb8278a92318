// hard_negative_mask on the CPU: biubug6's hard negative mining as a selection.
//
// Per image: zero the loss on positives, k = min(neg_pos_ratio * num_pos, P - 1),
// and mark the k priors with the largest loss (ties: lower index; NaN largest).
// The selection itself lives in hard_negative_mask.h, shared with multibox_loss.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/hard_negative_mask.h"
#include "common/hard_negative_mask_checks.h"

namespace retinaface {
namespace {

template <typename scalar_t>
void hard_negative_mask_kernel(const at::Tensor& conf_loss, const at::Tensor& positive,
                               int64_t neg_pos_ratio, at::Tensor& mask) {
  // float32, float16 and bfloat16 losses convert to float exactly (order and
  // ties preserved); float64 keeps its precision.
  using Loss = at::opmath_type<scalar_t>;
  const int64_t batch = conf_loss.size(0), num_priors = conf_loss.size(1);
  const scalar_t* loss_ptr = conf_loss.data_ptr<scalar_t>();
  const bool* pos_ptr = positive.data_ptr<bool>();
  bool* out_ptr = mask.data_ptr<bool>();

  at::parallel_for(0, batch, images_per_task(num_priors), [&](int64_t begin, int64_t end) {
    TopKSelector<Loss> selector;
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* loss = loss_ptr + b * num_priors;
      const bool* pos = pos_ptr + b * num_priors;
      bool* out = out_ptr + b * num_priors;
      int64_t num_pos = 0;
      selector.begin(num_priors);
      for (int64_t i = 0; i < num_priors; ++i) {
        num_pos += pos[i];
        selector.add(i, selection_key(pos[i] ? Loss(0) : static_cast<Loss>(loss[i])));
        out[i] = false;
      }
      const int64_t k = num_hard_negatives(num_pos, neg_pos_ratio, num_priors);
      selector.select(k, [&](int64_t i) { out[i] = true; });
    }
  });
}

at::Tensor hard_negative_mask_cpu(const at::Tensor& conf_loss, const at::Tensor& positive,
                                  int64_t neg_pos_ratio) {
  check_hard_negative_mask_args(conf_loss, positive, neg_pos_ratio);

  const auto loss = conf_loss.contiguous();
  const auto pos = positive.contiguous();
  auto mask = at::empty(conf_loss.sizes(), pos.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, loss.scalar_type(),
                                  "hard_negative_mask_cpu", [&] {
                                    hard_negative_mask_kernel<scalar_t>(loss, pos, neg_pos_ratio,
                                                                        mask);
                                  });
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("hard_negative_mask", &hard_negative_mask_cpu);
}

}  // namespace retinaface
