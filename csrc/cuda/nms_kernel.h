// nms / batched_nms on CUDA: launcher declarations (no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

// Slots of the int64 status buffer the launcher fills, which the host reads
// back once (the op's single sync). The caller initialises every slot to n.
enum NmsStatus : int {
  kNmsKeptCount = 0,      // number of indices written to `keep`
  kNmsBadBoxRow = 1,      // first row of `boxes` with a non-finite value, n if none
  kNmsBadScoreRow = 2,    // first row of `scores` that is non-finite, n if none
  kNmsStatusSlots = 3,
};

// The mask kernel's grid is ceil(n / 64) x ceil(n / 64) blocks, and gridDim.y
// is at most 65535, so n is at most 65535 * 64 boxes (their mask would take
// 2.2 TB; memory runs out long before).
constexpr int64_t kMaxNmsBoxes = int64_t{65535} * 64;

// Bytes of global scratch launch_nms needs besides the mask (the removed-box
// bits of the greedy scan live in shared memory up to a limit, here beyond).
int64_t nms_scan_scratch_bytes(int64_t n);

// Greedy NMS (torchvision semantics) of n boxes already ordered by the caller:
// `order` [n] is the stable descending-score permutation and `sorted_scores`
// [n] the scores in that order (only checked for finiteness).
//   In: the box element type (float, double, __half, __nv_bfloat16);
//   S:  the sorted score type (float or double);
//   T:  the compute type (float, or double for float64 boxes).
// `classes` [n] (original order, may be null) restricts suppression to boxes
// of equal class (batched_nms). Scratch: sorted_boxes [n, 4] T,
// sorted_classes [n] (only when classes != null), mask [n, ceil(n / 64)]
// 64-bit words, scan_scratch (nms_scan_scratch_bytes(n) bytes, may be null
// when that is 0). Writes the kept original indices to keep[0, count) in
// score order and fills status (see NmsStatus). n >= 1.
template <typename In, typename S, typename T>
cudaError_t launch_nms(const In* boxes, const S* sorted_scores, const int64_t* order,
                       const int64_t* classes, int64_t n, T iou_threshold, T* sorted_boxes,
                       int64_t* sorted_classes, uint64_t* mask, void* scan_scratch,
                       int64_t* keep, int64_t* status, cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
