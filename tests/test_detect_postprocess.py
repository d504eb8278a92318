import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from utils import DEVICES, requires_extension

from retinaface_ext import defaults, ops, reference

pytestmark = requires_extension


def network_outputs(batch, image_size=(64, 64), generator=None, face_fraction=0.3):
    """Random (loc, conf, landms, priors) shaped like RetinaFace's eval-mode outputs."""
    priors = ops.prior_box(image_size)
    p = priors.shape[0]
    loc = 0.5 * torch.randn(batch, p, 4, generator=generator)
    logits = torch.randn(batch, p, 2, generator=generator)
    logits[..., 1] += 4 * (torch.rand(batch, p, generator=generator) < face_fraction) - 3
    conf = torch.softmax(logits, dim=-1)
    landms = torch.randn(batch, p, 10, generator=generator)
    return loc, conf, landms, priors


def assert_matches_reference(args, **kwargs):
    detections, counts = ops.detect_postprocess(*args, **kwargs)
    expected_detections, expected_counts = reference.detect_postprocess(*args, **kwargs)
    assert detections.dtype == expected_detections.dtype
    assert counts.dtype == torch.int64
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(detections, expected_detections, rtol=1e-5, atol=1e-7, equal_nan=True)
    return detections, counts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("nms_threshold", [0.2, 0.4, 0.7])
def test_matches_reference(device, batch, nms_threshold):
    g = torch.Generator().manual_seed(batch)
    args = [t.to(device) for t in network_outputs(batch, generator=g)]
    detections, counts = assert_matches_reference(args, nms_threshold=nms_threshold)
    assert detections.shape == (batch, defaults.MAX_DETECTIONS, 15)
    assert counts.shape == (batch,)
    for b in range(batch):
        n = int(counts[b])
        assert n > 0
        assert torch.all(detections[b, n:] == 0)
        scores = detections[b, :n, 4]
        assert torch.all(scores[:-1] >= scores[1:]) and torch.all(scores > defaults.SCORE_THRESHOLD)


def test_full_size_image_matches_reference():
    g = torch.Generator().manual_seed(10)
    args = network_outputs(1, image_size=(640, 640), generator=g, face_fraction=0.05)
    assert args[3].shape[0] == 16800
    _, counts = assert_matches_reference(args)
    assert torch.all(counts == defaults.MAX_DETECTIONS)  # random boxes: plenty survive


@pytest.mark.parametrize("device", DEVICES)
def test_agrees_with_decode_and_nms(device):
    """Each image's rows are nms() of the decoded top candidates, in order."""
    g = torch.Generator().manual_seed(11)
    loc, conf, landms, priors = (t.to(device) for t in network_outputs(2, generator=g))
    detections, counts = ops.detect_postprocess(loc, conf, landms, priors, 0.3, 0.45, 50, 20)
    for b in range(2):
        scores = conf[b, :, 1]
        candidates = torch.nonzero(scores > 0.3).flatten()
        top = candidates[torch.sort(scores[candidates], descending=True, stable=True).indices[:50]]
        v0, v1 = defaults.VARIANCES
        centres = priors[top, :2] + loc[b, top, :2] * v0 * priors[top, 2:]
        sizes = priors[top, 2:] * torch.exp(loc[b, top, 2:] * v1)
        boxes = torch.cat([centres - sizes / 2, centres - sizes / 2 + sizes], dim=1)
        kept = ops.nms(boxes, scores[top], 0.45)[:20]
        assert int(counts[b]) == kept.numel()
        torch.testing.assert_close(detections[b, : kept.numel(), :4], boxes[kept], rtol=1e-5, atol=1e-7)
        assert torch.equal(detections[b, : kept.numel(), 4], scores[top[kept]])


