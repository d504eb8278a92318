"""ops.train_augment (biubug6's preproc pixels in one pass) against biubug6's own numpy / cv2 steps.

The reference is retinaface_ext.reference.train_augment: the region crop,
``_distort`` (numpy float64 + cv2.cvtColor), ``_pad_to_square``, ``_mirror``
and ``cv2.resize``, exactly as data/data_augment.py runs them. With Intel IPP
switched off in OpenCV (the opencv-python wheels send INTER_CUBIC to IPP),
every step is bit-exact; with IPP on, cubic differs by at most 1 gray level.
"""
import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from retinaface_ext import HAS_EXTENSION, ops, reference  # noqa: E402
from retinaface_ext.data import AugmentParams, Distortion, TrainTransform, draw_augmentation  # noqa: E402
from retinaface_ext.data.augment import distort, mirror, mirror_targets, pad_to_square, random_crop  # noqa: E402

pytestmark = pytest.mark.skipif(not HAS_EXTENSION, reason="retinaface_ext._C is not built")
MEAN = (104.0, 117.0, 123.0)


@pytest.fixture(scope="module")
def photo():
    """A 700 x 523 BGR photo (scikit-image's astronaut and coffee side by side), odd sizes on purpose."""
    skimage_data = pytest.importorskip("skimage.data")
    a = cv2.resize(skimage_data.astronaut(), (400, 523))
    b = cv2.resize(skimage_data.coffee(), (300, 523))
    return np.ascontiguousarray(np.concatenate([a, b], axis=1)[:, :, ::-1])


@pytest.fixture
def no_ipp():
    used = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield
    cv2.ipp.setUseIPP(used)


def run_both(image, params, size=640, dtype=torch.uint8):
    images = torch.from_numpy(image)[None]
    rows = [params.row()]
    fused = ops.train_augment(images, rows, size, MEAN, dtype=dtype)[0]
    expected = reference.train_augment(images, rows, size, MEAN, dtype=dtype)[0]
    return fused, expected


def assert_exact(fused, expected):
    diff = (fused.to(torch.int32) - expected.to(torch.int32)).abs()
    assert diff.max().item() == 0, f"max |diff| {diff.max().item()}, mean {diff.float().mean().item():.5f}"


DISTORTIONS = {
    "identity (the HSV round trip alone)": Distortion(),
    "brightness +": Distortion(brightness=21.7),
    "brightness -": Distortion(brightness=-31.2),
    "contrast first": Distortion(contrast=1.37),
    "contrast last": Distortion(contrast_last=True, contrast=0.61),
    "saturation +": Distortion(saturation=1.45),
    "saturation -": Distortion(saturation=0.52),
    "hue +": Distortion(hue=17),
    "hue -": Distortion(hue=-18),
    "all, contrast last": Distortion(True, -12.5, 1.2, 0.7, 5),
    "all, contrast first": Distortion(False, 30.1, 0.55, 1.3, -9),
}


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_each_photometric_step_is_exact(photo, name, no_ipp):
    # side == size: no resize (cv2.resize copies), so only the distortion is compared.
    params = AugmentParams(37, 11, 413, 413, 413, False, 0, DISTORTIONS[name])
    assert_exact(*run_both(photo, params, size=413))


@pytest.mark.parametrize("interpolation", range(5), ids=["linear", "cubic", "area", "nearest", "lanczos4"])
@pytest.mark.parametrize("side, size", [(187, 640), (451, 640), (523, 640), (523, 523), (451, 300), (451, 131)])
def test_each_interpolation_is_exact(photo, interpolation, side, size, no_ipp):
    # Upscales, the identity (cv2.resize copies), downscales.
    params = AugmentParams(photo.shape[1] - side, 0, side, side, side, True, interpolation, Distortion(hue=3))
    assert_exact(*run_both(photo, params, size=size))


@pytest.mark.parametrize("interpolation", range(5), ids=["linear", "cubic", "area", "nearest", "lanczos4"])
@pytest.mark.parametrize("flip", [False, True], ids=["plain", "mirror"])
def test_pad_and_mirror_are_exact(photo, interpolation, flip, no_ipp):
    # No crop found: the whole 700 x 523 image padded to 700 with the mean, downscaled to 640.
    params = AugmentParams(0, 0, 700, 523, 700, flip, interpolation, Distortion(brightness=5.0))
    assert_exact(*run_both(photo, params))


