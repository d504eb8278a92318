"""The command line in a user's hands: no lost or overwritten work, honest exit codes, sentences not tracebacks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from utils import requires_pretrained, widerface_gt_dir

from retinaface_ext import RetinaFace, load_weights
from retinaface_ext.cli import main
from retinaface_ext.evaluation import read_prediction_file, write_prediction_file
from retinaface_ext.weights import WeightsMismatchError

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two folders with an image of the same name each, one truncated JPEG and one unreadable file."""
    skimage_data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("photos")
    face = cv2.resize(np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1]), (192, 192))
    for folder, image in (("a", face), ("b", np.full((96, 128, 3), 127, np.uint8))):
        (root / folder).mkdir()
        assert cv2.imwrite(str(root / folder / "img.jpg"), image)
    (root / "bad").mkdir()
    whole = (root / "a" / "img.jpg").read_bytes()
    (root / "bad" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "bad" / "garbage.png").write_bytes(b"not a png at all")
    return root


def detect_cli(*args):
    return main(["detect", *map(str, args), "--device", "cpu", "--quiet"])


@requires_pretrained
def test_same_file_names_in_different_folders_do_not_overwrite_each_other(photos, tmp_path):
    out = tmp_path / "out"
    assert detect_cli(photos / "a", photos / "b", "--out", out, "--json") == 0
    assert (out / "a" / "img.jpg").is_file() and (out / "b" / "img.jpg").is_file()
    report = json.loads((out / "detections.json").read_text())
    faces = {os.path.basename(os.path.dirname(r["path"])): len(r["faces"]) for r in report["images"]}
    assert faces == {"a": 1, "b": 0}


@requires_pretrained
def test_out_equal_to_the_input_folder_is_refused(photos, tmp_path, capsys):
    original = (photos / "a" / "img.jpg").read_bytes()
    assert detect_cli(photos / "a", "--out", photos / "a") == 2
    assert "would overwrite the input images" in capsys.readouterr().err
    assert (photos / "a" / "img.jpg").read_bytes() == original
    assert detect_cli(photos / "a", "--out", photos / "a", "--no-images", "--json") == 0  # nothing to overwrite


@requires_pretrained
def test_unreadable_and_truncated_images_fail_the_run_but_not_the_others(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert detect_cli(photos / "a", photos / "bad", "--out", out, "--json") == 1
    err = capsys.readouterr().err
    assert "truncated JPEG" in err and "garbage.png" in err
    report = json.loads((out / "detections.json").read_text())
    assert [os.path.basename(r["path"]) for r in report["images"]] == ["img.jpg"]


@requires_pretrained
def test_ctrl_c_keeps_the_detections_done(photos, tmp_path, monkeypatch):
    import retinaface_ext.detection as detection

    real_detect, calls = detection.detect, []

    def detect_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_detect(*args, **kwargs)

    monkeypatch.setattr(detection, "detect", detect_then_ctrl_c)
    out = tmp_path / "out"
    assert detect_cli(photos / "a", photos / "b", "--out", out, "--json") == 130
    report = json.loads((out / "detections.json").read_text())
    assert len(report["images"]) == 1 and report["complete"] is False


def test_ctrl_c_while_loading_the_model_is_a_sentence(photos, tmp_path, monkeypatch, capsys):
    import retinaface_ext.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load_model", interrupted)  # the seconds a user waits for most
    try:
        code = detect_cli(photos / "a", "--out", tmp_path / "out")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() (a traceback for the user)")
    assert code == 130
    assert capsys.readouterr().err == "retinaface-ext detect: interrupted\n"


@requires_pretrained
def test_a_detections_json_that_cannot_be_written_leaves_no_temporary_file(photos, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "detections.json").mkdir(parents=True)  # in the way of the rename
    assert detect_cli(photos / "a", "--out", out, "--json") == 2
    assert "detections.json" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "img.jpg"]


