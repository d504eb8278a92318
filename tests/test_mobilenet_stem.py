"""mobilenet_stem: the fused first four MobileNetV1-0.25 layers against the reference and the model."""
import numpy as np
import pytest
import torch
from utils import DEVICES, requires_extension, requires_pretrained

from retinaface_ext import RetinaFace, ops, reference
from retinaface_ext.detection import make_batch
from retinaface_ext.inference import stem_parameters

pytestmark = requires_extension

SHAPES = [  # (out, in per group, kernel) of the seven convolutions
    (8, 3, 3), (8, 1, 3), (16, 8, 1), (16, 1, 3), (32, 16, 1), (32, 1, 3), (32, 32, 1)]


def random_parameters(seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(out, inp, k, k, generator=g) / (inp * k * k) ** 0.5 for out, inp, k in SHAPES]
    biases = [0.1 * torch.randn(out, generator=g) for out, _, _ in SHAPES]
    return [w.to(device) for w in weights], [b.to(device) for b in biases]


def random_images(batch, height, width, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, height, width, 3), generator=g, dtype=torch.uint8).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (5, 7), (16, 16), (17, 33), (64, 130), (31, 517),
                                           (9, 1100)])
def test_matches_reference(device, height, width):
    # 517 and 1100 columns span several of the CPU kernel's 128-column strips.
    weights, biases = random_parameters(height * 1000 + width, device)
    images = random_images(2, height, width, seed=height + width, device=device)
    out = ops.mobilenet_stem(images, weights, biases)
    expected = reference.mobilenet_stem(images, weights, biases)
    assert out.shape == (2, 32, (height + 3) // 4, (width + 3) // 4) and out.dtype == torch.float32
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_mean_and_slope_are_applied(device):
    weights, biases = random_parameters(3, device)
    images = random_images(1, 20, 24, seed=3, device=device)
    for mean, slope in [((0.0, 0.0, 0.0), 0.0), ((10.0, 200.0, -5.0), 0.3)]:
        torch.testing.assert_close(ops.mobilenet_stem(images, weights, biases, mean, slope),
                                   reference.mobilenet_stem(images, weights, biases, mean, slope),
                                   rtol=1e-4, atol=1e-4)


def test_same_result_for_any_thread_count_and_batch():
    """Tiles recompute their borders, so the tiling (threads, images per call) never changes a value."""
    weights, biases = random_parameters(4)
    images = random_images(3, 70, 600, seed=4)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.mobilenet_stem(images, weights, biases)
        torch.set_num_threads(3)
        three = ops.mobilenet_stem(images, weights, biases)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, three)
    assert torch.equal(ops.mobilenet_stem(images[1:2], weights, biases), one[1:2])


@requires_pretrained
def test_equals_the_models_first_layers_on_a_photo():
    skimage_data = pytest.importorskip("skimage.data")
    image = np.ascontiguousarray(skimage_data.astronaut()[100:400, 50:461, ::-1])  # BGR, odd width
    model = RetinaFace.from_pretrained("mobilenet0.25")
    with torch.no_grad():
        expected = model.body.stage1[:4](make_batch([image]))
    out = ops.mobilenet_stem(torch.from_numpy(image)[None], *stem_parameters(model))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_non_contiguous_images():
    weights, biases = random_parameters(5)
    images = random_images(2, 40, 50, seed=5)
    strided = images[:, ::2, 3:]  # every other row, columns from 3 on
    assert not strided.is_contiguous()
    torch.testing.assert_close(ops.mobilenet_stem(strided, weights, biases),
                               ops.mobilenet_stem(strided.contiguous(), weights, biases), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 8, 8, 3), (2, 0, 8, 3), (2, 8, 0, 3)])
