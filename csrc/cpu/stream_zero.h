// Zeroing a large output buffer that is not read again soon.
#pragma once

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace retinaface {

// memset(dst, 0, bytes) with non-temporal (streaming) stores where the CPU has
// them. A plain memset of a cold buffer first reads every cache line it
// writes (read for ownership), so zeroing a gradient costs twice its size in
// memory traffic; streaming stores write it once and leave the cache to the
// data still in use. Call stream_fence() before the zeroed memory is written
// again by normal stores whose order matters to other threads.
inline void stream_zero(void* dst, size_t bytes) {
#if defined(__SSE2__)
  char* p = static_cast<char*>(dst);
  char* const end = p + bytes;
  const size_t misalignment = reinterpret_cast<uintptr_t>(p) & 15;
  if (misalignment != 0) {
    const size_t head = std::min<size_t>(16 - misalignment, bytes);
    std::memset(p, 0, head);
    p += head;
  }
  const __m128i zero = _mm_setzero_si128();
  for (; p + 64 <= end; p += 64) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), zero);
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 16), zero);
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 32), zero);
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 48), zero);
  }
  for (; p + 16 <= end; p += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(p), zero);
  if (p < end) std::memset(p, 0, end - p);
#else
  std::memset(dst, 0, bytes);
#endif
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace retinaface
