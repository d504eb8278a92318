"""The WIDER FACE evaluation protocol (the standard ``widerface_evaluate`` tool), vectorised.

Facts of the protocol, all reproduced here:

* Ground truth: ``wider_face_val.mat`` (event_list, file_list, face_bbx_list
  with x, y, w, h) and, per setting, ``wider_{easy,medium,hard}_val.mat``
  whose ``gt_list`` holds the 1-based indices of the faces that count; every
  other face is "ignored": a prediction matched to it is neither a true nor a
  false positive.
* Predictions: one text file per image under ``pred_dir/<event>/``: the image
  name, the number of boxes, then ``x y w h score`` lines, in descending score.
  Scores are min-max normalised over *all* files read (with the tool's start
  values min = 1, max = 0).
* Per image, predictions are visited in file order; each is matched to the
  ground-truth box of largest IoU (first on ties), IoU computed with the +1
  pixel convention (``w = x2 - x1 + 1``). If IoU >= 0.5: an ignored box makes
  the prediction not a proposal; a counted box becomes recalled (once).
* 1000 thresholds ``1 - (t + 1) / 1000``; at each, an image contributes its
  proposals and recalled faces up to the last prediction scoring >= the
  threshold; images without ground truth or predictions contribute nothing
  (their counted faces still count). Precision = recalled / proposals,
  recall = recalled / counted faces, and AP is VOC's area under the
  precision envelope.

Vectorisation: the tool loops over predictions and, per image, over the 1000
thresholds. Here the IoU matrix of an image is computed once for the three
settings, and each setting is a few whole-dataset numpy operations: a
prediction's contribution to an image's running counts is an increment
(1 if it is a proposal; 1 if it is the first to recall its face), and the
increment applies at every threshold not above the largest score at or after
it in its file, so the PR curve is one ``bincount`` + ``cumsum``. The numbers are
the tool's, bit for bit (same float64 operations in the same order).
"""
import functools
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

SETTINGS = ("easy", "medium", "hard")
THRESHOLD_COUNT = 1000


@dataclass
class GroundTruth:
    """WIDER FACE validation ground truth: per image its event, name, boxes and per-setting keep indices."""

    events: List[str]
    names: List[str]
    boxes: List[np.ndarray]  # float64 [n, 4] x, y, w, h
    keep: Dict[str, List[np.ndarray]]  # setting -> per image int64 0-based indices of counted faces

    def __len__(self):
        return len(self.names)


def load_ground_truth(gt_dir) -> GroundTruth:
    """Reads the four official .mat files from ``gt_dir`` (cached per directory and mtime)."""
    gt_dir = os.path.abspath(os.fspath(gt_dir))
    stamp = tuple(_mtime(os.path.join(gt_dir, f"wider_{s}_val.mat")) for s in ("face",) + SETTINGS)
    return _load_ground_truth(gt_dir, stamp)


def _mtime(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"WIDER FACE ground truth file not found: {path}")
    return os.path.getmtime(path)


@functools.lru_cache(maxsize=4)
def _load_ground_truth(gt_dir, _stamp):
    from scipy.io import loadmat

    faces = loadmat(os.path.join(gt_dir, "wider_face_val.mat"))
    settings = {s: loadmat(os.path.join(gt_dir, f"wider_{s}_val.mat"))["gt_list"] for s in SETTINGS}
    events, names, boxes = [], [], []
    keep = {s: [] for s in SETTINGS}
    for i, event_cell in enumerate(faces["event_list"]):
        event = str(event_cell[0][0])
        files = faces["file_list"][i][0]
        event_boxes = faces["face_bbx_list"][i][0]
        for j in range(len(files)):
            events.append(event)
            names.append(str(files[j][0][0]))
            boxes.append(np.asarray(event_boxes[j][0], dtype=np.float64).reshape(-1, 4))
            for s in SETTINGS:
                indices = np.asarray(settings[s][i][0][j][0], dtype=np.int64).reshape(-1)
                keep[s].append(indices - 1)
    return GroundTruth(events, names, boxes, keep)


# ----------------------------------------------------------------------------- predictions

