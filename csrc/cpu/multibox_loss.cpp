// multibox_loss on the CPU: biubug6's MultiBoxLoss fused into one forward and
// one backward kernel.
//
// Forward:
//   1. matching is retinaface::match, called through the dispatcher (so a new
//      match kernel is picked up without touching this file);
//   2. per image (images handed out to the threads on demand), one pass over
//      the priors: the positives' box/landmark targets encoded on the fly
//      with their smooth L1 and cross-entropy terms (no [B, P, 4] target
//      tensors), and every prior's mining rank handed to the radix select
//      (hard_negative_mask.h). With two classes the rank is the logit
//      difference (see TwoClassMining), so the softplus is computed for the
//      selected hard negatives only; with more classes it is the mining loss
//      logsumexp(conf) - conf[0], precomputed by ATen's vectorised kernels;
//   3. the hard negatives selected, their cross-entropy added.
// Per-image partial sums (double) are reduced in image order, so the result
// does not depend on the number of threads. The returned prior_assignment
// (>= 0 the GT of a positive, -1 unused, -2 hard negative) is all the
// backward needs to recompute the targets of the priors it touches.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/box_math.h"
#include "common/match_checks.h"
#include "cpu/hard_negative_mask.h"
#include "cpu/parallel.h"
#include "cpu/stream_zero.h"
#include "common/multibox_loss_checks.h"
#include "common/two_class_softmax.h"

namespace retinaface {
namespace {

constexpr int64_t kUnusedPrior = -1;
constexpr int64_t kHardNegative = -2;
// Target class of a positive prior: biubug6 sets conf_t[pos] = 1 whatever the
// label (1 with landmarks, -1 without).
constexpr int64_t kFaceClass = 1;

// Priors and ground truth in the compute type T, contiguous.
template <typename T>
struct Targets {
  at::Tensor priors, boxes, landms, labels;
  Targets(const at::Tensor& p, const at::Tensor& b, const at::Tensor& l, const at::Tensor& lab) {
    const auto type = c10::CppTypeToScalarType<T>::value;
    priors = p.to(type).contiguous();
    boxes = b.to(type).contiguous();
    landms = l.to(type).contiguous();
    labels = lab.to(type).contiguous();
  }
  const T* prior(int64_t i) const { return priors.data_ptr<T>() + 4 * i; }
};

using MatchSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                  double);

at::Tensor match_through_dispatcher(const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                                    const at::Tensor& priors, double threshold,
                                    double min_best_iou) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("retinaface::match", "")
                             .typed<MatchSignature>();
  return op.call(gt_boxes, gt_counts, priors, threshold, min_best_iou);
}

// logsumexp over the classes of one prior, max-shifted like torch.logsumexp.
template <typename T, typename scalar_t>
T log_sum_exp(const scalar_t* x, int64_t num_classes) {
  if (num_classes == 2) {
    // RetinaFace's case: one exp and one log1p instead of two exps and a log.
    const T a = static_cast<T>(x[0]), b = static_cast<T>(x[1]);
    return nan_max(a, b) + std::log1p(rf_exp(-rf_abs(a - b)));
  }
  T m = static_cast<T>(x[0]);
  for (int64_t c = 1; c < num_classes; ++c) m = nan_max(m, static_cast<T>(x[c]));
  T sum = 0;
  for (int64_t c = 0; c < num_classes; ++c) sum += rf_exp(static_cast<T>(x[c]) - m);
  return m + rf_log(sum);
}

// Per-image sums of the forward, reduced in image order afterwards.
struct ImageLoss {
  double loc = 0, conf = 0, landm = 0;
  int64_t num_pos = 0, num_landm = 0;
};

