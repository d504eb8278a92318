// Box coding on CUDA: encode / decode of boxes and landmarks against priors.
//
// Elementwise over rows: one thread per row of 4 (boxes) or 10 (landmarks)
// values, in a grid-stride loop. A warp's rows are consecutive, so its loads
// and stores cover one contiguous span and coalesce through L1; the priors
// ([P, 4] compute type, read once per row) are shared by every image of the
// batch and stay in L2. The maths is csrc/common/box_math.h, the CPU's.
#include "common/box_math.h"
#include "cuda/box_coding_kernel.h"
#include "cuda/cuda_utils.cuh"

#include <cstdint>

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct EncodeBox {
  static constexpr int kRow = 4;
  template <typename C>
  __device__ static void apply(const C* in, const C* prior, C var0, C var1, C* out) {
    const BoxT<C> gt{in[0], in[1], in[2], in[3]};
    encode_box(gt, prior[0], prior[1], prior[2], prior[3], var0, var1, out);
  }
};

struct DecodeBox {
  static constexpr int kRow = 4;
  template <typename C>
  __device__ static void apply(const C* in, const C* prior, C var0, C var1, C* out) {
    const BoxT<C> box = decode_box(in, prior[0], prior[1], prior[2], prior[3], var0, var1);
    out[0] = box.x1;
    out[1] = box.y1;
    out[2] = box.x2;
    out[3] = box.y2;
  }
};

struct EncodeLandmarks {
  static constexpr int kRow = 10;
  template <typename C>
  __device__ static void apply(const C* in, const C* prior, C var0, C /*var1*/, C* out) {
    encode_landmarks(in, prior[0], prior[1], prior[2], prior[3], var0, out);
  }
};

struct DecodeLandmarks {
  static constexpr int kRow = 10;
  template <typename C>
  __device__ static void apply(const C* in, const C* prior, C var0, C /*var1*/, C* out) {
    decode_landmarks(in, prior[0], prior[1], prior[2], prior[3], var0, out);
  }
};

// Index is int32_t when every element offset fits (the usual case: 64-bit
// division for r % num_priors costs several times more), int64_t otherwise.
template <typename Coder, typename T, typename C, typename Index>
__global__ void __launch_bounds__(kThreads)
    coding_kernel(const T* __restrict__ input, const C* __restrict__ priors, Index rows,
                  Index num_priors, C var0, C var1, T* __restrict__ output) {
  constexpr int kRow = Coder::kRow;
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index r = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += stride) {
    C in_row[kRow];
    C out_row[kRow];
    const T* src = input + r * kRow;
#pragma unroll
    for (int k = 0; k < kRow; ++k) in_row[k] = to_compute(src[k]);
    C prior[4];
    const C* p = priors + (r % num_priors) * 4;
#pragma unroll
    for (int k = 0; k < 4; ++k) prior[k] = p[k];
    Coder::apply(in_row, prior, var0, var1, out_row);
    T* dst = output + r * kRow;
#pragma unroll
    for (int k = 0; k < kRow; ++k) dst[k] = from_compute<T>(out_row[k]);
  }
}

template <typename Coder, typename T, typename C>
cudaError_t launch_coding(const T* input, const C* priors, int64_t rows, int64_t num_priors,
                          C var0, C var1, T* output, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (num_priors <= 0) return cudaErrorInvalidValue;
  const unsigned int blocks = grid_for(rows, kThreads);
  // The largest offset a thread forms is (rows - 1 + stride) * kRow, with the
  // grid-stride step; it must not overflow the index type.
  const int64_t max_offset = (rows + static_cast<int64_t>(blocks) * kThreads) * Coder::kRow;
  if (max_offset <= INT32_MAX) {
    coding_kernel<Coder, T, C, int32_t><<<blocks, kThreads, 0, stream>>>(
        input, priors, static_cast<int32_t>(rows), static_cast<int32_t>(num_priors), var0, var1,
        output);
  } else {
    coding_kernel<Coder, T, C, int64_t>
        <<<blocks, kThreads, 0, stream>>>(input, priors, rows, num_priors, var0, var1, output);
  }
  return cudaGetLastError();
}

}  // namespace

template <typename T, typename C>
cudaError_t launch_encode(const T* boxes, const C* priors, int64_t rows, int64_t num_priors,
                          C var0, C var1, T* loc, cudaStream_t stream) {
  return launch_coding<EncodeBox>(boxes, priors, rows, num_priors, var0, var1, loc, stream);
}

template <typename T, typename C>
cudaError_t launch_decode(const T* loc, const C* priors, int64_t rows, int64_t num_priors,
                          C var0, C var1, T* boxes, cudaStream_t stream) {
  return launch_coding<DecodeBox>(loc, priors, rows, num_priors, var0, var1, boxes, stream);
}

template <typename T, typename C>
cudaError_t launch_encode_landmarks(const T* points, const C* priors, int64_t rows,
                                    int64_t num_priors, C var0, T* offsets, cudaStream_t stream) {
  return launch_coding<EncodeLandmarks>(points, priors, rows, num_priors, var0, var0, offsets,
                                        stream);
}

template <typename T, typename C>
cudaError_t launch_decode_landmarks(const T* offsets, const C* priors, int64_t rows,
                                    int64_t num_priors, C var0, T* points, cudaStream_t stream) {
  return launch_coding<DecodeLandmarks>(offsets, priors, rows, num_priors, var0, var0, points,
                                        stream);
}

#define RF_INSTANTIATE_BOX_CODING(T, C)                                                         \
  template cudaError_t launch_encode<T, C>(const T*, const C*, int64_t, int64_t, C, C, T*,      \
                                           cudaStream_t);                                       \
  template cudaError_t launch_decode<T, C>(const T*, const C*, int64_t, int64_t, C, C, T*,      \
                                           cudaStream_t);                                       \
  template cudaError_t launch_encode_landmarks<T, C>(const T*, const C*, int64_t, int64_t, C,   \
                                                     T*, cudaStream_t);                         \
  template cudaError_t launch_decode_landmarks<T, C>(const T*, const C*, int64_t, int64_t, C,   \
                                                     T*, cudaStream_t);

RF_INSTANTIATE_BOX_CODING(float, float)
RF_INSTANTIATE_BOX_CODING(double, double)
RF_INSTANTIATE_BOX_CODING(__half, float)
RF_INSTANTIATE_BOX_CODING(__nv_bfloat16, float)
#undef RF_INSTANTIATE_BOX_CODING

}  // namespace cuda
}  // namespace retinaface
