"""retinaface_ext.data: label.txt parsing, biubug6's augmentation, collate, the epoch sampler."""
import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from retinaface_ext.data import (  # noqa: E402
    EpochSampler,
    LabelFormatError,
    TrainTransform,
    WiderFaceDataset,
    collate,
    matrix_iof,
    parse_label_file,
    write_label_file,
)
from retinaface_ext.data.augment import mirror, random_crop  # noqa: E402

LINE = ("449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 "
        "485.727 425.893 0.0 538.273 431.491 0.0 0.82")
NO_LANDMARKS = "10 20 30 40 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0"


def write(tmp_path, text):
    path = tmp_path / "label.txt"
    path.write_text(text)
    return path


def test_parse_biubug6_layout(tmp_path):
    path = write(tmp_path, f"# 0--Parade/a.jpg\n{LINE}\n{NO_LANDMARKS}\n# 0--Parade/b.jpg\n\n# c.jpg\n1 2 3 4\n")
    entries = parse_label_file(path)
    assert [e.image_path for e in entries] == [str(tmp_path / "images" / p) for p in
                                               ("0--Parade/a.jpg", "0--Parade/b.jpg", "c.jpg")]
    a = entries[0].annotations
    assert a.shape == (2, 15) and a.dtype == np.float32
    np.testing.assert_allclose(a[0, :4], [449, 330, 571, 479])
    np.testing.assert_allclose(a[0, 4:14], [488.906, 373.643, 542.089, 376.442, 515.031, 412.83,
                                            485.727, 425.893, 538.273, 431.491], rtol=1e-6)
    assert a[0, 14] == 1 and a[1, 14] == -1 and (a[1, 4:14] == -1).all()
    assert entries[1].annotations.shape == (0, 15)
    np.testing.assert_array_equal(entries[2].annotations[0], [1, 2, 4, 6] + [-1] * 10 + [-1])


