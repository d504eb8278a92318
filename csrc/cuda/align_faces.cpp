// align_faces on CUDA: argument checks (shared with the CPU kernel), dtype
// dispatch and the launch on the current stream. The kernels are
// csrc/cuda/align_faces_kernel.cu. Unlike the CPU kernel, out-of-range
// image_index values are not reported (that would need a host
// synchronisation): those faces get all-zero crops.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <tuple>

#include "common/align_faces_checks.h"
#include "cuda/align_faces_kernel.h"
#include "cuda/device_type.h"

namespace retinaface {
namespace {

template <typename T>
cudaError_t launch(const at::Tensor& images, const at::Tensor& landmarks, const at::Tensor& index,
                   const at::Tensor& face_template, int64_t size, at::Tensor& inverse,
                   at::Tensor& transforms, at::Tensor& crops, cudaStream_t stream) {
  return cuda::launch_align_faces<T>(
      cuda::device_cptr<T>(images), images.size(0), images.size(1), images.size(2),
      images.size(3), landmarks.const_data_ptr<double>(), index.const_data_ptr<int64_t>(),
      face_template.const_data_ptr<double>(), landmarks.size(0), size,
      inverse.mutable_data_ptr<double>(), transforms.mutable_data_ptr<double>(),
      cuda::device_mptr<T>(crops), stream);
}

std::tuple<at::Tensor, at::Tensor> align_faces_cuda(const at::Tensor& images,
                                                    const at::Tensor& landmarks,
                                                    const at::Tensor& image_index, int64_t size,
                                                    const at::Tensor& face_template) {
  check_align_faces_args(images, landmarks, image_index, size, face_template);
  const c10::cuda::CUDAGuard guard(images.device());
  const int64_t num_faces = landmarks.size(0);
  const at::Tensor source = images.contiguous();
  const at::Tensor points = landmarks.to(at::kDouble).contiguous();
  const at::Tensor index = image_index.to(at::kLong).contiguous();
  const at::Tensor destination = face_template.to(at::kDouble).contiguous();
  at::Tensor crops = at::empty({num_faces, size, size, images.size(3)}, images.options());
  at::Tensor transforms = at::empty({num_faces, 2, 3}, points.options());
  at::Tensor inverse = at::empty({num_faces, 6}, points.options());
  if (num_faces == 0) return {crops, transforms};

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(images.device().index()).stream();
  cudaError_t err = cudaSuccess;
  const auto launch_as = [&](auto tag) {
    using T = decltype(tag);
    err = launch<T>(source, points, index, destination, size, inverse, transforms, crops, stream);
  };
  if (source.scalar_type() == at::kByte) {
    launch_as(uint8_t{});
  } else {
    cuda::dispatch_device_type(source.scalar_type(), "align_faces", launch_as);
  }
  TORCH_CHECK(err == cudaSuccess, "align_faces(): CUDA launch failed: ", cudaGetErrorString(err));
  return {crops, transforms};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("align_faces", &align_faces_cuda);
}

}  // namespace retinaface
