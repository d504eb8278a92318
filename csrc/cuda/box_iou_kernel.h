// box_iou on CUDA: launcher declarations (no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

// iou[i * m + j] = IoU(boxes1[i], boxes2[j]) for contiguous xyxy boxes1 [n, 4]
// and boxes2 [m, 4] of element type T, computed in float32 (as the CPU kernel,
// also for T = double) and written as T. n == 0 or m == 0 launches nothing.
// T is float, double, __half or __nv_bfloat16.
template <typename T>
cudaError_t launch_box_iou(const T* boxes1, const T* boxes2, int64_t n, int64_t m, T* iou,
                           cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
