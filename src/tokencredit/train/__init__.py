"""The reference trainer (warm start + RL), its config, checkpoints, logging, and the providers that supply what
a recipe needs."""

from tokencredit.train import critic, values  # noqa: F401  (register the value providers)
from tokencredit.train.config import TrainConfig, load_config
from tokencredit.train.providers import Provider, RunContext, register_provider
from tokencredit.train.trainer import Trainer, train

__all__ = ["Provider", "RunContext", "TrainConfig", "Trainer", "load_config", "register_provider", "train"]
