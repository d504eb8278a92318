// Dynamic scheduling over images for the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace retinaface {

// Like at::parallel_for(0, n, grain, fn), but the chunks of `grain` items are
// handed out to the threads on demand instead of one static block per thread.
// Images differ a lot in cost (a crowd of 700 faces next to an empty image),
// and with a static split one thread waits for the other. fn(begin, end) must
// depend only on its range, so results do not depend on the schedule.
template <typename F>
void parallel_for_dynamic(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(chunks, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      fn(c * grain, std::min(n, (c + 1) * grain));
    }
  });
}

}  // namespace retinaface
