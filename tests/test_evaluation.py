"""retinaface_ext.evaluation: the WIDER FACE protocol vs a straight port of the standard tool."""
import os

import numpy as np
import pytest
from utils import widerface_gt_dir

from benchmarks.baselines import widerface_evaluate as tool
from retinaface_ext.evaluation import (
    average_precision,
    load_ground_truth,
    normalize_scores,
    pr_curves,
    read_prediction_file,
    voc_ap,
    widerface_ap,
    write_prediction_file,
)

GT_DIR = widerface_gt_dir()
needs_gt = pytest.mark.skipif(not os.path.isfile(os.path.join(GT_DIR, "wider_face_val.mat")),
                              reason="WIDER FACE val ground truth not available (set WIDERFACE_VAL_GT)")


def tool_aps(predictions, gt_boxes, keep):
    """The tool's per-image loops (the baseline port) on in-memory data."""
    aps = {}
    for setting, keep_lists in keep.items():
        pr = np.zeros((tool.THRESHOLD_COUNT, 2))
        count = 0
        for pred, gt, k in zip(predictions, gt_boxes, keep_lists):
            count += len(k)
            if len(gt) == 0 or len(pred) == 0:
                continue
            counted = np.zeros(len(gt))
            counted[k] = 1
            recall_after, proposals = tool.eval_image(pred, gt, counted, 0.5)
            pr += tool.image_curve(pred, proposals, recall_after)
        curve = np.zeros((tool.THRESHOLD_COUNT, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            curve[:, 0] = pr[:, 1] / pr[:, 0]
            curve[:, 1] = pr[:, 1] / count
        aps[setting] = float(tool.voc_ap(curve[:, 1], curve[:, 0]))
    return aps


def random_case(rng, images=30):
    predictions, gts, keep_a, keep_b = [], [], [], []
    for _ in range(images):
        g = rng.integers(0, 12)
        gt = np.concatenate([rng.integers(0, 300, (g, 2)), rng.integers(0, 40, (g, 2))], 1).astype(float)
        if g > 2:
            gt[1] = gt[0]  # duplicate face: the second is never the argmax
        n = rng.integers(0, 15)
        pick = rng.integers(0, max(g, 1), n)
        pred = np.zeros((n, 5))
        if g:
            pred[:, :4] = gt[pick] + rng.normal(0, rng.choice([0.5, 4.0]), (n, 4))
        else:
            pred[:, :4] = rng.uniform(0, 300, (n, 4))
        scores = rng.choice([rng.random(n), np.round(rng.random(n), 1)])  # ties
        if rng.random() < 0.7:
            scores = -np.sort(-scores)  # most files sorted, some not
        pred[:, 4] = scores
        predictions.append(pred)
        gts.append(gt)
        keep_a.append(np.flatnonzero(rng.random(g) < 0.6))
        keep_b.append(np.arange(g))
    return normalize_scores(predictions), gts, {"a": keep_a, "b": keep_b}


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_tool_bit_for_bit(seed):
    predictions, gts, keep = random_case(np.random.default_rng(seed))
    curves = pr_curves(predictions, gts, keep)
    ours = {s: float(voc_ap(c[:, 1], c[:, 0])) for s, c in curves.items()}
    assert ours == tool_aps(predictions, gts, keep)


def test_voc_ap_matches_loop():
    rng = np.random.default_rng(0)
    rec = np.sort(rng.random(50))
    prec = rng.random(50)
    # The tool's 0/0 precision at the highest thresholds, where nothing is recalled yet.
    rec[:3], prec[:3] = 0.0, np.nan
    ours = voc_ap(rec, prec)
    assert np.isfinite(ours) and ours == tool.voc_ap(rec, prec)


def test_average_precision_simple_cases():
    gt = [np.array([[10, 10, 20, 20], [50, 50, 30, 30]], float)]
    perfect = [np.array([[10, 10, 20, 20, 0.9], [50, 50, 30, 30, 0.8]])]
    assert average_precision(perfect, gt)["all"] == pytest.approx(1.0)
    half = [np.array([[10, 10, 20, 20, 0.9], [200, 200, 30, 30, 0.8]])]
    assert average_precision(half, gt)["all"] == pytest.approx(0.5, abs=0.01)
    assert average_precision([np.zeros((0, 5))], gt)["all"] == 0.0


def test_prediction_file_round_trip(tmp_path):
    detections = np.array([[1.0, 2.0, 11.5, 22.0, 0.3], [5, 6, 7, 9, 0.9]])
    write_prediction_file(tmp_path, "0--Parade", "img_1", detections)
    name, boxes = read_prediction_file(tmp_path / "0--Parade" / "img_1.txt")
    assert name == "img_1"
    np.testing.assert_allclose(boxes, [[5, 6, 2, 3, 0.9], [1, 2, 10.5, 20, 0.3]])
    write_prediction_file(tmp_path, "e", "empty", np.zeros((0, 15)))
    assert read_prediction_file(tmp_path / "e" / "empty.txt")[1].shape == (0, 5)
    write_prediction_file(tmp_path, "e", "ints", detections, integer_boxes=True)
    assert read_prediction_file(tmp_path / "e" / "ints.txt")[1][0, :4].tolist() == [5, 6, 2, 3]


def write_gt_predictions(pred_dir, gt, rng, drop=0.0, jitter=0.0):
    for event, name, boxes in zip(gt.events, gt.names, gt.boxes):
        kept = boxes[rng.random(len(boxes)) >= drop]
        xyxy = kept.copy()
        xyxy[:, 2:] += xyxy[:, :2]
        if jitter:
            shift = kept[:, 2:].max(axis=1, keepdims=True) * jitter
            xyxy += shift
        scores = rng.random(len(kept))
        write_prediction_file(pred_dir, event, name, np.concatenate([xyxy, scores[:, None]], 1))


@needs_gt
def test_ground_truth_loads():
    gt = load_ground_truth(GT_DIR)
    assert len(gt) == 3226 and sum(len(b) for b in gt.boxes) == 39708
    assert max(len(b) for b in gt.boxes) == 709
    assert sum(len(k) for k in gt.keep["hard"]) > sum(len(k) for k in gt.keep["easy"])


@needs_gt
def test_ground_truth_as_predictions_scores_one(tmp_path):
    gt = load_ground_truth(GT_DIR)
    write_gt_predictions(tmp_path, gt, np.random.default_rng(0))
    aps = widerface_ap(tmp_path, GT_DIR)
    # Not exactly 1.0: WIDER has a few duplicate boxes, whose second copy the
    # protocol can never recall (each prediction is matched to its first best box).
    for setting in ("easy", "medium", "hard"):
        assert aps[setting] == pytest.approx(1.0, abs=2e-3), aps


@needs_gt
def test_dropped_and_jittered_boxes_lower_ap(tmp_path):
    gt = load_ground_truth(GT_DIR)
    write_gt_predictions(tmp_path / "drop", gt, np.random.default_rng(1), drop=0.3)
    dropped = widerface_ap(tmp_path / "drop", GT_DIR)
    for setting in ("easy", "medium", "hard"):
        assert 0.6 < dropped[setting] < 0.75, dropped
    # Shifting a box by 40% of its size takes its IoU below 0.5: no face is found.
    write_gt_predictions(tmp_path / "far", gt, np.random.default_rng(2), jitter=0.4)
    far = widerface_ap(tmp_path / "far", GT_DIR)
    assert max(far.values()) < 0.01, far
    # 10% keeps IoU above 0.5 for nearly all (crowded small faces can swap matches).
    write_gt_predictions(tmp_path / "near", gt, np.random.default_rng(3), jitter=0.1)
    near = widerface_ap(tmp_path / "near", GT_DIR)
    assert min(near.values()) > 0.97, near


@needs_gt
def test_missing_prediction_file(tmp_path):
    gt = load_ground_truth(GT_DIR)
    write_prediction_file(tmp_path, gt.events[0], gt.names[0], np.array([[0, 0, 10, 10, 0.5]]))
    with pytest.raises(FileNotFoundError, match=r"3225 of 3226 images have no prediction file"):
        widerface_ap(tmp_path, GT_DIR)
    aps = widerface_ap(tmp_path, GT_DIR, missing="empty")
    assert aps["hard"] < 1e-3


@pytest.fixture(scope="module")
def wider_layout(tmp_path_factory):
    """biubug6's val layout (images/<event>/<name>.jpg + wider_val.txt) with two synthetic images named
    like the first two of the official ground truth, and a random-init mobilenet0.25 checkpoint."""
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("skimage")
    import torch

    from retinaface_ext import RetinaFace
    from retinaface_ext.data import SyntheticFaces

    root = tmp_path_factory.mktemp("wider_val")
    names = ["0--Parade/0_Parade_marchingband_1_20", "0--Parade/0_Parade_Parade_0_102"]
    faces = SyntheticFaces(2, image_size=192, seed=3)
    for index, name in enumerate(names):
        os.makedirs(root / "images" / os.path.dirname(name), exist_ok=True)
        assert cv2.imwrite(str(root / "images" / f"{name}.jpg"), faces[index][0])
    (root / "wider_val.txt").write_text("".join(f"/{name}.jpg\n" for name in names))
    torch.manual_seed(0)
    torch.save(RetinaFace("mobilenet0.25").state_dict(), root / "mobilenet0.25_Final.pth")
    return root, names


def test_evaluate_command_and_biubug6_script_agree(wider_layout, capsys):
    import runpy
    import sys

    from retinaface_ext.cli import main

    root, names = wider_layout
    weights = str(root / "mobilenet0.25_Final.pth")
    ours = root / "pred_cli"
    args = ["evaluate", "--images", str(root / "images"), "--weights", weights, "--out", str(ours),
            "--device", "cpu", "--integer-boxes"]
    if os.path.isfile(os.path.join(GT_DIR, "wider_face_val.mat")):
        args += ["--gt", GT_DIR, "--missing", "empty"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote predictions for 2 images" in printed
    if "--gt" in args:
        assert all(f"{s} Val AP:" in printed for s in ("Easy  ", "Medium", "Hard  "))
    for name in names:
        file_name, scores = read_prediction_file(ours / f"{name}.txt")
        assert file_name == os.path.basename(name) and len(scores) > 0
        assert (np.diff(scores[:, 4]) <= 0).all()

    script = os.path.join(os.path.dirname(__file__), "..", "python", "test_widerface.py")
    theirs = root / "pred_script"
    argv = sys.argv
    sys.path.insert(0, os.path.dirname(script))
    try:
        sys.argv = [script, "-m", weights, "--network", "mobile0.25", "--cpu", "--dataset_folder",
                    str(root / "images") + "/", "--save_folder", str(theirs)]
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(script, run_name="__main__")
        assert exited.value.code == 0
    finally:
        sys.argv = argv
        sys.path.remove(os.path.dirname(script))
    for name in names:  # same model, thresholds and integer boxes: the same files
        assert (theirs / f"{name}.txt").read_text() == (ours / f"{name}.txt").read_text()


def test_evaluate_loads_a_training_checkpoint(wider_layout, tmp_path):
    import torch

    from retinaface_ext.evaluation.cli import load_model

    root, _ = wider_layout
    weights = torch.load(root / "mobilenet0.25_Final.pth", weights_only=True)
    torch.save({"model": weights, "optimizer": {}, "epoch": 1}, tmp_path / "last.pt")
    model = load_model(str(tmp_path / "last.pt"), device="cpu")
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name])
