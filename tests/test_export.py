"""ONNX export, checked with onnxruntime."""
import numpy as np
import pytest
import torch

from retinaface_ext import RetinaFace
from retinaface_ext.export import export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RetinaFace("mobilenet0.25").eval()


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["loc", "conf", "landmarks"]
    return session.run(None, {"input": x})


def _torch(model, x):
    with torch.no_grad():
        return [t.numpy() for t in model(torch.from_numpy(x))]


def test_dynamic_export_matches_pytorch_on_other_sizes(tmp_path, model):
    path = export_onnx(model, tmp_path / "dynamic.onnx", image_size=(64, 64), dynamic=True)
    for shape in [(1, 3, 64, 64), (2, 3, 72, 100)]:
        x = np.random.default_rng(0).normal(0, 60, shape).astype(np.float32)
        for ours, theirs in zip(_torch(model, x), _run(path, x)):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    conf = _run(path, np.zeros((1, 3, 64, 64), np.float32))[1]
    np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-5)  # softmaxed


def test_static_export_has_fixed_shape(tmp_path, model):
    path = export_onnx(model, tmp_path / "static.onnx", image_size=(48, 80))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 48, 80]
    x = np.random.default_rng(1).normal(0, 60, (1, 3, 48, 80)).astype(np.float32)
    for ours, theirs in zip(_torch(model, x), session.run(None, {"input": x})):
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    assert not model.training
