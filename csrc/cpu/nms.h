// Greedy NMS on boxes already sorted by descending score: the one routine
// behind nms, batched_nms and detect_postprocess on the CPU.
#pragma once

#include <cstdint>
#include <vector>

#include "common/box_math.h"

namespace retinaface {

// The boxes still in play, in descending score order, struct-of-arrays so the
// IoU loop streams through memory. `position` maps each box back to the
// caller's numbering (its rank in the sorted order, a prior index, ...).
template <typename T>
struct NmsCandidates {
  std::vector<T> x1, y1, x2, y2, area;
  std::vector<int64_t> position;

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

// Keeps the highest-scoring box, drops every later box whose IoU with it is
// > threshold (strictly: IoU == threshold survives; a NaN IoU never
// suppresses), and repeats on the survivors: torchvision's semantics. Appends
// the positions of the kept boxes to `kept`, in score order, and stops after
// max_keep of them (the first max_keep of the full result; < 0 = no limit).
//
// The survivors are compacted after every kept box instead of flagging the
// suppressed ones, so a suppressed box costs nothing afterwards: with
// RetinaFace's many overlapping candidates most are gone after a few rounds.
// Consumes `c` (its contents are left in an unspecified state).
template <typename T>
void greedy_nms(NmsCandidates<T>& c, T threshold, int64_t max_keep, std::vector<int64_t>& kept) {
  T* x1 = c.x1.data();
  T* y1 = c.y1.data();
  T* x2 = c.x2.data();
  T* y2 = c.y2.data();
  T* area = c.area.data();
  int64_t* position = c.position.data();
  size_t remaining = c.size();
  int64_t num_kept = 0;
  while (remaining > 0 && (max_keep < 0 || num_kept < max_keep)) {
    const BoxT<T> top{x1[0], y1[0], x2[0], y2[0]};
    const T top_area = area[0];
    kept.push_back(position[0]);
    ++num_kept;
    // Stream compaction of the survivors to the front; order is kept, so the
    // next survivor is again the highest-scoring one left.
    size_t write = 0;
    for (size_t r = 1; r < remaining; ++r) {
      const BoxT<T> other{x1[r], y1[r], x2[r], y2[r]};
      const bool survives = !(box_iou(top, other, top_area, area[r]) > threshold);
      x1[write] = other.x1, y1[write] = other.y1, x2[write] = other.x2, y2[write] = other.y2;
      area[write] = area[r];
      position[write] = position[r];
      write += survives;
    }
    remaining = write;
  }
}

}  // namespace retinaface
