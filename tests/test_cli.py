"""The command line: demo, detect (images, folders, JSON) and export."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from utils import requires_pretrained

from retinaface_ext.cli import build_parser, main
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    cv2 = pytest.importorskip("cv2")
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("images")
    astronaut = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    cv2.imwrite(str(folder / "astronaut.jpg"), astronaut)
    (folder / "sub").mkdir()
    cv2.imwrite(str(folder / "sub" / "small.png"), cv2.resize(astronaut, (256, 256)))
    cv2.imwrite(str(folder / "sub" / "blank.png"), np.full((64, 80, 3), 127, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


@requires_pretrained
def test_demo_prints_the_astronaut(capsys):
    pytest.importorskip("skimage.data")
    assert main(["demo", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "found 1 face with score > 0.5" in out
    assert "left eye" in out and "score" in out
    assert "backend: " in out


@requires_pretrained
def test_detect_folder_writes_images_and_json(tmp_path, images, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(images), "--out", str(out), "--json", "--batch-size", "2"]) == 0
    report = json.loads((out / "detections.json").read_text())
    by_name = {os.path.basename(r["path"]): r for r in report["images"]}
    assert set(by_name) == {"astronaut.jpg", "small.png", "blank.png"}
    assert len(by_name["astronaut.jpg"]["faces"]) == 1
    assert len(by_name["small.png"]["faces"]) == 1
    assert by_name["blank.png"]["faces"] == []
    face = by_name["astronaut.jpg"]["faces"][0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and face["score"] > 0.9
    assert (out / "astronaut.jpg").is_file() and (out / "sub" / "small.png").is_file()
    assert "2 faces in 3 images" in capsys.readouterr().out


@requires_pretrained
def test_detect_single_image_without_drawing(tmp_path, images, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(images / "astronaut.jpg"), "--out", str(out), "--no-images"]) == 0
    assert "astronaut.jpg: 1 face" in capsys.readouterr().out
    assert not (out / "astronaut.jpg").exists()


def test_detect_missing_input(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nope.jpg"), "--out", str(tmp_path)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@requires_pretrained
def test_export_command(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path = tmp_path / "retinaface.onnx"
    # A fixed size: quicker to export (tests/test_export.py covers --dynamic and --with-postprocess).
    assert main(["export", "--onnx", str(path), "--size", "64", "96"]) == 0
    assert path.stat().st_size > 1_000_000
    assert [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 96]


def test_export_options_that_do_not_apply(tmp_path, capsys):
    path = str(tmp_path / "x.onnx")
    assert main(["export", "--onnx", path, "--with-postprocess", "--dynamic"]) == 2
    assert "drop --dynamic" in capsys.readouterr().err
    assert main(["export", "--onnx", path, "--score-threshold", "0.3"]) == 2
    assert "only apply with --with-postprocess" in capsys.readouterr().err


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "retinaface_ext", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "demo" in result.stdout and "detect" in result.stdout and "export" in result.stdout
