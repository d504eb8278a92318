"""retinaface_ext.training: schedule, checkpoints, exact resume, 2-process DDP (gloo), and that it learns."""
import argparse
import os
import socket
import time

import numpy as np
import pytest
import torch
from utils import one_thread  # noqa: F401  (pytestmark)

pytest.importorskip("cv2")
pytest.importorskip("skimage")

from retinaface_ext.data import SyntheticFaces, TrainTransform  # noqa: E402
from retinaface_ext.training import TrainConfig, Trainer, learning_rate, load_checkpoint, save_checkpoint  # noqa: E402
from retinaface_ext.training.cli import add_train_arguments, config_from_args  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(tmp_path, **overrides):
    values = dict(data="synthetic", backbone="mobilenet0.25", batch_size=2, epochs=3, decay_epochs=(2, 3),
                  image_size=96, lr=1e-2, workers=0, out=str(tmp_path), progress=False, device="cpu",
                  synthetic_size=8, seed=1)
    values.update(overrides)
    return TrainConfig(**values)


def tiny_dataset(config):
    return SyntheticFaces(config.synthetic_size, image_size=128, seed=config.seed,
                          transform=TrainTransform(config.image_size))


def test_workers_default_to_the_cpus_we_may_use(monkeypatch):
    from retinaface_ext.training import trainer

    monkeypatch.setattr(trainer.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert TrainConfig().resolved().workers == 2
    monkeypatch.setattr(trainer.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert TrainConfig().resolved().workers == 4
    assert TrainConfig(workers=0).resolved().workers == 0
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert parser.parse_args([]).workers is None


def test_without_a_progress_bar_it_logs_lines_and_says_where_the_checkpoint_is(tmp_path, capsys):
    config = tiny_config(tmp_path, max_steps=4)
    trainer = Trainer(config, dataset=tiny_dataset(config.resolved()))
    try:
        assert trainer.train() == "max_steps"
    finally:
        trainer.close()
    out = capsys.readouterr().out
    assert "epoch 1/3 step 4: loc " in out and " images/s " in out  # 4 steps make an epoch here
    assert f"stopped after step 4 (--max-steps): checkpoint written to {tmp_path / 'last.pt'}" in out


def test_learning_rate_schedule():
    config = TrainConfig(lr=1e-3, gamma=0.1, decay_epochs=(190, 220), warmup_epochs=0)
    assert learning_rate(0, 10, config) == 1e-3
    assert learning_rate(1899, 10, config) == 1e-3
    assert learning_rate(1900, 10, config) == pytest.approx(1e-4)
    assert learning_rate(2200, 10, config) == pytest.approx(1e-5)
    warm = TrainConfig(lr=1e-3, decay_epochs=(190, 220), warmup_epochs=1)
    assert learning_rate(0, 10, warm) == pytest.approx(1e-6)
    assert learning_rate(5, 10, warm) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert learning_rate(10, 10, warm) == 1e-3


def test_backbone_defaults_and_cli_parsing():
    parser = add_train_arguments(argparse.ArgumentParser())
    config = config_from_args(parser.parse_args(["--data", "x/label.txt", "--amp", "bf16", "--channels-last"]))
    resolved = config.resolved()
    assert (resolved.batch_size, resolved.epochs, resolved.decay_epochs, resolved.image_size) == (32, 250, (190, 220), 640)
    assert config.amp == "bf16" and config.channels_last and config.data == "x/label.txt"
    resnet = config_from_args(parser.parse_args(["--backbone", "resnet50", "--batch-size", "8"])).resolved()
    assert (resnet.batch_size, resnet.epochs, resnet.decay_epochs, resnet.image_size) == (8, 100, (70, 90), 840)


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    assert load_checkpoint(path)["step"] == 1

    def broken_save(obj, stream):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def run(config):
    trainer = Trainer(config, dataset=tiny_dataset(config))
    try:
        outcome = trainer.train()
    finally:
        trainer.close()
    return trainer, outcome


def test_resume_is_bit_identical(tmp_path):
    # 4 steps per epoch: stop mid-epoch 0 after step 3, resume, compare steps 4-6 (crossing an epoch).
    full, outcome = run(tiny_config(tmp_path / "full", max_steps=6))
    assert outcome == "max_steps"
    first, outcome = run(tiny_config(tmp_path / "resumed", max_steps=3))
    assert outcome == "max_steps" and first.step == 3
    state = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["step"]) == (0, 3, 3)
    resumed, _ = run(tiny_config(tmp_path / "resumed", max_steps=6, resume=str(tmp_path / "resumed" / "last.pt")))
    assert resumed.step == 6
    assert [h[1:] for h in resumed.history] == [h[1:] for h in full.history[3:]]
    for a, b in zip(full.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)


def test_epochs_write_checkpoints_and_final_weights(tmp_path):
    trainer, outcome = run(tiny_config(tmp_path, epochs=1, tensorboard=True, amp="bf16", channels_last=True))
    assert outcome == "done"
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    final = torch.load(tmp_path / "mobilenet0.25_Final.pth", weights_only=True)
    assert set(final) == set(trainer.module.state_dict())
    assert os.listdir(tmp_path / "tensorboard")
    assert all(np.isfinite(h[1:]).all() for h in trainer.history)


def test_cli_train_subcommand(tmp_path):
    from retinaface_ext.cli import main

    out = tmp_path / "cli"
    code = main(["train", "--data", "synthetic", "--synthetic-size", "4", "--image-size", "64", "--batch-size", "2",
                 "--epochs", "1", "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert code == 0
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert (out / "mobilenet0.25_Final.pth").is_file()


def test_biubug6_train_flags_map_to_the_trainer(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(os.path.join(ROOT, "python"))
    spec = importlib.util.spec_from_file_location("biubug6_train", os.path.join(ROOT, "python", "train.py"))
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    args = shim.parse_args(["--training_dataset", "data/label.txt", "--network", "resnet50", "--num_workers", "2",
                            "--lr", "0.01", "--resume_net", "w.pth", "--resume_epoch", "7", "--weight_decay",
                            "1e-4", "--gamma", "0.5", "--save_folder", str(tmp_path), "--amp", "bf16"])
    config = config_from_args(args)
    assert (config.data, config.backbone, config.workers, config.lr, config.pretrained, config.start_epoch,
            config.weight_decay, config.gamma, config.out, config.amp) == (
        "data/label.txt", "resnet50", 2, 0.01, "w.pth", 7, 1e-4, 0.5, str(tmp_path), "bf16")


def test_start_epoch_starts_the_schedule_there(tmp_path):
    config = tiny_config(tmp_path, epochs=3, decay_epochs=(1, 2), start_epoch=2)
    trainer = Trainer(config, dataset=tiny_dataset(config))
    try:
        assert (trainer.epoch, trainer.step) == (2, 2 * trainer.steps_per_epoch)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
        assert trainer.train() == "done"
        assert trainer.step == 3 * trainer.steps_per_epoch
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    finally:
        trainer.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, out_dir, progress=False):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    config = tiny_config(out_dir, max_steps=2, progress=progress)  # only rank 0 shows a bar
    trainer = Trainer(config, dataset=tiny_dataset(config))
    try:
        trainer.train()
        flat = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
        torch.save({"params": flat, "history": trainer.history, "steps_per_epoch": trainer.steps_per_epoch},
                   os.path.join(out_dir, f"rank{rank}.result"))
    finally:
        trainer.close()


@pytest.mark.parametrize("progress", [False, True], ids=["no-progress", "progress-bar-on-rank-0"])
def test_ddp_two_processes_gloo(tmp_path, progress):
    import torch.multiprocessing as mp

    # With a bar, rank 0 used to reduce the losses every 10 steps and the others every step: the
    # collectives paired different steps (wrong or hanging runs).
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), progress), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.result", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.result", weights_only=False)
    assert torch.equal(r0["params"], r1["params"])  # gradients were averaged
    assert r0["history"] == r1["history"]  # logged losses are reduced over the processes
    assert r0["steps_per_epoch"] == 2  # 8 images / 2 processes / batch 2
    assert sorted(p for p in os.listdir(tmp_path) if not p.endswith(".result")) == ["last.pt"]  # rank 0 only


