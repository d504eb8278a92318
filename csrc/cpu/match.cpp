// match on the CPU: biubug6's matching for a padded batch of ground truth.
//
// Matching needs, per image, (a) every face's best prior (argmax of IoU over
// the priors) and (b) every prior's best face (argmax over the faces). A face
// only overlaps the priors near it, so when the priors form RetinaFace's
// regular grids (prior_box: per level, rows x cols cells of A anchor sizes,
// ordered level -> row -> col -> anchor) each face visits only a window of
// cells per level and anchor, found by binary search, and the cost grows with
// the number of faces instead of faces x priors. The grid is detected from the
// priors tensor itself in one O(P) pass; any other priors tensor is matched by
// brute force (every face against every prior), with the same result.
//
// Why the grid path gives exactly the brute-force result, ties included:
//   - a face's window holds every prior whose IoU with it can matter (IoU > 0,
//     or, tighter, IoU >= a bound, see GridScanner::prepare); a skipped prior
//     could never win or tie one of the strict comparisons below;
//   - priors are visited in increasing index order within a band and bands are
//     combined in index order, so a face's best prior is the lowest index
//     reaching its best IoU (torch.max), and prior 0 when it overlaps none;
//   - every prior sees the faces in increasing index order, so its best face
//     is the lowest index reaching its best IoU.
//
// Work is split into bands of priors (rows of a level, or an index range for
// brute force). A band owns its priors' entries of (b), so bands run in
// parallel without locks, and per-band results are combined in a fixed order:
// the output does not depend on the number of threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "common/box_math.h"
#include "cpu/parallel.h"
#include "common/match_checks.h"

namespace retinaface {
namespace {

// A ground-truth box that takes part in matching (is_valid_box).
struct Face {
  int64_t index;  // into G
  Box box;
  float area;
};

// A face's best IoU within one band of priors and the lowest prior index
// reaching it; prior -1 when no prior of the band has IoU > 0.
struct BandBest {
  float iou;
  int64_t prior;
};

// Half-open ranges of cells [col_begin, col_end) x [row_begin, row_end).
struct CellRange {
  int64_t col_begin, col_end, row_begin, row_end;
};

// Priors as corners plus their areas, computed once per call exactly as the
// brute force (and biubug6's point_form) computes them.
struct PriorTable {
  std::vector<Box> boxes;
  std::vector<float> areas;
};

// Per-image working memory, reused across the images a thread handles.
struct ImageState {
  std::vector<Face> faces;
  std::vector<float> overlap;        // (b): each prior's best IoU over the faces
  std::vector<int64_t> best_truth;   // (b): the face (index into G) reaching it
  std::vector<BandBest> band_best;   // (a) per band: [bands, faces]
  std::vector<CellRange> windows;    // grid only: [faces, total anchors]
  std::vector<int64_t> best_prior;   // (a): [faces]
};

// One update of the matcher with the IoU of `face` and prior i; the strict
// comparisons keep the first index on ties.
inline void visit_prior(const Face& face, int64_t i, const PriorTable& priors, ImageState& s,
                        BandBest& best) {
  const float iou = box_iou(face.box, priors.boxes[i], face.area, priors.areas[i]);
  if (iou > best.iou) best = {iou, i};
  if (iou > s.overlap[i]) {
    s.overlap[i] = iou;
    s.best_truth[i] = face.index;
  }
}

// ---------------------------------------------------------------------------
// Brute force: every face against every prior of the band.

class BruteForceScanner {
 public:
  BruteForceScanner(int64_t num_priors, int64_t target_bands) {
    const int64_t bands = std::max<int64_t>(1, std::min(target_bands, num_priors / 1024));
    for (int64_t k = 0; k <= bands; ++k) bounds_.push_back(num_priors * k / bands);
  }
  int64_t num_bands() const { return static_cast<int64_t>(bounds_.size()) - 1; }
  void prepare(ImageState&, const PriorTable&, float, bool) const {}
  void scan(int64_t band, const PriorTable& priors, ImageState& s, BandBest* out) const {
    for (size_t f = 0; f < s.faces.size(); ++f) {
      BandBest best{0.0f, -1};
      for (int64_t i = bounds_[band]; i < bounds_[band + 1]; ++i) {
        visit_prior(s.faces[f], i, priors, s, best);
      }
      out[f] = best;
    }
  }