def test_empty(device, shape):
    weights, biases = random_parameters(0, device)
    images = torch.zeros(shape, dtype=torch.uint8, device=device)
    out = ops.mobilenet_stem(images, weights, biases)
    assert out.shape == (shape[0], 32, (shape[1] + 3) // 4, (shape[2] + 3) // 4)


def _bad_arguments():
    weights, biases = random_parameters(0)
    images = random_images(1, 8, 8)
    cases = [
        ((images.float(), weights, biases), "images must be Byte"),
        ((images[..., :2], weights, biases), r"images must have shape \[B, H, W, 3\]"),
        ((images[0], weights, biases), r"images must have shape \[B, H, W, 3\]"),
        ((images, weights[:6], biases), "weights must hold 7 tensors"),
        ((images, weights, biases + [biases[0]]), "biases must hold 7 tensors"),
        ((images, weights[:2] + [weights[2].transpose(0, 1)] + weights[3:], biases),
         r"weights\[2\] must have shape \[16, 8, 1, 1\] \(pointwise\)"),
        ((images, [w.double() for w in weights], biases), r"weights\[0\] must be Float"),
        ((images, weights, biases[:4] + [biases[4][:5]] + biases[5:]), r"biases\[4\] must have shape \[32\]"),
        ((images, weights, biases, (1.0, 2.0)), "mean must have 3 values"),
        ((images, weights, biases, (1.0, float("nan"), 2.0)), "mean must be finite"),
        ((images, weights, biases, (104.0, 117.0, 123.0), float("inf")), "negative_slope must be finite"),
    ]
    return cases


@pytest.mark.parametrize("impl", [ops, reference], ids=["fused", "reference"])
@pytest.mark.parametrize("case", range(len(_bad_arguments())))
def test_bad_arguments_raise_clear_errors(impl, case):
    args, message = _bad_arguments()[case]
    with pytest.raises(RuntimeError, match=message):
        impl.mobilenet_stem(*args)


def test_mixed_devices_raise_also_on_meta():
    weights, biases = random_parameters(0)
    meta_images = torch.zeros(1, 8, 8, 3, dtype=torch.uint8, device="meta")
    with pytest.raises(RuntimeError, match=r"weights\[0\] must be on the same device as images"):
        ops.mobilenet_stem(meta_images, weights, biases)
    out = ops.mobilenet_stem(meta_images, [w.to("meta") for w in weights], [b.to("meta") for b in biases])
    assert out.shape == (1, 32, 2, 2) and out.device.type == "meta"


def test_gradient_raises():
    weights, biases = random_parameters(0)
    weights[0].requires_grad_(True)
    out = ops.mobilenet_stem(random_images(1, 8, 8), weights, biases)
    with pytest.raises(RuntimeError, match="mobilenet_stem\\(\\) has no gradient"):
        out.sum().backward()


def test_opcheck():
    weights, biases = random_parameters(6)
    args = (random_images(2, 21, 34, seed=6), weights, biases, [104.0, 117.0, 123.0], 0.1)
    torch.library.opcheck(torch.ops.retinaface.mobilenet_stem.default, args)


def test_compiles():
    weights, biases = random_parameters(7)
    images = random_images(1, 16, 24, seed=7)

    def fn(x):
        return ops.mobilenet_stem(x, weights, biases) * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(images), fn(images))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    weights, biases = random_parameters(8)
    images = random_images(2, 67, 301, seed=8)
    cpu = ops.mobilenet_stem(images, weights, biases)
    cuda = ops.mobilenet_stem(images.cuda(), [w.cuda() for w in weights], [b.cuda() for b in biases])
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)


_ISA_SCRIPT = """
import torch
from retinaface_ext import ops, reference
g = torch.Generator().manual_seed(9)
shapes = [(8, 3, 3), (8, 1, 3), (16, 8, 1), (16, 1, 3), (32, 16, 1), (32, 1, 3), (32, 32, 1)]
weights = [torch.randn(o, i, k, k, generator=g) / (i * k * k) ** 0.5 for o, i, k in shapes]
biases = [0.1 * torch.randn(o, generator=g) for o, _, _ in shapes]
for height, width in [(5, 7), (33, 70), (40, 1100)]:
    images = torch.randint(0, 256, (2, height, width, 3), generator=g, dtype=torch.uint8)
    torch.testing.assert_close(ops.mobilenet_stem(images, weights, biases),
                               reference.mobilenet_stem(images, weights, biases), rtol=1e-4, atol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_every_instruction_set_matches_the_reference(isa):
    """The CPU kernel is compiled for AVX-512, AVX2 and SSE2 and picks the best; the others are run here."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, RETINAFACE_CPU_ISA=isa)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
