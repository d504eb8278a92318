// Box coding on CUDA: argument checks (shared with the CPU kernels), dtype
// dispatch and the launch on the current stream. The kernels are
// csrc/cuda/box_coding_kernel.cu; semantics as csrc/cpu/box_coding.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "common/box_coding_checks.h"
#include "cuda/box_coding_kernel.h"

namespace retinaface {
namespace {

enum class Coding { kEncode, kDecode, kEncodeLandmarks, kDecodeLandmarks };

template <typename T, typename C>
cudaError_t launch(Coding coding, const T* input, const C* priors, int64_t rows,
                   int64_t num_priors, C var0, C var1, T* output, cudaStream_t stream) {
  switch (coding) {
    case Coding::kEncode:
      return cuda::launch_encode(input, priors, rows, num_priors, var0, var1, output, stream);
    case Coding::kDecode:
      return cuda::launch_decode(input, priors, rows, num_priors, var0, var1, output, stream);
    case Coding::kEncodeLandmarks:
      return cuda::launch_encode_landmarks(input, priors, rows, num_priors, var0, output, stream);
    case Coding::kDecodeLandmarks:
      return cuda::launch_decode_landmarks(input, priors, rows, num_priors, var0, output, stream);
  }
  return cudaErrorInvalidValue;
}

// at::Half / at::BFloat16 have the layout of __half / __nv_bfloat16.
template <typename T, typename CudaT, typename C>
cudaError_t launch_typed(Coding coding, const at::Tensor& in, const at::Tensor& priors,
                         at::ArrayRef<double> variances, at::Tensor& out, cudaStream_t stream) {
  return launch<CudaT, C>(coding, reinterpret_cast<const CudaT*>(in.const_data_ptr<T>()),
                          priors.const_data_ptr<C>(), in.numel() / in.size(-1), in.size(-2),
                          static_cast<C>(variances[0]), static_cast<C>(variances[1]),
                          reinterpret_cast<CudaT*>(out.mutable_data_ptr<T>()), stream);
}

at::Tensor run_coding(Coding coding, const char* op, const char* name, const at::Tensor& input,
                      const at::Tensor& priors, at::ArrayRef<double> variances, int64_t row_size) {
  check_coding_args(op, name, input, priors, variances, row_size);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto in = input.contiguous();
  // Priors in the compute type whatever their dtype: a no-op for float32
  // priors with float32/float16/bfloat16 input (AMP), a [P, 4] copy otherwise.
  const auto pri = priors.to(coding_compute_dtype(input)).contiguous();
  auto output = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (output.numel() == 0) return output;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.device().index()).stream();
  cudaError_t err = cudaSuccess;
  switch (in.scalar_type()) {
    case at::kFloat:
      err = launch_typed<float, float, float>(coding, in, pri, variances, output, stream);
      break;
    case at::kDouble:
      err = launch_typed<double, double, double>(coding, in, pri, variances, output, stream);
      break;
    case at::kHalf:
      err = launch_typed<at::Half, __half, float>(coding, in, pri, variances, output, stream);
      break;
    case at::kBFloat16:
      err = launch_typed<at::BFloat16, __nv_bfloat16, float>(coding, in, pri, variances, output,
                                                             stream);
      break;
    default:
      TORCH_CHECK(false, op, "(): unsupported dtype ", in.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, op, "(): CUDA launch failed: ", cudaGetErrorString(err));
  return output;
}

at::Tensor encode_cuda(const at::Tensor& boxes, const at::Tensor& priors,
                       at::ArrayRef<double> variances) {
  return run_coding(Coding::kEncode, "encode", "boxes", boxes, priors, variances, 4);
}

at::Tensor decode_cuda(const at::Tensor& loc, const at::Tensor& priors,
                       at::ArrayRef<double> variances) {
  return run_coding(Coding::kDecode, "decode", "loc", loc, priors, variances, 4);
}

at::Tensor encode_landmarks_cuda(const at::Tensor& landmarks, const at::Tensor& priors,
                                 at::ArrayRef<double> variances) {
  return run_coding(Coding::kEncodeLandmarks, "encode_landmarks", "landmarks", landmarks, priors,
                    variances, 10);
}

at::Tensor decode_landmarks_cuda(const at::Tensor& landmarks, const at::Tensor& priors,
                                 at::ArrayRef<double> variances) {
  return run_coding(Coding::kDecodeLandmarks, "decode_landmarks", "landmarks", landmarks, priors,
                    variances, 10);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CUDA, m) {
  m.impl("encode", &encode_cuda);
  m.impl("decode", &decode_cuda);
  m.impl("encode_landmarks", &encode_landmarks_cuda);
  m.impl("decode_landmarks", &decode_landmarks_cuda);
}

}  // namespace retinaface