 private:
  std::vector<int64_t> bounds_;  // band k = priors [bounds_[k], bounds_[k + 1])
};

// ---------------------------------------------------------------------------
// Grid: each face against the window of cells it can intersect.

// Priors start + (row * cols + col) * anchors + a of one level have centre
// (col_cx[col], row_cy[row]) and size (anchor_w[a], anchor_h[a]); col_cx and
// row_cy are strictly increasing.
struct GridLevel {
  int64_t start = 0, rows = 0, cols = 0, anchors = 0;
  int64_t anchor_offset = 0;  // of this level's anchors in a face's window table
  std::vector<float> col_cx, row_cy, anchor_w, anchor_h;
  double max_abs_cx = 0, max_abs_cy = 0;  // scale of the float rounding of the corners
};

// A grid of many levels or of many anchor sizes is no regular prior layout
// (an arbitrary tensor decomposes into one-prior levels): brute force it.
constexpr int64_t kMaxGridLevels = 64;
constexpr int64_t kMaxGridAnchors = 256;

inline const float* prior_at(const float* p, int64_t i) { return p + 4 * i; }

// Do the `anchors` priors from q sit at (cx, cy) with the level's anchor sizes?
bool cell_matches(const float* p, int64_t q, const GridLevel& level, float cx, float cy) {
  for (int64_t a = 0; a < level.anchors; ++a) {
    const float* v = prior_at(p, q + a);
    if (v[0] != cx || v[1] != cy || v[2] != level.anchor_w[a] || v[3] != level.anchor_h[a]) {
      return false;
    }
  }
  return true;
}

// The largest grid level starting at prior `start`: the anchors are the run
// of priors sharing its centre, the columns the following cells of that row
// (cx strictly increasing), the rows the following complete rows with the same
// columns (cy strictly increasing). Every prior of the level is verified.
GridLevel parse_level(const float* p, int64_t start, int64_t num_priors) {
  GridLevel level;
  level.start = start;
  const float cx0 = prior_at(p, start)[0], cy0 = prior_at(p, start)[1];
  int64_t anchors = 1;
  while (start + anchors < num_priors && prior_at(p, start + anchors)[0] == cx0 &&
         prior_at(p, start + anchors)[1] == cy0) {
    ++anchors;
  }
  level.anchors = anchors;
  for (int64_t a = 0; a < anchors; ++a) {
    level.anchor_w.push_back(prior_at(p, start + a)[2]);
    level.anchor_h.push_back(prior_at(p, start + a)[3]);
  }
  level.col_cx.push_back(cx0);
  for (int64_t q = start + anchors; q + anchors <= num_priors; q += anchors) {
    const float cx = prior_at(p, q)[0];
    if (!(cx > level.col_cx.back()) || !cell_matches(p, q, level, cx, cy0)) break;
    level.col_cx.push_back(cx);
  }
  level.cols = static_cast<int64_t>(level.col_cx.size());
  const int64_t row_size = level.cols * anchors;
  level.row_cy.push_back(cy0);
  for (int64_t q = start + row_size; q + row_size <= num_priors; q += row_size) {
    const float cy = prior_at(p, q)[1];
    bool ok = cy > level.row_cy.back();
    for (int64_t c = 0; ok && c < level.cols; ++c) {
      ok = cell_matches(p, q + c * anchors, level, level.col_cx[c], cy);
    }
    if (!ok) break;
    level.row_cy.push_back(cy);
  }
  level.rows = static_cast<int64_t>(level.row_cy.size());
  level.max_abs_cx = std::max(std::fabs(level.col_cx.front()), std::fabs(level.col_cx.back()));
  level.max_abs_cy = std::max(std::fabs(level.row_cy.front()), std::fabs(level.row_cy.back()));
  return level;
}

// Splits the priors into grid levels in one O(P) pass, or returns nullopt when
// they are no regular grid (then the caller falls back to brute force). The
// window search needs finite centres and sizes >= 0 (corners x1 <= x2).
std::optional<std::vector<GridLevel>> detect_prior_grid(const float* p, int64_t num_priors) {
  for (int64_t i = 0; i < num_priors; ++i) {
    const float* v = prior_at(p, i);
    if (!std::isfinite(v[0]) || !std::isfinite(v[1]) || !std::isfinite(v[2]) ||
        !std::isfinite(v[3]) || !(v[2] >= 0.0f) || !(v[3] >= 0.0f)) {
      return std::nullopt;
    }
  }
  std::vector<GridLevel> levels;
  int64_t total_anchors = 0;
  for (int64_t start = 0; start < num_priors;) {
    if (static_cast<int64_t>(levels.size()) == kMaxGridLevels) return std::nullopt;
    GridLevel level = parse_level(p, start, num_priors);
    level.anchor_offset = total_anchors;
    total_anchors += level.anchors;
    if (total_anchors > kMaxGridAnchors) return std::nullopt;
    start += level.rows * level.cols * level.anchors;
    levels.push_back(std::move(level));
  }
  return levels;
}

// Along one axis, the range of sorted prior centres c whose interval
// [c - half, c + half] (as prior_corners rounds it) can overlap the face's
// [lo, hi]. need <= 0: by more than 0, exactly: prior_corners' c - half and
// c + half are non-decreasing in c, and an overlap > 0 needs c + half > lo
// and c - half < hi (else the clamped intersection is 0), so the binary
// searches use those very float expressions. need > 0: by at least need (less
// the rounding slack), c in [lo - half + need - slack, hi + half - need + slack].
std::pair<int64_t, int64_t> axis_window(const std::vector<float>& centres, float half, float lo,
                                        float hi, double need, double slack) {
  std::vector<float>::const_iterator begin, end;
  if (need <= 0) {
    begin = std::partition_point(centres.begin(), centres.end(),
                                 [&](float c) { return !(c + half > lo); });
    end = std::partition_point(begin, centres.end(), [&](float c) { return c - half < hi; });
  } else {
    const double min_c = double(lo) - half + need - slack, max_c = double(hi) + half - need + slack;
    begin = std::partition_point(centres.begin(), centres.end(),
                                 [&](float c) { return double(c) < min_c; });
    end = std::partition_point(begin, centres.end(), [&](float c) { return double(c) <= max_c; });
  }
  return {begin - centres.begin(), end - centres.begin()};
}

// Relative slack for float32 rounding in the bounds below: the derivation
// needs a few units of u = 2^-24 (6e-8); 1e-6 is about 17 of them.
constexpr double kSlack = 1e-6;

// The cells whose prior of anchor `a` can have IoU >= min_iou with the face
// (min_iou <= 0: IoU > 0). For min_iou = t > 0 the window follows from the
// float computation of box_iou (w = widths, h = heights, iw/ih = the clamped
// intersection sides, all as computed):
//   iw <= min(w_face, w_prior), ih <= min(h_face, h_prior) (rounding is monotone),
//   union >= max(area_face, area_prior) * (1 - 3u),
//   inter <= iw * min(h_face, h_prior) * (1 + u),
// so IoU >= t needs iw >= need_w := t * max(areas) / min(heights) * (1 - 6u),
// hence min(widths) >= need_w and, as iw <= x2_prior - x1_face and
// iw <= x2_face - x1_prior with x1/x2_prior = cx -/+ w/2 within u * |cx +- w/2|,
// cx in [x1_face - w/2 + need_w, x2_face + w/2 - need_w] up to a few u of the
// magnitudes; the same for rows. The prior's float w, h and area are only
// known up to a few u for any cx of the level, so each is bounded on the safe
// side, and every slack is kSlack, well above what the derivation needs.
CellRange face_window(const GridLevel& level, int64_t a, const Face& face, float min_iou) {
  const Box& box = face.box;
  const float half_w = level.anchor_w[a] / 2.0f, half_h = level.anchor_h[a] / 2.0f;
  if (!(min_iou > 0)) {
    const auto cols = axis_window(level.col_cx, half_w, box.x1, box.x2, 0, 0);
    const auto rows = axis_window(level.row_cy, half_h, box.y1, box.y2, 0, 0);
    return {cols.first, cols.second, rows.first, rows.second};
  }
  constexpr CellRange kEmpty{0, 0, 0, 0};
  const double tiny = 1e-30;  // keeps every slack positive, even at 0
  // The prior's float width and height lie within 2 * slack_x (2 * slack_y) of 2 * half.
  const double slack_x = kSlack * (level.max_abs_cx + half_w) + tiny;
  const double slack_y = kSlack * (level.max_abs_cy + half_h) + tiny;
  const double prior_w_max = (2.0 * half_w + 2 * slack_x) * (1 + kSlack);
  const double prior_h_max = (2.0 * half_h + 2 * slack_y) * (1 + kSlack);
  const double prior_area_min = std::max(0.0, 2.0 * half_w - 2 * slack_x) *
                                std::max(0.0, 2.0 * half_h - 2 * slack_y) * (1 - kSlack);
  const double face_w = box.x2 - box.x1, face_h = box.y2 - box.y1;  // as box_area rounds them
  const double max_area = std::max<double>(face.area, prior_area_min);
  const double min_w = std::min(face_w, prior_w_max), min_h = std::min(face_h, prior_h_max);
  const double need_w = min_iou * max_area / min_h * (1 - 10 * kSlack);
  const double need_h = min_iou * max_area / min_w * (1 - 10 * kSlack);
  if (!(min_w >= need_w) || !(min_h >= need_h)) return kEmpty;  // also catches inf / NaN
  const double scale_x = std::fabs(box.x1) + std::fabs(box.x2) + level.max_abs_cx + half_w + need_w;
  const double scale_y = std::fabs(box.y1) + std::fabs(box.y2) + level.max_abs_cy + half_h + need_h;
  const auto cols = axis_window(level.col_cx, half_w, box.x1, box.x2, need_w, kSlack * scale_x + tiny);
  const auto rows = axis_window(level.row_cy, half_h, box.y1, box.y2, need_h, kSlack * scale_y + tiny);
  return {cols.first, cols.second, rows.first, rows.second};
}

// Index of the centre nearest to v in a sorted, non-empty vector.
int64_t nearest(const std::vector<float>& centres, float v) {
  const int64_t k = std::lower_bound(centres.begin(), centres.end(), v) - centres.begin();
  if (k == 0) return 0;
  if (k == static_cast<int64_t>(centres.size())) return k - 1;
  return (centres[k] - v < v - centres[k - 1]) ? k : k - 1;
}

class GridScanner {
 public:
  // Bands of whole rows of one level, about num_priors / target_bands priors each.
  GridScanner(std::vector<GridLevel> levels, int64_t num_priors, int64_t target_bands)
      : levels_(std::move(levels)) {
    for (const auto& level : levels_) total_anchors_ += level.anchors;
    const int64_t band_priors = std::max<int64_t>(1, num_priors / std::max<int64_t>(1, target_bands));
    for (int64_t l = 0; l < static_cast<int64_t>(levels_.size()); ++l) {
      const GridLevel& level = levels_[l];
      const int64_t row_size = level.cols * level.anchors;
      const int64_t rows_per_band = std::max<int64_t>(1, band_priors / row_size);
      for (int64_t r = 0; r < level.rows; r += rows_per_band) {
        bands_.push_back({l, r, std::min(level.rows, r + rows_per_band)});
      }
    }
  }

