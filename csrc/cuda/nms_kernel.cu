// nms / batched_nms on CUDA: gather the boxes in score order, the 64 x 64
// suppression-mask kernel, and the greedy scan over the mask rows in one
// block on the device, so the host only reads back the kept count (and the
// finiteness flags) once.
#include "cuda/nms_kernel.h"

#include "common/box_math.h"
#include "cuda/cuda_utils.cuh"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kBoxesPerWord = 64;    // one 64-bit mask word covers 64 boxes
constexpr int kGatherThreads = 256;
constexpr int kScanThreads = 256;
// The scan keeps one removed bit per box in shared memory up to this many
// bytes (n <= 327680 boxes, whose mask alone would be 13 GB); beyond, in
// global scratch. With the kernel's static shared memory it stays below the
// 48 KB a launch gets without opting in.
constexpr int64_t kMaxScanSharedBytes = 40 * 1024;

// How many of the 64 boxes of the word starting at `first` exist.
__device__ __forceinline__ int boxes_in_word(int64_t n, int64_t first) {
  const int64_t left = n - first;
  return left < kBoxesPerWord ? static_cast<int>(left) : kBoxesPerWord;
}

__device__ __forceinline__ bool is_finite(float x) { return isfinite(x); }
__device__ __forceinline__ bool is_finite(double x) { return isfinite(x); }

// Boxes (and classes) in score order, in the compute type; flags the first
// non-finite box / score row of the caller's numbering with atomicMin, so the
// host learns of it in the same read-back as the kept count.
template <typename In, typename S, typename T>
__global__ void nms_gather_kernel(const In* __restrict__ boxes, const S* __restrict__ sorted_scores,
                                  const int64_t* __restrict__ order,
                                  const int64_t* __restrict__ classes, int64_t n,
                                  BoxT<T>* __restrict__ sorted_boxes,
                                  int64_t* __restrict__ sorted_classes,
                                  unsigned long long* __restrict__ status) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t index = order[k];
    const In* b = boxes + 4 * index;
    const BoxT<T> box{static_cast<T>(to_compute(b[0])), static_cast<T>(to_compute(b[1])),
                      static_cast<T>(to_compute(b[2])), static_cast<T>(to_compute(b[3]))};
    sorted_boxes[k] = box;
    if (classes != nullptr) sorted_classes[k] = classes[index];
    if (!(is_finite(box.x1) && is_finite(box.y1) && is_finite(box.x2) && is_finite(box.y2))) {
      atomicMin(status + kNmsBadBoxRow, static_cast<unsigned long long>(index));
    }
    if (!is_finite(sorted_scores[k])) {
      atomicMin(status + kNmsBadScoreRow, static_cast<unsigned long long>(index));
    }
  }
}

// Block (row block r, column block c), 64 threads: thread t sets bit j of
// mask[64 r + t][c] when box 64 c + j comes later in score order and its IoU
// with box 64 r + t is > threshold (and, for batched_nms, the classes match).
// Words left of the diagonal are never read by the scan, so they are skipped.
template <typename T>
__global__ void nms_mask_kernel(const BoxT<T>* __restrict__ boxes,
                                const int64_t* __restrict__ classes, int64_t n,
                                int64_t col_blocks, T threshold, uint64_t* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int row_size = boxes_in_word(n, row_block * kBoxesPerWord);
  const int col_size = boxes_in_word(n, col_block * kBoxesPerWord);

  __shared__ BoxT<T> col_boxes[kBoxesPerWord];
  __shared__ T col_areas[kBoxesPerWord];
  __shared__ int64_t col_classes[kBoxesPerWord];
  const int t = threadIdx.x;
  if (t < col_size) {
    const int64_t j = col_block * kBoxesPerWord + t;
    col_boxes[t] = boxes[j];
    col_areas[t] = box_area(col_boxes[t]);
    col_classes[t] = classes != nullptr ? classes[j] : 0;
  }
  __syncthreads();
  if (t >= row_size) return;

  const int64_t i = row_block * kBoxesPerWord + t;
  const BoxT<T> box = boxes[i];
  const T area = box_area(box);
  const int64_t cls = classes != nullptr ? classes[i] : 0;
  uint64_t bits = 0;
  for (int j = row_block == col_block ? t + 1 : 0; j < col_size; ++j) {
    // The higher-ranked box first, as the CPU's greedy_nms calls box_iou.
    if (col_classes[j] == cls && box_iou(box, col_boxes[j], area, col_areas[j]) > threshold) {
      bits |= uint64_t{1} << j;
    }
  }
  mask[i * col_blocks + col_block] = bits;
}

