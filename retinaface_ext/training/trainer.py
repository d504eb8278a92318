"""Training RetinaFace with the fused MultiBox loss (biubug6's recipe, large-batch ready).

What is different from biubug6's train.py: the ground truth of a batch is a
few padded tensors moved to the device once (no per-image Python matching),
the loss is one fused op, the data order and augmentation are functions of
(seed, epoch, index) so a resumed run repeats the uninterrupted one, and the
loop supports DDP, AMP, channels_last and atomic checkpoints.
"""
import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader

from .. import defaults, ops
from ..data import EpochSampler, SyntheticFaces, TrainTransform, WiderFaceDataset, collate, normalize_images
from .checkpoint import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from .distributed import DistContext, all_reduce_mean, barrier, cleanup, init_distributed

#: biubug6's cfg_mnet / cfg_re50 training values per backbone.
BACKBONE_DEFAULTS = {
    "mobilenet0.25": dict(batch_size=32, epochs=250, decay_epochs=(190, 220), image_size=640),
    "resnet50": dict(batch_size=24, epochs=100, decay_epochs=(70, 90), image_size=840),
}
LOC_WEIGHT = 2.0  # total = 2.0 * loss_l + loss_c + loss_landm
#: biubug6's cfg['name'], which names its final weights file (<name>_Final.pth).
FINAL_WEIGHTS_NAME = {"mobilenet0.25": "mobilenet0.25", "resnet50": "Resnet50"}