# Not deselected anywhere: CI runs `python -m pytest tests -q` (no -m filter), so this test runs there;
# the marker only lets a developer skip it locally with -m "not slow".
@pytest.mark.slow
def test_it_learns_on_synthetic_faces(tmp_path):
    """mobilenet0.25 from scratch on CPU: 200 steps of batch 16 at 160x160 (about 55 s of one core),
    then AP at IoU 0.5 (the WIDER protocol's matching and VOC AP) on 64 held-out synthetic images.

    Measured: AP 0.847 (held-out split of seed 99; 0.864 with an earlier build of the fused ops, whose
    float summation order differed; 0.57 after 100 steps, 0.78 after 150). The threshold 0.7 leaves
    room for such float differences between builds and machines; an untrained or broken pipeline
    (loss, matching, augmentation or decoding) stays far below it (AP 0.07 after 50 steps).
    """
    from retinaface_ext import detect
    from retinaface_ext.evaluation import average_precision

    scene = dict(face_size=(0.15, 0.6), max_faces=3)
    config = TrainConfig(data="synthetic", batch_size=16, epochs=1000, decay_epochs=(1000, 1000), image_size=160,
                         lr=1e-2, warmup_epochs=0.5, workers=0, out=str(tmp_path), progress=False, device="cpu",
                         seed=0, max_steps=200)
    dataset = SyntheticFaces(256, image_size=160, seed=0, transform=TrainTransform(160), **scene)
    started = time.process_time()
    trainer = Trainer(config, dataset=dataset)
    try:
        assert trainer.train() == "max_steps"
    finally:
        trainer.close()
    first_losses, last_losses = np.array(trainer.history[0][1:]), np.array(trainer.history[-1][1:])
    assert (last_losses < first_losses).all()

    held_out = SyntheticFaces(64, image_size=160, seed=99, **scene)
    samples = [held_out[i] for i in range(len(held_out))]
    detections = detect(trainer.module, [image for image, _ in samples], score_threshold=0.02)
    predictions, truths = [], []
    for found, (_, faces) in zip(detections, samples):
        found = found[:, :5].astype(np.float64)
        found[:, 2:4] -= found[:, :2]  # x, y, w, h as the WIDER files
        truth = faces[:, :4].astype(np.float64)
        truth[:, 2:] -= truth[:, :2]
        predictions.append(found)
        truths.append(truth)
    ap = average_precision(predictions, truths)["all"]
    print(f"held-out synthetic AP {ap:.3f} after {time.process_time() - started:.0f} s of CPU")
    assert ap > 0.7
