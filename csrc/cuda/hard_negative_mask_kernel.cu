// hard_negative_mask on CUDA: one block per image counts its positives
// (k = min(ratio * num_pos, P - 1), on the device) and runs the block radix
// select of hard_negative_select.cuh on the keys of the loss, positives zeroed.
// Every mask element is written once; nothing leaves the device.
#include "cuda/hard_negative_select.cuh"
#include "cuda/hard_negative_mask_kernel.h"

namespace retinaface {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    hard_negative_mask_kernel(const T* __restrict__ conf_loss, const bool* __restrict__ positive,
                              int num_priors, int64_t neg_pos_ratio, bool* __restrict__ mask) {
  using Loss = compute_t<T>;
  using Key = decltype(selection_key(Loss(0)));
  __shared__ SelectShared<Key> shared;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * num_priors;
  const T* loss = conf_loss + offset;
  const bool* pos = positive + offset;
  bool* out = mask + offset;

  int own_positives = 0;
  for (int i = threadIdx.x; i < num_priors; i += kSelectThreads) own_positives += pos[i] ? 1 : 0;
  const int num_pos = block_sum(own_positives, shared.warp_totals);
  const int64_t k = num_hard_negatives(num_pos, neg_pos_ratio, num_priors);

  // biubug6 zeroes the positives' loss before ranking.
  const auto load_key = [&](int i) -> Key {
    return pos[i] ? selection_key(Loss(0)) : selection_key(static_cast<Loss>(to_compute(loss[i])));
  };
  block_select_top_k<Key>(load_key, num_priors, k, shared,
                          [&](int i, Key, bool selected) { out[i] = selected; });
}

}  // namespace

template <typename T>
cudaError_t launch_hard_negative_mask(const T* conf_loss, const bool* positive, int64_t batch,
                                      int64_t num_priors, int64_t neg_pos_ratio, bool* mask,
                                      cudaStream_t stream) {
  if (batch <= 0 || num_priors <= 0) return cudaSuccess;
  hard_negative_mask_kernel<T><<<static_cast<unsigned int>(batch), kSelectThreads, 0, stream>>>(
      conf_loss, positive, static_cast<int>(num_priors), neg_pos_ratio, mask);
  return cudaGetLastError();
}

#define RF_INSTANTIATE(T)                                                                       \
  template cudaError_t launch_hard_negative_mask<T>(const T*, const bool*, int64_t, int64_t, \
                                                    int64_t, bool*, cudaStream_t);
RF_FOR_EACH_FLOATING_TYPE(RF_INSTANTIATE)
#undef RF_INSTANTIATE

}  // namespace cuda
}  // namespace retinaface
