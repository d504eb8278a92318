"""The trainer keeps work safe: no code execution from checkpoints, atomic files, Ctrl-C, crashes,
divergence, and refusing resumes that would silently go wrong."""
import os
import pathlib
import signal
import stat

import pytest
import torch
from utils import one_thread  # noqa: F401  (pytestmark)

pytest.importorskip("cv2")
pytest.importorskip("skimage")

from retinaface_ext import RetinaFace, load_weights  # noqa: E402
from retinaface_ext.cli import main  # noqa: E402
from retinaface_ext.data import SyntheticFaces, TrainTransform, generate_synthetic_dataset  # noqa: E402
from retinaface_ext.training import TrainConfig, Trainer, load_checkpoint, save_checkpoint  # noqa: E402
from retinaface_ext.training import trainer as trainer_module  # noqa: E402
from retinaface_ext.training.trainer import TrainingDiverged  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(out, **overrides):
    """4 steps per epoch of batch 2 at 64 x 64."""
    values = dict(data="synthetic", backbone="mobilenet0.25", batch_size=2, epochs=2, decay_epochs=(2, 3),
                  image_size=64, lr=1e-2, workers=0, out=str(out), progress=False, device="cpu",
                  synthetic_size=8, seed=1)
    values.update(overrides)
    return TrainConfig(**values)


def tiny_dataset(config):
    return SyntheticFaces(config.synthetic_size, image_size=96, seed=config.seed,
                          transform=TrainTransform(config.image_size))


def run(config, dataset=None):
    trainer = Trainer(config, dataset=dataset if dataset is not None else tiny_dataset(config))
    try:
        return trainer, trainer.train()
    finally:
        trainer.close()