// How the forward ranks the background priors for hard negative mining.
// Their mining loss is logsumexp(conf) - conf[0], the cross-entropy of a
// prior if it is background, and positives rank as a loss of 0.
//
// Two classes (RetinaFace): the loss is softplus(conf[1] - conf[0]), an
// increasing function of the logit difference, so the priors are ranked by
// the difference itself (the exact order of the loss, not of a rounded
// softplus) and the softplus is computed only for the k priors selected.
template <typename scalar_t>
struct TwoClassMining {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* conf;  // [B * P, 2]
  static constexpr T kPositiveRank = -std::numeric_limits<T>::infinity();  // softplus = 0
  T rank(int64_t row) const {
    return static_cast<T>(conf[2 * row + 1]) - static_cast<T>(conf[2 * row]);
  }
  T loss(int64_t row) const {
    const T d = rank(row);
    return std::max(d, T(0)) + std::log1p(rf_exp(-rf_abs(d)));
  }
};

// More classes: the mining loss of every prior, precomputed with ATen's
// vectorised logsumexp.
template <typename T>
struct PrecomputedMining {
  const T* mining_loss;  // [B * P]
  static constexpr T kPositiveRank = T(0);
  T rank(int64_t row) const { return mining_loss[row]; }
  T loss(int64_t row) const { return mining_loss[row]; }
};

at::Tensor background_loss(const at::Tensor& conf, at::ScalarType compute_type) {
  const auto x = conf.to(compute_type);
  return (at::logsumexp(x, {2}) - x.select(2, 0)).contiguous();
}

