// align_faces on CUDA: launcher declaration (no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace retinaface {
namespace cuda {

// Crops of num_faces faces from contiguous images [num_images, height, width,
// channels] of element type T (uint8_t, float, double, __half or
// __nv_bfloat16): for face i, the similarity transform of landmarks[10 i ..]
// (float64, 5 points) onto face_template[10] (float64) is written to
// transforms[6 i ..] (float64, NaN where undefined), and the crop to
// crops[i * size * size * channels ..], with the arithmetic of
// csrc/common/align_math.h (the CPU kernel's, bit for bit). A face whose
// image_index is out of range, or whose transform is undefined, gets zeros.
// `inverse` is scratch of 6 num_faces doubles. Two launches on `stream`;
// num_faces == 0 launches nothing.
template <typename T>
cudaError_t launch_align_faces(const T* images, int64_t num_images, int64_t height, int64_t width,
                               int64_t channels, const double* landmarks,
                               const int64_t* image_index, const double* face_template,
                               int64_t num_faces, int64_t size, double* inverse,
                               double* transforms, T* crops, cudaStream_t stream);

}  // namespace cuda
}  // namespace retinaface
