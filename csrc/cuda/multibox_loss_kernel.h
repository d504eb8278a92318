// Launchers of the multibox_loss CUDA kernels (no torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/compute_type.h"

namespace retinaface {
namespace cuda {

// The type the loss is computed and returned in for predictions of type T
// (float, or double for float64). Priors and ground truth are passed in it.
template <typename T>
using loss_t = compute_t<T>;

// Shapes (all tensors row-major contiguous): loc [B, P, 4], conf [B, P, C],
// landms [B, P, 10], priors [P, 4], gt_boxes [B, G, 4], gt_landms [B, G, 10],
// gt_labels [B, G]. B, P, C, G must each be < 2^31 (the registration checks).
struct LossSizes {
  int64_t batch, num_priors, num_classes, max_gt;
};

// Bytes of device scratch launch_multibox_loss_forward needs (8-byte aligned
// base; at::empty gives more).
size_t multibox_loss_forward_workspace_bytes(const LossSizes& sizes, bool double_precision);

// Forward. assignment [B, P] holds match()'s ground-truth index per prior
// (-1 = background) on entry and the prior_assignment of the op on exit
// (>= 0 positive, -1 unused, -2 hard negative). The three losses are written
// to 0-dim device scalars. Launches nothing when B or P is 0 (the caller
// returns zeros).
template <typename T>
cudaError_t launch_multibox_loss_forward(const T* loc, const T* conf, const T* landms,
                                         const loss_t<T>* priors, const loss_t<T>* gt_boxes,
                                         const loss_t<T>* gt_landms, const loss_t<T>* gt_labels,
                                         const LossSizes& sizes, int64_t neg_pos_ratio,
                                         double var0, double var1, int64_t* assignment,
                                         void* workspace, loss_t<T>* loss_l, loss_t<T>* loss_c,
                                         loss_t<T>* loss_landm, cudaStream_t stream);

// Element type of an incoming 0-dim loss gradient, read on the device.
enum class ScalarKind : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
struct LossGrads {
  const void* data[3];  // d/d loss_l, loss_c, loss_landm
  ScalarKind kind[3];
};

// Backward: every element of d_loc [B, P, 4], d_conf [B, P, C] and
// d_landms [B, P, 10] is written once. counts is device scratch for two
// 64-bit integers (N and N1, recounted from assignment).
template <typename T>
cudaError_t launch_multibox_loss_backward(const LossGrads& grads, const T* loc, const T* conf,
                                          const T* landms, const loss_t<T>* priors,
                                          const loss_t<T>* gt_boxes, const loss_t<T>* gt_landms,
                                          const loss_t<T>* gt_labels, const int64_t* assignment,
                                          const LossSizes& sizes, double var0, double var1,
                                          unsigned long long* counts, T* d_loc, T* d_conf,
                                          T* d_landms, cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
