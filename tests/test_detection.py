"""detect(): pretrained mobilenet0.25 on real photos, batching, input validation."""
import os

import numpy as np
import pytest
from utils import crowd_jpg, requires_pretrained
import torch

from retinaface_ext import RetinaFace, detect
from retinaface_ext.detection import cached_priors, make_batch, prepare_images



CROWD = crowd_jpg()


@pytest.fixture(scope="module")
def model():
    return RetinaFace.from_pretrained("mobilenet0.25")


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR


@pytest.fixture(scope="module")
def crowd():
    cv2 = pytest.importorskip("cv2")
    if not os.path.isfile(CROWD):
        pytest.skip(f"{CROWD} is absent")
    return cv2.imread(CROWD, cv2.IMREAD_COLOR)


def _check_detections(detections, image):
    assert detections.dtype == np.float32 and detections.ndim == 2 and detections.shape[1] == 15
    assert np.all(np.diff(detections[:, 4]) <= 0), "sorted by score"
    assert np.all(detections[:, 2] > detections[:, 0]) and np.all(detections[:, 3] > detections[:, 1])


@requires_pretrained
def test_astronaut_has_exactly_one_face(model, astronaut):
    detections = detect(model, astronaut)
    _check_detections(detections, astronaut)
    assert len(detections) == 1
    x1, y1, x2, y2, score = detections[0, :5]
    assert score > 0.99
    # Eileen Collins' face is in the upper middle of the 512x512 photo.
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 200
    eyes_y = detections[0, [6, 8]]
    mouth_y = detections[0, [12, 14]]
    assert np.all(eyes_y < detections[0, 10]) and np.all(detections[0, 10] < mouth_y)  # eyes, nose, mouth


@requires_pretrained
def test_crowd_finds_at_least_25_faces_with_landmarks_inside(model, crowd):
    detections = detect(model, crowd, score_threshold=0.5)
    _check_detections(detections, crowd)
    assert len(detections) >= 25
    assert np.all(detections[:, 4] > 0.5)
    xs, ys = detections[:, 5:15:2], detections[:, 6:15:2]
    assert np.all((xs >= detections[:, [0]]) & (xs <= detections[:, [2]]))
    assert np.all((ys >= detections[:, [1]]) & (ys <= detections[:, [3]]))
    # Lower thresholds only add detections.
    assert len(detect(model, crowd, score_threshold=0.3)) >= len(detections)


@requires_pretrained
def test_batch_equals_one_at_a_time_for_same_size_images(model, crowd):
    images = [crowd, crowd[:, ::-1].copy(), np.ascontiguousarray(crowd[::-1])]
    batched = detect(model, images)
    assert isinstance(batched, list) and len(batched) == 3
    for image, result in zip(images, batched):
        single = detect(model, image)
        assert result.shape == single.shape
        np.testing.assert_allclose(result, single, rtol=1e-4, atol=1e-2)


@requires_pretrained
def test_batch_of_different_sizes_equals_one_call_per_image(model, astronaut, crowd):
    """Each size runs as its own batch (no padding): every image gets what it gets alone."""
    small = astronaut[:400, :450]
    batched = detect(model, [crowd, small, crowd[:, ::-1]])
    alone = [detect(model, crowd), detect(model, small), detect(model, crowd[:, ::-1])]
    for result, single in zip(batched, alone):
        np.testing.assert_array_equal(result, single)  # exactly: each size is a batch of its own
    assert len(batched[1]) == 1


@requires_pretrained
def test_returns_list_for_lists_and_array_for_one_image(model, astronaut):
    assert isinstance(detect(model, astronaut), np.ndarray)
    assert isinstance(detect(model, [astronaut]), list)
    assert detect(model, []) == []
    stacked = detect(model, np.stack([astronaut, astronaut]))
    assert isinstance(stacked, list) and len(stacked) == 2


@requires_pretrained
def test_conversions_grayscale_bgra(model, astronaut):
    gray = astronaut.mean(axis=2).astype(np.uint8)
    three = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(detect(model, gray), detect(model, three))
    np.testing.assert_array_equal(detect(model, gray[:, :, None]), detect(model, three))
    bgra = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(detect(model, bgra), detect(model, astronaut))


@requires_pretrained
def test_training_flag_is_restored(astronaut):
    model = RetinaFace.from_pretrained().train()
    assert len(detect(model, astronaut)) == 1
    assert model.training


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
        (np.zeros((10, 0), np.uint8), ValueError, "empty"),
        (np.zeros((10, 10, 3), np.float32), TypeError, "dtype uint8.*got float32"),
        (np.zeros((10, 10, 2), np.uint8), ValueError, "1, 3 or 4 channels.*got 2"),
        (np.zeros((10,), np.uint8), ValueError, r"shape \[H, W, 3\]"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), TypeError, "torch.Tensor"),
        ([[1, 2], [3, 4]], TypeError, "numpy array"),
    ],
)
def test_bad_images_raise_clear_errors(image, error, message):
    with pytest.raises(error, match=message):
        prepare_images(image)


def test_bad_image_in_a_list_names_its_index():
    with pytest.raises(TypeError, match=r"images\[1\]"):
        prepare_images([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.int16)])


def test_make_batch_pads_with_the_mean():
    a = np.full((4, 6, 3), 200, np.uint8)
    b = np.full((5, 3, 3), 10, np.uint8)
    batch = make_batch([a, b])
    assert batch.shape == (2, 3, 5, 6) and batch.dtype == torch.float32
    assert torch.equal(batch[0, :, 4, :], torch.zeros(3, 6))  # padded row: mean - mean
    assert torch.equal(batch[1, :, :, 3:], torch.zeros(3, 5, 3))
    assert torch.allclose(batch[0, :, 0, 0], torch.tensor([96.0, 83.0, 77.0]))


def test_priors_are_cached_per_size():
    first = cached_priors(64, 96, "cpu")
    assert cached_priors(64, 96, "cpu") is first
    assert cached_priors(96, 64, "cpu") is not first
