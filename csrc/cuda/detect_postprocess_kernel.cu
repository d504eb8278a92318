// detect_postprocess on CUDA: one 1024-thread block per image, so a whole
// batch is one launch with static shapes and no host sync (CUDA-graph
// capturable). Per image, as the CPU kernel (csrc/cpu/detect_postprocess.cpp):
//   1. count the candidates (score > threshold);
//   2. if more than pre_nms_top_k, radix-select the k-th largest score key;
//   3. compact the top-k in prior order (ties at the k-th key: lowest prior
//      indices), so the selection equals the head of a stable sort;
//   4. bitonic-sort them by (score desc, prior index asc), in global scratch;
//   5. decode their boxes;
//   6. greedy NMS 64 candidates at a time: the 64 x 64 diagonal bitmask in
//      shared memory, one thread resolves the word, then every thread tests the
//      later candidates against the boxes just kept; stop at max_detections;
//   7. write the kept rows (landmarks decoded here) and zero the rest.
#include "cuda/detect_postprocess_kernel.h"

#include "common/box_math.h"
#include "cuda/cuda_utils.cuh"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kWord = 64;         // candidates per NMS step (one 64-bit mask word)
constexpr int kDetectionWidth = 15;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;

// Sort keys: larger score -> larger key, -0.0 ties with +0.0 (as the CPU's
// comparison). NaN never gets here (it fails the threshold).
template <typename T>
struct ScoreKey;
template <>
struct ScoreKey<float> {
  using type = uint32_t;
  __device__ static uint32_t of(float x) {
    if (x == 0.0f) x = 0.0f;
    const uint32_t bits = __float_as_uint(x);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  }
};
template <>
struct ScoreKey<double> {
  using type = unsigned long long;
  __device__ static unsigned long long of(double x) {
    if (x == 0.0) x = 0.0;
    const auto bits = static_cast<unsigned long long>(__double_as_longlong(x));
    return (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
  }
};

// Rank order of the CPU's ranks_before: score descending, prior index ascending.
template <typename K>
__device__ __forceinline__ bool ranks_before(K ka, int32_t ia, K kb, int32_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

__host__ __device__ inline int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }
__host__ __device__ inline int64_t pow2_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Offsets of one image's scratch regions; the host sizes the buffer with the
// same function the kernel reads it with.
struct ScratchLayout {
  int64_t keys, indices, boxes, areas, removed, total;
};
__host__ __device__ inline ScratchLayout scratch_layout(int64_t num_priors, int64_t top_k,
                                                        int compute_bytes) {
  const int64_t kc = top_k < num_priors ? top_k : num_priors;
  const int64_t sorted = kc > 0 ? pow2_at_least(kc) : 0;
  ScratchLayout l;
  l.keys = 0;
  l.indices = l.keys + align16(sorted * compute_bytes);  // 32-bit keys for float, 64 for double
  l.boxes = l.indices + align16(sorted * 4);
  l.areas = l.boxes + align16(kc * 4 * compute_bytes);
  l.removed = l.areas + align16(kc * compute_bytes);
  l.total = l.removed + align16(kc);
  return l;
}

// Exclusive prefix sum over the block (all threads must call it); *total is
// the sum of every thread's value.
__device__ unsigned long long block_exclusive_scan(unsigned long long value,
                                                   unsigned long long* warp_sums,
                                                   unsigned long long* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long x = value;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, x, offset);
    if (lane >= offset) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    unsigned long long s = lane < kWarps ? warp_sums[lane] : 0;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const unsigned long long y = __shfl_up_sync(0xffffffffu, s, offset);
      if (lane >= offset) s += y;
    }
    warp_sums[lane] = s;
  }
  __syncthreads();
  const unsigned long long before = (warp > 0 ? warp_sums[warp - 1] : 0) + x - value;
  *total = warp_sums[kWarps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return before;
}

template <typename In, typename T>
__device__ __forceinline__ T load(const In* p) {
  return static_cast<T>(to_compute(*p));
}

