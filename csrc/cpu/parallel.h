// Dynamic scheduling over images (or tiles) for the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>

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

// fn(i) for i in [0, n), on this thread and on up to at::get_num_threads() - 1
// tasks of ATen's inter-op thread pool, the indices handed out on demand.
//
// For a kernel that runs next to another thread pool: detect() calls
// mobilenet_stem right before onnxruntime runs the rest of the network on its
// own threads. OpenMP's workers (at::parallel_for) keep spinning for a while
// after a parallel region and then compete with onnxruntime's threads for the
// cores; on a 2-core machine with other load that made the whole call up to
// 1.5x slower than running the op on one thread. The inter-op pool's threads
// sleep on a condition variable instead.
//
// The calling thread claims indices too, so all of them are done even when no
// task ever starts (e.g. when the caller is the pool's only thread); it
// returns once every claimed index is finished. A task that starts after that
// finds nothing left and returns without touching fn. The first exception
// thrown by fn is rethrown here.
template <typename F>
void parallel_for_interop(int64_t n, const F& fn) {
  if (n <= 0) return;
  const int64_t helpers = std::min<int64_t>(n, at::get_num_threads()) - 1;
  if (helpers <= 0 || at::in_parallel_region()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::mutex mutex;
    std::condition_variable finished;
    int64_t done = 0;  // guarded by mutex
    std::exception_ptr error;
  };
  auto state = std::make_shared<State>();
  const F* body = &fn;
  const auto work = [state, body, n] {
    for (int64_t i = state->next.fetch_add(1); i < n; i = state->next.fetch_add(1)) {
      std::exception_ptr error;
      try {
        (*body)(i);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(state->mutex);
      if (error && !state->error) state->error = error;
      if (++state->done == n) state->finished.notify_all();
    }
  };
  for (int64_t h = 0; h < helpers; ++h) at::launch(work);
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done == n; });
  if (state->error) std::rethrow_exception(state->error);
}

}  // namespace retinaface
