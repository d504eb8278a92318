"""Fine-tuning from the bundled BatchNorm-folded weights: frozen BatchNorm keeps the detector working."""
import numpy as np
import pytest
import torch
from torch import nn
from utils import one_thread, requires_pretrained  # noqa: F401  (one_thread: pytestmark)

pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

from retinaface_ext import RetinaFace, detect, load_weights  # noqa: E402
from retinaface_ext.data import SyntheticFaces, TrainTransform  # noqa: E402
from retinaface_ext.evaluation import average_precision  # noqa: E402
from retinaface_ext.models import FrozenBatchNorm2d, freeze_batchnorm, has_folded_batchnorm  # noqa: E402
from retinaface_ext.training import TrainConfig, Trainer  # noqa: E402

SCENE = dict(face_size=(0.15, 0.6), max_faces=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def astronaut():
    return np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1])


def held_out_ap(model, size=128, count=16):
    samples = [SyntheticFaces(count, image_size=size, seed=99, **SCENE)[i] for i in range(count)]
    predictions, truths = [], []
    for found, (_, faces) in zip(detect(model, [image for image, _ in samples], score_threshold=0.02), samples):
        found = found[:, :5].astype(np.float64)
        found[:, 2:4] -= found[:, :2]
        truth = faces[:, :4].astype(np.float64)
        truth[:, 2:] -= truth[:, :2]
        predictions.append(found)
        truths.append(truth)
    return average_precision(predictions, truths)["all"]


def fine_tune(tmp_path, **overrides):
    """A few steps from the pretrained weights at the default lr (1e-3), as `train --pretrained pretrained`."""
    values = dict(data="synthetic", batch_size=8, epochs=100, decay_epochs=(100, 100), image_size=128,
                  workers=0, out=str(tmp_path), progress=False, device="cpu", seed=0, max_steps=6,
                  pretrained="pretrained")
    values.update(overrides)
    config = TrainConfig(**values)
    dataset = SyntheticFaces(48, image_size=128, seed=0, transform=TrainTransform(128), **SCENE)
    trainer = Trainer(config, dataset=dataset)
    try:
        assert trainer.train() == "max_steps"
    finally:
        trainer.close()
    return trainer


@requires_pretrained
def test_fine_tuning_from_the_pretrained_weights_keeps_the_detector(tmp_path):
    before = RetinaFace.from_pretrained()
    ap_before = held_out_ap(before)
    trainer = fine_tune(tmp_path)
    assert trainer.batchnorm_frozen
    faces = detect(trainer.module, astronaut(), score_threshold=0.5)
    assert len(faces) == 1 and faces[0, 4] > 0.9
    assert held_out_ap(trainer.module) >= ap_before - 1e-3
    # The final weights are plain biubug6 state_dicts: they load into a fresh model and detect the same.
    reloaded = load_weights(RetinaFace(), str(tmp_path / "last.pt")).eval()
    np.testing.assert_allclose(detect(reloaded, astronaut(), score_threshold=0.5), faces, rtol=1e-5, atol=1e-3)


@requires_pretrained
def test_training_batchnorm_on_folded_weights_is_what_breaks_it(tmp_path):
    # The failure the frozen BatchNorm prevents (issue 12): batch statistics the network never saw.
    trainer = fine_tune(tmp_path, batchnorm="train", max_steps=2)
    assert not trainer.batchnorm_frozen
    assert len(detect(trainer.module, astronaut(), score_threshold=0.5)) != 1


@requires_pretrained
def test_freeze_batchnorm_keeps_the_function_and_stays_frozen():
    model = RetinaFace.from_pretrained()
    assert has_folded_batchnorm(model)
    x = torch.randn(1, 3, 64, 96) * 50
    with torch.no_grad():
        expected = model(x)
    count = freeze_batchnorm(model)
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    model.train()
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == count and not any(m.training for m in frozen)
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    # The scale moved out of the convs: the filters have a trainable norm, the outputs are unchanged.
    conv = model.body.stage1[0][0]
    assert torch.allclose(conv.weight.flatten(1).norm(dim=1), torch.full((conv.out_channels,), 10.0))
    with torch.no_grad():
        model.eval()
        for a, b in zip(model(x), expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # Freezing again (a resumed run) changes nothing; the state_dict keys are BatchNorm2d's.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert freeze_batchnorm(model) == 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert set(state) == set(RetinaFace().state_dict())


def test_models_with_batchnorm_statistics_are_not_folded():
    assert not has_folded_batchnorm(RetinaFace())  # fresh: running_var 1, not 1 - eps
