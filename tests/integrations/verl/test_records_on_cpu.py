"""`+algorithm.tokencredit.records_every=N`: the estimator writes the group records of `tokencredit inspect` at
global steps 1, 1 + N, ... from the batch at verl's legacy `compute_advantage` call site (the V1 call site:
test_v1_trainer_on_cpu.py), with the tokens and prompts a recipe need not read and the recipe's credit."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl_batches import BUDGET, algorithm_config, check_record, make_batch, rollouts_of

import tokencredit as tc
from tokencredit.cli import app
from tokencredit.inspect.records import read_records
from tokencredit.integrations.verl.credit import SOURCE, Source
from tokencredit.models.tokenizer import build_char_tokenizer


class Trainer:
    """What the estimator reads of a verl trainer (either one): step counters, config, tokenizer."""

    def __init__(self, run, step: int = 1):
        self.global_steps, self.total_training_steps = step, 10
        self.config = OmegaConf.create({"trainer": {"default_local_dir": str(run)},
                                        "actor_rollout_ref": {"rollout": {"response_length": BUDGET}}})
        self.tokenizer = build_char_tokenizer()


def advantage_step(trainer, name: str, data=None, fetch=None, **settings):
    """verl's `compute_advantage` on a legacy batch inside the trainer (as the wrapped `fit` runs it)."""
    rcp = tc.recipe(name)
    token = SOURCE.set(Source(trainer=trainer, fetch=fetch))
    try:
        return compute_advantage(make_batch() if data is None else data, adv_estimator=f"tc_{rcp.advantage}",
                                 config=algorithm_config(f"tc_{rcp.advantage}", recipe=name, **settings))
    finally:
        SOURCE.reset(token)


@pytest.mark.parametrize("name", ["grpo", "forking", "tempo"])
def test_records_every_step_write_the_batch_and_its_credit(tmp_path, name):
    """grpo reads no token ids, forking entropies (and drops tokens), tempo token ids: every record carries them
    all, and the advantages are the recipe's credit of the batch."""
    trainer = Trainer(tmp_path)
    out = advantage_step(trainer, name, records_every=1, records_groups=2)
    (record,) = read_records(tmp_path)
    assert record.step == 1 and record.recipe == name
    check_record(record, out, tc.recipe(name).credit(rollouts_of(out)), trainer.tokenizer, groups=2,
                 channels={"logprob", "ref_logprob", "entropy", "value", "advantage", "weight"})


def test_records_every_n_steps_and_the_inspector_page(tmp_path):
    """Steps 1, 1 + N, ... are recorded, in `records_dir` when set; `tokencredit inspect RUN` builds the page."""
    for step in range(1, 5):
        advantage_step(Trainer(tmp_path / "unused", step), "tempo", records_every=2, records_groups=3,
                       records_dir=str(tmp_path / "run"))
    assert [r.step for r in read_records(tmp_path / "run")] == [1, 3]
    assert not (tmp_path / "unused").exists()
    assert all(len(r.groups) == 3 for r in read_records(tmp_path / "run"))
    page = tmp_path / "inspect.html"
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "run"), "--out", str(page)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2 recorded steps, 6 groups" in result.output and page.stat().st_size > 0


def test_records_every_zero_writes_nothing_and_reads_no_more_fields(tmp_path):
    """The default: no records, and the estimator fetches no field the recipe does not need (grpo: not even
    `responses`)."""
    data = make_batch()
    for field in ("responses", "prompts", "entropy", "ref_log_prob"):
        data.batch.pop(field)
    fetched = []
    out = advantage_step(Trainer(tmp_path), "grpo", data=data, fetch=fetched.append)
    assert not any(tmp_path.iterdir()) and fetched == []
    assert torch.isfinite(out.batch["advantages"]).all()


def test_records_need_the_response_token_ids(tmp_path):
    data = make_batch()
    data.batch.pop("responses")
    with pytest.raises(ValueError, match=r"algorithm.tokencredit.records_every=1 needs the response token ids \[B,T\], "
                                         r"verl's 'responses'"):
        advantage_step(Trainer(tmp_path), "grpo", data=data, records_every=1)


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("records_every", -1, "algorithm.tokencredit.records_every: expected an int >= 0, got -1"),
    ("records_groups", 0, "algorithm.tokencredit.records_groups: expected an int >= 1, got 0"),
    ("records_max_bytes", "big", "algorithm.tokencredit.records_max_bytes: expected an int >= 1000, got 'big'"),
])
def test_bad_records_settings_are_one_line_naming_the_field(setting, value, message):
    from tokencredit.integrations.verl import read_settings

    with pytest.raises(ValueError) as refused:
        read_settings(algorithm_config("tc_grpo", **{setting: value}))
    assert str(refused.value) == message
