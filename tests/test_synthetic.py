"""retinaface_ext.data.synthetic: exact labels, determinism, the label.txt round trip."""
import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("skimage")

from retinaface_ext.data import SyntheticFaces, WiderFaceDataset, generate_synthetic_dataset  # noqa: E402


def test_scenes_are_deterministic_and_valid():
    dataset = SyntheticFaces(size=12, image_size=160, seed=4)
    total = 0
    for i in range(len(dataset)):
        image, faces = dataset[i]
        again, faces_again = dataset[i]
        np.testing.assert_array_equal(image, again)
        np.testing.assert_array_equal(faces, faces_again)
        assert image.shape == (160, 160, 3) and image.dtype == np.uint8
        assert faces.shape[1] == 15 and len(faces) >= 1
        assert (faces[:, :2] >= 0).all() and (faces[:, 2:4] <= 160).all()
        assert (faces[:, 2] > faces[:, 0]).all() and (faces[:, 3] > faces[:, 1]).all()
        with_landmarks = faces[faces[:, 14] > 0]
        points = with_landmarks[:, 4:14].reshape(-1, 5, 2)
        # Landmarks lie inside their box; left eye left of right eye (also after mirroring).
        assert (points[..., 0] >= with_landmarks[:, None, 0] - 1).all()
        assert (points[..., 0] <= with_landmarks[:, None, 2] + 1).all()
        assert (points[:, 0, 0] < points[:, 1, 0]).all() and (points[:, 3, 0] < points[:, 4, 0]).all()
        total += len(faces)
    assert total >= 12
    other = SyntheticFaces(size=12, image_size=160, seed=5)
    assert not np.array_equal(other[0][0], dataset[0][0])


def test_faces_are_where_the_labels_say():
    # The pasted face changes the pixels inside its box: the box region differs
    # from the same scene rendered without faces at most by the blend, so check
    # that face boxes have face-like contrast (not flat) on a flat background.
    dataset = SyntheticFaces(size=4, image_size=200, seed=0)
    for i in range(4):
        image, faces = dataset[i]
        for face in faces:
            x1, y1, x2, y2 = face[:4].astype(int)
            assert image[y1:y2, x1:x2].std() > 5


def test_generated_label_file_round_trip(tmp_path):
    label = generate_synthetic_dataset(tmp_path, num_images=3, image_size=96, seed=1)
    dataset = WiderFaceDataset(label)
    reference = SyntheticFaces(size=3, image_size=96, seed=1)
    assert len(dataset) == 3
    for i in range(3):
        image, faces = dataset[i]
        ref_image, ref_faces = reference[i]
        np.testing.assert_array_equal(image, ref_image)  # png: lossless
        np.testing.assert_allclose(faces, ref_faces, atol=1e-3)
