// align_faces on CUDA: one thread per face computes its transform and the
// inverse (common/align_math.h), then one thread per crop pixel samples all
// its channels. Positions are recomputed per pixel from the inverse (a few
// double operations) instead of staged in tables: the crop is small and the
// kernel is bound by its scattered image reads.
#include "common/align_math.h"
#include "cuda/align_faces_kernel.h"
#include "cuda/cuda_utils.cuh"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Per face: the transform (or NaN), and the inverse the sampling reads, NaN
// in inverse[0] marking a face that gets zeros.
__global__ void align_faces_transforms_kernel(const double* __restrict__ landmarks,
                                              const int64_t* __restrict__ image_index,
                                              const double* __restrict__ face_template,
                                              int64_t num_faces, int64_t num_images,
                                              double* __restrict__ inverse,
                                              double* __restrict__ transforms) {
  for (int64_t face = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       face < num_faces; face += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double M[6];
    const bool valid =
        similarity_transform(landmarks + 2 * kAlignPoints * face, face_template, M);
    for (int k = 0; k < 6; ++k) transforms[6 * face + k] = M[k];
    double* inv = inverse + 6 * face;
    invert_affine(M, inv);
    const int64_t image = image_index[face];
    if (!valid || image < 0 || image >= num_images) inv[0] = NAN;
  }
}

// uint8 sums integer weights (common/align_math.h bilinear_sum_u8); the
// floating types sum in their compute type (float; double for double).
template <typename T>
struct Sampler {
  using acc = compute_t<T>;
  __device__ __forceinline__ static T sample(const T* const neighbour[4], int64_t c,
                                             const int32_t w[4]) {
    acc p[4];
    for (int k = 0; k < 4; ++k) p[k] = neighbour[k] ? static_cast<acc>(to_compute(neighbour[k][c])) : acc(0);
    return from_compute<T>(bilinear_sum(p, w));
  }
  __device__ __forceinline__ static T zero() { return from_compute<T>(acc(0)); }
};
template <>
struct Sampler<uint8_t> {
  __device__ __forceinline__ static uint8_t sample(const uint8_t* const neighbour[4], int64_t c,
                                                   const int32_t w[4]) {
    int32_t p[4];
    for (int k = 0; k < 4; ++k) p[k] = neighbour[k] ? neighbour[k][c] : 0;
    return static_cast<uint8_t>(bilinear_sum_u8(p, w));
  }
  __device__ __forceinline__ static uint8_t zero() { return 0; }
};

template <typename T>
__global__ void align_faces_sample_kernel(const T* __restrict__ images, int64_t height,
                                          int64_t width, int64_t channels,
                                          const int64_t* __restrict__ image_index,
                                          const double* __restrict__ inverse, int64_t num_faces,
                                          int64_t size, T* __restrict__ crops) {
  const int64_t pixels_per_crop = size * size;
  const int64_t total = num_faces * pixels_per_crop;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t face = p / pixels_per_crop;
    const int64_t y = (p % pixels_per_crop) / size, x = p % size;
    T* out = crops + p * channels;
    const double* inv = inverse + 6 * face;
    const double i0 = inv[0];
    if (i0 != i0) {  // NaN: no transform, or an out-of-range image
      for (int64_t c = 0; c < channels; ++c) out[c] = Sampler<T>::zero();
      continue;
    }
    const BilinearTap tap =
        bilinear_tap(to_fraction_position(row_offset(inv[1], inv[2], y) + column_offset(i0, x)),
                     to_fraction_position(row_offset(inv[4], inv[5], y) + column_offset(inv[3], x)));
    const T* image = images + image_index[face] * height * width * channels;
    const T* neighbour[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t nx = tap.ix + (k & 1), ny = tap.iy + (k >> 1);
      const bool in = nx >= 0 && nx < width && ny >= 0 && ny < height;
      neighbour[k] = in ? image + (ny * width + nx) * channels : nullptr;
    }
    for (int64_t c = 0; c < channels; ++c) out[c] = Sampler<T>::sample(neighbour, c, tap.w);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_align_faces(const T* images, int64_t num_images, int64_t height, int64_t width,
                               int64_t channels, const double* landmarks,
                               const int64_t* image_index, const double* face_template,
                               int64_t num_faces, int64_t size, double* inverse,
                               double* transforms, T* crops, cudaStream_t stream) {
  if (num_faces == 0) return cudaSuccess;
  align_faces_transforms_kernel<<<grid_for(num_faces, kThreads), kThreads, 0, stream>>>(
      landmarks, image_index, face_template, num_faces, num_images, inverse, transforms);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t pixels = num_faces * size * size;
  if (pixels == 0 || channels == 0) return cudaSuccess;
  align_faces_sample_kernel<T><<<grid_for(pixels, kThreads), kThreads, 0, stream>>>(
      images, height, width, channels, image_index, inverse, num_faces, size, crops);
  return cudaGetLastError();
}

#define RF_INSTANTIATE(T)                                                                      \
  template cudaError_t launch_align_faces<T>(const T*, int64_t, int64_t, int64_t, int64_t,       \
                                             const double*, const int64_t*, const double*,      \
                                             int64_t, int64_t, double*, double*, T*, cudaStream_t);
RF_INSTANTIATE(uint8_t)
RF_FOR_EACH_FLOATING_TYPE(RF_INSTANTIATE)
#undef RF_INSTANTIATE

}  // namespace cuda
}  // namespace retinaface