@pytest.mark.parametrize("bad, message", [
    ("1 2 3\n", r"label\.txt:3: a face line needs 4, 19 or 20 numbers .* got 3"),
    ("1 2 x 4\n", r"label\.txt:3: expected numbers, got '1 2 x 4'"),
    ("1 2 -3 4\n", r"label\.txt:3: negative box size"),
    ("1 2 nan 4\n", r"label\.txt:3: non-finite"),
    # finite as Python floats, infinite in the float32 annotations (they were inf targets, then a NaN loss)
    ("1e39 2 3 4\n", r"label\.txt:3: .*float32"),
    ("3e38 2 3e38 4\n", r"label\.txt:3: .*float32"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = write(tmp_path, f"# a.jpg\n{LINE}\n{bad}")
    with pytest.raises(LabelFormatError, match=message):
        parse_label_file(path)


def test_a_label_file_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "label.txt"
    path.write_bytes(f"# a.jpg\n{LINE}\n# caf\xe9.jpg\n".encode("latin-1"))  # it said "'utf-8' codec can't decode"
    with pytest.raises(LabelFormatError, match=r"label\.txt:3: not UTF-8 text \(byte 0xe9\)"):
        parse_label_file(path)


def test_face_before_image_line(tmp_path):
    with pytest.raises(LabelFormatError, match=r"label\.txt:1: face line before"):
        parse_label_file(write(tmp_path, f"{LINE}\n"))


def test_missing_image_names_the_path(tmp_path):
    dataset = WiderFaceDataset(write(tmp_path, f"# sub/missing.jpg\n{LINE}\n"))
    with pytest.raises(FileNotFoundError, match=r"image not found: .*sub/missing\.jpg \(listed in .*label\.txt:1\)"):
        dataset[0]


def test_write_then_parse_round_trip(tmp_path):
    faces = np.array([[10, 20, 50, 70, 20, 30, 40, 31, 30, 45, 22, 55, 38, 56, 1],
                      [60, 60, 80, 90] + [-1] * 10 + [-1]], dtype=np.float32)
    write_label_file(tmp_path / "label.txt", [("x/y.jpg", faces)])
    (entry,) = parse_label_file(tmp_path / "label.txt")
    np.testing.assert_allclose(entry.annotations, faces, atol=1e-3)


def test_matrix_iof():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], dtype=np.float64)
    roi = np.array([[0, 0, 10, 10]])
    np.testing.assert_allclose(matrix_iof(boxes, roi)[:, 0], [1.0, 0.25, 0.0])


def test_crop_keeps_faces_with_centre_inside():
    rng = np.random.default_rng(0)
    image = np.zeros((300, 400, 3), np.uint8)
    boxes = np.array([[10, 10, 50, 60], [200, 100, 260, 170], [350, 250, 399, 299]], np.float32)
    landmarks = np.tile(((boxes[:, :2] + boxes[:, 2:]) / 2), 5)
    labels = np.ones(3, np.float32)
    for _ in range(20):
        crop, b, l, lm, pad = random_crop(image, boxes, labels, landmarks, 640, rng)
        assert not pad and crop.shape[0] == crop.shape[1] and len(b) >= 1
        size = crop.shape[0]
        assert (b >= 0).all() and (b <= size).all() and (lm >= 0).all() and (lm <= size).all()


def test_crop_gives_up_without_faces():
    image = np.zeros((50, 80, 3), np.uint8)
    out = random_crop(image, np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                      np.zeros((0, 10), np.float32), 640, np.random.default_rng(0))
    assert out[0] is image and out[4] is True


def test_mirror_swaps_landmarks():
    image = np.arange(2 * 10 * 3, dtype=np.uint8).reshape(2, 10, 3)
    boxes = np.array([[1, 0, 4, 2]], np.float32)
    landmarks = np.array([[2, 0, 3, 0, 2.5, 1, 2, 2, 3, 2]], np.float32)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        flipped, b, lm = mirror(image, boxes, landmarks, rng)
        if flipped is image:
            continue
        np.testing.assert_array_equal(flipped, image[:, ::-1])
        np.testing.assert_array_equal(b, [[6, 0, 9, 2]])
        # left eye of the mirrored face is the mirrored right eye; mouth corners likewise.
        np.testing.assert_array_equal(lm, [[7, 0, 8, 0, 7.5, 1, 7, 2, 8, 2]])
        return
    pytest.fail("mirror never flipped")


def test_train_transform_output_and_reproducibility():
    rng_image = np.random.default_rng(1)
    image = rng_image.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    faces = np.array([[40, 50, 100, 120, 55, 70, 85, 70, 70, 90, 60, 105, 80, 105, 1],
                      [200, 80, 260, 150] + [-1] * 10 + [-1]], np.float32)
    transform = TrainTransform(image_size=128)
    out1, t1 = transform(image, faces, np.random.default_rng((0, 3, 7)))
    out2, t2 = transform(image, faces, np.random.default_rng((0, 3, 7)))
    assert out1.shape == (3, 128, 128) and out1.dtype == np.float32
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(t1, t2)
    assert t1.shape[1] == 15 and 1 <= len(t1) <= 2
    assert (t1[:, :4] >= 0).all() and (t1[:, :4] <= 1).all()
    assert (t1[t1[:, 14] < 0, 4:14] == -1).all()
    assert out1.min() >= -123 and out1.max() <= 255 - 104


def test_collate_pads_and_counts():
    samples = [(np.zeros((3, 8, 8), np.float32), np.ones((2, 15), np.float32)),
               (np.ones((3, 8, 8), np.float32), np.zeros((0, 15), np.float32)),
               (np.ones((3, 8, 8), np.float32), np.full((3, 15), 2, np.float32))]
    batch = collate(samples)
    assert batch.images.shape == (3, 3, 8, 8)
    assert batch.gt_boxes.shape == (3, 3, 4) and batch.gt_landms.shape == (3, 3, 10)
    assert batch.gt_labels.shape == (3, 3) and batch.gt_counts.tolist() == [2, 0, 3]
    assert batch.gt_counts.dtype == torch.int64
    assert (batch.gt_boxes[0, 2] == 0).all() and (batch.gt_boxes[2] == 2).all()
    targets = batch.targets()
    assert [t.shape[0] for t in targets] == [2, 0, 3]
    assert collate(samples, pad_multiple=8).gt_boxes.shape == (3, 8, 4)
    empty = collate(samples[1:2])
    assert empty.gt_boxes.shape == (1, 0, 4)


def test_epoch_sampler_deterministic_and_sharded():
    a = EpochSampler(10, shuffle=True, seed=3)
    a.set_epoch(2)
    first = list(a)
    a.set_epoch(2)
    assert list(a) == first and all(e == 2 for e, _ in first)
    assert sorted(i for _, i in first) == list(range(10))
    a.set_epoch(2, skip=4)
    assert list(a) == first[4:] and len(a) == 6
    shards = [EpochSampler(10, shuffle=True, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(1)
    indices = [i for s in shards for _, i in s]
    assert sorted(indices) == list(range(10))


def test_dataset_reads_and_augments(tmp_path):
    image = np.full((100, 120, 3), 80, np.uint8)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "x.png"), image)
    path = write(tmp_path, "# x.png\n30 20 40 50\n")
    raw = WiderFaceDataset(path)
    img, ann = raw[0]
    assert img.shape == (100, 120, 3) and ann.shape == (1, 15)
    augmented = WiderFaceDataset(path, transform=TrainTransform(64), seed=5)
    x1, t1 = augmented[(1, 0)]
    x2, t2 = augmented[(1, 0)]
    np.testing.assert_array_equal(x1, x2)
    assert x1.shape == (3, 64, 64) and t1.shape == (1, 15)


def test_uint8_batches_normalise_to_the_float_transform():
    from retinaface_ext.data import normalize_images

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)
    ann = np.array([[20, 30, 80, 100] + [50, 60] * 5 + [1]], dtype=np.float32)
    samples_u8 = [TrainTransform(128, output="uint8")(image, ann, np.random.default_rng(s)) for s in range(3)]
    samples_f32 = [TrainTransform(128)(image, ann, np.random.default_rng(s)) for s in range(3)]
    batch_u8, batch_f32 = collate(samples_u8), collate(samples_f32)
    assert batch_u8.images.dtype == torch.uint8 and batch_u8.images.shape == (3, 128, 128, 3)
    assert torch.equal(normalize_images(batch_u8.images), batch_f32.images)
    last = normalize_images(batch_u8.images, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, batch_f32.images)
    assert torch.equal(batch_u8.gt_boxes, batch_f32.gt_boxes)


def test_loader_reports_loading_time_and_rates():
    from retinaface_ext.training.trainer import ThroughputMeter, TimedLoading, timed_collate

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ann = np.array([[5, 5, 30, 30] + [10, 10] * 5 + [1]], dtype=np.float32)
    dataset = [TrainTransform(32, output="uint8")(image, ann, np.random.default_rng(s)) for s in range(4)]
    loader = torch.utils.data.DataLoader(TimedLoading(dataset), batch_size=2, collate_fn=timed_collate)
    meter = ThroughputMeter(workers=1)
    for batch, seconds in loader:
        assert batch.images.shape == (2, 32, 32, 3) and seconds > 0
        meter.loaded(2, seconds, 0.0)
    rates = meter.rates()
    assert set(rates) == {"images_per_second", "loader_images_per_second", "step_images_per_second"}
    assert rates["loader_images_per_second"] > rates["images_per_second"] > 0