def write_prediction_file(pred_dir, event, name, detections, integer_boxes=False):
    """Writes one image's detections ([n, >=5] x1, y1, x2, y2, score) as ``pred_dir/event/name.txt``.

    Rows are written in descending score order (the protocol reads them in
    file order). ``integer_boxes`` truncates coordinates to ints as biubug6's
    test_widerface.py does; by default they keep one decimal.
    """
    detections = np.asarray(detections, dtype=np.float64)
    detections = detections.reshape(len(detections), -1) if detections.size else np.zeros((0, 5))
    order = np.argsort(-detections[:, 4], kind="stable")
    detections = detections[order]
    directory = os.path.join(pred_dir, event)
    os.makedirs(directory, exist_ok=True)
    lines = [f"{name}\n", f"{len(detections)}\n"]
    for x1, y1, x2, y2, score in detections[:, :5]:
        if integer_boxes:
            x, y = int(x1), int(y1)
            lines.append(f"{x} {y} {int(x2) - x} {int(y2) - y} {score:.6f} \n")
        else:
            lines.append(f"{x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f} {score:.6f} \n")
    # A name that is not UTF-8 (os.listdir's surrogate escapes) is written as the bytes it stands for.
    with open(os.path.join(directory, f"{name}.txt"), "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.writelines(lines)


def read_prediction_file(path):
    """-> (image name, float64 [n, 5] x, y, w, h, score) as the tool reads a prediction file.

    Raises ``ValueError`` naming ``file:line`` for what the tool would misread or
    crash on: a file that is not text, a missing or wrong box count on line 2, a
    line that is not at least five numbers, or a non-finite value (one infinite
    score would flatten every other score in the min-max normalisation).
    Rows may have extra columns (e.g. landmarks): the first five count.
    """
    path = os.fspath(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    name_line, newline, body = raw.partition(b"\n")
    try:
        # Line 1 is a file name: bytes that are not UTF-8 stand for themselves (as in os.listdir).
        text = name_line.decode("utf-8-sig", "surrogateescape") + newline.decode() + body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text prediction file ({error.reason} at byte "
                         f"{len(name_line) + len(newline) + error.start})") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path}: empty prediction file (expected the image name on line 1)")
    name = lines[0].strip().split("/")[-1]
    if name.endswith(".jpg"):
        name = name[:-4]
    # The tool's rule: lines after the count, skipping those whose first space-separated field is empty.
    body = [(number, line) for number, line in enumerate(lines[2:], start=3) if line.split(" ")[0] != ""]
    if len(lines) > 1 or body:
        count_line = lines[1].strip() if len(lines) > 1 else ""
        try:
            count = int(count_line)
        except ValueError:
            raise ValueError(f"{path}:2: expected the number of boxes, got {count_line[:80]!r}") from None
        if count != len(body):
            raise ValueError(f"{path}:2: the file says {count} boxes but has {len(body)} box lines")
    tokens = " ".join(line for _, line in body).split()
    values = None
    if len(tokens) == 5 * len(body):  # the usual file: one vectorised parse
        try:
            values = np.array(tokens, dtype=np.float64).reshape(-1, 5)
        except ValueError:
            values = None
    if values is None or not np.isfinite(values).all():
        values = np.array([_parse_prediction_line(path, number, line) for number, line in body],
                          dtype=np.float64).reshape(-1, 5)
    return name, values


def _parse_prediction_line(path, number, line):
    try:
        numbers = [float(field) for field in line.split()[:5]]
    except ValueError:
        numbers = []
    if len(numbers) < 5:
        raise ValueError(f"{path}:{number}: expected 'x y w h score', got {line[:80]!r}")
    if not all(np.isfinite(numbers)):
        raise ValueError(f"{path}:{number}: non-finite value in {line.strip()[:80]!r} (every value must be "
                         "finite: the scores of all files are min-max normalised together)")
    return numbers


def read_predictions(pred_dir) -> Dict[str, Dict[str, np.ndarray]]:
    """``{event: {image name: [n, 5]}}`` for every ``pred_dir/<event>/*.txt``."""
    predictions = {}
    for event in sorted(os.listdir(pred_dir)):
        event_dir = os.path.join(pred_dir, event)
        if not os.path.isdir(event_dir):
            continue
        current = predictions.setdefault(event, {})
        for file_name in os.listdir(event_dir):
            path = os.path.join(event_dir, file_name)
            if file_name.endswith(".txt") and os.path.isfile(path):  # not a folder named x.txt
                name, boxes = read_prediction_file(path)
                current[name] = boxes
    return predictions


def normalize_scores(arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The tool's ``norm_score``: (s - min) / (max - min) over all arrays, min from 1 and max from 0."""
    low, high = 1.0, 0.0
    for a in arrays:
        if len(a):
            low, high = min(np.min(a[:, -1]), low), max(np.max(a[:, -1]), high)
    diff = high - low
    out = []
    for a in arrays:
        a = a.copy()
        if len(a):
            # All scores equal (e.g. a single prediction): 0/0 gives NaN scores, as in the tool.
            with np.errstate(divide="ignore", invalid="ignore"):
                a[:, -1] = (a[:, -1] - low) / diff
        out.append(a)
    return out


# ----------------------------------------------------------------------------- protocol

def _match_image(pred, gt):
    """Best ground-truth index and its IoU per prediction (+1 pixel IoU of the tool's bbox_overlaps)."""
    px1, py1 = pred[:, 0], pred[:, 1]
    px2, py2 = pred[:, 2] + pred[:, 0], pred[:, 3] + pred[:, 1]
    gx1, gy1 = gt[:, 0], gt[:, 1]
    gx2, gy2 = gt[:, 2] + gt[:, 0], gt[:, 3] + gt[:, 1]
    gt_area = (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
    iw = np.minimum(px2[:, None], gx2[None]) - np.maximum(px1[:, None], gx1[None]) + 1
    ih = np.minimum(py2[:, None], gy2[None]) - np.maximum(py1[:, None], gy1[None]) + 1
    inter = iw * ih
    union = ((px2 - px1 + 1) * (py2 - py1 + 1))[:, None] + gt_area[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        overlaps = np.where((iw > 0) & (ih > 0), inter / union, 0.0)
    best = overlaps.argmax(axis=1)
    return best, overlaps[np.arange(len(pred)), best]


def _suffix_max(scores, starts, ends):
    """Largest score at or after each position within its image (= the score itself when sorted)."""
    out = scores.copy()
    # Positions where a file's scores rise: only those images need the running maximum.
    rises = np.flatnonzero(scores[1:] > scores[:-1]) + 1
    if len(rises):
        image_of = np.searchsorted(starts, rises, side="right") - 1
        rising = np.unique(image_of[rises != starts[image_of]])
        for image in rising:
            s, e = starts[image], ends[image]
            out[s:e] = np.maximum.accumulate(scores[s:e][::-1])[::-1]
    return out


def voc_ap(recall, precision):
    """VOC AP: area under the monotone envelope of precision, summed where recall changes."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def pr_curves(predictions, gt_boxes, keep, iou_threshold=0.5, threshold_count=THRESHOLD_COUNT):
    """Per setting, the tool's dataset PR curve [threshold_count, 2] (precision, recall).

    ``predictions``: per image float64 [n, 5] x, y, w, h, normalised score in
    file order; ``gt_boxes``: per image [m, 4] x, y, w, h; ``keep``: setting
    -> per image 0-based indices of the counted faces.
    """
    # Setting-independent part: each prediction's best ground truth and IoU.
    gt_offsets = np.zeros(len(gt_boxes) + 1, dtype=np.int64)
    gt_offsets[1:] = np.cumsum([len(g) for g in gt_boxes])
    best_parts, valid_parts, score_parts, lengths = [], [], [], []
    for pred, gt, offset in zip(predictions, gt_boxes, gt_offsets[:-1]):
        if len(gt) == 0 or len(pred) == 0:
            continue
        best, overlap = _match_image(pred, gt)
        best_parts.append(best + offset)
        valid_parts.append(overlap >= iou_threshold)
        score_parts.append(pred[:, 4])
        lengths.append(len(pred))
    thresholds = 1 - np.arange(1, threshold_count + 1) / threshold_count
    curves = {}
    if best_parts:
        best = np.concatenate(best_parts)
        valid = np.concatenate(valid_parts)
        scores = np.concatenate(score_parts)
        ends = np.cumsum(lengths)
        starts = ends - np.asarray(lengths)
        # First threshold index at which each prediction is inside its image's cut.
        reach = _suffix_max(scores, starts, ends)
        first_t = threshold_count - np.searchsorted(thresholds[::-1], reach, side="right")
    for setting, keep_lists in keep.items():
        count_face = sum(len(k) for k in keep_lists)
        pr = np.zeros((threshold_count, 2))
        if best_parts:
            counted = np.zeros(gt_offsets[-1], dtype=bool)
            for k, offset in zip(keep_lists, gt_offsets[:-1]):
                counted[offset + np.asarray(k, dtype=np.int64)] = True
            on_counted = counted[best]
            proposal = ~(valid & ~on_counted)
            hits = np.flatnonzero(valid & on_counted)
            _, first = np.unique(best[hits], return_index=True)
            new_recall = np.zeros(len(best))
            new_recall[hits[first]] = 1.0
            pr[:, 0] = np.cumsum(np.bincount(first_t, proposal.astype(np.float64),
                                             threshold_count + 1)[:threshold_count])
            pr[:, 1] = np.cumsum(np.bincount(first_t, new_recall, threshold_count + 1)[:threshold_count])
        curve = np.zeros((threshold_count, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            curve[:, 0] = pr[:, 1] / pr[:, 0]
            curve[:, 1] = pr[:, 1] / count_face
        curves[setting] = curve
    return curves


def average_precision(predictions, gt_boxes, keep=None, iou_threshold=0.5, normalize=True):
    """AP per setting for in-memory data (x, y, w, h, score predictions; x, y, w, h ground truth).

    ``keep`` defaults to ``{"all": every face}``. ``normalize`` applies the
    tool's score normalisation over the given predictions.
    """
    predictions = [np.asarray(p, dtype=np.float64).reshape(-1, 5) for p in predictions]
    gt_boxes = [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in gt_boxes]
    if normalize:
        predictions = normalize_scores(predictions)
    if keep is None:
        keep = {"all": [np.arange(len(g)) for g in gt_boxes]}
    curves = pr_curves(predictions, gt_boxes, keep, iou_threshold)
    return {s: float(voc_ap(c[:, 1], c[:, 0])) for s, c in curves.items()}


def _warn_about_scores_outside_0_1(pred_dir, by_event):
    # Scores are min-max normalised over all files: one file scoring in other units (1e9, logits)
    # squeezes every other file's scores together, and the AP drops without an error.
    for event, files in by_event.items():
        for name, boxes in files.items():
            scores = boxes[:, 4]
            if len(scores) and (scores.min() < 0 or scores.max() > 1):
                value = scores.max() if scores.max() > 1 else scores.min()
                warnings.warn(f"a score of {value:g} in {os.path.join(pred_dir, event, name)}.txt: the protocol "
                              "min-max normalises the scores of all files together, so scores outside [0, 1] "
                              "rescale every other file's", stacklevel=3)
                return


def widerface_ap(pred_dir, gt_dir, iou_threshold=0.5, missing="error"):
    """WIDER FACE validation AP ``{"easy", "medium", "hard"}`` of the predictions in ``pred_dir``.

    ``gt_dir`` holds the four official .mat files. An image of the ground
    truth without a prediction file raises ``FileNotFoundError`` (the tool
    raises ``KeyError``); ``missing="empty"`` counts it as no detections.
    """
    ground_truth = load_ground_truth(gt_dir)
    by_event = read_predictions(pred_dir)
    flat_keys = [(e, n) for e, names in by_event.items() for n in names]
    _warn_about_scores_outside_0_1(pred_dir, by_event)
    normalised = normalize_scores([by_event[e][n] for e, n in flat_keys])
    lookup = dict(zip(flat_keys, normalised))
    predictions, absent = [], []
    for event, name in zip(ground_truth.events, ground_truth.names):
        pred = lookup.get((event, name))
        if pred is None:
            absent.append(f"{event}/{name}")
            pred = np.zeros((0, 5))
        predictions.append(pred)
    if absent and missing == "error":
        raise FileNotFoundError(f"{len(absent)} of {len(ground_truth)} images have no prediction file in "
                                f"{pred_dir}, e.g. {absent[0]}.txt (to count them as no detections: "
                                "evaluate --missing empty, or missing='empty' in Python)")
    curves = pr_curves(predictions, ground_truth.boxes, ground_truth.keep, iou_threshold)
    return {s: float(voc_ap(curves[s][:, 1], curves[s][:, 0])) for s in SETTINGS}
