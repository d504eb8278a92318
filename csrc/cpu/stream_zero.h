// Zeroing a large output buffer that is not read again soon.
#pragma once

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>

// SSE2 is part of x86-64; GCC and Clang say so with __SSE2__, MSVC with
// _M_X64 (or _M_IX86_FP >= 2 for 32-bit builds). Elsewhere (ARM, ...) a plain
// memset, which is correct, just not streaming.
#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#define RETINAFACE_STREAM_STORES 1
#include <emmintrin.h>
#endif

namespace retinaface {

// memset(dst, 0, bytes) with non-temporal (streaming) stores where the CPU has
// them. A plain memset of a cold buffer first reads every cache line it
// writes (read for ownership), so zeroing a gradient costs twice its size in
// memory traffic; streaming stores write it once and leave the cache to the
// data still in use.
//
// Streaming stores are weakly ordered: they may become visible to other
// threads after the thread's later normal stores (including the release that
// publishes "this task is done"). The writing thread itself always reads its
// own stores back in program order, so writing over the zeroes is safe; call
// stream_fence() after stream_zero() and before the thread's next stores, so
// that whoever synchronises with those stores (at::parallel_for's join) also
// sees the zeroes.
inline void stream_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;  // dst may be null then (an empty tensor), even for memset
#if defined(RETINAFACE_STREAM_STORES)
  char* p = static_cast<char*>(dst);
  char* const end = p + bytes;
  const size_t misalignment = reinterpret_cast<uintptr_t>(p) & 15;
  if (misalignment != 0) {
    const size_t head = std::min<size_t>(16 - misalignment, bytes);
    std::memset(p, 0, head);
    p += head;
  }
  const __m128i zero = _mm_setzero_si128();
  // end - p, not p + 64 <= end: no pointer beyond one past the end.
  for (; end - p >= 64; p += 64) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), zero);
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 16), zero);
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 32), zero);
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 48), zero);
  }
  for (; end - p >= 16; p += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(p), zero);
  if (p < end) std::memset(p, 0, end - p);
#else
  std::memset(dst, 0, bytes);
#endif
}

inline void stream_fence() {
#if defined(RETINAFACE_STREAM_STORES)
  _mm_sfence();
#endif
}

}  // namespace retinaface