@pytest.mark.parametrize("interpolation, side, size", [(0, 1280, 640), (2, 1280, 640), (2, 1500, 500),
                                                        (2, 1200, 517), (0, 1200, 840), (1, 700, 842)])
def test_integer_factors_and_odd_sizes_are_exact(interpolation, side, size, no_ipp):
    rng = np.random.default_rng(side + size)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    params = AugmentParams(0, 0, side, side, side, interpolation == 2, interpolation, Distortion(saturation=0.8))
    assert_exact(*run_both(image, params, size=size))


def test_cubic_against_ipp_is_within_one_gray_level(photo):
    params = AugmentParams(100, 30, 451, 451, 451, False, 1, Distortion())
    fused, expected = run_both(photo, params)
    diff = (fused.to(torch.int32) - expected.to(torch.int32)).abs().float()
    assert diff.max() <= 1 and diff.mean() < 0.1


def test_all_colours_through_the_hsv_round_trip(no_ipp):
    # Every (B, G) with R in steps of 17: 1.1M colours, each distorted as one pixel.
    b, g, r = np.meshgrid(np.arange(256), np.arange(256), np.arange(0, 256, 17), indexing="ij")
    image = np.stack([b, g, r], axis=-1).astype(np.uint8).reshape(1024, -1, 3)
    for distortion in (Distortion(), Distortion(True, 7.5, 1.3, 1.4, -11)):
        params = AugmentParams(0, 0, image.shape[1], 1024, image.shape[1], False, 3, distortion)
        fused = ops.train_augment(torch.from_numpy(image)[None], [params.row()], image.shape[1], MEAN,
                                  dtype=torch.uint8)
        assert np.array_equal(fused[0].numpy()[:1024, :, :], reference.train_augment(
            torch.from_numpy(image)[None], [params.row()], image.shape[1], MEAN)[0].numpy()[:1024])


def test_float_outputs_are_the_uint8_minus_the_mean(photo):
    params = AugmentParams(10, 20, 300, 300, 300, True, 0, Distortion(contrast=1.1))
    images = torch.from_numpy(photo)[None]
    u8 = ops.train_augment(images, [params.row()], 640, MEAN, dtype=torch.uint8)
    expected = u8.permute(0, 3, 1, 2).float() - torch.tensor(MEAN).view(1, 3, 1, 1)
    f32 = ops.train_augment(images, [params.row()], 640, MEAN, dtype=torch.float32)
    assert f32.is_contiguous() and torch.equal(f32, expected)
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(ops.train_augment(images, [params.row()], 640, MEAN, dtype=dtype), expected.to(dtype))


def today_train_transform(image, annotations, rng, size=640):
    """The step-by-step TrainTransform (biubug6's preproc order) from the kept numpy / cv2 steps."""
    annotations = np.asarray(annotations, dtype=np.float32).reshape(-1, 15)
    boxes, landmarks, labels = annotations[:, :4].copy(), annotations[:, 4:14].copy(), annotations[:, 14].copy()
    image, boxes, labels, landmarks, pad = random_crop(image, boxes, labels, landmarks, size, rng)
    image = distort(image, rng)
    if pad:
        image = pad_to_square(image, np.asarray(MEAN, dtype=np.float32))
    image, boxes, landmarks = mirror(image, boxes, landmarks, rng)
    height, width = image.shape[:2]
    interpolation = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST,
                     cv2.INTER_LANCZOS4)[int(rng.integers(5))]
    image = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interpolation)
    image = (image.astype(np.float32) - np.asarray(MEAN, dtype=np.float32)).transpose(2, 0, 1)
    scale = np.array([width, height], dtype=np.float32)
    boxes = (boxes.reshape(-1, 2, 2) / scale).reshape(-1, 4)
    landmarks = (landmarks.reshape(-1, 5, 2) / scale).reshape(-1, 10)
    landmarks[labels < 0] = -1.0
    return image, np.concatenate([boxes, landmarks, labels[:, None]], axis=1).astype(np.float32)


def faces(rng, count, width, height):
    size = rng.uniform(8, 90, count)
    x1, y1 = rng.uniform(0, width - size), rng.uniform(0, height - size * 1.2)
    boxes = np.stack([x1, y1, x1 + size, y1 + size * 1.2], axis=1)
    points = boxes[:, None, :2] + rng.uniform(0.1, 0.9, (count, 5, 2)) * (boxes[:, None, 2:] - boxes[:, None, :2])
    labels = np.where(rng.random(count) < 0.25, -1.0, 1.0)
    points[labels < 0] = -1
    return np.concatenate([boxes, points.reshape(count, 10), labels[:, None]], axis=1).astype(np.float32)