@requires_pretrained
def test_demo_save_reports_a_failed_write(tmp_path, capsys):
    pytest.importorskip("skimage.data")
    assert main(["demo", "--repeat", "1", "--save", str(tmp_path / "no" / "such" / "dir" / "x.jpg")]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["demo", "--repeat", "0"], "--repeat must be >= 1"),
    (["demo", "--threads", "-3"], "--threads must be >= 1"),
    # These ended in the op's RuntimeError traceback after the model was loaded (exit code 1).
    (["detect", "x.jpg", "--score-threshold", "1.5"], "--score-threshold must be in [0, 1], got 1.5"),
    (["detect", "x.jpg", "--nms-threshold", "nan"], "--nms-threshold must be in [0, 1], got nan"),
    (["demo", "--score-threshold", "-1"], "--score-threshold must be in [0, 1], got -1.0"),
    (["evaluate", "--out", "x", "--score-threshold", "7"], "--score-threshold must be in [0, 1], got 7.0"),
])
def test_bad_numbers_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_sentence(capsys):
    assert main(["demo", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_weights_files_that_are_missing_or_corrupt_are_sentences(tmp_path, capsys):
    assert main(["demo", "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "no such weights file" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pth"
    torch.save(RetinaFace().state_dict(), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:5000])
    assert main(["demo", "--weights", str(corrupt)]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_weights_that_do_not_fit_say_which(tmp_path):
    with pytest.raises(WeightsMismatchError, match="holds none of the weights of RetinaFace"):
        load_weights(RetinaFace(), {"encoder": {"layer.weight": torch.zeros(1)}})
    state = RetinaFace().state_dict()
    del state["fpn.output1.0.weight"]
    with pytest.warns(UserWarning, match=r"loaded \d+ of the \d+ tensors .*Missing key\(s\) \(1\): fpn.output1.0.weight"):
        load_weights(RetinaFace(), state, strict=False)
    with pytest.raises(WeightsMismatchError, match=r"Missing key\(s\) \(1\): fpn.output1.0.weight"):
        load_weights(RetinaFace(), state)


@requires_pretrained
@pytest.mark.parametrize("name", ["pretrained", "mobilenet0.25"])
def test_pretrained_names_load_the_bundled_weights(name):
    expected = RetinaFace.from_pretrained().state_dict()
    loaded = load_weights(RetinaFace(), name).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    named = RetinaFace.from_pretrained(name).state_dict()
    assert all(torch.equal(named[k], v) for k, v in expected.items())


# ----------------------------------------------------------------- evaluation

def write_file(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("body,message", [
    ("img\n2\n1 2 3 4 0.9\n1 2 3 four 0.5\n", r"img\.txt:4: expected 'x y w h score', got '1 2 3 four 0.5'"),
    ("img\n2\n1 2 3 4 0.9\n1 2 3 4 inf\n", r"img\.txt:4: non-finite value"),
    ("img\n2\n1 2 3 4 nan\n1 2 3 4 0.5\n", r"img\.txt:3: non-finite value"),
    ("img\n3\n1 2 3 4 0.9\n", r"img\.txt:2: the file says 3 boxes but has 1 box lines"),
    ("img\nmany\n1 2 3 4 0.9\n", r"img\.txt:2: expected the number of boxes, got 'many'"),
])
def test_prediction_files_with_errors_name_the_line(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        read_prediction_file(write_file(tmp_path / "e" / "img.txt", body))


def test_binary_prediction_files_name_the_file(tmp_path):
    path = tmp_path / "e" / "img.txt"
    path.parent.mkdir()
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"img\.txt: not a text prediction file"):
        read_prediction_file(path)


def test_prediction_files_we_write_still_read(tmp_path):
    write_prediction_file(tmp_path, "e", "img", np.array([[1.0, 2.0, 11.0, 22.0, 0.5]]))
    assert read_prediction_file(tmp_path / "e" / "img.txt")[1].tolist() == [[1.0, 2.0, 10.0, 20.0, 0.5]]
    write_file(tmp_path / "e" / "landmarks.txt", "img\n1\n1 2 3 4 0.9 5 6 7 8\n")  # extra columns: first five
    assert read_prediction_file(tmp_path / "e" / "landmarks.txt")[1].tolist() == [[1, 2, 3, 4, 0.9]]


def test_evaluate_without_images_or_gt_says_there_is_nothing_to_do(tmp_path, capsys):
    assert main(["evaluate", "--out", str(tmp_path)]) == 2
    assert "nothing to do" in capsys.readouterr().err


@requires_pretrained
def test_evaluate_skips_unreadable_images_and_reports_them(photos, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "event").mkdir(parents=True)
    (images / "event" / "good.jpg").write_bytes((photos / "a" / "img.jpg").read_bytes())
    (images / "event" / "broken.jpg").write_bytes((photos / "bad" / "truncated.jpg").read_bytes())
    out = tmp_path / "preds"
    assert main(["evaluate", "--images", str(images), "--out", str(out), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "1 unreadable images skipped" in captured.out
    assert os.listdir(out / "event") == ["good.txt"]


def test_a_score_outside_0_1_is_warned_about(tmp_path):
    gt_dir = widerface_gt_dir()
    if not os.path.isfile(os.path.join(gt_dir, "wider_face_val.mat")):
        pytest.skip("WIDER FACE validation ground truth not found")
    from retinaface_ext.evaluation import load_ground_truth, widerface_ap

    gt = load_ground_truth(gt_dir)
    write_prediction_file(tmp_path, gt.events[0], gt.names[0], np.array([[0, 0, 10, 10, 0.5]]))
    write_prediction_file(tmp_path, gt.events[1], gt.names[1], np.array([[0, 0, 10, 10, 1e9]]))
    with pytest.warns(UserWarning, match=rf"a score of 1e\+09 in .*{gt.names[1]}\.txt"):
        widerface_ap(tmp_path, gt_dir, missing="empty")


# ----------------------------------------------------------------- file names from strangers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _non_utf8_name(folder, name):
    """``folder/name`` (bytes, not UTF-8), or a skip where the file system refuses such names (APFS)."""
    path = os.path.join(os.fsencode(folder), name)
    try:
        with open(path, "wb"):
            pass
    except OSError:
        pytest.skip("this file system takes only UTF-8 file names")
    return path


def test_read_and_write_images_whose_names_are_not_utf8(photos, tmp_path):
    # cv2.imread / cv2.imwrite crash the process (SIGSEGV) on such names, hence the subprocess.
    source = _non_utf8_name(tmp_path, b"caf\xe9 photo.jpg")
    with open(source, "wb") as handle:
        handle.write((photos / "a" / "img.jpg").read_bytes())
    script = (
        "import os, sys\n"
        "import cv2\n"
        "from retinaface_ext.cli import _write_image\n"
        "from retinaface_ext.detection import read_image\n"
        f"image = read_image(os.fsdecode({source!r}))\n"
        f"_write_image(cv2, os.fsdecode({source!r}) + '.png', image)\n"
        f"assert (read_image(os.fsdecode({source!r}) + '.png') == image).all()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(source + b".png")


@requires_pretrained
def test_detect_cli_on_a_file_name_that_is_not_utf8(photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with open(_non_utf8_name(folder, b"caf\xe9.jpg"), "wb") as handle:
        handle.write((photos / "a" / "img.jpg").read_bytes())
    out, crops = tmp_path / "out", tmp_path / "crops"
    # A strict stdout (an en_US.UTF-8 terminal) must take the printed name too.
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    result = subprocess.run([sys.executable, "-m", "retinaface_ext", "detect", str(folder), "--out", str(out),
                             "--crops", str(crops), "--json", "--device", "cpu"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "caf\\xe9.jpg: 1 face" in result.stdout
    assert sorted(os.listdir(os.fsencode(out))) == [b"caf\xe9.jpg", b"detections.json"]
    assert os.listdir(os.fsencode(crops)) == [b"00001_caf\xe9_000.png"]
    record = json.loads((out / "detections.json").read_text())["images"][0]
    assert os.path.isfile(record["path"]) and record["faces"][0]["crop"] == os.fsdecode(b"00001_caf\xe9_000.png")


@requires_pretrained
def test_an_image_opencv_cannot_write_back_gets_a_png_copy(photos, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "IMG_0001").write_bytes((photos / "a" / "img.jpg").read_bytes())  # a JPEG without an extension
    out = tmp_path / "out"
    assert detect_cli(folder / "IMG_0001", "--out", out, "--json") == 0
    assert sorted(os.listdir(out)) == ["IMG_0001.png", "detections.json"]
    assert len(json.loads((out / "detections.json").read_text())["images"][0]["faces"]) == 1
    # ... unless an input of that name exists: then nothing is overwritten.
    (folder / "IMG_0001.png").write_bytes(b"")
    assert detect_cli(folder / "IMG_0001", folder / "IMG_0001.png", "--out", tmp_path / "out2") == 2


@requires_pretrained
def test_crops_of_images_with_long_names_fit_the_file_system(photos, tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    for stem in ("x" * 250, "ф" * 124):  # 250 and 248 bytes: the crop names would be 264 and 262
        (folder / f"{stem}.jpg").write_bytes((photos / "a" / "img.jpg").read_bytes())
    crops = tmp_path / "crops"
    assert detect_cli(folder, "--out", tmp_path / "out", "--no-images", "--crops", crops) == 0
    written = sorted(os.listdir(crops))
    assert len(written) == 2 and all(len(os.fsencode(name)) <= 255 for name in written)
    assert written[0].startswith("00001_xxx") and written[1].startswith("00002_ффф")  # cut between characters


def test_prediction_files_of_images_whose_names_are_not_utf8(tmp_path):
    _non_utf8_name(tmp_path, b"caf\xe9 probe")
    name = os.fsdecode(b"caf\xe9")  # as os.walk / os.listdir give it
    write_prediction_file(tmp_path, "e", name, np.array([[1.0, 2.0, 11.0, 22.0, 0.5]]))
    path = os.path.join(os.fsencode(tmp_path), b"e", b"caf\xe9.txt")
    assert open(path, "rb").read().startswith(b"caf\xe9\n1\n")
    assert read_prediction_file(os.fsdecode(path))[0] == name


def test_evaluate_names_its_own_option_for_missing_files_and_skips_folders(tmp_path, capsys):
    gt_dir = widerface_gt_dir()
    if not os.path.isfile(os.path.join(gt_dir, "wider_face_val.mat")):
        pytest.skip("WIDER FACE validation ground truth not found")
    from retinaface_ext.evaluation import load_ground_truth

    gt = load_ground_truth(gt_dir)
    write_prediction_file(tmp_path, gt.events[0], gt.names[0], np.array([[0, 0, 10, 10, 0.5]]))
    (tmp_path / gt.events[0] / "notes.txt").mkdir()  # a folder is not a prediction file (it raised IsADirectoryError)
    arguments = ["evaluate", "--out", str(tmp_path), "--gt", gt_dir]
    assert main(arguments) == 2
    assert "evaluate --missing empty" in capsys.readouterr().err  # it said "pass missing='empty'" to CLI users
    assert main(arguments + ["--missing", "empty"]) == 0