// The greedy pass over the mask rows, in one block. Word w (boxes 64 w ..
// 64 w + 63) is resolved by one thread from the diagonal words (which boxes
// of the word suppress later ones of the same word) and the removed bits
// accumulated so far; then every thread ORs the rows of the boxes just kept
// into the removed bits of one later word. Suppressed rows are never read.
__global__ void __launch_bounds__(kScanThreads)
    nms_scan_kernel(const uint64_t* __restrict__ mask, const int64_t* __restrict__ order,
                    int64_t n, int64_t col_blocks, uint64_t* removed_global,
                    int64_t* __restrict__ keep, int64_t* __restrict__ status) {
  extern __shared__ uint64_t removed_shared[];
  uint64_t* removed = removed_global != nullptr ? removed_global : removed_shared;
  __shared__ uint64_t diagonal[kBoxesPerWord];
  __shared__ uint64_t kept_word;
  const int t = threadIdx.x;

  for (int64_t w = t; w < col_blocks; w += kScanThreads) removed[w] = 0;
  __syncthreads();

  int64_t num_kept = 0;
  for (int64_t w = 0; w < col_blocks; ++w) {
    const int64_t row0 = w * kBoxesPerWord;
    const int rows = boxes_in_word(n, row0);
    if (t < rows) diagonal[t] = mask[(row0 + t) * col_blocks + w];
    __syncthreads();
    if (t == 0) {
      const uint64_t valid = rows == kBoxesPerWord ? ~uint64_t{0} : (uint64_t{1} << rows) - 1;
      uint64_t candidates = ~removed[w] & valid;
      uint64_t kept = 0;
      while (candidates != 0) {
        const int b = __ffsll(static_cast<long long>(candidates)) - 1;
        kept |= uint64_t{1} << b;
        candidates &= ~(uint64_t{1} << b);
        candidates &= ~diagonal[b];  // only later boxes of the word are set
      }
      kept_word = kept;
    }
    __syncthreads();
    const uint64_t kept = kept_word;
    if (t < rows && ((kept >> t) & 1)) {
      const int before = __popcll(kept & ((uint64_t{1} << t) - 1));
      keep[num_kept + before] = order[row0 + t];
    }
    for (int64_t w2 = w + 1 + t; w2 < col_blocks; w2 += kScanThreads) {
      uint64_t acc = removed[w2];
      for (uint64_t bits = kept; bits != 0; bits &= bits - 1) {
        const int b = __ffsll(static_cast<long long>(bits)) - 1;
        acc |= mask[(row0 + b) * col_blocks + w2];
      }
      removed[w2] = acc;
    }
    num_kept += __popcll(kept);
    // Before the next word: diagonal and kept_word are rewritten, and
    // removed[w + 1] is read by thread 0.
    __syncthreads();
  }
  if (t == 0) status[kNmsKeptCount] = num_kept;
}

int64_t scan_removed_bytes(int64_t n) {
  return ceil_div(n, kBoxesPerWord) * static_cast<int64_t>(sizeof(uint64_t));
}

}  // namespace

int64_t nms_scan_scratch_bytes(int64_t n) {
  const int64_t bytes = scan_removed_bytes(n);
  return bytes > kMaxScanSharedBytes ? bytes : 0;
}

template <typename In, typename S, typename T>
cudaError_t launch_nms(const In* boxes, const S* sorted_scores, const int64_t* order,
                       const int64_t* classes, int64_t n, T iou_threshold, T* sorted_boxes,
                       int64_t* sorted_classes, uint64_t* mask, void* scan_scratch,
                       int64_t* keep, int64_t* status, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t col_blocks = ceil_div(n, kBoxesPerWord);
  if (n > kMaxNmsBoxes) return cudaErrorInvalidValue;  // gridDim.y (the caller checks first)
  const bool removed_in_global = nms_scan_scratch_bytes(n) > 0;
  if (removed_in_global && scan_scratch == nullptr) return cudaErrorInvalidValue;

  auto* box_out = reinterpret_cast<BoxT<T>*>(sorted_boxes);
  auto* flags = reinterpret_cast<unsigned long long*>(status);
  nms_gather_kernel<In, S, T><<<grid_for(n, kGatherThreads), kGatherThreads, 0, stream>>>(
      boxes, sorted_scores, order, classes, n, box_out, sorted_classes, flags);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const dim3 mask_grid(static_cast<unsigned int>(col_blocks), static_cast<unsigned int>(col_blocks));
  nms_mask_kernel<T><<<mask_grid, kBoxesPerWord, 0, stream>>>(
      box_out, classes != nullptr ? sorted_classes : nullptr, n, col_blocks, iou_threshold, mask);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const size_t shared = removed_in_global ? 0 : static_cast<size_t>(scan_removed_bytes(n));
  nms_scan_kernel<<<1, kScanThreads, shared, stream>>>(
      mask, order, n, col_blocks,
      removed_in_global ? static_cast<uint64_t*>(scan_scratch) : nullptr, keep, status);
  return cudaGetLastError();
}

#define RF_INSTANTIATE_NMS(In, S, T)                                                        \
  template cudaError_t launch_nms<In, S, T>(const In*, const S*, const int64_t*,            \
                                            const int64_t*, int64_t, T, T*, int64_t*,       \
                                            uint64_t*, void*, int64_t*, int64_t*, cudaStream_t);
RF_INSTANTIATE_NMS(float, float, float)
RF_INSTANTIATE_NMS(float, double, float)
RF_INSTANTIATE_NMS(__half, float, float)
RF_INSTANTIATE_NMS(__half, double, float)
RF_INSTANTIATE_NMS(__nv_bfloat16, float, float)
RF_INSTANTIATE_NMS(__nv_bfloat16, double, float)
RF_INSTANTIATE_NMS(double, float, double)
RF_INSTANTIATE_NMS(double, double, double)
#undef RF_INSTANTIATE_NMS

}  // namespace cuda
}  // namespace retinaface
