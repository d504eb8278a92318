// Launchers of the focal loss CUDA kernels (no torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/focal_math.h"  // FocalReduction
#include "cuda/compute_type.h"

namespace retinaface {
namespace cuda {

// The problem, with every tensor row-major contiguous. Sigmoid with float
// targets: rows = number of elements, classes = 1. Sigmoid with labels and
// softmax: inputs [rows, classes], labels [rows] int64.
struct FocalProblem {
  int64_t rows, classes;
  double alpha, gamma;
  FocalReduction reduction;
  int64_t background_index;  // sigmoid labels only
  int64_t ignore_index;
};

// The divisor of 'none' / 'sum': one value on the device (float64), or a
// value known on the host, or nothing.
struct FocalNormalizer {
  const double* device;  // read by the kernels when not null
  double host;           // used when device is null and present
  bool present;
};

// Bytes of device scratch the forward needs for a reduction over `items`
// work items (elements for the sigmoid, rows for the softmax); 8-byte aligned
// base (at::empty gives more).
size_t focal_loss_workspace_bytes(int64_t items);

// Forward: loss [rows * classes] (sigmoid) or [rows] (softmax) for 'none',
// else one value. targets (compute type, one per element) or labels (int64,
// one per row): exactly one is non-null for the sigmoid. Labels that are
// neither a class, the background nor ignore_index are treated as ignored.
template <typename T>
cudaError_t launch_sigmoid_focal_loss_forward(const T* inputs, const compute_t<T>* targets,
                                              const int64_t* labels, const FocalProblem& problem,
                                              const FocalNormalizer& normalizer,
                                              void* workspace, compute_t<T>* out,
                                              cudaStream_t stream);

template <typename T>
cudaError_t launch_softmax_focal_loss_forward(const T* logits, const int64_t* labels,
                                              const FocalProblem& problem,
                                              const FocalNormalizer& normalizer,
                                              void* workspace, compute_t<T>* out,
                                              cudaStream_t stream);

// Backward: every element of grad_input (the inputs' shape) is written once.
// grad has the loss's shape for 'none', one element otherwise (read on the
// device). count is device scratch for one 64-bit integer (the 'mean'
// divisor, recounted from the labels).
template <typename T>
cudaError_t launch_sigmoid_focal_loss_backward(const compute_t<T>* grad, const T* inputs,
                                               const compute_t<T>* targets, const int64_t* labels,
                                               const FocalProblem& problem,
                                               const FocalNormalizer& normalizer,
                                               unsigned long long* count, T* grad_input,
                                               cudaStream_t stream);

template <typename T>
cudaError_t launch_softmax_focal_loss_backward(const compute_t<T>* grad, const T* logits,
                                               const int64_t* labels, const FocalProblem& problem,
                                               const FocalNormalizer& normalizer,
                                               unsigned long long* count, T* grad_input,
                                               cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