  int64_t num_bands() const { return static_cast<int64_t>(bands_.size()); }

  // The windows of every face on every level and anchor. A face needs only
  // the priors that can matter for the result:
  //   (a) its best prior has IoU >= L, where L is its (computed) IoU with
  //       some prior: the one of each anchor nearest its centre;
  //   (b) a prior's best face only matters where that IoU is >= threshold
  //       (else the prior is background, or forced and then overwritten by
  //       step 4), and lower IoUs never tie with it.
  // So visiting the priors with IoU >= min(L, threshold) is exact. Without a
  // positive threshold (or with L = 0) the window holds every prior with IoU > 0.
  void prepare(ImageState& s, const PriorTable& priors, float threshold, bool parallel) const {
    const int64_t num_faces = static_cast<int64_t>(s.faces.size());
    s.windows.resize(num_faces * total_anchors_);
    auto compute = [&](int64_t begin, int64_t end) {
      for (int64_t f = begin; f < end; ++f) {
        const Face& face = s.faces[f];
        float best_lower_bound = 0.0f;
        const float cx = (face.box.x1 + face.box.x2) / 2.0f, cy = (face.box.y1 + face.box.y2) / 2.0f;
        for (const auto& level : levels_) {
          const int64_t cell =
              level.start + (nearest(level.row_cy, cy) * level.cols + nearest(level.col_cx, cx)) *
                                level.anchors;
          for (int64_t a = 0; a < level.anchors; ++a) {
            const float iou =
                box_iou(face.box, priors.boxes[cell + a], face.area, priors.areas[cell + a]);
            best_lower_bound = std::max(best_lower_bound, iou);
          }
        }
        const float min_iou = threshold > 0 ? std::min(best_lower_bound, threshold) : 0.0f;
        CellRange* w = s.windows.data() + f * total_anchors_;
        for (const auto& level : levels_) {
          for (int64_t a = 0; a < level.anchors; ++a) {
            w[level.anchor_offset + a] = face_window(level, a, face, min_iou);
          }
        }
      }
    };
    if (parallel) {
      at::parallel_for(0, num_faces, 64, compute);
    } else {
      compute(0, num_faces);
    }
  }

