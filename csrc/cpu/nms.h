// Greedy NMS on boxes already sorted by descending score: the one routine
// behind nms, batched_nms and detect_postprocess on the CPU.
#pragma once

#include <cstdint>
#include <vector>

#include "common/box_math.h"

namespace retinaface {

// A score with the index it belongs to, sorted by value rather than through an
// index so that sorting streams through memory.
template <typename S>
struct ScoredIndex {
  S score;
  int64_t index;
};

// Descending score, equal scores by increasing index: a strict total order,
// the order torch.sort(descending=True, stable=True) gives.
template <typename S>
inline bool ranks_before(const ScoredIndex<S>& a, const ScoredIndex<S>& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// The boxes still in play, in descending score order, struct-of-arrays so the
// IoU loop streams through memory. `position` maps each box back to the
// caller's numbering (a box index, a prior index).
template <typename T>
struct NmsCandidates {
  std::vector<T> x1, y1, x2, y2, area;
  std::vector<int64_t> position;
  std::vector<uint8_t> removed;  // scratch for greedy_nms

  void reserve(size_t n) {
    x1.reserve(n), y1.reserve(n), x2.reserve(n), y2.reserve(n), area.reserve(n);
    position.reserve(n);
  }
  void clear() {
    x1.clear(), y1.clear(), x2.clear(), y2.clear(), area.clear(), position.clear();
  }
  void push_back(const BoxT<T>& b, int64_t pos) {
    x1.push_back(b.x1), y1.push_back(b.y1), x2.push_back(b.x2), y2.push_back(b.y2);
    area.push_back(box_area(b));
    position.push_back(pos);
  }
  size_t size() const { return position.size(); }
};

// Flags the boxes j in [from, to) whose IoU with `top` is > threshold.
// Branch-free over plain arrays, so the compiler vectorises it: this loop is
// where greedy NMS spends its time.
template <typename T>
void flag_overlapping(const BoxT<T>& top, T top_area, const T* __restrict x1,
                      const T* __restrict y1, const T* __restrict x2, const T* __restrict y2,
                      const T* __restrict area, size_t from, size_t to, T threshold,
                      uint8_t* __restrict removed) {
  for (size_t j = from; j < to; ++j) {
    const BoxT<T> other{x1[j], y1[j], x2[j], y2[j]};
    removed[j] |= static_cast<uint8_t>(box_iou(top, other, top_area, area[j]) > threshold);
  }
}

// Keeps the highest-scoring box, drops every later box whose IoU with it is
// > threshold (strictly: IoU == threshold survives; a NaN IoU never
// suppresses), and repeats on the survivors: torchvision's semantics. Appends
// the positions of the kept boxes to `kept`, in score order, and stops after
// max_keep of them (the first max_keep of the full result; < 0 = no limit).
//
// Every kept box is compared with all later boxes still in the arrays
// (vectorised), and every few rounds the removed ones are compacted away when
// they are a good share, so that with RetinaFace's many overlapping
// candidates the suppressed boxes soon stop costing anything.
// Consumes `c` (its contents are left in an unspecified state).
template <typename T>
void greedy_nms(NmsCandidates<T>& c, T threshold, int64_t max_keep, std::vector<int64_t>& kept) {
  constexpr int kRoundsBetweenCompactions = 8;
  T* x1 = c.x1.data();
  T* y1 = c.y1.data();
  T* x2 = c.x2.data();
  T* y2 = c.y2.data();
  T* area = c.area.data();
  int64_t* position = c.position.data();
  size_t n = c.size();
  c.removed.assign(n, 0);
  uint8_t* gone = c.removed.data();

  size_t i = 0;
  int64_t num_kept = 0;
  int rounds = 0;
  while (i < n && (max_keep < 0 || num_kept < max_keep)) {
    kept.push_back(position[i]);
    ++num_kept;
    flag_overlapping(BoxT<T>{x1[i], y1[i], x2[i], y2[i]}, area[i], x1, y1, x2, y2, area, i + 1, n,
                     threshold, gone);
    ++i;
    while (i < n && gone[i]) ++i;
    if (++rounds < kRoundsBetweenCompactions) continue;
    rounds = 0;
    size_t num_removed = 0;
    for (size_t j = i; j < n; ++j) num_removed += gone[j];
    if (4 * num_removed < n - i) continue;
    // Move the survivors of [i, n) to the front, in order.
    size_t write = 0;
    for (size_t j = i; j < n; ++j) {
      if (gone[j]) continue;
      x1[write] = x1[j], y1[write] = y1[j], x2[write] = x2[j], y2[write] = y2[j];
      area[write] = area[j];
      position[write] = position[j];
      gone[write] = 0;
      ++write;
    }
    i = 0;
    n = write;
  }
}

}  // namespace retinaface