template <typename scalar_t, typename Mining>
void multibox_loss_forward_kernel(const at::Tensor& loc, const at::Tensor& conf,
                                  const at::Tensor& landms, const Targets<at::opmath_type<scalar_t>>& gt,
                                  int64_t neg_pos_ratio, at::ArrayRef<double> variances,
                                  const Mining& mining, at::Tensor& assignment,
                                  std::vector<ImageLoss>& image_losses) {
  using T = at::opmath_type<scalar_t>;
  const int64_t batch = loc.size(0), num_priors = loc.size(1), num_classes = conf.size(2);
  const int64_t max_gt = gt.boxes.size(1);
  const T var0 = static_cast<T>(variances[0]), var1 = static_cast<T>(variances[1]);
  const scalar_t* loc_ptr = loc.data_ptr<scalar_t>();
  const scalar_t* conf_ptr = conf.data_ptr<scalar_t>();
  const scalar_t* landm_ptr = landms.data_ptr<scalar_t>();
  const auto* box_ptr = reinterpret_cast<const BoxT<T>*>(gt.boxes.template data_ptr<T>());
  const T* gt_landm_ptr = gt.landms.template data_ptr<T>();
  const T* label_ptr = gt.labels.template data_ptr<T>();
  int64_t* assign_ptr = assignment.data_ptr<int64_t>();

  // biubug6 zeroes the mining loss of positives before ranking.
  const auto positive_key = selection_key(Mining::kPositiveRank);
  parallel_for_dynamic(batch, images_per_task(num_priors), [&](int64_t begin, int64_t end) {
    TopKSelector<T> selector;
    for (int64_t b = begin; b < end; ++b) {
      ImageLoss sums;
      int64_t* assign = assign_ptr + b * num_priors;
      // One pass over the priors: the positives' loss terms, and every
      // prior's selection key handed to the radix select.
      selector.begin(num_priors);
      for (int64_t i = 0; i < num_priors; ++i) {
        const int64_t g = assign[i];
        if (g < 0) {  // unmatched: a mining candidate with target class 0
          selector.add(i, selection_key(mining.rank(b * num_priors + i)));
          continue;
        }
        const T label = label_ptr[b * max_gt + g];
        if (!(label != T(0))) {
          // Matched to a label-0 box: background, like an unmatched prior.
          assign[i] = kUnusedPrior;
          selector.add(i, selection_key(mining.rank(b * num_priors + i)));
          continue;
        }
        selector.add(i, positive_key);
        const int64_t row = b * num_priors + i;
        ++sums.num_pos;
        const scalar_t* x = conf_ptr + row * num_classes;
        sums.conf += log_sum_exp<T>(x, num_classes) - static_cast<T>(x[kFaceClass]);

        const T* p = gt.prior(i);
        T target[10];
        encode_box(box_ptr[b * max_gt + g], p[0], p[1], p[2], p[3], var0, var1, target);
        const scalar_t* l = loc_ptr + row * 4;
        for (int d = 0; d < 4; ++d) sums.loc += smooth_l1(static_cast<T>(l[d]) - target[d]);

        if (label > T(0)) {  // -1 marks a face without landmarks
          ++sums.num_landm;
          encode_landmarks(gt_landm_ptr + (b * max_gt + g) * 10, p[0], p[1], p[2], p[3], var0,
                           target);
          const scalar_t* lm = landm_ptr + row * 10;
          for (int d = 0; d < 10; ++d) sums.landm += smooth_l1(static_cast<T>(lm[d]) - target[d]);
        }
      }
      const int64_t k = num_hard_negatives(sums.num_pos, neg_pos_ratio, num_priors);
      selector.select(k, [&](int64_t i) {
        // A positive can rank among the top k only when k is close to P; it
        // then stays a positive (biubug6 takes the union pos | neg).
        if (assign[i] < 0) {
          assign[i] = kHardNegative;
          sums.conf += mining.loss(b * num_priors + i);
        }
      });
      image_losses[b] = sums;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multibox_loss_cpu(
    const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& landms,
    const at::Tensor& priors, const at::Tensor& gt_boxes, const at::Tensor& gt_landms,
    const at::Tensor& gt_labels, const at::Tensor& gt_counts, double threshold,
    double min_best_iou, int64_t neg_pos_ratio, at::ArrayRef<double> variances) {
  const char* op = "multibox_loss";
  check_multibox_loss_args(loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, gt_counts,
                           threshold, min_best_iou, neg_pos_ratio, variances);

  // Matching checks the counts too, but its error would name match().
  const auto counts = checked_counts_cpu(op, gt_counts, gt_boxes.size(1));

  at::Tensor assignment =
      match_through_dispatcher(gt_boxes, counts, priors, threshold, min_best_iou).contiguous();
  const auto loc_c = loc.contiguous(), conf_c = conf.contiguous(), landms_c = landms.contiguous();
  const int64_t batch = loc.size(0);
  std::vector<ImageLoss> image_losses(batch);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, loc.scalar_type(), "multibox_loss_cpu",
                                  [&] {
                                    using T = at::opmath_type<scalar_t>;
                                    const Targets<T> gt(priors, gt_boxes, gt_landms, gt_labels);
                                    const auto run = [&](const auto& mining) {
                                      multibox_loss_forward_kernel<scalar_t>(
                                          loc_c, conf_c, landms_c, gt, neg_pos_ratio, variances,
                                          mining, assignment, image_losses);
                                    };
                                    if (conf_c.size(2) == 2) {
                                      run(TwoClassMining<scalar_t>{conf_c.data_ptr<scalar_t>()});
                                    } else {
                                      const auto loss = background_loss(
                                          conf_c, c10::CppTypeToScalarType<T>::value);
                                      run(PrecomputedMining<T>{loss.data_ptr<T>()});
                                    }
                                  });

  ImageLoss total;
  for (const ImageLoss& s : image_losses) {
    total.loc += s.loc;
    total.conf += s.conf;
    total.landm += s.landm;
    total.num_pos += s.num_pos;
    total.num_landm += s.num_landm;
  }
  const double num_pos = static_cast<double>(std::max<int64_t>(total.num_pos, 1));
  const double num_landm = static_cast<double>(std::max<int64_t>(total.num_landm, 1));
  const auto loss_options =
      loc.options().dtype(loc.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  return {at::scalar_tensor(total.loc / num_pos, loss_options),
          at::scalar_tensor(total.conf / num_pos, loss_options),
          at::scalar_tensor(total.landm / num_landm, loss_options), assignment};
}

// ---------------------------------------------------------------- backward

template <typename scalar_t>
void multibox_loss_backward_kernel(double grad_l, double grad_c, double grad_landm,
                                   const at::Tensor& loc, const at::Tensor& conf,
                                   const at::Tensor& landms,
                                   const Targets<at::opmath_type<scalar_t>>& gt,
                                   const at::Tensor& assignment, at::ArrayRef<double> variances,
                                   at::Tensor& d_loc, at::Tensor& d_conf, at::Tensor& d_landms) {
  using T = at::opmath_type<scalar_t>;
  const int64_t batch = loc.size(0), num_priors = loc.size(1), num_classes = conf.size(2);
  const int64_t max_gt = gt.boxes.size(1);
  const int64_t* assign = assignment.data_ptr<int64_t>();
  const T* label_ptr = gt.labels.template data_ptr<T>();

  // One scan of the assignment: N and N1 of the forward, recounted rather than
  // carried as extra outputs, and the priors that get a gradient (positives
  // and hard negatives, a few percent of them), so the second pass visits
  // only those.
  std::vector<std::array<int64_t, 2>> counts(batch);
  std::vector<std::vector<int64_t>> used_priors(batch);
  parallel_for_dynamic(batch, images_per_task(num_priors), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int64_t num_pos = 0, num_landm = 0;
      for (int64_t i = 0; i < num_priors; ++i) {
        const int64_t g = assign[b * num_priors + i];
        TORCH_CHECK(g >= kHardNegative && g < max_gt,
                    "multibox_loss_backward(): prior_assignment must hold -2, -1 or a ground "
                    "truth index below G = ", max_gt, ", got ", g);
        if (g == kUnusedPrior) continue;
        used_priors[b].push_back(i);
        if (g >= 0) {
          ++num_pos;
          num_landm += label_ptr[b * max_gt + g] > T(0);
        }
      }
      counts[b] = {num_pos, num_landm};
    }
  });
  int64_t total_pos = 0, total_landm = 0;
  for (const auto& c : counts) total_pos += c[0], total_landm += c[1];
  const T scale_l = static_cast<T>(grad_l / std::max<int64_t>(total_pos, 1));
  const T scale_c = static_cast<T>(grad_c / std::max<int64_t>(total_pos, 1));
  const T scale_landm = static_cast<T>(grad_landm / std::max<int64_t>(total_landm, 1));

  const T var0 = static_cast<T>(variances[0]), var1 = static_cast<T>(variances[1]);
  const scalar_t* loc_ptr = loc.data_ptr<scalar_t>();
  const scalar_t* conf_ptr = conf.data_ptr<scalar_t>();
  const scalar_t* landm_ptr = landms.data_ptr<scalar_t>();
  const auto* box_ptr = reinterpret_cast<const BoxT<T>*>(gt.boxes.template data_ptr<T>());
  const T* gt_landm_ptr = gt.landms.template data_ptr<T>();
  scalar_t* dl_ptr = d_loc.data_ptr<scalar_t>();
  scalar_t* dc_ptr = d_conf.data_ptr<scalar_t>();
  scalar_t* dlm_ptr = d_landms.data_ptr<scalar_t>();

  // Only the used priors have a non-zero gradient, each independently.
  const auto write_gradients = [&](int64_t b, int64_t i) {
    const int64_t row = b * num_priors + i;
    const int64_t g = assign[row];
    scalar_t* dl = dl_ptr + row * 4;
    scalar_t* dc = dc_ptr + row * num_classes;
    scalar_t* dlm = dlm_ptr + row * 10;
    // Cross-entropy: d/dx_c = softmax_c - [c == target], times grad_c / N.
    const scalar_t* x = conf_ptr + row * num_classes;
    const int64_t target = g >= 0 ? kFaceClass : 0;
    if (num_classes == 2) {
      // Softmax of two classes with one exp (common/two_class_softmax.h).
      const T x0 = static_cast<T>(x[0]), x1 = static_cast<T>(x[1]);
      T p0, p1;
      two_class_softmax(x0, x1, &p0, &p1);
      dc[0] = static_cast<scalar_t>((p0 - T(target == 0)) * scale_c);
      dc[1] = static_cast<scalar_t>((p1 - T(target == 1)) * scale_c);
    } else {
      const T lse = log_sum_exp<T>(x, num_classes);
      for (int64_t c = 0; c < num_classes; ++c) {
        const T softmax = rf_exp(static_cast<T>(x[c]) - lse);
        dc[c] = static_cast<scalar_t>((softmax - T(c == target)) * scale_c);
      }
    }
    if (g < 0) return;  // hard negative: confidence only
    const T* p = gt.prior(i);
    T target_offsets[10];
    encode_box(box_ptr[b * max_gt + g], p[0], p[1], p[2], p[3], var0, var1, target_offsets);
    const scalar_t* l = loc_ptr + row * 4;
    for (int d = 0; d < 4; ++d) {
      dl[d] = static_cast<scalar_t>(
          smooth_l1_grad(static_cast<T>(l[d]) - target_offsets[d]) * scale_l);
    }
    if (label_ptr[b * max_gt + g] > T(0)) {
      encode_landmarks(gt_landm_ptr + (b * max_gt + g) * 10, p[0], p[1], p[2], p[3], var0,
                       target_offsets);
      const scalar_t* lm = landm_ptr + row * 10;
      for (int d = 0; d < 10; ++d) {
        dlm[d] = static_cast<scalar_t>(
            smooth_l1_grad(static_cast<T>(lm[d]) - target_offsets[d]) * scale_landm);
      }
    }
  };
  // The dense gradients (34 MB at B = 32, P = 16800) are almost all zeros:
  // each image's rows are zeroed with streaming stores (stream_zero.h: half
  // the memory traffic of a memset, which dominated this backward), then its
  // used priors are written. All-zero bits are +0.0 in every floating dtype.
  parallel_for_dynamic(batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      stream_zero(dl_ptr + b * num_priors * 4, sizeof(scalar_t) * num_priors * 4);
      stream_zero(dc_ptr + b * num_priors * num_classes,
                  sizeof(scalar_t) * num_priors * num_classes);
      stream_zero(dlm_ptr + b * num_priors * 10, sizeof(scalar_t) * num_priors * 10);
      stream_fence();
      for (const int64_t i : used_priors[b]) write_gradients(b, i);
    }
  });
}