  void scan(int64_t band_index, const PriorTable& priors, ImageState& s, BandBest* out) const {
    const Band& band = bands_[band_index];
    const GridLevel& level = levels_[band.level];
    const int64_t anchors = level.anchors;
    for (size_t f = 0; f < s.faces.size(); ++f) {
      const CellRange* w = s.windows.data() + f * total_anchors_ + level.anchor_offset;
      // The union of the anchors' windows, clipped to the band's rows.
      int64_t col_begin = level.cols, col_end = 0;
      int64_t row_begin = band.row_end, row_end = band.row_begin;
      for (int64_t a = 0; a < anchors; ++a) {
        if (w[a].col_begin >= w[a].col_end || w[a].row_begin >= w[a].row_end) continue;
        col_begin = std::min(col_begin, w[a].col_begin);
        col_end = std::max(col_end, w[a].col_end);
        row_begin = std::min(row_begin, std::max(w[a].row_begin, band.row_begin));
        row_end = std::max(row_end, std::min(w[a].row_end, band.row_end));
      }
      BandBest best{0.0f, -1};
      // Row -> col -> anchor is increasing prior index: first index wins ties.
      for (int64_t r = row_begin; r < row_end; ++r) {
        for (int64_t c = col_begin; c < col_end; ++c) {
          const int64_t cell = level.start + (r * level.cols + c) * anchors;
          for (int64_t a = 0; a < anchors; ++a) {
            if (c < w[a].col_begin || c >= w[a].col_end || r < w[a].row_begin ||
                r >= w[a].row_end) {
              continue;
            }
            visit_prior(s.faces[f], cell + a, priors, s, best);
          }
        }
      }
      out[f] = best;
    }
  }

