"""A straightforward Python port of the standard ``widerface_evaluate`` tool's evaluation.

The baseline that retinaface_ext.evaluation.widerface_ap is measured and
checked against. It keeps the tool's structure and therefore its cost: per
image, a Python loop over the predictions (greedy matching, counting the
recalled faces after each one) and a Python loop over the 1000 thresholds
(``np.where`` over the scores and proposals at each); the dataset PR curve is
then built row by row and the VOC envelope with a backwards loop. The IoU
matrix, which the tool computes in Cython (``bbox_overlaps``), is computed here
with numpy, so the baseline is not slowed by pure-Python IoU.

Written here from the tool's documented behaviour; no code is copied.
"""
import os

import numpy as np
from scipy.io import loadmat

THRESHOLD_COUNT = 1000


def load_gt(gt_dir):
    face = loadmat(os.path.join(gt_dir, "wider_face_val.mat"))
    lists = {s: loadmat(os.path.join(gt_dir, f"wider_{s}_val.mat"))["gt_list"] for s in ("easy", "medium", "hard")}
    return face["face_bbx_list"], face["event_list"], face["file_list"], lists


def read_file(path):
    with open(path) as handle:
        lines = handle.readlines()
    name = lines[0].rstrip("\r\n").split("/")[-1]
    rows = []
    for line in lines[2:]:
        parts = line.rstrip("\r\n").split(" ")
        if parts[0] == "":
            continue
        rows.append([float(v) for v in parts[:5]])
    return name, np.array(rows)


def read_all(pred_dir):
    out = {}
    for event in os.listdir(pred_dir):
        event_preds = {}
        for file_name in os.listdir(os.path.join(pred_dir, event)):
            name, boxes = read_file(os.path.join(pred_dir, event, file_name))
            if name.endswith(".jpg"):
                name = name[:-4]
            event_preds[name] = boxes
        out[event] = event_preds
    return out


def normalise(preds):
    high, low = 0.0, 1.0
    for event in preds.values():
        for boxes in event.values():
            if len(boxes):
                high = max(np.max(boxes[:, -1]), high)
                low = min(np.min(boxes[:, -1]), low)
    for event in preds.values():
        for boxes in event.values():
            if len(boxes):
                boxes[:, -1] = (boxes[:, -1] - low) / (high - low)


def overlaps_plus_one(boxes, query):
    """IoU [N, K] of x1y1x2y2 boxes with the +1 pixel convention (the tool's Cython bbox_overlaps)."""
    q_area = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    iw = np.minimum(boxes[:, None, 2], query[None, :, 2]) - np.maximum(boxes[:, None, 0], query[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], query[None, :, 3]) - np.maximum(boxes[:, None, 1], query[None, :, 1]) + 1
    area = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1))[:, None]
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), inter / (area + q_area[None] - inter), 0.0)


def eval_image(pred, gt, counted, iou_thresh):
    p = pred.copy()
    g = gt.copy()
    p[:, 2] += p[:, 0]
    p[:, 3] += p[:, 1]
    g[:, 2] += g[:, 0]
    g[:, 3] += g[:, 1]
    ious = overlaps_plus_one(p[:, :4], g)
    recalled = np.zeros(len(g))
    proposals = np.ones(len(p))
    recall_after = np.zeros(len(p))
    for h in range(len(p)):
        row = ious[h]
        best, best_idx = row.max(), row.argmax()
        if best >= iou_thresh:
            if counted[best_idx] == 0:
                recalled[best_idx] = -1
                proposals[h] = -1
            elif recalled[best_idx] == 0:
                recalled[best_idx] = 1
        recall_after[h] = len(np.where(recalled == 1)[0])
    return recall_after, proposals


def image_curve(pred, proposals, recall_after):
    curve = np.zeros((THRESHOLD_COUNT, 2))
    for t in range(THRESHOLD_COUNT):
        thresh = 1 - (t + 1) / THRESHOLD_COUNT
        above = np.where(pred[:, 4] >= thresh)[0]
        if len(above):
            last = above[-1]
            curve[t, 0] = len(np.where(proposals[: last + 1] == 1)[0])
            curve[t, 1] = recall_after[last]
    return curve


def voc_ap(rec, prec):
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def evaluate(pred_dir, gt_dir, iou_thresh=0.5):
    """-> {"easy", "medium", "hard"} AP, as the tool prints them."""
    preds = read_all(pred_dir)
    normalise(preds)
    boxes_list, events, files, lists = load_gt(gt_dir)
    aps = {}
    for setting in ("easy", "medium", "hard"):
        gt_list = lists[setting]
        count_face = 0
        pr = np.zeros((THRESHOLD_COUNT, 2))
        for i in range(len(events)):
            event_preds = preds[str(events[i][0][0])]
            names = files[i][0]
            for j in range(len(names)):
                pred = event_preds[str(names[j][0][0])]
                gt = boxes_list[i][0][j][0].astype("float")
                keep = gt_list[i][0][j][0]
                count_face += len(keep)
                if len(gt) == 0 or len(pred) == 0:
                    continue
                counted = np.zeros(len(gt))
                if len(keep):
                    counted[keep - 1] = 1
                recall_after, proposals = eval_image(pred, gt, counted, iou_thresh)
                pr += image_curve(pred, proposals, recall_after)
        curve = np.zeros((THRESHOLD_COUNT, 2))
        for t in range(THRESHOLD_COUNT):
            curve[t, 0] = pr[t, 1] / pr[t, 0]
            curve[t, 1] = pr[t, 1] / count_face
        aps[setting] = float(voc_ap(curve[:, 1], curve[:, 0]))
    return aps
