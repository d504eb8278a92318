// match on CUDA: argument checks (shared with the CPU kernel), dtype handling,
// scratch memory and the launch on the current stream. The kernels are in
// csrc/cuda/match_kernel.cu.
//
// No host synchronisation: gt_counts stay on the device. The CPU kernel raises
// for a count outside [0, G]; checking that here would need the counts on the
// host, so the CUDA kernels clamp each count into [0, G] instead.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/match_checks.h"
#include "cuda/match_kernel.h"

namespace retinaface {
namespace {

template <typename T, typename CudaT>
void launch(const at::Tensor& gt, const at::Tensor& counts, const at::Tensor& priors,
            float threshold, float min_best_iou, at::Tensor& scratch, at::Tensor& assigned,
            cudaStream_t stream) {
  const cudaError_t err = cuda::launch_match<CudaT>(
      reinterpret_cast<const CudaT*>(gt.const_data_ptr<T>()), counts.const_data_ptr<int64_t>(),
      priors.const_data_ptr<float>(), gt.size(0), gt.size(1), priors.size(0), threshold,
      min_best_iou, scratch.mutable_data_ptr(), assigned.mutable_data_ptr<int64_t>(), stream);
  TORCH_CHECK(err == cudaSuccess, "match(): CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor match_cuda(const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                      const at::Tensor& priors, double threshold, double min_best_iou) {
  check_match_args(gt_boxes, gt_counts, priors, threshold, min_best_iou);
  // The kernels pack a prior index into 32 bits and max_gt + a face index into an int.
  TORCH_CHECK(priors.size(0) <= std::numeric_limits<int32_t>::max(),
              "match(): priors must have at most 2^31 - 1 rows on CUDA, got ", priors.size(0));
  TORCH_CHECK(gt_boxes.size(1) <= std::numeric_limits<int32_t>::max() / 2,
              "match(): gt_boxes must have at most 2^30 - 1 boxes per image on CUDA, got ",
              gt_boxes.size(1));
  const c10::cuda::CUDAGuard guard(gt_boxes.device());

  const int64_t batch = gt_boxes.size(0), max_gt = gt_boxes.size(1), num_priors = priors.size(0);
  auto assigned = at::empty({batch, num_priors}, gt_boxes.options().dtype(at::kLong));
  if (batch == 0 || num_priors == 0) return assigned;
  if (max_gt == 0) return assigned.fill_(-1);  // no face in any image

  // The boxes are read in their own dtype (converted to float32 in the
  // kernel); counts and priors, small, go through int64 / float32 as on the CPU.
  const auto gt = gt_boxes.contiguous();
  const auto counts = gt_counts.to(at::kLong).contiguous();
  const auto pr = priors.to(at::kFloat).contiguous();
  auto scratch = at::empty({cuda::launch_match_scratch_bytes(batch, max_gt)},
                           gt_boxes.options().dtype(at::kByte));
  const float thr = static_cast<float>(threshold), min_iou = static_cast<float>(min_best_iou);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gt_boxes.device().index()).stream();
  switch (gt.scalar_type()) {
    case at::kFloat:
      launch<float, float>(gt, counts, pr, thr, min_iou, scratch, assigned, stream);
      break;
    case at::kDouble:
      launch<double, double>(gt, counts, pr, thr, min_iou, scratch, assigned, stream);
      break;
    case at::kHalf:
      launch<at::Half, __half>(gt, counts, pr, thr, min_iou, scratch, assigned, stream);
      break;
    case at::kBFloat16:
      launch<at::BFloat16, __nv_bfloat16>(gt, counts, pr, thr, min_iou, scratch, assigned, stream);
      break;
    default:
      TORCH_CHECK(false, "match(): unsupported gt_boxes dtype ", gt.scalar_type());
  }
  return assigned;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("match", &match_cuda);
}

}  // namespace retinaface