 private:
  struct Band {
    int64_t level, row_begin, row_end;
  };
  std::vector<GridLevel> levels_;
  std::vector<Band> bands_;  // in increasing prior index order
  int64_t total_anchors_ = 0;
};

// ---------------------------------------------------------------------------
// One image: biubug6's steps 1-5 over the scanner's bands.

struct MatchParams {
  float threshold;
  float min_best_iou;
};

// The valid faces of one image (degenerate boxes are ignored, see match.py).
void collect_faces(const Box* boxes, int64_t count, std::vector<Face>& faces) {
  faces.clear();
  for (int64_t j = 0; j < count; ++j) {
    if (is_valid_box(boxes[j])) faces.push_back({j, boxes[j], box_area(boxes[j])});
  }
}

constexpr int64_t kMinFacesToSplitImage = 32;

// `parallel`: split this image's work over threads (used when the batch is
// too small to keep the threads busy with one image each).
template <typename Scanner>
void match_image(const Scanner& scanner, const PriorTable& priors, const Box* boxes,
                 int64_t count, const MatchParams& params, bool parallel, ImageState& s,
                 int64_t* row) {
  const int64_t num_priors = static_cast<int64_t>(priors.boxes.size());
  collect_faces(boxes, count, s.faces);
  if (s.faces.empty()) {
    std::fill(row, row + num_priors, -1);
    return;
  }
  const int64_t num_faces = static_cast<int64_t>(s.faces.size());
  // A few faces take microseconds: not worth waking the other threads.
  parallel = parallel && num_faces >= kMinFacesToSplitImage;
  const int64_t num_bands = scanner.num_bands();
  scanner.prepare(s, priors, params.threshold, parallel);
  // Before any update a prior's best face is the first valid one at IoU 0, as
  // torch.max over an all-zero column picks (with degenerate faces left out).
  s.overlap.assign(num_priors, 0.0f);
  s.best_truth.assign(num_priors, s.faces[0].index);
  s.band_best.resize(num_bands * num_faces);

  auto scan_bands = [&](int64_t begin, int64_t end) {
    for (int64_t band = begin; band < end; ++band) {
      scanner.scan(band, priors, s, s.band_best.data() + band * num_faces);
    }
  };
  if (parallel) {
    at::parallel_for(0, num_bands, 1, scan_bands);
  } else {
    scan_bands(0, num_bands);
  }

  // Step 1: a face's best prior; prior 0 at IoU 0 when it overlaps none.
  s.best_prior.resize(num_faces);
  bool any_forced = false;
  for (int64_t f = 0; f < num_faces; ++f) {
    BandBest best{0.0f, 0};
    for (int64_t band = 0; band < num_bands; ++band) {
      const BandBest& b = s.band_best[band * num_faces + f];
      if (b.iou > best.iou) best = b;
    }
    s.best_prior[f] = best.prior;
    // Steps 2-3: the best prior of a face reaching min_best_iou is forced.
    if (best.iou >= params.min_best_iou) {
      s.overlap[best.prior] = 2.0f;
      any_forced = true;
    }
  }
  if (!any_forced) {
    std::fill(row, row + num_priors, -1);
    return;
  }
  // Step 4: in face order, last write wins (also for faces not forced).
  for (int64_t f = 0; f < num_faces; ++f) s.best_truth[s.best_prior[f]] = s.faces[f].index;
  // Step 5.
  const float* __restrict overlap = s.overlap.data();
  const int64_t* __restrict best_truth = s.best_truth.data();
  int64_t* __restrict out = row;
  const float threshold = params.threshold;
  auto write = [=](int64_t begin, int64_t end) {  // restrict pointers: vectorisable
    for (int64_t i = begin; i < end; ++i) out[i] = overlap[i] < threshold ? -1 : best_truth[i];
  };
  if (parallel) {
    at::parallel_for(0, num_priors, 8192, write);
  } else {
    write(0, num_priors);
  }
}

template <typename Scanner>
void match_batch(const Scanner& scanner, const PriorTable& priors, const Box* gt,
                 const int64_t* counts, int64_t batch, int64_t max_gt,
                 const MatchParams& params, bool per_image_parallel, int64_t* out) {
  const int64_t num_priors = static_cast<int64_t>(priors.boxes.size());
  if (per_image_parallel) {
    ImageState s;
    for (int64_t b = 0; b < batch; ++b) {
      match_image(scanner, priors, gt + b * max_gt, counts[b], params, true, s,
                  out + b * num_priors);
    }
    return;
  }
  parallel_for_dynamic(batch, 1, [&](int64_t begin, int64_t end) {
    ImageState s;
    for (int64_t b = begin; b < end; ++b) {
      match_image(scanner, priors, gt + b * max_gt, counts[b], params, false, s,
                  out + b * num_priors);
    }
  });
}

// ---------------------------------------------------------------------------

at::Tensor match_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                     const at::Tensor& priors, double threshold, double min_best_iou) {
  check_match_args(gt_boxes, gt_counts, priors, threshold, min_best_iou);

  const auto gt = gt_boxes.to(at::kFloat).contiguous();
  const auto pr = priors.to(at::kFloat).contiguous();
  const int64_t batch = gt.size(0), max_gt = gt.size(1), num_priors = pr.size(0);
  const auto counts = checked_counts_cpu("match", gt_counts, max_gt);
  const int64_t* count_ptr = counts.data_ptr<int64_t>();
  auto assigned = at::empty({batch, num_priors}, counts.options());
  if (batch == 0 || num_priors == 0) return assigned;

  const float* p = pr.data_ptr<float>();
  PriorTable table;
  table.boxes.resize(num_priors);
  table.areas.resize(num_priors);
  for (int64_t i = 0; i < num_priors; ++i) {
    table.boxes[i] = prior_corners(p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]);
    table.areas[i] = box_area(table.boxes[i]);
  }

  const Box* gt_ptr = reinterpret_cast<const Box*>(gt.data_ptr<float>());
  int64_t* out = assigned.data_ptr<int64_t>();
  const MatchParams params{static_cast<float>(threshold), static_cast<float>(min_best_iou)};
  // Few images: one at a time, each split over the threads; else one per thread.
  const int64_t threads = at::get_num_threads();
  const bool per_image_parallel = threads > 1 && batch < threads;
  const int64_t target_bands = per_image_parallel ? 4 * threads : 1;

  if (auto levels = detect_prior_grid(p, num_priors)) {
    const GridScanner scanner(std::move(*levels), num_priors, target_bands);
    match_batch(scanner, table, gt_ptr, count_ptr, batch, max_gt, params, per_image_parallel,
                out);
  } else {
    const BruteForceScanner scanner(num_priors, target_bands);
    match_batch(scanner, table, gt_ptr, count_ptr, batch, max_gt, params, per_image_parallel,
                out);
  }
  return assigned;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface, CPU, m) {
  m.impl("match", &match_cpu);
}

}  // namespace retinaface
