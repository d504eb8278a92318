// mobilenet_stem on CUDA: the seven layers of MobileNetV1-0.25's stage1[:4]
// as seven simple kernels (one thread per output value), each followed by
// LeakyReLU. On a GPU these layers are cheap next to the rest of the network
// (cuDNN runs the model itself in detect()); the op is here so that it runs
// wherever its inputs are, with the CPU kernel's results to float rounding.
#include "cuda/cuda_utils.cuh"
#include "cuda/mobilenet_stem_kernel.h"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float leaky_relu(float v, float slope) { return v > 0.0f ? v : v * slope; }

// conv 3x3 / 2, padding 1, from uint8 BGR pixels minus the mean: [B, H, W, 3] -> [B, 8, H2, W2].
__global__ void conv_from_pixels_kernel(const uint8_t* __restrict__ images, int64_t batch,
                                        int64_t height, int64_t width, int64_t out_h,
                                        int64_t out_w, const float* __restrict__ weight,
                                        const float* __restrict__ bias, float m0, float m1,
                                        float m2, float slope, float* __restrict__ out) {
  const float mean[3] = {m0, m1, m2};
  const int64_t total = batch * 8 * out_h * out_w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = i % out_w, y = (i / out_w) % out_h;
    const int64_t o = (i / (out_w * out_h)) % 8, b = i / (out_w * out_h * 8);
    float acc = bias[o];
    for (int c = 0; c < 3; ++c) {
      for (int ky = 0; ky < 3; ++ky) {
        const int64_t iy = 2 * y - 1 + ky;
        if (iy < 0 || iy >= height) continue;
        for (int kx = 0; kx < 3; ++kx) {
          const int64_t ix = 2 * x - 1 + kx;
          if (ix < 0 || ix >= width) continue;
          const float pixel = static_cast<float>(images[((b * height + iy) * width + ix) * 3 + c]);
          acc += weight[((o * 3 + c) * 3 + ky) * 3 + kx] * (pixel - mean[c]);
        }
      }
    }
    out[i] = leaky_relu(acc, slope);
  }
}

// depthwise 3x3, padding 1: [B, C, H, W] -> [B, C, out_h, out_w] with `stride`.
__global__ void depthwise_kernel(const float* __restrict__ in, int64_t batch, int64_t channels,
                                 int64_t height, int64_t width, int64_t out_h, int64_t out_w,
                                 int stride, const float* __restrict__ weight,
                                 const float* __restrict__ bias, float slope,
                                 float* __restrict__ out) {
  const int64_t total = batch * channels * out_h * out_w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = i % out_w, y = (i / out_w) % out_h;
    const int64_t plane = i / (out_w * out_h);  // b * channels + c
    const int64_t c = plane % channels;
    const float* src = in + plane * height * width;
    float acc = bias[c];
    for (int ky = 0; ky < 3; ++ky) {
      const int64_t iy = stride * y - 1 + ky;
      if (iy < 0 || iy >= height) continue;
      for (int kx = 0; kx < 3; ++kx) {
        const int64_t ix = stride * x - 1 + kx;
        if (ix < 0 || ix >= width) continue;
        acc += weight[c * 9 + ky * 3 + kx] * src[iy * width + ix];
      }
    }
    out[i] = leaky_relu(acc, slope);
  }
}

// pointwise 1x1: [B, in_channels, H, W] -> [B, out_channels, H, W].
__global__ void pointwise_kernel(const float* __restrict__ in, int64_t batch, int64_t in_channels,
                                 int64_t out_channels, int64_t pixels,
                                 const float* __restrict__ weight, const float* __restrict__ bias,
                                 float slope, float* __restrict__ out) {
  const int64_t total = batch * out_channels * pixels;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t p = i % pixels, o = (i / pixels) % out_channels, b = i / (pixels * out_channels);
    const float* src = in + b * in_channels * pixels + p;
    float acc = bias[o];
    for (int64_t c = 0; c < in_channels; ++c) acc += weight[o * in_channels + c] * src[c * pixels];
    out[i] = leaky_relu(acc, slope);
  }
}

inline int64_t half_size(int64_t size) { return (size + 1) / 2; }
inline int64_t max_of(int64_t a, int64_t b) { return a > b ? a : b; }

// The three scratch maps the layers alternate between, floats per image:
// "big" holds 16 x H/2 x W/2 and later 32 x H/4 x W/4, "small" 8 x H/2 x W/2
// and later 16 x H/4 x W/4, "quarter" 32 x H/4 x W/4.
struct Workspace {
  int64_t big, small, quarter;
};

Workspace workspace_layout(int64_t height, int64_t width) {
  const int64_t h2 = half_size(height), w2 = half_size(width);
  const int64_t h4 = half_size(h2), w4 = half_size(w2);
  return {max_of(16 * h2 * w2, 32 * h4 * w4), max_of(8 * h2 * w2, 16 * h4 * w4), 32 * h4 * w4};
}

}  // namespace

int64_t mobilenet_stem_workspace_floats(int64_t batch, int64_t height, int64_t width) {
  const Workspace w = workspace_layout(height, width);
  return batch * (w.big + w.small + w.quarter);
}

cudaError_t launch_mobilenet_stem(const uint8_t* images, int64_t batch, int64_t height,
                                  int64_t width, const MobilenetStemParams& p, float* workspace,
                                  float* out, cudaStream_t stream) {
  const int64_t h2 = half_size(height), w2 = half_size(width);
  const int64_t h4 = half_size(h2), w4 = half_size(w2);
  if (batch * h4 * w4 == 0) return cudaSuccess;
  const Workspace layout = workspace_layout(height, width);
  float* big = workspace;
  float* small = big + batch * layout.big;
  float* quarter = small + batch * layout.small;
  const float s = p.slope;

  int64_t n = batch * 8 * h2 * w2;
  conv_from_pixels_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      images, batch, height, width, h2, w2, p.weight[0], p.bias[0], p.mean[0], p.mean[1],
      p.mean[2], s, big);
  depthwise_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      big, batch, 8, h2, w2, h2, w2, 1, p.weight[1], p.bias[1], s, small);
  n = batch * 16 * h2 * w2;
  pointwise_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      small, batch, 8, 16, h2 * w2, p.weight[2], p.bias[2], s, big);
  n = batch * 16 * h4 * w4;
  depthwise_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      big, batch, 16, h2, w2, h4, w4, 2, p.weight[3], p.bias[3], s, small);
  n = batch * 32 * h4 * w4;
  pointwise_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      small, batch, 16, 32, h4 * w4, p.weight[4], p.bias[4], s, quarter);
  depthwise_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      quarter, batch, 32, h4, w4, h4, w4, 1, p.weight[5], p.bias[5], s, big);
  pointwise_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      big, batch, 32, 32, h4 * w4, p.weight[6], p.bias[6], s, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace retinaface
