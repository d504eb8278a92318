"""retinaface_ext.align (detect()'s faces -> ArcFace crops) and the CLI's detect --crops."""
import os

import numpy as np
import pytest
import torch
from utils import requires_extension, requires_pretrained

import retinaface_ext
from retinaface_ext import ops
from retinaface_ext.cli import main

pytestmark = [requires_extension, requires_pretrained]


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="module")
def model():
    return retinaface_ext.RetinaFace.from_pretrained("mobilenet0.25")


def test_align_crops_detected_faces(model, astronaut):
    faces = retinaface_ext.detect(model, astronaut)
    crops = retinaface_ext.align(astronaut, faces)
    assert crops.shape == (1, 112, 112, 3) and crops.dtype == np.uint8
    expected = ops.align_faces(torch.from_numpy(astronaut)[None], torch.from_numpy(faces[:, 5:15]).reshape(-1, 5, 2),
                               torch.zeros(1, dtype=torch.int64))
    np.testing.assert_array_equal(crops, expected.numpy())
    # The landmarks land on the template: the eyes of the crop are darker than the cheeks below.
    eyes = crops[0, 48:56, 34:78].mean()
    cheeks = crops[0, 64:72, 30:40].mean()
    assert eyes < cheeks
    assert retinaface_ext.align(astronaut, faces, size=224).shape == (1, 224, 224, 3)
    # Views (a mirrored photo) and gray images are taken too.
    mirrored = astronaut[:, ::-1]
    mirrored_faces = retinaface_ext.detect(model, np.ascontiguousarray(mirrored))
    np.testing.assert_array_equal(retinaface_ext.align(mirrored, mirrored_faces),
                                  retinaface_ext.align(np.ascontiguousarray(mirrored), mirrored_faces))
    gray = retinaface_ext.align(astronaut[:, :, 1], faces)
    assert gray.shape == (1, 112, 112, 3) and (gray[..., 0] == gray[..., 2]).all()


def test_align_edge_cases(astronaut):
    assert retinaface_ext.align(astronaut, np.zeros((0, 15), np.float32)).shape == (0, 112, 112, 3)
    unlabeled = np.concatenate([[10, 10, 50, 50, 0.9], -np.ones(10)]).astype(np.float32)[None]
    assert (retinaface_ext.align(astronaut, unlabeled) == 0).all()  # biubug6's faces without landmarks
    with pytest.raises(ValueError, match=r"faces must be detect\(\)'s \[n, 15\] array, got shape \[3, 4\]"):
        retinaface_ext.align(astronaut, np.zeros((3, 4)))
    with pytest.raises(TypeError, match="must have dtype uint8"):
        retinaface_ext.align(astronaut.astype(np.float32), np.zeros((0, 15)))


def test_align_takes_what_users_hand_it_and_names_itself_in_errors(model, astronaut):
    import warnings

    faces = retinaface_ext.detect(model, astronaut)
    expected = retinaface_ext.align(astronaut, faces)
    read_only = astronaut.copy()
    read_only.flags.writeable = False  # np.frombuffer, memory maps, broadcast arrays ...
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warned about it
        np.testing.assert_array_equal(retinaface_ext.align(read_only, faces), expected)
        np.testing.assert_array_equal(retinaface_ext.align(astronaut[None], faces), expected)
    with pytest.raises(TypeError, match=r"^align\(\): image must have dtype uint8.*\(image >> 8\)"):
        retinaface_ext.align(astronaut.astype(np.uint16) * 257, faces)  # a 16-bit PNG read with IMREAD_UNCHANGED
    with pytest.raises(ValueError, match=r"^align\(\): image must be one image \[H, W, 3\], got 2; .*ops.align_faces"):
        retinaface_ext.align(np.stack([astronaut, astronaut]), faces)


def test_cli_writes_one_crop_per_face_without_collisions(tmp_path, astronaut):
    cv2 = pytest.importorskip("cv2")
    # The same file name in two folders: the crops of both survive.
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    cv2.imwrite(str(tmp_path / "a" / "face.png"), astronaut)
    cv2.imwrite(str(tmp_path / "b" / "face.png"), astronaut[:, ::-1])
    crops = tmp_path / "crops"
    assert main(["detect", str(tmp_path / "a" / "face.png"), str(tmp_path / "b"), "--out", str(tmp_path / "out"),
                 "--no-images", "--quiet", "--crops", str(crops), "--crop-size", "128"]) == 0
    written = sorted(os.listdir(crops))
    assert written == ["00001_face_000.png", "00002_face_000.png"]
    first, second = (cv2.imread(str(crops / name)) for name in written)
    assert first.shape == second.shape == (128, 128, 3)
    assert not np.array_equal(first, second)