class Payload:
    """Unpickling it creates a file: what a crafted checkpoint could do instead (run any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture()
def malicious_checkpoint(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": RetinaFace().state_dict(), "optimizer": Payload(marker), "epoch": 0}, path)
    return path, marker


# ----------------------------------------------------------------- security

def test_resume_and_evaluate_never_unpickle_code(tmp_path, malicious_checkpoint, capsys):
    path, marker = malicious_checkpoint
    assert main(["train", "--resume", str(path), "--out", str(tmp_path / "run"), "--synthetic-size", "4",
                 "--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                 "--no-progress"]) == 2
    assert "weights_only" in capsys.readouterr().err
    images = tmp_path / "images" / "event"
    images.mkdir(parents=True)
    assert main(["evaluate", "--weights", str(path), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "preds"), "--device", "cpu"]) == 2
    assert "weights_only" in capsys.readouterr().err
    assert main(["train", "--pretrained", str(path), "--out", str(tmp_path / "run2"), "--epochs", "1",
                 "--synthetic-size", "4", "--image-size", "64", "--batch-size", "2", "--workers", "0",
                 "--device", "cpu", "--no-progress"]) == 2
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


# ----------------------------------------------------------------- files

def test_checkpoint_files_get_normal_permissions_and_stale_temporaries_go(tmp_path):
    stale = tmp_path / ".last.pt.999-dead.tmp"  # left by a writer killed with -9
    stale.write_bytes(b"partial")
    save_checkpoint(tmp_path / "last.pt", {"step": 1})
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "last.pt").st_mode) == 0o666 & ~umask  # was 0600


def test_final_weights_are_written_atomically(tmp_path, monkeypatch):
    final = tmp_path / "mobilenet0.25_Final.pth"
    torch.save({"previous": torch.ones(1)}, final)
    real_save = torch.save
    calls = []

    def save_then_die_on_the_final_weights(obj, stream, *args, **kwargs):
        calls.append(obj)
        if len(calls) == 2:  # epoch checkpoint first, then the final weights
            stream.write(b"half a file")
            raise OSError("disk full")
        return real_save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_die_on_the_final_weights)
    with pytest.raises(OSError, match="disk full"):
        run(tiny_config(tmp_path, epochs=1))
    monkeypatch.undo()
    assert torch.load(final, weights_only=True)["previous"].tolist() == [1.0]
    assert sorted(p for p in os.listdir(tmp_path)) == ["last.pt", "mobilenet0.25_Final.pth"]


# ----------------------------------------------------------------- interruptions and crashes

def test_second_ctrl_c_does_not_abort_the_checkpoint(tmp_path, monkeypatch):
    real_step, real_save = Trainer.train_step, trainer_module.save_checkpoint

    def step_then_ctrl_c(self, batch):
        losses = real_step(self, batch)
        if self.step == 1:  # during the second step
            signal.raise_signal(signal.SIGINT)
        return losses

    def impatient_save(path, state):
        signal.raise_signal(signal.SIGINT)  # a second Ctrl-C while the checkpoint is written
        real_save(path, state)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    monkeypatch.setattr(trainer_module, "save_checkpoint", impatient_save)
    trainer, outcome = run(tiny_config(tmp_path))
    assert outcome == "interrupted"
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


class FailingAt(torch.utils.data.Dataset):
    """The synthetic set, except that one index raises (an unreadable image)."""

    def __init__(self, dataset, bad_calls):
        self.dataset, self.calls, self.bad_calls = dataset, 0, bad_calls

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        self.calls += 1
        if self.calls == self.bad_calls:
            raise OSError("cannot decode image: broken.jpg")
        return self.dataset[key]


def test_a_crash_mid_epoch_keeps_the_steps_done(tmp_path, capsys):
    config = tiny_config(tmp_path)
    with pytest.raises(OSError, match="broken.jpg"):
        run(config, FailingAt(tiny_dataset(config), bad_calls=6))  # the third batch
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert "checkpoint written" in capsys.readouterr().err
    resumed, outcome = run(tiny_config(tmp_path, resume="auto", max_steps=3))
    assert (outcome, resumed.step) == ("max_steps", 3)


def test_images_listed_but_missing_are_reported_before_training(tmp_path):
    label = generate_synthetic_dataset(tmp_path / "data", num_images=4, image_size=64)
    os.remove(tmp_path / "data" / "images" / "synthetic" / "00002.png")
    with pytest.raises(FileNotFoundError, match=r"1 of the 4 images .*00002\.png .*label\.txt:\d+"):
        Trainer(tiny_config(tmp_path / "run", data=label))


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_step = Trainer.train_step

    def diverging_step(self, batch):
        losses = real_step(self, batch)
        if self.step >= 5:  # the second step of epoch 1
            with torch.no_grad():
                next(self.module.parameters()).fill_(float("nan"))
            losses = losses * float("nan")
        return losses

    monkeypatch.setattr(Trainer, "train_step", diverging_step)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 6: the loss is not finite.*step 4\) is kept"):
        run(tiny_config(tmp_path))
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert not (tmp_path / "mobilenet0.25_Final.pth").exists()


def test_nan_weights_are_never_saved(tmp_path):
    config = tiny_config(tmp_path, max_steps=1)
    trainer = Trainer(config, dataset=tiny_dataset(config))
    try:
        with torch.no_grad():
            next(trainer.module.parameters())[0] = float("inf")
        with pytest.raises(TrainingDiverged, match="weights are not finite"):
            trainer.save()
    finally:
        trainer.close()
    assert not (tmp_path / "last.pt").exists()


# ----------------------------------------------------------------- resume

def test_resume_refuses_settings_that_would_skip_the_wrong_samples(tmp_path):
    first, _ = run(tiny_config(tmp_path, max_steps=2))
    last = str(tmp_path / "last.pt")
    for change, flag in ((dict(batch_size=4), "--batch-size"), (dict(image_size=96), "--image-size"),
                         (dict(backbone="resnet50"), "--backbone"), (dict(seed=2), "--seed"),
                         (dict(lr=0.1), "--lr"), (dict(synthetic_size=12), "training images")):
        with pytest.raises(ValueError, match=f"--resume: .* {flag}"):
            Trainer(tiny_config(tmp_path, resume=last, **change))
    # Weights only (the final weights, a biubug6 checkpoint): a sentence, not a KeyError.
    torch.save(first.module.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="holds weights only; to start from its weights use --pretrained"):
        Trainer(tiny_config(tmp_path, resume=str(tmp_path / "weights.pth")))
    # Mixed precision may change: the GradScaler starts afresh.
    resumed, outcome = run(tiny_config(tmp_path, resume=last, amp="fp16", max_steps=3))
    assert (outcome, resumed.step) == ("max_steps", 3)


def test_training_checkpoints_load_as_weights(tmp_path):
    trainer, _ = run(tiny_config(tmp_path, max_steps=1))
    last = tmp_path / "last.pt"
    for nested in ({"model": trainer.module.state_dict()}, {"net": trainer.module.state_dict()}):
        torch.save(nested, tmp_path / "nested.pth")
        loaded = load_weights(RetinaFace(), tmp_path / "nested.pth")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trainer.module.state_dict().items())
    for loaded in (load_weights(RetinaFace(), last),  # OUT/last.pt itself, as --pretrained ...
                   RetinaFace.from_pretrained(str(last))):  # ... or as demo / detect --weights
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trainer.module.state_dict().items())
    # ... and a run starts from it.
    started, outcome = run(tiny_config(tmp_path / "next", pretrained=str(last), max_steps=1))
    assert outcome == "max_steps"


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "epochs must be an integer >= 1, got 0 (--epochs)"),
    (["--lr", "nan"], "lr must be a finite number > 0, got nan (--lr)"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--start-epoch", "5", "--epochs", "2"], "start_epoch must be an integer in [0, epochs = 2), got 5"),
    (["--pretrained", "no/such/weights.pth"], "no such file"),
])
def test_bad_training_settings_are_sentences(tmp_path, capsys, args, message):
    try:
        code = main(["train", "--out", str(tmp_path), "--workers", "0", "--device", "cpu", "--no-progress",
                     "--synthetic-size", "4", "--image-size", "64", "--batch-size", "2", *args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_label_file_with_a_byte_order_mark(tmp_path):
    label = generate_synthetic_dataset(tmp_path, num_images=2, image_size=64)
    text = open(label, encoding="utf-8").read()
    with open(label, "w", encoding="utf-8-sig") as handle:  # as Windows editors save it
        handle.write(text)
    from retinaface_ext.data import parse_label_file

    entries = parse_label_file(label)
    assert len(entries) == 2 and entries[0].image_path.endswith("00000.png")


def test_a_run_with_frozen_batchnorm_resumes_exactly_and_stays_frozen(tmp_path):
    full, _ = run(tiny_config(tmp_path / "full", batchnorm="frozen", max_steps=4))
    first, _ = run(tiny_config(tmp_path / "resumed", batchnorm="frozen", max_steps=2))
    last = str(tmp_path / "resumed" / "last.pt")
    with pytest.raises(ValueError, match="trained with --batchnorm frozen, not --batchnorm train"):
        Trainer(tiny_config(tmp_path / "resumed", batchnorm="train", resume=last))
    resumed, _ = run(tiny_config(tmp_path / "resumed", resume=last, max_steps=4))  # auto: as it was trained
    assert resumed.batchnorm_frozen
    for a, b in zip(full.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)