def test_train_transform_equals_the_step_by_step_transform(photo, no_ipp):
    rng = np.random.default_rng(5)
    seen = set()
    for seed in range(40):
        annotations = faces(rng, int(rng.integers(1, 12)), photo.shape[1], photo.shape[0])
        if seed % 7 == 0:  # a face too wide for any crop: no crop is found, the image is padded
            annotations[0, :4] = [2, 2, 690, 500]
        image, targets = TrainTransform(640)(photo, annotations, np.random.default_rng((0, seed)))
        expected_image, expected_targets = today_train_transform(photo, annotations, np.random.default_rng((0, seed)))
        assert np.array_equal(targets, expected_targets)
        assert np.array_equal(image, expected_image), f"seed {seed}"
        params, _ = draw_augmentation(photo.shape[0], photo.shape[1], annotations, np.random.default_rng((0, seed)))
        seen.add((params.interpolation, params.mirror, params.side == 700))
    assert {i for i, _, _ in seen} == set(range(5)) and any(pad for _, _, pad in seen)


def test_landmarks_swap_and_minus_one_are_kept(photo):
    annotations = faces(np.random.default_rng(1), 6, photo.shape[1], photo.shape[0])
    for seed in range(10):
        params, targets = draw_augmentation(photo.shape[0], photo.shape[1], annotations,
                                            np.random.default_rng(seed))
        no_landmarks = targets[:, 14] < 0
        assert (targets[no_landmarks, 4:14] == -1).all()
        if params.mirror:  # left eye (x0) is now right of the right eye (x1) for a face seen mirrored
            assert ((targets[~no_landmarks, 4] >= 0)).all()

    class AlwaysMirror:
        def integers(self, n):
            return 1

    # biubug6's _mirror by hand: x -> width - x, then the eyes and the mouth corners swap sides.
    boxes = np.array([[10, 20, 50, 80]], np.float32)
    points = np.array([[20, 30, 40, 31, 30, 50, 22, 70, 38, 71]], np.float32)
    boxes, points, flipped = mirror_targets(100, boxes, points, AlwaysMirror())
    assert flipped and boxes.tolist() == [[50, 20, 90, 80]]
    assert points.tolist() == [[60, 31, 80, 30, 70, 50, 62, 71, 78, 70]]


