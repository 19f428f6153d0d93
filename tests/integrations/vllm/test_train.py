"""The on-policy trap, as a test: `tokencredit train` with `rl.sampler=vllm` (warm start + RL on the default tiny
model) at temperature 0.7 keeps the first-epoch max |ratio − 1| ≤ 1e-4 on every RL step, including the steps
after weight updates; the learning rate and an entropy bonus move the policy enough that a stale engine would
show. One engine."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from tokencredit.cli import app
from tokencredit.models import load_model
from tokencredit.sampling.hf import policy_logprob

RL_STEPS = 3


def test_tokencredit_train_with_vllm_stays_on_policy(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--set", f"out={out}", "--set", "rl.sampler=vllm", "--set", "rl.temperature=0.7",
            "--set", "sft.steps=8", "--set", "sft.batch_size=16", "--set", f"rl.steps={RL_STEPS}",
            "--set", "rl.prompts_per_step=4", "--set", "rl.group_size=4", "--set", "rl.max_new_tokens=16",
            "--set", "rl.minibatch_size=8", "--set", "rl.micro_batch_size=8", "--set", "rl.lr=0.003",
            # an entropy bonus: a gradient even where a barely warm-started model earns no reward variance
            "--set", "recipe_overrides.entropy_coef=0.05",
            "--set", "eval.size=8", "--set", "eval.every=2", "--set", "eval.pass_k=2",
            "--set", "log.tensorboard=false", "--set", "log.progress=false"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if r["phase"] == "rl"]
    devs = [r["first_epoch_ratio_max_dev"] for r in rl]
    print(f"first-epoch max |ratio - 1| per RL step (vLLM sampler, T = 0.7): {devs}")
    assert len(rl) == RL_STEPS and all(dev <= 1e-4 for dev in devs)
    assert all("eval_accuracy" in r for r in rl if r["step"] % 2 == 0 or r["step"] == RL_STEPS)

    # two minibatches per RL step, each followed by a weight update: the policy really moved between samplings
    sft, final = (load_model(out / "checkpoints" / name)[0] for name in ("sft", f"step-{8 + RL_STEPS}"))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        before = policy_logprob(sft, ids[:, :2], mask[:, :2], ids[:, 2:], 0.7)[0]
        after = policy_logprob(final, ids[:, :2], mask[:, :2], ids[:, 2:], 0.7)[0]
    assert (before - after).abs().max() > 1e-2