def default_workers():
    """DataLoader workers when none are asked for: 4, or fewer where fewer CPUs are ours
    (more workers than cores only compete with the training step; PyTorch warns about it)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


@dataclass
class TrainConfig:
    data: str = "synthetic"  # a label.txt, or "synthetic"
    backbone: str = "mobilenet0.25"
    images_dir: Optional[str] = None
    batch_size: Optional[int] = None  # per process; None: biubug6's value for the backbone
    epochs: Optional[int] = None
    decay_epochs: Optional[Tuple[int, int]] = None
    image_size: Optional[int] = None
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 1e-6 (biubug6 has it switched off)
    workers: Optional[int] = None  # None: min(4, the CPUs this process may run on)
    amp: str = "off"  # "off", "bf16" or "fp16"
    channels_last: bool = False
    out: str = "runs/retinaface"
    resume: Optional[str] = None  # a checkpoint path, or "auto" for out/last.pt when present
    seed: int = 0
    device: Optional[str] = None
    tensorboard: bool = False
    progress: bool = True
    synthetic_size: int = 1024  # images in the synthetic set
    max_steps: Optional[int] = None  # stop (with a checkpoint) after this many steps in total
    pretrained: Optional[str] = None  # weights to start from (anything retinaface_ext.load_weights takes)
    start_epoch: int = 0  # begin the schedule at this epoch (biubug6's --resume_epoch; ignored with resume)
    conf_loss: str = "ce"  # "ce": biubug6's mined cross-entropy; "focal": focal loss over all priors
    focal_alpha: float = defaults.FOCAL_ALPHA
    focal_gamma: float = defaults.FOCAL_GAMMA
    # "auto": frozen when the initial weights have BatchNorm folded into the convs (the bundled
    # pretrained model, ONNX exports; see retinaface_ext.models.frozen_batchnorm), trained otherwise.
    batchnorm: str = "auto"  # "auto", "train" or "frozen"

    def resolved(self):
        """The config with every None replaced by its default (per backbone, or from this machine)."""
        defaults = BACKBONE_DEFAULTS.get(_canonical(self.backbone), BACKBONE_DEFAULTS["mobilenet0.25"])
        values = asdict(self)
        for key, value in defaults.items():
            if values.get(key) is None:
                values[key] = value
        if values["decay_epochs"] is None:
            values["decay_epochs"] = defaults["decay_epochs"]
        values["decay_epochs"] = tuple(values["decay_epochs"])
        if values["workers"] is None:
            values["workers"] = default_workers()
        return TrainConfig(**values)

    def validate(self):
        """Raises ValueError naming the first setting (and its command-line flag) out of range."""
        def require(ok, name, expected, value):
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {value!r} (--{name.replace('_', '-')})")

        def finite(value):
            return isinstance(value, (int, float)) and math.isfinite(value)

        for name in ("batch_size", "epochs", "image_size", "synthetic_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
        require(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
                "max_steps", "an integer >= 1", self.max_steps)
        require(isinstance(self.workers, int) and self.workers >= 0, "workers", "an integer >= 0", self.workers)
        require(isinstance(self.start_epoch, int) and 0 <= self.start_epoch < self.epochs, "start_epoch",
                f"an integer in [0, epochs = {self.epochs})", self.start_epoch)
        require(len(self.decay_epochs) == 2 and all(isinstance(e, int) and e >= 0 for e in self.decay_epochs),
                "decay_epochs", "two integers >= 0", self.decay_epochs)
        require(finite(self.lr) and self.lr > 0, "lr", "a finite number > 0", self.lr)
        require(finite(self.momentum) and 0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        require(finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "finite and >= 0",
                self.weight_decay)
        require(finite(self.gamma) and self.gamma > 0, "gamma", "finite and > 0", self.gamma)
        require(finite(self.warmup_epochs) and self.warmup_epochs >= 0, "warmup_epochs", "finite and >= 0",
                self.warmup_epochs)
        require(finite(self.focal_alpha) and self.focal_alpha <= 1, "focal_alpha",
                "finite and <= 1 (negative: no weighting)", self.focal_alpha)
        require(finite(self.focal_gamma) and self.focal_gamma >= 0, "focal_gamma", "finite and >= 0",
                self.focal_gamma)
        require(self.amp in ("off", "bf16", "fp16"), "amp", "'off', 'bf16' or 'fp16'", self.amp)
        require(self.conf_loss in ("ce", "focal"), "conf_loss", "'ce' or 'focal'", self.conf_loss)
        require(self.batchnorm in ("auto", "train", "frozen"), "batchnorm", "'auto', 'train' or 'frozen'",
                self.batchnorm)
        return self


def _canonical(name):
    try:
        from ..models import canonical_backbone_name

        return canonical_backbone_name(name)
    except Exception:  # the model package is not merged / name unknown: keep it
        return name


def _canonical_value(name, value):
    if name == "backbone":
        return _canonical(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _looks_like_weights(state):
    return isinstance(state, dict) and any(str(key).endswith(".weight") for key in state)


def check_images_exist(dataset):
    """Raises FileNotFoundError, naming the label file and line, if an image listed in ``dataset`` is missing.

    Checked before training starts, so that a missing file does not stop a run hours in.
    """
    missing = [entry for entry in getattr(dataset, "entries", ()) if not os.path.isfile(entry.image_path)]
    if missing:
        first = missing[0]
        raise FileNotFoundError(
            f"{len(missing)} of the {len(dataset)} images listed in {dataset.label_file} do not exist, e.g. "
            f"{first.image_path} ({dataset.label_file}:{first.line}); fix the list or --images-dir")


def learning_rate(step, steps_per_epoch, config):
    """biubug6's schedule, per step: lr * gamma^k after decay epoch k; optional linear warm-up."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return 1e-6 + (config.lr - 1e-6) * step / warmup_steps
    decays = sum(step >= epoch * steps_per_epoch for epoch in config.decay_epochs)
    return config.lr * config.gamma ** decays


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; no checkpoint is written after that."""


#: Settings a resumed run must share with its checkpoint: each changes which samples a step
#: sees or what the optimizer state means (the values the optimizer state holds would win).
RESUME_SETTINGS = ("backbone", "batch_size", "image_size", "seed", "conf_loss", "focal_alpha", "focal_gamma",
                   "lr", "momentum", "weight_decay", "gamma", "warmup_epochs")


class Trainer:
    """Builds data, model, optimiser and runs the loop; ``Trainer(config).train()``."""

    def __init__(self, config: TrainConfig, model=None, dataset=None):
        self.config = config = config.resolved().validate()
        self.context: DistContext = init_distributed(config.device)
        self.device = self.context.device
        torch.manual_seed(config.seed)
        # uint8 batches (4x fewer bytes through the workers, pinned memory and
        # the copy), normalised on the device in train_step.
        transform = TrainTransform(config.image_size, output="uint8")
        self.bgr_mean = tuple(float(m) for m in transform.bgr_mean)
        if dataset is not None:
            self.dataset = dataset
        elif config.data == "synthetic":
            self.dataset = SyntheticFaces(config.synthetic_size, image_size=max(256, config.image_size // 2),
                                          seed=config.seed, transform=transform)
        else:
            self.dataset = WiderFaceDataset(config.data, config.images_dir, transform=transform,
                                            seed=config.seed)
            check_images_exist(self.dataset)
        self.sampler = EpochSampler(len(self.dataset), shuffle=True, seed=config.seed,
                                    rank=self.context.rank, world_size=self.context.world_size,
                                    drop_last=True)
        self.steps_per_epoch = len(self.sampler) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the dataset has {len(self.dataset)} images: fewer than one batch of "
                             f"{config.batch_size} per process")
        self.loader = DataLoader(
            TimedLoading(self.dataset), batch_size=config.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=config.workers, collate_fn=timed_collate, pin_memory=self.device.type == "cuda",
            persistent_workers=config.workers > 0,
            prefetch_factor=4 if config.workers > 0 else None,
        )
        resume_path = None
        if config.resume:
            path = os.path.join(config.out, "last.pt") if config.resume == "auto" else config.resume
            if config.resume != "auto" or os.path.isfile(path):
                resume_path = path
        resume_state = self._read_resumable(resume_path) if resume_path else None
        if model is None:
            from ..models import RetinaFace

            model = RetinaFace(backbone=config.backbone)
            if resume_state is None:  # (a resumed run gets the checkpoint's weights below)
                if config.pretrained:
                    from ..weights import load_weights

                    load_weights(model, config.pretrained)  # strict: all of it, or a ValueError saying what
                elif config.conf_loss == "focal":
                    # RetinaNet's start: P(face) = 0.01 everywhere.
                    from ..models import init_focal_prior_bias

                    init_focal_prior_bias(model)
        self.batchnorm_frozen = self._freeze_batchnorm(model, resume_state)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.module = self.model
        if self.context.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: learning_rate(step, self.steps_per_epoch, config) / config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.priors = ops.prior_box((config.image_size, config.image_size), device=self.device)
        self.epoch = 0
        self.step_in_epoch = 0
        self.step = 0
        self.saved_step = None  # the step of the last checkpoint written (None: none yet)
        self.history = []  # (step, loss_l, loss_c, loss_landm) of this process, for tests and logs
        self._writer = None
        if resume_state is not None:
            self._load_state(resume_state)
            self.saved_step = self.step
        elif config.start_epoch:
            self.epoch = config.start_epoch
            self.step = config.start_epoch * self.steps_per_epoch
            self.scheduler.last_epoch = self.step
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.step, self.steps_per_epoch, config)
        if self.context.is_main:
            os.makedirs(config.out, exist_ok=True)

    def _freeze_batchnorm(self, model, resume_state):
        """Freezes the model's BatchNorm as config.batchnorm says; -> whether it is frozen."""
        from ..models import freeze_batchnorm, has_folded_batchnorm

        mode = self.config.batchnorm
        if mode == "auto":
            # A resumed run keeps what it was trained with; a new one freezes folded weights.
            frozen = resume_state["batchnorm_frozen"] if resume_state is not None else has_folded_batchnorm(model)
        else:
            frozen = mode == "frozen"
            if resume_state is not None and frozen != resume_state["batchnorm_frozen"]:
                was = "frozen" if resume_state["batchnorm_frozen"] else "train"
                raise ValueError(f"--resume: the checkpoint was trained with --batchnorm {was}, not "
                                 f"--batchnorm {mode}")
        if frozen:
            freeze_batchnorm(model)
        elif has_folded_batchnorm(model) and resume_state is None:
            print("warning: --batchnorm train with BatchNorm-folded weights: BatchNorm now normalises with "
                  "batch statistics the network never saw, which destroys it (use --batchnorm auto)",
                  file=sys.stderr)
        return frozen

    # ------------------------------------------------------------------ state
    def state_dict(self):
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "step": self.step,
            "rng": rng_states(),
            "config": asdict(self.config),
            "batchnorm_frozen": self.batchnorm_frozen,
            "world_size": self.context.world_size,
            "dataset_size": len(self.dataset),
        }

    def save(self, name="last.pt"):
        """Writes OUT/name (atomically) after checking that the weights are finite."""
        self._check_finite_weights()
        if self.context.is_main:
            save_checkpoint(os.path.join(self.config.out, name), self.state_dict())
        self.saved_step = self.step

    def final_weights_path(self):
        """Where the final weights go: biubug6's name, e.g. OUT/mobilenet0.25_Final.pth."""
        backbone = _canonical(self.config.backbone)
        return os.path.join(self.config.out, f"{FINAL_WEIGHTS_NAME.get(backbone, backbone)}_Final.pth")

    def load(self, path):
        """Continues from the checkpoint at ``path`` (see ``--resume``)."""
        self._load_state(self._read_resumable(path))

    def _read_resumable(self, path):
        """The checkpoint at ``path``, after checking that this run can continue it (ValueError if not)."""
        state = load_checkpoint(path)
        required = ("model", "optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "step", "rng", "config")
        if not isinstance(state, dict) or any(key not in state for key in required):
            raise ValueError(f"--resume: {path} is not a training checkpoint of this trainer (such as OUT/last.pt)"
                             f"{': it holds weights only' if _looks_like_weights(state) else ''}; "
                             f"to start from its weights use --pretrained {path}")
        saved = state["config"]
        current = asdict(self.config)
        for name in RESUME_SETTINGS:
            if name in saved and _canonical_value(name, saved[name]) != _canonical_value(name, current[name]):
                raise ValueError(
                    f"--resume: {path} was trained with --{name.replace('_', '-')} {saved[name]}, this run "
                    f"has {current[name]}; resuming needs the same value (or start a new run from its "
                    f"weights with --pretrained {path})")
        checks = (("world_size", self.context.world_size, "processes"),
                  ("dataset_size", len(self.dataset), "training images"))
        for key, value, what in checks:
            if key in state and state[key] != value:
                raise ValueError(f"--resume: {path} was trained with {state[key]} {what}, this run has {value}; "
                                 "resuming needs the same (the data order depends on it)")
        if state["step_in_epoch"] > self.steps_per_epoch:
            raise ValueError(f"--resume: {path} stopped at step {state['step_in_epoch']} of an epoch, but an "
                             f"epoch here has {self.steps_per_epoch} steps")
        state.setdefault("batchnorm_frozen", False)
        return state

    def _load_state(self, state):
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # A GradScaler exists only with --amp fp16: switching amp on resume starts a fresh one.
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.step = state["epoch"], state["step_in_epoch"], state["step"]
        set_rng_states(state["rng"])

    def _check_finite_weights(self):
        finite = torch.stack([p.detach().isfinite().all() for p in self.module.parameters()]).all()
        if not bool(finite):
            raise TrainingDiverged(self._diverged_message("the weights are not finite"))

    def _diverged_message(self, what):
        kept = (f"{os.path.join(self.config.out, 'last.pt')} (step {self.saved_step}) is kept as the last good "
                "checkpoint" if self.saved_step is not None else "no checkpoint was written")
        return (f"training diverged at step {self.step}: {what}; stopped without saving, {kept}. "
                f"Try a lower --lr (now {self.config.lr:g})")

    # ------------------------------------------------------------------ one step
    def train_step(self, batch):
        """Forward, fused loss, backward and optimiser step on one :class:`Batch`; -> detached losses [3]."""
        config = self.config
        batch = batch.to(self.device, non_blocking=True)
        images = normalize_images(batch.images, self.bgr_mean, channels_last=config.channels_last)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
        with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loc, conf, landms = self.model(images)
        loss_l, loss_c, loss_landm = ops.multibox_loss(
            loc.float(), conf.float(), landms.float(), self.priors, batch.gt_boxes, batch.gt_landms,
            batch.gt_labels, batch.gt_counts, conf_loss=config.conf_loss, focal_alpha=config.focal_alpha,
            focal_gamma=config.focal_gamma)
        loss = LOC_WEIGHT * loss_l + loss_c + loss_landm
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return torch.stack([loss_l, loss_c, loss_landm]).detach()

    # ------------------------------------------------------------------ loop
    def train(self):
        config = self.config
        self.model.train()
        # Ctrl-C: finish the current step, checkpoint, stop. A second Ctrl-C aborts at once, except
        # while a checkpoint is being written: that one is finished first.
        signals = {"interrupted": False, "saving": False}
        previous_handler = None
        if os.name == "posix":
            def on_sigint(signum, frame):
                if signals["saving"]:
                    print("\nwriting the checkpoint, please wait", file=sys.stderr)
                    return
                if signals["interrupted"]:
                    raise KeyboardInterrupt
                signals["interrupted"] = True
            try:
                previous_handler = signal.signal(signal.SIGINT, on_sigint)
            except ValueError:  # not the main thread
                previous_handler = None

        @contextlib.contextmanager
        def ctrl_c_deferred():
            signals["saving"] = True
            try:
                yield
            finally:
                signals["saving"] = False

        def save_uninterrupted():
            with ctrl_c_deferred():
                self.save()

        try:
            try:
                while self.epoch < config.epochs:
                    stopped = self._train_epoch(lambda: signals["interrupted"])
                    if stopped:
                        save_uninterrupted()
                        if signals["interrupted"]:
                            return "interrupted"
                        if self.context.is_main:
                            last = os.path.join(config.out, "last.pt")
                            print(f"stopped after step {self.step} (--max-steps): checkpoint written to {last} "
                                  f"(continue with --resume {last})")
                        return "max_steps"
                    self.epoch += 1
                    self.step_in_epoch = 0
                    save_uninterrupted()
            except (TrainingDiverged, KeyboardInterrupt):
                raise
            except Exception as error:
                # Whatever stopped the loop (an unreadable image, a full disk, out of memory), the steps
                # done since the last checkpoint are kept when they can be.
                if self.step != self.saved_step:
                    try:
                        save_uninterrupted()
                    except Exception:
                        pass
                    else:
                        if self.context.is_main:
                            print(f"training stopped by an error ({type(error).__name__}) at step {self.step}; "
                                  f"checkpoint written to {os.path.join(config.out, 'last.pt')} (continue with "
                                  "--resume once the cause is fixed)", file=sys.stderr)
                raise
            if self.context.is_main:
                with ctrl_c_deferred():
                    save_checkpoint(self.final_weights_path(), self.module.state_dict())
                print(f"done: {config.epochs} epochs, {self.step} steps; final weights written to "
                      f"{self.final_weights_path()}")
            return "done"
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if self._writer is not None:
                self._writer.flush()
            barrier(self.context)

    def _train_epoch(self, interrupted):
        config = self.config
        self.sampler.set_epoch(self.epoch, skip=self.step_in_epoch * config.batch_size)
        progress = None
        if self.context.is_main and config.progress:
            from tqdm import tqdm

            progress = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch,
                            desc=f"epoch {self.epoch + 1}/{config.epochs}", dynamic_ncols=True)
        rates = ThroughputMeter(max(config.workers, 1))
        try:
            batches = iter(self.loader)
            while True:
                waited = time.perf_counter()
                item = next(batches, None)
                if item is None:
                    break
                batch, load_seconds = item
                rates.loaded(batch.images.shape[0], load_seconds, time.perf_counter() - waited)
                losses = self.train_step(batch)
                self.step += 1
                self.step_in_epoch += 1
                # A condition every rank evaluates alike: the all-reduce is a collective (only rank 0
                # has a progress bar, so "no bar here" would pair different steps across ranks).
                if self.step % 10 == 0 or self.step_in_epoch == self.steps_per_epoch or not config.progress:
                    reduced = all_reduce_mean(losses, self.context).tolist()
                    # fp16 steps with an overflow are skipped by the GradScaler; otherwise a
                    # non-finite loss has already spoilt the weights.
                    if config.amp != "fp16" and not all(math.isfinite(v) for v in reduced):
                        raise TrainingDiverged(self._diverged_message(
                            "the loss is not finite (loc {:g}, conf {:g}, landm {:g})".format(*reduced)))
                    self.history.append((self.step, *reduced))
                    self._log(reduced, rates.rates(self.context.world_size), progress)
                if progress is not None:
                    progress.update(1)
                if (config.max_steps is not None and self.step >= config.max_steps) or self._stop(interrupted()):
                    return True
        except TrainingDiverged:
            raise
        except Exception:
            # A Ctrl-C also reaches the DataLoader workers; their exit is not an error then.
            if interrupted():
                return True
            raise
        finally:
            if progress is not None:
                progress.close()
        return False

    def _stop(self, interrupted):
        """Whether any process was interrupted (all processes must stop at the same step)."""
        if not self.context.enabled:
            return interrupted
        flag = torch.tensor([float(interrupted)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _log(self, losses, rates, progress):
        lr = self.optimizer.param_groups[0]["lr"]
        self.last_rates = rates
        if progress is not None:
            progress.set_postfix(loc=f"{losses[0]:.3f}", cls=f"{losses[1]:.3f}", landm=f"{losses[2]:.3f}",
                                 lr=f"{lr:.1e}", img_s=f"{rates['images_per_second']:.1f}",
                                 load_img_s=f"{rates['loader_images_per_second']:.1f}",
                                 step_img_s=f"{rates['step_images_per_second']:.1f}")
        elif self.context.is_main and (self.step % 10 == 0 or self.step_in_epoch == self.steps_per_epoch):
            # Without a progress bar (--no-progress, logs to a file): a plain line every 10 steps.
            print(f"epoch {self.epoch + 1}/{self.config.epochs} step {self.step}: loc {losses[0]:.3f} "
                  f"cls {losses[1]:.3f} landm {losses[2]:.3f} lr {lr:.1e} images/s "
                  f"{rates['images_per_second']:.1f} (loader {rates['loader_images_per_second']:.1f}, "
                  f"step {rates['step_images_per_second']:.1f})", flush=True)
        if self.config.tensorboard and self.context.is_main:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(os.path.join(self.config.out, "tensorboard"))
            for name, value in zip(("loss/loc", "loss/conf", "loss/landm"), losses):
                self._writer.add_scalar(name, value, self.step)
            self._writer.add_scalar("lr", lr, self.step)
            for name, value in rates.items():
                self._writer.add_scalar(f"throughput/{name}", value, self.step)

    def close(self):
        cleanup(self.context)


class TimedLoading(torch.utils.data.Dataset):
    """The dataset as the DataLoader sees it: a batch is fetched with the seconds it took to load.

    ``__getitems__`` (which DataLoader prefers to per-index fetching) loads the
    samples of a batch in the worker and notes when it started;
    :func:`timed_collate` adds the collate, so each batch arrives with its
    loading time as measured in the worker that made it.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset[key]

    def __getitems__(self, keys):
        started = time.perf_counter()
        return [self.dataset[key] for key in keys], started


def timed_collate(loaded):
    samples, started = loaded
    batch = collate(samples)
    return batch, time.perf_counter() - started


class ThroughputMeter:
    """Images/s of the epoch so far: overall, of the loader alone and of the training step alone.

    loader = images / loading seconds (measured in the workers) x workers: what
    the loader can deliver; step = images / (wall time - time spent waiting for
    the loader): what the step would do with an instant loader. The smaller one
    is the bottleneck. Rates are per process times ``world_size``.
    """

    def __init__(self, workers):
        self.workers = workers
        self.images = 0
        self.load_seconds = 0.0
        self.wait_seconds = 0.0
        self.started = time.perf_counter()

    def loaded(self, images, load_seconds, wait_seconds):
        self.images += images
        self.load_seconds += load_seconds
        self.wait_seconds += wait_seconds

    def rates(self, world_size=1):
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        images = self.images * world_size
        return {
            "images_per_second": images / elapsed,
            "loader_images_per_second": images * self.workers / max(self.load_seconds, 1e-9),
            "step_images_per_second": images / max(elapsed - self.wait_seconds, 1e-9),
        }


def train(config: TrainConfig):
    """Runs a training; -> "done", "interrupted" or "max_steps"."""
    trainer = Trainer(config)
    try:
        return trainer.train()
    finally:
        trainer.close()