template <typename In, typename T>
__global__ void __launch_bounds__(kThreads)
    detect_postprocess_kernel(const In* __restrict__ loc, const In* __restrict__ conf,
                              int64_t num_classes, const In* __restrict__ landms,
                              const T* __restrict__ priors, int64_t num_priors, T score_threshold,
                              T nms_threshold, T var0, T var1, int64_t top_k,
                              int64_t max_detections, char* __restrict__ scratch,
                              T* __restrict__ detections, int64_t* __restrict__ counts) {
  using Key = typename ScoreKey<T>::type;
  constexpr int kKeyBits = 8 * sizeof(Key);
  const int64_t image = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t P = num_priors;
  const In* scores = conf + image * P * num_classes + 1;  // stride num_classes
  const In* image_loc = loc + image * P * 4;
  const In* image_landms = landms + image * P * 10;
  T* out = detections + image * max_detections * kDetectionWidth;

  const ScratchLayout layout = scratch_layout(P, top_k, static_cast<int>(sizeof(T)));
  char* base = scratch + image * layout.total;
  Key* keys = reinterpret_cast<Key*>(base + layout.keys);
  int32_t* indices = reinterpret_cast<int32_t*>(base + layout.indices);
  BoxT<T>* boxes = reinterpret_cast<BoxT<T>*>(base + layout.boxes);
  T* areas = reinterpret_cast<T*>(base + layout.areas);
  uint8_t* removed = reinterpret_cast<uint8_t*>(base + layout.removed);

  __shared__ unsigned long long warp_sums[32];
  __shared__ int histogram[kRadixBins];
  __shared__ Key shared_prefix;
  __shared__ int64_t shared_remaining;
  __shared__ uint64_t diagonal[kWord];
  __shared__ uint64_t shared_removed_word, shared_kept_word;
  __shared__ BoxT<T> kept_boxes[kWord];
  __shared__ T kept_areas[kWord];

  // 1. Candidates.
  unsigned long long local = 0;
  for (int64_t p = tid; p < P; p += kThreads) {
    local += load<In, T>(scores + p * num_classes) > score_threshold;  // NaN fails
  }
  unsigned long long num_candidates;
  block_exclusive_scan(local, warp_sums, &num_candidates);
  const int64_t candidates = static_cast<int64_t>(num_candidates);
  const int64_t num_selected = candidates < top_k ? candidates : top_k;

  // 2. Radix select (MSD, 8 bits a pass) of the top_k-th largest key: after
  // it, `pivot` is that key and `ties_taken` how many candidates equal to it
  // are selected (the rest of the top-k are > pivot).
  const bool take_all = candidates <= top_k;
  Key pivot = 0;
  int64_t ties_taken = 0;
  if (!take_all && top_k > 0) {
    Key prefix = 0, prefix_mask = 0;
    int64_t remaining = top_k;
    for (int shift = kKeyBits - kRadixBits; shift >= 0; shift -= kRadixBits) {
      for (int d = tid; d < kRadixBins; d += kThreads) histogram[d] = 0;
      __syncthreads();
      for (int64_t p = tid; p < P; p += kThreads) {
        const T s = load<In, T>(scores + p * num_classes);
        if (!(s > score_threshold)) continue;
        const Key key = ScoreKey<T>::of(s);
        if ((key & prefix_mask) == prefix) {
          atomicAdd(&histogram[static_cast<int>((key >> shift) & (kRadixBins - 1))], 1);
        }
      }
      __syncthreads();
      if (tid == 0) {
        int64_t above = 0;
        for (int d = kRadixBins - 1; d >= 0; --d) {
          if (above + histogram[d] >= remaining) {
            prefix |= static_cast<Key>(d) << shift;
            remaining -= above;
            break;
          }
          above += histogram[d];
        }
        shared_prefix = prefix;
        shared_remaining = remaining;
      }
      __syncthreads();
      prefix = shared_prefix;
      remaining = shared_remaining;
      prefix_mask |= static_cast<Key>(kRadixBins - 1) << shift;
    }
    pivot = prefix;
    ties_taken = remaining;
  }

  // 3. Ordered compaction of the selection, in prior order. One scan counts
  // candidates above the pivot (high 32 bits) and at the pivot (low 32 bits);
  // the first ties_taken of the latter are selected.
  int64_t above_before_chunk = 0, ties_before_chunk = 0;
  for (int64_t chunk = 0; chunk < P && num_selected > 0; chunk += kThreads) {
    const int64_t p = chunk + tid;
    bool above = false, tie = false;
    Key key = 0;
    if (p < P) {
      const T s = load<In, T>(scores + p * num_classes);
      if (s > score_threshold) {
        key = ScoreKey<T>::of(s);
        above = take_all || key > pivot;
        tie = !above && key == pivot;
      }
    }
    const unsigned long long packed = (static_cast<unsigned long long>(above) << 32) | tie;
    unsigned long long chunk_total;
    const unsigned long long before = block_exclusive_scan(packed, warp_sums, &chunk_total);
    const int64_t above_before = above_before_chunk + static_cast<int64_t>(before >> 32);
    const int64_t ties_before = ties_before_chunk + static_cast<int64_t>(before & 0xffffffffu);
    if (above || (tie && ties_before < ties_taken)) {
      const int64_t slot = above_before + (ties_before < ties_taken ? ties_before : ties_taken);
      keys[slot] = key;
      indices[slot] = static_cast<int32_t>(p);
    }
    above_before_chunk += static_cast<int64_t>(chunk_total >> 32);
    ties_before_chunk += static_cast<int64_t>(chunk_total & 0xffffffffu);
  }

  // 4. Bitonic sort of the selection (padded to a power of two with entries
  // that rank last) into (score desc, prior index asc).
  const int64_t sorted = num_selected > 0 ? pow2_at_least(num_selected) : 0;
  for (int64_t k = num_selected + tid; k < sorted; k += kThreads) {
    keys[k] = 0;  // below every candidate's key (NaN has been dropped)
    indices[k] = 0x7fffffff;
  }
  __syncthreads();
  for (int64_t size = 2; size <= sorted; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t t = tid; t < sorted / 2; t += kThreads) {
        const int64_t i = 2 * t - (t & (stride - 1));
        const int64_t j = i + stride;
        const bool first_half = (i & size) == 0;  // this run sorts best-first
        const Key ki = keys[i], kj = keys[j];
        const int32_t ii = indices[i], ij = indices[j];
        if (ranks_before(kj, ij, ki, ii) == first_half) {
          keys[i] = kj, keys[j] = ki;
          indices[i] = ij, indices[j] = ii;
        }
      }
      __syncthreads();
    }
  }

  // 5. Decode the selected boxes.
  for (int64_t k = tid; k < num_selected; k += kThreads) {
    const int64_t p = indices[k];
    const In* l = image_loc + 4 * p;
    const T offsets[4] = {load<In, T>(l), load<In, T>(l + 1), load<In, T>(l + 2), load<In, T>(l + 3)};
    const T* pr = priors + 4 * p;
    const BoxT<T> box = decode_box(offsets, pr[0], pr[1], pr[2], pr[3], var0, var1);
    boxes[k] = box;
    areas[k] = box_area(box);
    removed[k] = 0;
  }
  __syncthreads();

  // 6-7. Greedy NMS, 64 candidates a step (all branches below are uniform
  // over the block: they depend on shared or block-wide values only).
  int64_t num_kept = 0;
  for (int64_t row0 = 0; row0 < num_selected && num_kept < max_detections; row0 += kWord) {
    const int rows = num_selected - row0 < kWord ? static_cast<int>(num_selected - row0) : kWord;
    // Diagonal word: bit c of row r set when candidate c > r of this word has
    // IoU > threshold with candidate r (the higher-ranked box first, as the
    // CPU's greedy_nms). Rows already removed are never read.
    for (int r = warp; r < kWord; r += kWarps) {
      uint64_t bits = 0;
      if (r < rows && !removed[row0 + r]) {
        const BoxT<T> box = boxes[row0 + r];
        const T area = areas[row0 + r];
        const int c0 = lane, c1 = lane + 32;
        const bool hit0 = c0 > r && c0 < rows &&
                          box_iou(box, boxes[row0 + c0], area, areas[row0 + c0]) > nms_threshold;
        const bool hit1 = c1 > r && c1 < rows &&
                          box_iou(box, boxes[row0 + c1], area, areas[row0 + c1]) > nms_threshold;
        bits = static_cast<uint64_t>(__ballot_sync(0xffffffffu, hit0)) |
               (static_cast<uint64_t>(__ballot_sync(0xffffffffu, hit1)) << 32);
      }
      if (lane == 0) diagonal[r] = bits;
    }
    if (warp == 0) {
      const bool gone0 = lane < rows && removed[row0 + lane];
      const bool gone1 = lane + 32 < rows && removed[row0 + lane + 32];
      const uint64_t word = static_cast<uint64_t>(__ballot_sync(0xffffffffu, gone0)) |
                            (static_cast<uint64_t>(__ballot_sync(0xffffffffu, gone1)) << 32);
      if (lane == 0) shared_removed_word = word;
    }
    __syncthreads();
    if (tid == 0) {
      const uint64_t valid = rows == kWord ? ~uint64_t{0} : (uint64_t{1} << rows) - 1;
      uint64_t open = ~shared_removed_word & valid;
      uint64_t kept = 0;
      int64_t room = max_detections - num_kept;
      while (open != 0 && room > 0) {
        const int b = __ffsll(static_cast<long long>(open)) - 1;
        kept |= uint64_t{1} << b;
        --room;
        open &= ~(uint64_t{1} << b);
        open &= ~diagonal[b];
      }
      shared_kept_word = kept;
    }
    __syncthreads();
    const uint64_t kept = shared_kept_word;
    if (tid < rows && ((kept >> tid) & 1)) {
      const int64_t k = row0 + tid;
      const int64_t p = indices[k];
      const BoxT<T> box = boxes[k];
      kept_boxes[tid] = box;
      kept_areas[tid] = areas[k];
      const T* pr = priors + 4 * p;
      T row[kDetectionWidth];
      row[0] = box.x1, row[1] = box.y1, row[2] = box.x2, row[3] = box.y2;
      row[4] = load<In, T>(scores + p * num_classes);
      T offsets[10];
      for (int c = 0; c < 10; ++c) offsets[c] = load<In, T>(image_landms + 10 * p + c);
      decode_landmarks(offsets, pr[0], pr[1], pr[2], pr[3], var0, row + 5);
      T* dst = out + (num_kept + __popcll(kept & ((uint64_t{1} << tid) - 1))) * kDetectionWidth;
      for (int c = 0; c < kDetectionWidth; ++c) dst[c] = row[c];
    }
    __syncthreads();  // kept_boxes
    num_kept += __popcll(kept);
    if (num_kept < max_detections) {
      for (int64_t j = row0 + rows + tid; j < num_selected; j += kThreads) {
        if (removed[j]) continue;
        const BoxT<T> box = boxes[j];
        const T area = areas[j];
        for (uint64_t bits = kept; bits != 0; bits &= bits - 1) {
          const int b = __ffsll(static_cast<long long>(bits)) - 1;
          if (box_iou(kept_boxes[b], box, kept_areas[b], area) > nms_threshold) {
            removed[j] = 1;
            break;
          }
        }
      }
    }
    // Before the next step: removed[] is read, diagonal / kept words and
    // kept_boxes are rewritten.
    __syncthreads();
  }

  for (int64_t e = num_kept * kDetectionWidth + tid; e < max_detections * kDetectionWidth;
       e += kThreads) {
    out[e] = T(0);
  }
  if (tid == 0) counts[image] = num_kept;
}

}  // namespace

