"""TRL lane smoke test: GRPOTrainer trains the embedded tiny model on CPU (no download)."""

from __future__ import annotations

import math
import random

import torch
import trl
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer


def test_trl_version():
    assert trl.__version__ == "1.16.0"  # the `trl` extra's pin; change both together


def test_grpo_trains_two_steps_on_the_tiny_model(tiny_model, tmp_path):
    rng = random.Random(0)

    def reward(completions, **kwargs):  # distinct rewards within a group, so advantages are not all zero
        return [rng.random() for _ in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-3,
        seed=0,
    )
    prompts = ["3+4+1=", "2+2=", "5+1+1=", "7+0="]
    trainer = GRPOTrainer(
        model=str(tiny_model),
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    result = trainer.train()

    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert changed, "no parameter moved in 2 GRPO steps"
