// box_iou on CUDA: [N, 4] x [M, 4] xyxy -> [N, M].
//
// A block computes a kTile x kTile tile of the output. Both tiles of boxes are
// staged in shared memory, converted to float32 with their areas (each box is
// read from global memory once per block instead of once per output), and a
// warp writes 32 consecutive outputs of a row, so stores are coalesced. The
// output dominates the traffic (N * M values against (N + M) * 4 inputs).
#include "common/box_math.h"
#include "cuda/box_iou_kernel.h"
#include "cuda/cuda_utils.cuh"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kTile = 32;       // tile of kTile boxes1 x kTile boxes2
constexpr int kBlockRows = 8;   // threads per column: each thread does kTile / kBlockRows rows
static_assert(kTile % kBlockRows == 0, "rows per thread must be whole");

// IoU is computed in float32 for every input type, double included, exactly as
// csrc/cpu/box_iou.cpp does (boxes1.to(kFloat)).
template <typename T>
__device__ __forceinline__ float load_float(const T* p) {
  return static_cast<float>(to_compute(*p));
}

template <typename T>
__device__ __forceinline__ void stage_box(const T* boxes, int64_t index, int64_t count, Box* box,
                                          float* area) {
  if (index < count) {
    const T* b = boxes + index * 4;
    *box = Box{load_float(b), load_float(b + 1), load_float(b + 2), load_float(b + 3)};
    *area = box_area(*box);
  }
}

template <typename T>
__global__ void box_iou_kernel(const T* __restrict__ boxes1, const T* __restrict__ boxes2,
                               int64_t n, int64_t m, int64_t row_tiles, T* __restrict__ iou) {
  __shared__ Box tile1[kTile];
  __shared__ Box tile2[kTile];
  __shared__ float area1[kTile];
  __shared__ float area2[kTile];

  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  const int tid = ty * kTile + tx;
  if (tid < kTile) stage_box(boxes2, col, m, &tile2[tid], &area2[tid]);

  // gridDim.y is capped at 65535: larger N loops over its row tiles.
  for (int64_t row_tile = blockIdx.y; row_tile < row_tiles; row_tile += gridDim.y) {
    const int64_t row0 = row_tile * kTile;
    __syncthreads();  // the previous iteration is done reading tile1
    if (tid < kTile) stage_box(boxes1, row0 + tid, n, &tile1[tid], &area1[tid]);
    __syncthreads();
    if (col < m) {
      for (int r = ty; r < kTile; r += kBlockRows) {
        const int64_t row = row0 + r;
        if (row >= n) break;
        const float value = box_iou(tile1[r], tile2[tx], area1[r], area2[tx]);
        // Through compute_t<T> so T = double picks from_compute(double).
        iou[row * m + col] = from_compute<T>(static_cast<compute_t<T>>(value));
      }
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_box_iou(const T* boxes1, const T* boxes2, int64_t n, int64_t m, T* iou,
                           cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  const int64_t row_tiles = ceil_div(n, kTile);
  const int64_t col_tiles = ceil_div(m, kTile);
  if (col_tiles > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned int>(col_tiles),
                  static_cast<unsigned int>(row_tiles < 65535 ? row_tiles : 65535));
  const dim3 block(kTile, kBlockRows);
  box_iou_kernel<T><<<grid, block, 0, stream>>>(boxes1, boxes2, n, m, row_tiles, iou);
  return cudaGetLastError();
}

template cudaError_t launch_box_iou<float>(const float*, const float*, int64_t, int64_t, float*,
                                           cudaStream_t);
template cudaError_t launch_box_iou<double>(const double*, const double*, int64_t, int64_t,
                                            double*, cudaStream_t);
template cudaError_t launch_box_iou<__half>(const __half*, const __half*, int64_t, int64_t,
                                            __half*, cudaStream_t);
template cudaError_t launch_box_iou<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*,
                                                   int64_t, int64_t, __nv_bfloat16*,
                                                   cudaStream_t);

}  // namespace cuda
}  // namespace retinaface
