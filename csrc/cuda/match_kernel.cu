// match on CUDA: biubug6's matching for a padded batch, equal to the CPU
// kernel (csrc/cpu/match.cpp) index for index, ties included.
//
// Three kernels on the stream, no host synchronisation:
//
// 1. best_overlaps_kernel, a block per (tile of kThreads priors, image), a
//    thread per prior. The image's faces are staged in shared memory in
//    chunks of kThreads (any G, e.g. WIDER FACE's 709-face image). Every
//    thread keeps its prior's best face (max IoU, lowest face index on ties:
//    faces are visited in index order with a strict >), and for every face the
//    block finds its best prior among the tile's: a warp reduction (max IoU,
//    then the lowest lane = lowest prior index reaching it), a shared-memory
//    atomicMax per warp, and one global atomicMax per face and block on the
//    packed key (IoU bits << 32) | (0xFFFFFFFF - prior). Only IoU > 0 enters a
//    key: positive floats order like their bits, and the inverted index makes
//    the lowest prior win among equal IoUs, as torch.max. A key never set (0)
//    means what the CPU gives a face that overlaps no prior: prior 0 at IoU 0.
//    Crowds: the priors are consecutive in the grid's row-major order, so a
//    tile covers a strip of the image and a warp a short run of cells. The
//    block stages only the faces that can reach its tile's bounding box of
//    prior corners and a warp skips the faces outside its own bounding box.
//    Both tests are exact: a face with x2 <= every prior's x1 (and so on) has
//    a clamped intersection of 0 with each of them, so IoU 0 (or NaN for a
//    prior with a NaN corner, which is left out of the boxes), and IoU <= 0
//    or NaN never changes a best face nor enters a key.
//    The prior's state {best face, best IoU} is written into the output
//    buffer itself (PriorState, 8 bytes like the int64 it becomes).
// 2. force_best_priors_kernel, a thread per face: biubug6's steps 2 to 4. A
//    valid face reaching min_best_iou forces its best prior (overlap 2.0) and
//    marks its image as having positives; every valid face claims its best
//    prior through an atomicMax of max_gt + j on the prior's face: "last write
//    wins in face order" is "largest j wins", and max_gt + j beats every face
//    index kernel 1 wrote. The first valid face of the image is recorded too
//    (an atomicMax of max_gt - j).
// 3. assign_kernel, a thread per prior: step 5 and the int64 output. A prior
//    that overlaps no face keeps the first valid face at IoU 0 (torch.max over
//    a column of zeros, degenerate faces left out), which only shows when
//    threshold <= 0.
//
// Degenerate boxes (is_valid_box false) take no part, as on the CPU. Counts
// outside [0, max_gt] are clamped into it (the CPU kernel raises instead: that
// needs the counts on the host).
#include "common/box_math.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/match_kernel.h"

namespace retinaface {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // priors per block of kernel 1, and faces per staged chunk
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxGridY = 65535;

// A prior's state between the kernels, stored in the int64 output element of
// that prior (little-endian: face is the low word). face: the best face of
// kernel 1 (-1: none with IoU > 0), or max_gt + j once face j claimed the
// prior in kernel 2. overlap: the best IoU (>= 0), 2.0 once forced.
struct alignas(8) PriorState {
  int face;
  float overlap;
};
static_assert(sizeof(PriorState) == sizeof(int64_t), "PriorState lives in an int64 output element");

// Per image, set by kernel 2 (scratch, cleared before kernel 1).
struct ImageState {
  int first_valid_code;  // max_gt - (first valid face), 0 if there is none
  int any_forced;        // 1 if some face forced its best prior
};

// The bounding box of some prior boxes (x1_min, y1_min, x2_max, y2_max); empty
// (+inf, +inf, -inf, -inf) when there are none.
struct Extent {
  float x1_min, y1_min, x2_max, y2_max;
};

__device__ __forceinline__ Extent empty_extent() { return {INFINITY, INFINITY, -INFINITY, -INFINITY}; }

__device__ __forceinline__ Extent merge(const Extent& a, const Extent& b) {
  return {fminf(a.x1_min, b.x1_min), fminf(a.y1_min, b.y1_min), fmaxf(a.x2_max, b.x2_max),
          fmaxf(a.y2_max, b.y2_max)};
}

// True when the face's IoU with every prior inside the extent is 0 or NaN (see
// the header comment); always true for an empty extent.
__device__ __forceinline__ bool misses(const Box& face, const Extent& e) {
  return face.x2 <= e.x1_min || face.x1 >= e.x2_max || face.y2 <= e.y1_min || face.y1 >= e.y2_max;
}

__device__ __forceinline__ Extent warp_extent(Extent e) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const Extent other{__shfl_xor_sync(kFullMask, e.x1_min, offset),
                       __shfl_xor_sync(kFullMask, e.y1_min, offset),
                       __shfl_xor_sync(kFullMask, e.x2_max, offset),
                       __shfl_xor_sync(kFullMask, e.y2_max, offset)};
    e = merge(e, other);
  }
  return e;
}