@pytest.mark.parametrize("device", DEVICES)
def test_no_candidates(device):
    g = torch.Generator().manual_seed(12)
    loc, conf, landms, priors = (t.to(device) for t in network_outputs(2, generator=g))
    conf[..., 1] = torch.clamp(conf[..., 1], max=0.5)
    detections, counts = ops.detect_postprocess(loc, conf, landms, priors, score_threshold=0.5)
    assert counts.tolist() == [0, 0]
    assert detections.shape == (2, defaults.MAX_DETECTIONS, 15) and torch.all(detections == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_score_equal_to_threshold_is_dropped(device):
    g = torch.Generator().manual_seed(13)
    loc, conf, landms, priors = (t.to(device) for t in network_outputs(1, generator=g))
    conf[..., 1] = 0.1
    conf[0, [3, 50, 99], 1] = torch.tensor([0.25, 0.5, 0.5000001])
    conf[0, 7, 1] = torch.tensor(defaults.SCORE_THRESHOLD)  # float32(0.02)
    detections, counts = ops.detect_postprocess(loc, conf, landms, priors, 0.25, 1.0)
    assert counts.tolist() == [2]
    assert detections[0, :2, 4].tolist() == [conf[0, 99, 1].item(), 0.5]
    conf[..., 1] = 0.01
    conf[0, 7, 1] = torch.tensor(defaults.SCORE_THRESHOLD)
    assert ops.detect_postprocess(loc, conf, landms, priors)[1].tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_pre_nms_top_k_and_ties(device):
    g = torch.Generator().manual_seed(14)
    loc, conf, landms, priors = (t.to(device) for t in network_outputs(1, generator=g))
    p = priors.shape[0]
    conf[..., 1] = 0.5  # all tied: the lowest prior indices win, in index order
    conf[0, p - 1, 1] = 0.9
    detections, counts = ops.detect_postprocess(
        loc, conf, landms, priors, nms_threshold=1.0, pre_nms_top_k=10, max_detections=20
    )
    assert counts.tolist() == [10]  # IoU > 1 never happens: only top-k limits
    expected, _ = reference.detect_postprocess(
        loc[:, [p - 1] + list(range(9))], conf[:, [p - 1] + list(range(9))],
        landms[:, [p - 1] + list(range(9))], priors[[p - 1] + list(range(9))],
        nms_threshold=1.0, max_detections=20,
    )
    torch.testing.assert_close(detections, expected, rtol=0, atol=0)
    assert_matches_reference((loc, conf, landms, priors), nms_threshold=1.0, pre_nms_top_k=10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pre_nms_top_k,max_detections", [(0, 5), (5, 0), (1, 1), (7, 3), (3000, 4)])
def test_top_k_and_max_detections(device, pre_nms_top_k, max_detections):
    g = torch.Generator().manual_seed(15)
    args = [t.to(device) for t in network_outputs(2, generator=g)]
    detections, counts = assert_matches_reference(
        args, nms_threshold=0.5, pre_nms_top_k=pre_nms_top_k, max_detections=max_detections
    )
    assert detections.shape == (2, max_detections, 15)
    assert torch.all(counts <= min(pre_nms_top_k, max_detections))
    if pre_nms_top_k and max_detections:
        assert torch.all(counts > 0)
    if pre_nms_top_k > 100:  # far more survivors than max_detections: exactly K rows
        assert torch.all(counts == max_detections)


def test_no_priors():
    loc, conf, landms, priors = torch.zeros(2, 0, 4), torch.zeros(2, 0, 2), torch.zeros(2, 0, 10), torch.zeros(0, 4)
    detections, counts = assert_matches_reference((loc, conf, landms, priors), max_detections=5)
    assert detections.shape == (2, 5, 15) and torch.all(detections == 0) and counts.tolist() == [0, 0]


def test_nan_scores_are_dropped():
    g = torch.Generator().manual_seed(16)
    loc, conf, landms, priors = network_outputs(1, generator=g)
    best = int(conf[0, :, 1].argmax())
    conf[0, best, 1] = float("nan")
    loc[0, best + 1, 0] = float("nan")  # its box is NaN: kept unless dropped by score
    detections, counts = assert_matches_reference((loc, conf, landms, priors))
    assert not torch.any(torch.isnan(detections[..., 4]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(dtype):
    g = torch.Generator().manual_seed(17)
    loc, conf, landms, priors = network_outputs(2, generator=g)
    args = (loc.to(dtype), conf.to(dtype), landms.to(dtype), priors.to(dtype))
    detections, _ = assert_matches_reference(args)
    assert detections.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # Mixed: half network outputs with float32 priors.
    assert_matches_reference((args[0], args[1], args[2], priors))


def test_more_classes_and_non_contiguous():
    g = torch.Generator().manual_seed(18)
    loc, conf, landms, priors = network_outputs(2, generator=g)
    conf3 = torch.cat([conf, torch.rand(2, conf.shape[1], 1, generator=g)], dim=2)  # C = 3
    loc_t = loc.transpose(0, 1).contiguous().transpose(0, 1)
    landms_s = torch.stack([landms, landms], dim=-1)[..., 0]
    priors_t = priors.t().contiguous().t()
    conf3_s = torch.stack([conf3, conf3], dim=1)[:, 0]
    assert not any(t.is_contiguous() for t in (loc_t, conf3_s, landms_s, priors_t))
    detections, _ = assert_matches_reference((loc_t, conf3_s, landms_s, priors_t))
    contiguous, _ = ops.detect_postprocess(loc, conf3, landms, priors)
    torch.testing.assert_close(detections, contiguous, rtol=0, atol=0)


def test_custom_variances():
    g = torch.Generator().manual_seed(19)
    assert_matches_reference(network_outputs(2, generator=g), variances=(0.2, 0.1))


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(0, 3),
    score_threshold=st.sampled_from([0.0, 0.02, 0.5, 0.9]),
    nms_threshold=st.floats(0.0, 1.0),
    pre_nms_top_k=st.integers(0, 400),
    max_detections=st.integers(0, 60),
    tie_levels=st.sampled_from([4, 2**20]),
)
def test_property(seed, batch, score_threshold, nms_threshold, pre_nms_top_k, max_detections, tie_levels):
    g = torch.Generator().manual_seed(seed)
    loc, conf, landms, priors = network_outputs(batch, generator=g)
    conf = torch.round(conf * tie_levels) / tie_levels  # many exact score ties
    assert_matches_reference(
        (loc, conf, landms, priors),
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        pre_nms_top_k=pre_nms_top_k,
        max_detections=max_detections,
    )


def test_opcheck():
    g = torch.Generator().manual_seed(20)
    variances = list(defaults.VARIANCES)
    for batch in (0, 2):
        loc, conf, landms, priors = network_outputs(batch, generator=g)
        torch.library.opcheck(
            torch.ops.retinaface.detect_postprocess.default,
            (loc, conf, landms, priors, 0.02, 0.4, 100, 30, variances),
        )


def _bad(name, value):
    g = torch.Generator().manual_seed(21)
    args = dict(zip(("loc", "conf", "landms", "priors"), network_outputs(2, generator=g)))
    args[name] = value(args[name]) if callable(value) else value
    return args


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        (_bad("loc", lambda t: t[..., :3]), {}, r"detect_postprocess\(\): loc must have shape \[B, P, 4\], got \[2, 168, 3\]"),
        (_bad("loc", lambda t: t[0]), {}, r"loc must have shape \[B, P, 4\], got \[168, 4\]"),
        (_bad("conf", lambda t: t[..., :1]), {}, r"conf must have at least 2 classes .* got \[2, 168, 1\]"),
        (_bad("conf", lambda t: t[:1]), {}, r"conf must have shape \[B, P, C\] \(B = 2, P = 168 from loc\), got \[1, 168, 2\]"),
        (_bad("landms", lambda t: t[..., :8]), {}, r"landms must have shape \[B, P, 10\] .*got \[2, 168, 8\]"),
        (_bad("priors", lambda t: t[:100]), {}, r"priors must have shape \[P, 4\] \(P = 168 from loc\), got \[100, 4\]"),
        (_bad("priors", lambda t: t.long()), {}, r"priors must be a floating tensor"),
        (_bad("conf", lambda t: t.int()), {}, r"conf must be a floating tensor"),
        (_bad("loc", lambda t: t), {"pre_nms_top_k": -1}, r"pre_nms_top_k must be >= 0, got -1"),
        (_bad("loc", lambda t: t), {"max_detections": -2}, r"max_detections must be >= 0, got -2"),
        (_bad("loc", lambda t: t), {"variances": (0.1,)}, r"variances must have 2 values, got 1"),
    ],
)
def test_bad_input(args, kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        ops.detect_postprocess(args["loc"], args["conf"], args["landms"], args["priors"], **kwargs)


# ---------------------------------------------------------------- CUDA vs CPU

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def realistic_outputs(batch, image_size=(640, 640), seed=0, dtype=torch.float32):
    """Network-like outputs: mostly background, a few faces with clusters of
    confident overlapping priors around them, the rest just above 0.02."""
    g = torch.Generator().manual_seed(seed)
    priors = ops.prior_box(image_size)
    p = priors.shape[0]
    loc = 0.3 * torch.randn(batch, p, 4, generator=g)
    logits = torch.randn(batch, p, 2, generator=g)
    logits[..., 0] += 3.0
    faces = torch.rand(batch, p, generator=g) < 0.01
    logits[..., 1] += 7.0 * faces
    conf = torch.softmax(logits, dim=-1)
    landms = torch.randn(batch, p, 10, generator=g)
    return tuple(t.to(dtype) for t in (loc, conf, landms)) + (priors,)


def assert_cuda_matches_cpu(args, **kwargs):
    expected, expected_counts = ops.detect_postprocess(*args, **kwargs)
    detections, counts = ops.detect_postprocess(*(t.cuda() for t in args), **kwargs)
    assert detections.device.type == "cuda" and counts.device.type == "cuda"
    assert detections.dtype == expected.dtype and counts.dtype == torch.int64
    assert torch.equal(counts.cpu(), expected_counts)
    torch.testing.assert_close(detections.cpu(), expected, rtol=1e-5, atol=1e-7, equal_nan=True)
    return detections, counts


@requires_cuda
@pytest.mark.parametrize("score_threshold", [0.02, 0.5])
def test_cuda_matches_cpu_640(score_threshold):
    # B = 16 at 640x640: with 0.02 thousands of candidates per image pass, more
    # than pre_nms_top_k, so the radix select path runs; with 0.5 only faces.
    args = realistic_outputs(16, seed=1)
    _, counts = assert_cuda_matches_cpu(args, score_threshold=score_threshold)
    assert torch.all(counts > 0)


@requires_cuda
@pytest.mark.parametrize("pre_nms_top_k,max_detections", [(5000, 750), (300, 750), (5000, 10), (20000, 2000), (1, 1), (0, 5), (5, 0)])
def test_cuda_top_k_and_max_detections(pre_nms_top_k, max_detections):
    args = realistic_outputs(3, seed=2)
    assert_cuda_matches_cpu(args, pre_nms_top_k=pre_nms_top_k, max_detections=max_detections)


@requires_cuda
@pytest.mark.parametrize("tie_levels", [2, 16, 1000])
@pytest.mark.parametrize("pre_nms_top_k", [100, 5000])
def test_cuda_score_ties(tie_levels, pre_nms_top_k):
    # Many exact score ties, including at the top-k boundary: lower prior index first.
    loc, conf, landms, priors = realistic_outputs(4, seed=3)
    conf = torch.round(conf * tie_levels) / tie_levels
    for nms_threshold in (0.0, 0.4, 1.0):
        assert_cuda_matches_cpu((loc, conf, landms, priors), score_threshold=0.0,
                                nms_threshold=nms_threshold, pre_nms_top_k=pre_nms_top_k)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes(dtype):
    loc, conf, landms, priors = realistic_outputs(4, seed=4, dtype=dtype)
    detections, _ = assert_cuda_matches_cpu((loc, conf, landms, priors.to(dtype)))
    assert detections.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_cuda_matches_cpu((loc, conf, landms, priors))  # mixed: float32 priors
    assert_cuda_matches_cpu((loc, conf.float(), landms, priors))  # mixed network outputs


@requires_cuda
def test_cuda_empty_inputs_and_nan():
    detections, counts = ops.detect_postprocess(*(t.cuda() for t in network_outputs(0)))
    assert detections.shape == (0, defaults.MAX_DETECTIONS, 15) and counts.shape == (0,)
    no_priors = (torch.zeros(2, 0, 4), torch.zeros(2, 0, 2), torch.zeros(2, 0, 10), torch.zeros(0, 4))
    detections, counts = assert_cuda_matches_cpu(no_priors, max_detections=5)
    assert counts.tolist() == [0, 0] and torch.all(detections == 0)
    loc, conf, landms, priors = network_outputs(2, generator=torch.Generator().manual_seed(5))
    best = int(conf[0, :, 1].argmax())
    conf[0, best, 1] = float("nan")
    loc[0, best + 1, 0] = float("nan")
    conf[1, ::3, 1] = 0.25  # ties (lower prior index first)
    conf[1, 1::3, 1] = 0.25
    assert_cuda_matches_cpu((loc, conf, landms, priors), score_threshold=0.0)
    assert_cuda_matches_cpu((loc, conf, landms, priors))


@requires_cuda
def test_cuda_non_contiguous_and_more_classes():
    g = torch.Generator().manual_seed(6)
    loc, conf, landms, priors = network_outputs(2, image_size=(320, 320), generator=g)
    conf3 = torch.cat([conf, torch.rand(2, conf.shape[1], 1, generator=g)], dim=2)
    args = (loc.transpose(0, 1).contiguous().transpose(0, 1), conf3, landms, priors.t().contiguous().t())
    assert_cuda_matches_cpu(args)


@requires_cuda
def test_cuda_opcheck():
    loc, conf, landms, priors = (t.cuda() for t in network_outputs(2, generator=torch.Generator().manual_seed(7)))
    torch.library.opcheck(
        torch.ops.retinaface.detect_postprocess.default,
        (loc, conf, landms, priors, 0.02, 0.4, 100, 30, list(defaults.VARIANCES)),
    )


def test_torch_compile_fullgraph_cpu():
    args = network_outputs(2, generator=torch.Generator().manual_seed(8))
    compiled = torch.compile(ops.detect_postprocess, fullgraph=True, backend="aot_eager")
    detections, counts = compiled(*args)
    expected, expected_counts = ops.detect_postprocess(*args)
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(detections, expected, rtol=0, atol=0)


@requires_cuda
def test_torch_compile_fullgraph_cuda():
    loc, conf, landms, priors = (t.cuda() for t in realistic_outputs(4, seed=9))

    @torch.compile(fullgraph=True)
    def detect(loc, conf, landms, priors):
        detections, counts = ops.detect_postprocess(loc, conf, landms, priors)
        return detections * 640, counts

    detections, counts = detect(loc, conf, landms, priors)
    expected, expected_counts = ops.detect_postprocess(loc, conf, landms, priors)
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(detections, expected * 640, rtol=1e-5, atol=1e-6)


@requires_cuda
def test_cuda_graph_capture():
    loc, conf, landms, priors = (t.cuda() for t in realistic_outputs(8, seed=10))
    static_inputs = [t.clone() for t in (loc, conf, landms)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture
            ops.detect_postprocess(*static_inputs, priors)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_detections, static_counts = ops.detect_postprocess(*static_inputs, priors)

    # Replay on new data copied into the captured inputs.
    new_loc, new_conf, new_landms, _ = (t.cuda() for t in realistic_outputs(8, seed=11))
    for target, source in zip(static_inputs, (new_loc, new_conf, new_landms)):
        target.copy_(source)
    graph.replay()
    torch.cuda.synchronize()
    expected, expected_counts = ops.detect_postprocess(new_loc, new_conf, new_landms, priors)
    assert torch.equal(static_counts, expected_counts)
    torch.testing.assert_close(static_detections, expected, rtol=0, atol=0)