// The gradient of a 0-dim loss as a number (its shape and dtype are checked
// by check_multibox_loss_backward_args). The CPU may read it on the host.
double scalar_grad(const at::Tensor& grad) { return grad.item<double>(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> multibox_loss_backward_cpu(
    const at::Tensor& grad_loss_l, const at::Tensor& grad_loss_c,
    const at::Tensor& grad_loss_landm, const at::Tensor& loc, const at::Tensor& conf,
    const at::Tensor& landms, const at::Tensor& priors, const at::Tensor& gt_boxes,
    const at::Tensor& gt_landms, const at::Tensor& gt_labels, const at::Tensor& prior_assignment,
    at::ArrayRef<double> variances) {
  check_multibox_loss_backward_args(grad_loss_l, grad_loss_c, grad_loss_landm, loc, conf, landms,
                                    priors, gt_boxes, gt_landms, gt_labels, prior_assignment,
                                    variances);
  const double grad_l = scalar_grad(grad_loss_l);
  const double grad_c = scalar_grad(grad_loss_c);
  const double grad_landm = scalar_grad(grad_loss_landm);

  const auto loc_c = loc.contiguous(), conf_c = conf.contiguous(), landms_c = landms.contiguous();
  const auto assignment = prior_assignment.contiguous();
  // Zeroed image by image inside the kernel (stream_zero).
  auto d_loc = at::empty(loc.sizes(), loc_c.options());
  auto d_conf = at::empty(conf.sizes(), conf_c.options());
  auto d_landms = at::empty(landms.sizes(), landms_c.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, loc.scalar_type(), "multibox_loss_backward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        const Targets<T> gt(priors, gt_boxes, gt_landms, gt_labels);
        multibox_loss_backward_kernel<scalar_t>(grad_l, grad_c, grad_landm, loc_c, conf_c,
                                                landms_c, gt, assignment, variances, d_loc,
                                                d_conf, d_landms);
      });
  return {d_loc, d_conf, d_landms};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("multibox_loss", &multibox_loss_cpu);
  m.impl("multibox_loss_backward", &multibox_loss_backward_cpu);
}

}  // namespace retinaface