__device__ __forceinline__ unsigned warp_max(unsigned v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_max_sync(kFullMask, v);
#else
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = max(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
#endif
}

__device__ __forceinline__ int64_t clamped_count(const int64_t* counts, int64_t image, int64_t max_gt) {
  const int64_t count = counts[image];
  return count < 0 ? 0 : (count > max_gt ? max_gt : count);
}

// Float32 values, as the CPU kernel's gt_boxes.to(float32) (double rounds to nearest).
template <typename T>
__device__ __forceinline__ Box load_box(const T* p) {
  return {static_cast<float>(to_compute(p[0])), static_cast<float>(to_compute(p[1])),
          static_cast<float>(to_compute(p[2])), static_cast<float>(to_compute(p[3]))};
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    best_overlaps_kernel(const T* __restrict__ gt_boxes, const int64_t* __restrict__ gt_counts,
                         const float* __restrict__ priors, int64_t batch, int64_t max_gt,
                         int64_t num_priors, unsigned long long* __restrict__ best_prior_key,
                         PriorState* __restrict__ prior_state) {
  // One chunk of staged faces, in index order.
  __shared__ Box face_box[kThreads];
  __shared__ float face_area[kThreads];
  __shared__ int face_index[kThreads];
  __shared__ unsigned long long face_key[kThreads];  // the tile's best prior per staged face
  __shared__ Extent warp_extents[kWarps];
  __shared__ int warp_kept[kWarps];

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t prior = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool has_prior = prior < num_priors;

  // The prior's corners and area exactly as the CPU kernel's PriorTable.
  Box prior_box{0.0f, 0.0f, 0.0f, 0.0f};
  float prior_area = 0.0f;
  Extent own = empty_extent();
  if (has_prior) {
    const float* v = priors + 4 * prior;
    prior_box = prior_corners(v[0], v[1], v[2], v[3]);
    prior_area = box_area(prior_box);
    const bool has_nan = prior_box.x1 != prior_box.x1 || prior_box.y1 != prior_box.y1 ||
                         prior_box.x2 != prior_box.x2 || prior_box.y2 != prior_box.y2;
    if (!has_nan) own = {prior_box.x1, prior_box.y1, prior_box.x2, prior_box.y2};
  }
  const Extent warp_box = warp_extent(own);
  if (lane == 0) warp_extents[warp] = warp_box;
  __syncthreads();
  Extent tile_box = empty_extent();
  for (int w = 0; w < kWarps; ++w) tile_box = merge(tile_box, warp_extents[w]);
  // P <= INT32_MAX (checked by the caller), so the index fits the key's low word.
  const unsigned inverted_prior = 0xffffffffu - static_cast<unsigned>(prior);
  const unsigned lanes_below = (1u << lane) - 1u;

  for (int64_t image = blockIdx.y; image < batch; image += gridDim.y) {
    const int64_t count = clamped_count(gt_counts, image, max_gt);
    const T* boxes = gt_boxes + image * max_gt * 4;
    float best_iou = 0.0f;
    int best_face = -1;

    for (int64_t chunk = 0; chunk < count; chunk += kThreads) {
      // Stage the chunk's valid faces that reach the tile, keeping their order.
      const int64_t j = chunk + threadIdx.x;
      Box face{0.0f, 0.0f, 0.0f, 0.0f};
      bool keep = false;
      if (j < count) {
        face = load_box(boxes + 4 * j);
        keep = is_valid_box(face) && !misses(face, tile_box);
      }
      const unsigned kept_in_warp = __ballot_sync(kFullMask, keep);
      if (lane == 0) warp_kept[warp] = __popc(kept_in_warp);
      // Also orders the previous chunk's reads of the staging arrays before
      // the writes below.
      __syncthreads();
      int slot = __popc(kept_in_warp & lanes_below), kept = 0;
      for (int w = 0; w < kWarps; ++w) {
        slot += w < warp ? warp_kept[w] : 0;
        kept += warp_kept[w];
      }
      if (keep) {
        face_box[slot] = face;
        face_area[slot] = box_area(face);
        face_index[slot] = static_cast<int>(j);
        face_key[slot] = 0ull;
      }
      __syncthreads();

      for (int k = 0; k < kept; ++k) {
        const Box f = face_box[k];
        if (misses(f, warp_box)) continue;  // the same for the whole warp
        const float iou = has_prior ? box_iou(f, prior_box, face_area[k], prior_area) : 0.0f;
        if (iou > best_iou) {  // strict: the lowest face index keeps a tie
          best_iou = iou;
          best_face = face_index[k];
        }
        // Only IoU > 0 competes for the face's best prior (NaN compares false).
        const unsigned bits = iou > 0.0f ? __float_as_uint(iou) : 0u;
        if (__ballot_sync(kFullMask, bits != 0u) != 0u) {
          const unsigned max_bits = warp_max(bits);
          // Lanes hold consecutive priors: the lowest lane is the lowest index.
          const int winner = __ffs(__ballot_sync(kFullMask, bits == max_bits)) - 1;
          if (lane == winner) {
            atomicMax(&face_key[k], (static_cast<unsigned long long>(max_bits) << 32) | inverted_prior);
          }
        }
      }
      __syncthreads();
      if (threadIdx.x < kept && face_key[threadIdx.x] != 0ull) {
        atomicMax(&best_prior_key[image * max_gt + face_index[threadIdx.x]], face_key[threadIdx.x]);
      }
    }
    if (has_prior) prior_state[image * num_priors + prior] = PriorState{best_face, best_iou};
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    force_best_priors_kernel(const T* __restrict__ gt_boxes, const int64_t* __restrict__ gt_counts,
                             int64_t batch, int64_t max_gt, int64_t num_priors, float min_best_iou,
                             const unsigned long long* __restrict__ best_prior_key,
                             ImageState* __restrict__ images, PriorState* __restrict__ prior_state) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= max_gt) return;
  for (int64_t image = blockIdx.y; image < batch; image += gridDim.y) {
    if (j >= clamped_count(gt_counts, image, max_gt)) continue;
    if (!is_valid_box(load_box(gt_boxes + (image * max_gt + j) * 4))) continue;
    atomicMax(&images[image].first_valid_code, static_cast<int>(max_gt - j));
    // Step 1: the face's best prior; key 0 = prior 0 at IoU 0.
    const unsigned long long key = best_prior_key[image * max_gt + j];
    const float best_iou = __uint_as_float(static_cast<unsigned>(key >> 32));
    const int64_t best_prior =
        key == 0ull ? 0 : static_cast<int64_t>(0xffffffffu - static_cast<unsigned>(key));
    PriorState* state = prior_state + image * num_priors + best_prior;
    // Steps 2-3: a face reaching min_best_iou forces its best prior. Several
    // faces may store the same 2.0f: identical values, no ordering needed.
    if (best_iou >= min_best_iou) {
      state->overlap = 2.0f;
      images[image].any_forced = 1;
    }
    // Step 4: in face order, last write wins = the largest j.
    atomicMax(&state->face, static_cast<int>(max_gt + j));
  }
}

__global__ void __launch_bounds__(kThreads)
    assign_kernel(int64_t batch, int64_t max_gt, int64_t num_priors, float threshold,
                  const ImageState* __restrict__ images, int64_t* assigned) {
  const int64_t prior = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (prior >= num_priors) return;
  for (int64_t image = blockIdx.y; image < batch; image += gridDim.y) {
    const ImageState im = images[image];
    int64_t* out = assigned + image * num_priors + prior;
    int64_t result = -1;  // no forced face: the image has no positives
    if (im.any_forced) {
      const PriorState state = *reinterpret_cast<const PriorState*>(out);
      int64_t face = state.face;
      if (face >= max_gt) {
        face -= max_gt;  // claimed in step 4
      } else if (face < 0) {
        face = max_gt - im.first_valid_code;  // overlaps no face (exists: a face was forced)
      }
      result = state.overlap < threshold ? -1 : face;
    }
    *out = result;
  }
}

}  // namespace

int64_t launch_match_scratch_bytes(int64_t batch, int64_t max_gt) {
  return batch * max_gt * static_cast<int64_t>(sizeof(unsigned long long)) +
         batch * static_cast<int64_t>(sizeof(ImageState));
}

template <typename T>
cudaError_t launch_match(const T* gt_boxes, const int64_t* gt_counts, const float* priors,
                         int64_t batch, int64_t max_gt, int64_t num_priors, float threshold,
                         float min_best_iou, void* scratch, int64_t* assigned,
                         cudaStream_t stream) {
  if (batch <= 0 || max_gt <= 0 || num_priors <= 0) return cudaErrorInvalidValue;
  auto* best_prior_key = static_cast<unsigned long long*>(scratch);
  auto* images = reinterpret_cast<ImageState*>(best_prior_key + batch * max_gt);
  auto* prior_state = reinterpret_cast<PriorState*>(assigned);

  cudaError_t err = cudaMemsetAsync(scratch, 0, launch_match_scratch_bytes(batch, max_gt), stream);
  if (err != cudaSuccess) return err;

  const unsigned int images_y = static_cast<unsigned int>(batch < kMaxGridY ? batch : kMaxGridY);
  const dim3 prior_grid(static_cast<unsigned int>(ceil_div(num_priors, kThreads)), images_y);
  best_overlaps_kernel<T><<<prior_grid, kThreads, 0, stream>>>(
      gt_boxes, gt_counts, priors, batch, max_gt, num_priors, best_prior_key, prior_state);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const dim3 face_grid(static_cast<unsigned int>(ceil_div(max_gt, kThreads)), images_y);
  force_best_priors_kernel<T><<<face_grid, kThreads, 0, stream>>>(
      gt_boxes, gt_counts, batch, max_gt, num_priors, min_best_iou, best_prior_key, images,
      prior_state);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  assign_kernel<<<prior_grid, kThreads, 0, stream>>>(batch, max_gt, num_priors, threshold, images,
                                                     assigned);
  return cudaGetLastError();
}

#define RF_INSTANTIATE_MATCH(T)                                                                  \
  template cudaError_t launch_match<T>(const T*, const int64_t*, const float*, int64_t, int64_t, \
                                       int64_t, float, float, void*, int64_t*, cudaStream_t);
RF_INSTANTIATE_MATCH(float)
RF_INSTANTIATE_MATCH(double)
RF_INSTANTIATE_MATCH(__half)
RF_INSTANTIATE_MATCH(__nv_bfloat16)
#undef RF_INSTANTIATE_MATCH

}  // namespace cuda
}  // namespace retinaface
