// Launchers of the margin_cross_entropy CUDA kernels (no torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/margin_math.h"
#include "cuda/compute_type.h"

namespace retinaface {
namespace cuda {

// Shapes (row-major contiguous): cos_logits [rows, cols] of element type T;
// labels [rows] int64; every per-row tensor [rows] in compute_t<T> (float, or
// double for double). rows and cols must be < 2^31 (the registration checks).
struct MarginRows {
  int64_t rows, cols;
  int64_t class_offset;  // global class of column 0
  int64_t num_classes;   // all classes; labels outside [-1, num_classes) give a NaN loss
};

// Forward: per row the loss (0 without a target in this shard, NaN for an
// invalid label), the max and sum-exp of the scaled, margined logits and the
// target logit (0 without a target). One block per row; nothing launched for
// rows = 0.
template <typename T>
cudaError_t launch_margin_cross_entropy_forward(const T* cos_logits, const int64_t* labels,
                                                const MarginRows& shape,
                                                const MarginParams<compute_t<T>>& params,
                                                compute_t<T>* loss, compute_t<T>* row_max,
                                                compute_t<T>* row_sumexp,
                                                compute_t<T>* target_logit, cudaStream_t stream);

// Backward: every element of grad [rows, cols] written once from the per-row
// upstream gradients of (loss, sum-exp, target logit) and the forward's
// per-row max and sum-exp. Nothing launched when rows or cols is 0.
template <typename T>
cudaError_t launch_margin_cross_entropy_backward(
    const T* cos_logits, const int64_t* labels, const compute_t<T>* grad_loss,
    const compute_t<T>* grad_sumexp, const compute_t<T>* grad_target,
    const compute_t<T>* row_max, const compute_t<T>* row_sumexp, const MarginRows& shape,
    const MarginParams<compute_t<T>>& params, bool exact_gradient, T* grad, cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
