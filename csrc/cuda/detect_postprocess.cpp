// detect_postprocess for the CUDA dispatch key: the CPU's checks
// (common/detect_postprocess_checks.h), scratch and outputs allocated here with
// the caching allocator (so CUDA-graph capture works), one kernel launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/detect_postprocess_checks.h"
#include "cuda/device_type.h"
#include "cuda/detect_postprocess_kernel.h"

namespace retinaface {
namespace {

constexpr int64_t kDetectionWidth = 15;

using cuda::DeviceType;

template <typename In, typename T>
cudaError_t launch(const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& landms,
                   const at::Tensor& priors, const cuda::DetectPostprocessParams& params,
                   at::Tensor& scratch, at::Tensor& detections, at::Tensor& counts,
                   cudaStream_t stream) {
  using D = typename DeviceType<In>::type;
  return cuda::launch_detect_postprocess<D, T>(
      reinterpret_cast<const D*>(loc.data_ptr<In>()), reinterpret_cast<const D*>(conf.data_ptr<In>()),
      conf.size(2), reinterpret_cast<const D*>(landms.data_ptr<In>()), priors.data_ptr<T>(),
      loc.size(0), loc.size(1), params, scratch.data_ptr(), detections.data_ptr<T>(),
      counts.data_ptr<int64_t>(), stream);
}

std::tuple<at::Tensor, at::Tensor> detect_postprocess_cuda(
    const at::Tensor& loc_in, const at::Tensor& conf_in, const at::Tensor& landms_in,
    const at::Tensor& priors_in, double score_threshold, double nms_threshold,
    int64_t pre_nms_top_k, int64_t max_detections, at::ArrayRef<double> variances) {
  check_detect_postprocess_args(loc_in, conf_in, landms_in, priors_in, score_threshold,
                                nms_threshold, pre_nms_top_k, max_detections, variances);
  const int64_t batch = loc_in.size(0), num_priors = loc_in.size(1);
  TORCH_CHECK(num_priors < std::numeric_limits<int32_t>::max(),
              "detect_postprocess(): at most 2^31 - 2 priors on CUDA, got ", num_priors);
  const c10::cuda::CUDAGuard guard(loc_in.device());
  const auto compute = detect_postprocess_compute_dtype(loc_in, conf_in, landms_in, priors_in);

  auto detections = at::empty({batch, max_detections, kDetectionWidth},
                              loc_in.options().dtype(compute));
  auto counts = at::empty({batch}, loc_in.options().dtype(at::kLong));
  if (batch == 0) return {detections, counts};

  // The network outputs are read in their own dtype when they share one
  // (float16/bfloat16 directly); mixed or float64 runs convert them first.
  at::ScalarType net = loc_in.scalar_type();
  if (compute == at::kDouble) {
    net = at::kDouble;
  } else if (conf_in.scalar_type() != net || landms_in.scalar_type() != net) {
    net = at::kFloat;
  }
  const auto loc = loc_in.to(net).contiguous();
  const auto conf = conf_in.to(net).contiguous();
  const auto landms = landms_in.to(net).contiguous();
  const auto priors = priors_in.to(compute).contiguous();

  const int compute_bytes = compute == at::kDouble ? 8 : 4;
  const int64_t per_image =
      cuda::detect_postprocess_scratch_bytes(num_priors, pre_nms_top_k, compute_bytes);
  auto scratch = at::empty({batch * per_image}, loc.options().dtype(at::kByte));
  const cuda::DetectPostprocessParams params{score_threshold, nms_threshold, variances[0],
                                             variances[1],    pre_nms_top_k, max_detections};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err;
  switch (net) {
    case at::kDouble:
      err = launch<double, double>(loc, conf, landms, priors, params, scratch, detections, counts,
                                   stream);
      break;
    case at::kHalf:
      err = launch<at::Half, float>(loc, conf, landms, priors, params, scratch, detections,
                                    counts, stream);
      break;
    case at::kBFloat16:
      err = launch<at::BFloat16, float>(loc, conf, landms, priors, params, scratch, detections,
                                        counts, stream);
      break;
    default:
      err = launch<float, float>(loc, conf, landms, priors, params, scratch, detections, counts,
                                 stream);
  }
  TORCH_CHECK(err == cudaSuccess, "detect_postprocess(): CUDA launch failed: ",
              cudaGetErrorString(err));
  return {detections, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("detect_postprocess", &detect_postprocess_cuda);
}

}  // namespace retinaface
