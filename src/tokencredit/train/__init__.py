"""The reference trainer (warm start + RL), its config, checkpoints and logging."""

from tokencredit.train.config import TrainConfig, load_config
from tokencredit.train.trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "load_config", "train"]
