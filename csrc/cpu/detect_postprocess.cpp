// detect_postprocess on the CPU: biubug6 detect.py's post-processing for a
// batch, into padded fixed-shape outputs (see retinaface_ext/ops/detect_postprocess.py).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "common/box_math.h"
#include "common/checks.h"
#include "common/detect_postprocess_checks.h"
#include "cpu/nms.h"

namespace retinaface {
namespace {

constexpr int64_t kDetectionWidth = 15;  // x1, y1, x2, y2, score, 10 landmark coords

struct PostprocessParams {
  double score_threshold, nms_threshold, var0, var1;
  int64_t pre_nms_top_k, max_detections;
};

// One image: threshold, top-k, decode, NMS, write the padded rows. Buffers are
// passed in so a thread reuses them across its images.
template <typename T>
int64_t postprocess_image(const T* loc, const T* scores, const T* landms, const T* priors,
                          int64_t num_priors, const PostprocessParams& p, T* out,
                          std::vector<ScoredIndex<T>>& selected, NmsCandidates<T>& candidates,
                          std::vector<int64_t>& kept) {
  const T score_threshold = static_cast<T>(p.score_threshold);
  const T var0 = static_cast<T>(p.var0), var1 = static_cast<T>(p.var1);

  selected.clear();
  for (int64_t i = 0; i < num_priors; ++i) {
    if (scores[i] > score_threshold) selected.push_back({scores[i], i});  // NaN fails this
  }
  // ranks_before is a total order (ties by prior index), so the partial
  // selection is deterministic and equals the head of a stable sort.
  if (static_cast<int64_t>(selected.size()) > p.pre_nms_top_k) {
    std::nth_element(selected.begin(), selected.begin() + p.pre_nms_top_k, selected.end(),
                     ranks_before<T>);
    selected.resize(p.pre_nms_top_k);
  }
  std::sort(selected.begin(), selected.end(), ranks_before<T>);

  candidates.clear();
  for (const auto& entry : selected) {
    const int64_t i = entry.index;
    const T* pr = priors + 4 * i;
    candidates.push_back(decode_box(loc + 4 * i, pr[0], pr[1], pr[2], pr[3], var0, var1), i);
  }
  kept.clear();
  greedy_nms(candidates, static_cast<T>(p.nms_threshold), p.max_detections, kept);

  // Landmarks are decoded for the kept priors only; the box is decoded again
  // (the same arithmetic, so the same values) rather than carried through NMS.
  for (size_t k = 0; k < kept.size(); ++k) {
    const int64_t i = kept[k];
    const T* pr = priors + 4 * i;
    const BoxT<T> box = decode_box(loc + 4 * i, pr[0], pr[1], pr[2], pr[3], var0, var1);
    T* row = out + k * kDetectionWidth;
    row[0] = box.x1, row[1] = box.y1, row[2] = box.x2, row[3] = box.y2;
    row[4] = scores[i];
    decode_landmarks(landms + 10 * i, pr[0], pr[1], pr[2], pr[3], var0, row + 5);
  }
  return static_cast<int64_t>(kept.size());
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> detect_postprocess_impl(
    const at::Tensor& loc_in, const at::Tensor& conf_in, const at::Tensor& landms_in,
    const at::Tensor& priors_in, const PostprocessParams& params) {
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  // Only the face column of conf is read; .to/.contiguous copy only when needed.
  const auto loc = loc_in.to(dtype).contiguous();
  const auto scores = conf_in.select(2, 1).to(dtype).contiguous();
  const auto landms = landms_in.to(dtype).contiguous();
  const auto priors = priors_in.to(dtype).contiguous();
  const int64_t batch = loc.size(0), num_priors = loc.size(1);

  auto detections = at::zeros({batch, params.max_detections, kDetectionWidth}, loc.options());
  auto counts = at::zeros({batch}, loc.options().dtype(at::kLong));
  const T* loc_ptr = loc.template data_ptr<T>();
  const T* score_ptr = scores.template data_ptr<T>();
  const T* landm_ptr = landms.template data_ptr<T>();
  const T* prior_ptr = priors.template data_ptr<T>();
  T* out = detections.template data_ptr<T>();
  int64_t* count_ptr = counts.template data_ptr<int64_t>();

  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<ScoredIndex<T>> selected;
    std::vector<int64_t> kept;
    NmsCandidates<T> candidates;
    for (int64_t b = begin; b < end; ++b) {
      count_ptr[b] = postprocess_image<T>(
          loc_ptr + b * num_priors * 4, score_ptr + b * num_priors,
          landm_ptr + b * num_priors * 10, prior_ptr, num_priors, params,
          out + b * params.max_detections * kDetectionWidth, selected, candidates, kept);
    }
  });
  return {detections, counts};
}

std::tuple<at::Tensor, at::Tensor> detect_postprocess_cpu(
    const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& landms,
    const at::Tensor& priors, double score_threshold, double nms_threshold,
    int64_t pre_nms_top_k, int64_t max_detections, at::ArrayRef<double> variances) {
  check_detect_postprocess_args(loc, conf, landms, priors, score_threshold, nms_threshold,
                                pre_nms_top_k, max_detections, variances);
  const PostprocessParams params{score_threshold, nms_threshold, variances[0],
                                 variances[1],    pre_nms_top_k, max_detections};
  return detect_postprocess_compute_dtype(loc, conf, landms, priors) == at::kDouble
             ? detect_postprocess_impl<double>(loc, conf, landms, priors, params)
             : detect_postprocess_impl<float>(loc, conf, landms, priors, params);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("detect_postprocess", &detect_postprocess_cpu);
}

}  // namespace retinaface