int64_t detect_postprocess_scratch_bytes(int64_t num_priors, int64_t pre_nms_top_k,
                                         int compute_bytes) {
  return scratch_layout(num_priors, pre_nms_top_k, compute_bytes).total;
}

template <typename In, typename T>
cudaError_t launch_detect_postprocess(const In* loc, const In* conf, int64_t num_classes,
                                      const In* landms, const T* priors, int64_t batch,
                                      int64_t num_priors, const DetectPostprocessParams& params,
                                      void* scratch, T* detections, int64_t* counts,
                                      cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (batch > 0x7fffffff || num_priors > 0x7ffffffe) return cudaErrorInvalidValue;
  detect_postprocess_kernel<In, T><<<static_cast<unsigned int>(batch), kThreads, 0, stream>>>(
      loc, conf, num_classes, landms, priors, num_priors, static_cast<T>(params.score_threshold),
      static_cast<T>(params.nms_threshold), static_cast<T>(params.var0),
      static_cast<T>(params.var1), params.pre_nms_top_k, params.max_detections,
      static_cast<char*>(scratch), detections, counts);
  return cudaGetLastError();
}

#define RF_INSTANTIATE_DETECT(In, T)                                                        \
  template cudaError_t launch_detect_postprocess<In, T>(                                    \
      const In*, const In*, int64_t, const In*, const T*, int64_t, int64_t,                 \
      const DetectPostprocessParams&, void*, T*, int64_t*, cudaStream_t);
RF_INSTANTIATE_DETECT(float, float)
RF_INSTANTIATE_DETECT(__half, float)
RF_INSTANTIATE_DETECT(__nv_bfloat16, float)
RF_INSTANTIATE_DETECT(double, double)
#undef RF_INSTANTIATE_DETECT

}  // namespace cuda
}  // namespace retinaface