def test_batch_and_threads_give_the_same_images(photo):
    rows = [AugmentParams(0, 0, 700, 523, 700, True, i, Distortion(hue=i)).row() for i in range(5)]
    rows += [AugmentParams(50 * i, 20, 200 + 50 * i, 200 + 50 * i, 200 + 50 * i, False, i, Distortion()).row()
             for i in range(5)]
    images = torch.from_numpy(photo)[None].expand(10, -1, -1, -1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.train_augment(images, rows, 320, MEAN, dtype=torch.float32)
        torch.set_num_threads(2)
        two = ops.train_augment(images, rows, 320, MEAN, dtype=torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    for b in range(10):
        assert torch.equal(one[b], ops.train_augment(images[b], [rows[b]], 320, MEAN, dtype=torch.float32)[0])
    assert ops.train_augment(images[:0], torch.zeros(0, 12, dtype=torch.float64), 64, MEAN).shape == (0, 3, 64, 64)


def test_opcheck(photo):
    images = torch.from_numpy(photo[:100, :120].copy())[None]
    params = torch.tensor([AugmentParams(3, 4, 90, 90, 96, True, 2, Distortion(True, 3.0, 1.1, 0.9, 2)).row()],
                          dtype=torch.float64)
    for dtype in (None, torch.float32):
        torch.library.opcheck(torch.ops.retinaface.train_augment.default, (images, params, 64, list(MEAN), dtype))


@pytest.mark.parametrize("change, message", [
    (lambda i, p: (i.float(), p), r"images must be torch.uint8|images must be Byte"),
    (lambda i, p: (i[..., :2], p), r"images must have shape \[B, H, W, 3\]"),
    (lambda i, p: (i, p[:, :11]), r"params must have shape \[B, 12\]"),
    (lambda i, p: (i, p.float()), r"params must be"),
    (lambda i, p: (i, p.index_fill(1, torch.tensor([0]), 50.0)), r"region .* must lie inside"),
    (lambda i, p: (i, p.index_fill(1, torch.tensor([6]), 5.0)), r"interpolation must be 0..4"),
    (lambda i, p: (i, p.index_fill(1, torch.tensor([4]), 10.0)), r"side must be"),
    (lambda i, p: (i, p.index_fill(1, torch.tensor([8]), float("nan"))), r"must be finite"),
    (lambda i, p: (i, p.index_fill(1, torch.tensor([5]), 0.5)), r"must be an integer"),
])
def test_bad_arguments_raise(change, message):
    images = torch.zeros(1, 40, 50, 3, dtype=torch.uint8)
    params = torch.tensor([AugmentParams(0, 0, 40, 40, 40, False, 0).row()], dtype=torch.float64)
    images, params = change(images, params)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.retinaface.train_augment(images, params, 32, list(MEAN), None)


@pytest.mark.parametrize("column, value, message", [
    (0, 50.0, r"region .* must lie inside"), (6, 5.0, r"interpolation must be 0..4"), (4, 10.0, r"side must be"),
    (4, 70000.0, r"side must be"), (8, float("nan"), r"must be finite"), (5, 0.5, r"must be an integer"),
    (0, 0.5, r"must be an integer"), (11, 2.5, r"must be an integer"), (11, 2.0 ** 30, r"must be an integer"),
    (7, 2.0, r"mirror and contrast_last must be 0 or 1"),
])
def test_rows_for_cuda_are_checked_on_the_host_as_the_cpu_kernel_checks_them(column, value, message):
    # The CUDA kernel cannot read params without a synchronisation: ops.train_augment checks
    # them on the host first, and must refuse exactly what the CPU kernel refuses.
    from retinaface_ext.ops.train_augment import _check_rows_on_host

    images = torch.zeros(1, 40, 50, 3, dtype=torch.uint8)
    params = torch.tensor([AugmentParams(0, 0, 40, 40, 40, False, 0).row()], dtype=torch.float64)
    _check_rows_on_host(images, params)
    params[0, column] = value
    with pytest.raises(RuntimeError, match=message):
        torch.ops.retinaface.train_augment(images, params, 32, list(MEAN), None)
    with pytest.raises(RuntimeError, match=message):
        _check_rows_on_host(images, params)


def test_the_fallback_without_the_extension_checks_rows_as_the_kernel(monkeypatch):
    import importlib

    module = importlib.import_module("retinaface_ext.ops.train_augment")  # the module, not the function
    images = torch.zeros(1, 40, 50, 3, dtype=torch.uint8)
    params = torch.tensor([AugmentParams(20, 0, 40, 40, 40, False, 0).row()], dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"region .* must lie inside"):
        ops.train_augment(images, params, 32, MEAN)
    monkeypatch.setattr(module, "fused_op", lambda name: None)  # as without the compiled extension
    with pytest.raises(RuntimeError, match=r"region .* must lie inside"):
        ops.train_augment(images, params, 32, MEAN)


@pytest.mark.parametrize("distortion", [
    Distortion(brightness=1e10), Distortion(brightness=-1e10), Distortion(brightness=300.0),
    Distortion(contrast=1e12), Distortion(contrast_last=True, contrast=-3e9), Distortion(saturation=5e9),
    Distortion(True, 2.5e9, 4e11, -7e10, 3),
], ids=lambda d: repr(d))
def test_extreme_photometric_values_saturate_as_biubug6(photo, distortion, no_ipp):
    # Finite values far outside biubug6's draws pass the row check; numpy saturates them
    # (1e10 brightness: every value 255), where a conversion to int overflowed.
    params = AugmentParams(37, 11, 150, 150, 150, False, 0, distortion)
    assert_exact(*run_both(photo, params, size=150))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_large_integer_area_factors_do_not_wrap(dtype):
    # A white 1 x 1 image padded with white to a 5804 side and shrunk to 2 (INTER_AREA, factor
    # 2902): every block mean is 255. cv2's int32 block sums wrap there and give 0.
    images = torch.full((1, 1, 1, 3), 255, dtype=torch.uint8)
    params = [AugmentParams(0, 0, 1, 1, 5804, False, 2, Distortion()).row()]
    out = ops.train_augment(images, params, 2, (255.0, 255.0, 255.0), dtype=dtype)
    assert torch.equal(out, torch.full_like(out, 255 if dtype == torch.uint8 else 0))


def test_the_fake_checks_the_mean_as_the_kernel():
    images = torch.zeros(1, 40, 50, 3, dtype=torch.uint8)
    params = torch.tensor([AugmentParams(0, 0, 40, 40, 40, False, 0).row()], dtype=torch.float64)
    mean = [104.0, float("nan"), 123.0]
    with pytest.raises(RuntimeError, match="mean must be finite"):
        torch.ops.retinaface.train_augment(images, params, 32, mean, None)
    with pytest.raises(RuntimeError, match="mean must be finite"):
        torch.ops.retinaface.train_augment(images.to("meta"), params.to("meta"), 32, mean, None)


def test_mixed_devices_raise_on_meta():
    images = torch.zeros(1, 40, 50, 3, dtype=torch.uint8, device="meta")
    params = torch.tensor([AugmentParams(0, 0, 40, 40, 40, False, 0).row()], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.retinaface.train_augment(images, params, 32, list(MEAN), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_equals_cpu(photo):
    rows = []
    rng = np.random.default_rng(0)
    for i in range(20):
        side = int(rng.integers(100, 523))
        rows.append(AugmentParams(int(rng.integers(0, 700 - side)), int(rng.integers(0, 523 - side + 1)), side, side,
                                  side if i % 4 else 700, bool(i % 2), i % 5,
                                  Distortion(bool(i % 3), float(rng.uniform(-32, 32)), 1.2, 0.8, i - 10)).row())
    images = torch.from_numpy(photo)[None].expand(20, -1, -1, -1).contiguous()
    for dtype in (torch.uint8, torch.float32, torch.float16):
        cpu = ops.train_augment(images, rows, 640, MEAN, dtype=dtype)
        gpu = ops.train_augment(images.cuda(), rows, 640, MEAN, dtype=dtype)
        assert torch.equal(gpu.cpu(), cpu)


_ISA_SCRIPT = r"""
import numpy as np, torch
from retinaface_ext import ops
from retinaface_ext.data import AugmentParams, Distortion
rng = np.random.default_rng(3)
image = torch.from_numpy(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8))[None]
rows = []
for i in range(16):
    side = (150, 287, 300, 420)[i % 4]
    region = min(side, 300)
    distortion = Distortion(bool(i & 8), 9.5 * (i & 1), 1.3 if i & 2 else 1.0, 0.7 if i & 4 else 1.0, i - 8)
    rows.append(AugmentParams(420 - side if side <= 300 else 0, 0, region if side > 300 else side,
                              region, side, bool(i % 3 == 0), i % 5, distortion).row())
out = ops.train_augment(image.expand(16, -1, -1, -1), rows, 256, (104.0, 117.0, 123.0), dtype=torch.uint8)
np.save(OUT, out.numpy())
"""


def test_every_cpu_variant_gives_the_same_images(tmp_path):
    # The kernel picks AVX-512, AVX2 + FMA or the baseline code at run time
    # (RETINAFACE_CPU_ISA lowers the choice): all must give the same bits.
    import os
    import subprocess
    import sys

    outputs = {}
    for isa in ("avx512", "avx2", "baseline"):
        out = tmp_path / f"{isa}.npy"
        env = dict(os.environ, RETINAFACE_CPU_ISA=isa)
        subprocess.run([sys.executable, "-c", f"OUT = {str(out)!r}\n" + _ISA_SCRIPT], check=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        outputs[isa] = np.load(out)
    assert np.array_equal(outputs["avx512"], outputs["baseline"])
    assert np.array_equal(outputs["avx2"], outputs["baseline"])


def test_dataset_decoding_only_the_crop_gives_the_same_samples(tmp_path, photo):
    # WiderFaceDataset hands TrainTransform the undecoded JPEG; it decodes only its crop.
    from retinaface_ext.data import WiderFaceDataset
    from retinaface_ext.data.widerface import write_label_file

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), photo)
    annotations = faces(np.random.default_rng(2), 8, photo.shape[1], photo.shape[0])
    annotations[0, :4] = [2, 2, 690, 500]  # some draws find no crop: the padded whole image
    write_label_file(tmp_path / "label.txt", [("a.jpg", annotations)])

    class WholeImage(TrainTransform):
        decodes_regions = False

    lazy = WiderFaceDataset(tmp_path / "label.txt", transform=TrainTransform(320))
    whole = WiderFaceDataset(tmp_path / "label.txt", transform=WholeImage(320))
    for epoch in range(12):
        image, targets = lazy[(epoch, 0)]
        expected_image, expected_targets = whole[(epoch, 0)]
        assert np.array_equal(image, expected_image) and np.array_equal(targets, expected_targets)
