"""Training: the loop (fused loss, DDP, AMP, channels_last), checkpoints, distributed helpers."""
from .checkpoint import load_checkpoint, save_checkpoint
from .trainer import BACKBONE_DEFAULTS, TrainConfig, Trainer, learning_rate, train

__all__ = ["BACKBONE_DEFAULTS", "TrainConfig", "Trainer", "learning_rate", "load_checkpoint",
           "save_checkpoint", "train"]
