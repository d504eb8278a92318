// Box coding on CUDA: launcher declarations (no torch headers).
//
// Every launcher maps `rows` contiguous rows of T (4 values for boxes, 10 for
// landmarks) to rows of T; row r uses prior r % num_priors of the contiguous
// priors [num_priors, 4] (cx, cy, w, h), already in the compute type C. The
// maths runs in C (float for float/__half/__nv_bfloat16, double for double)
// with csrc/common/box_math.h, as the CPU kernel does. rows == 0 launches
// nothing; otherwise num_priors must be positive.
// Instantiated for (T, C) = (float, float), (double, double), (__half, float),
// (__nv_bfloat16, float).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

template <typename T, typename C>
cudaError_t launch_encode(const T* boxes, const C* priors, int64_t rows, int64_t num_priors,
                          C var0, C var1, T* loc, cudaStream_t stream);

template <typename T, typename C>
cudaError_t launch_decode(const T* loc, const C* priors, int64_t rows, int64_t num_priors,
                          C var0, C var1, T* boxes, cudaStream_t stream);

// Landmarks use var0 only (biubug6's encode_landm / decode_landm).
template <typename T, typename C>
cudaError_t launch_encode_landmarks(const T* points, const C* priors, int64_t rows,
                                    int64_t num_priors, C var0, T* offsets, cudaStream_t stream);

template <typename T, typename C>
cudaError_t launch_decode_landmarks(const T* offsets, const C* priors, int64_t rows,
                                    int64_t num_priors, C var0, T* points, cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
