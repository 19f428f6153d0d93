"""Runs you can trust: a run records its config and never mixes two, a mistyped model path or a lost `latest` is
never silently trained over, a failed checkpoint says where to continue, evaluation is the run's evaluation."""

import errno
import json
import math
import random
import warnings

import pytest

import tokencredit
from tokencredit.rewards import safe_score
from tokencredit.tasks import Example, Task, examples, make_task
from tokencredit.train import Trainer, load_config, train
from tokencredit.train.checkpoint import latest_checkpoint
from tokencredit.train.evaluate import evaluate

TINY = {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64}


def tiny(out, *extra):
    """A run of 2 warm-start and 2 RL steps of a one-layer model, a checkpoint after every step."""
    return load_config(None, [
        f"out={out}", "sft.steps=2", "sft.batch_size=4", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2",
        "rl.max_new_tokens=6", "rl.minibatch_size=4", "rl.micro_batch_size=4", "eval.size=4", "eval.every=1",
        "eval.pass_k=2", "eval.pass_k_size=2", "checkpoint_every=1", "log.progress=false", "log.tensorboard=false",
        *[f"model.tiny.{k}={v}" for k, v in TINY.items()], *extra,
    ])


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (its folder)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(tiny(out))["finished"]
    return out


def test_a_run_records_its_config_and_version(finished):
    cfg = tiny(finished).model_dump(mode="json")
    for folder in (finished, finished / "checkpoints" / "step-4", finished / "checkpoints" / "sft"):
        record = json.loads((folder / "run_config.json").read_text())
        assert record == {"tokencredit_version": tokencredit.__version__, "config": cfg}


@pytest.mark.parametrize(("override", "named"), [
    ("task=digit_sort", "task ('chain_sum' → 'digit_sort')"),
    ("task_params.mistake_rate=0.2", "task_params.mistake_rate ('<absent>' → 0.2)"),
    ("recipe=tempo", "recipe ('grpo' → 'tempo')"),
    ("rl.group_size=4", "rl.group_size (2 → 4)"),
    ("recipe_overrides.agg=balanced", "recipe_overrides.agg"),
    ("seed=1", "seed (0 → 1)"),
])
def test_resume_refuses_another_config_naming_the_keys(finished, override, named):
    lines = (finished / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="holds a run with another config") as info:
        Trainer(tiny(finished, override))
    assert named in str(info.value) and "rl.steps" in str(info.value)
    assert (finished / "metrics.jsonl").read_text() == lines  # nothing appended, nothing overwritten


def test_resume_may_extend_a_run_and_change_the_safe_fields(tmp_path):
    out = tmp_path / "run"
    from tokencredit.train.config import SAFE_TO_CHANGE

    train(tiny(out))
    assert "rl.steps" in SAFE_TO_CHANGE and "log" in SAFE_TO_CHANGE
    summary = train(tiny(out, "rl.steps=3", "log.tensorboard=true", "checkpoint_every=5", "threads=1"))
    assert summary["finished"] and summary["global_step"] == 5
    assert [r["step"] for r in records(out) if r["phase"] == "rl"] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"rl.steps: the run .* is at RL step 3; resume it with rl.steps >= 3"):
        Trainer(tiny(out, "rl.steps=1"))


def test_a_mistyped_model_path_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"model.path: .*modle.* is not a local model folder \(no config.json\)"):
        Trainer(tiny(tmp_path / "run", f"model.path={tmp_path / 'modle'}"))
    assert not (tmp_path / "modle").exists() and not (tmp_path / "run").exists()


def test_latest_naming_a_missing_folder_falls_back_to_the_newest_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(out, "rl.steps=3")
    Trainer(cfg).run(stop_after=4)  # killed after RL step 2: checkpoints step-3 (pruned: step-2), step-4, sft
    root = out / "checkpoints"
    (root / "latest").write_text("step-9")  # a pointer to a checkpoint that is gone
    with pytest.warns(UserWarning, match="names 'step-9', which is missing; using the newest complete checkpoint"):
        assert latest_checkpoint(root) == root / "step-4"
    before = [r for r in records(out)]
    (root / "latest").unlink()  # no pointer at all (a kill between a checkpoint and its pointer)
    with pytest.warns(UserWarning, match="is missing; using the newest"):
        summary = train(cfg)
    assert summary["finished"] and records(out)[: len(before)] == before  # continued, not started over


def test_a_full_disk_during_a_checkpoint_names_the_last_good_one(tmp_path, monkeypatch):
    import tokencredit.train.checkpoint as checkpoint

    out = tmp_path / "run"
    save_file, calls = checkpoint.save_file, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # step-1, step-2 (the sft checkpoint) are written; step-3 fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match=r"checkpoint step-3: could not be written to .* \(No space left "
                                                   r"on device\); the last good checkpoint is .*sft \(global step 2\)"
                                                   r".*--resume continues from it"):
        train(tiny(out))
    assert not list((out / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(checkpoint, "save_file", save_file)
    assert train(tiny(out))["finished"]


class NaNVerifier(Task):
    """A task whose verifier returns NaN on odd answers."""

    name = "nan_verifier"

    def sample(self, rng):
        return Example(f"{rng.randrange(10)}=", "1")

    def score(self, response, example):
        return math.nan if len(response) % 2 else 1.0


def test_a_non_finite_verifier_score_is_a_counted_failure():
    task = NaNVerifier()
    rewards, failures = safe_score(task, ["a", "ab", "abc"], [task.sample(random.Random(0))] * 3)
    assert rewards.tolist() == [0.0, 1.0, 0.0] and failures["exception"] == 2


def test_evaluation_counts_verifier_failures(tiny_model):
    from tokencredit.sampling import TransformersSampler

    model, tokenizer = tiny_model
    sampler = TransformersSampler(model, tokenizer, max_new_tokens=3)
    task = NaNVerifier()
    held_out = [task.sample(random.Random(i)) for i in range(4)]
    metrics = evaluate(sampler, task, held_out, pass_k=2, verifier_timeout=1.0)
    assert metrics["verifier_exceptions"] > 0 and metrics["verifier_timeouts"] == 0
    assert math.isfinite(metrics["accuracy"]) and math.isfinite(metrics["pass@2"])


def test_rl_steps_log_evaluation_verifier_failures_and_use_the_configured_time_out(finished, monkeypatch):
    rl = [r for r in records(finished) if r["phase"] == "rl"]
    assert all("eval_verifier_exceptions" in r and "eval_verifier_timeouts" in r for r in rl)
    import tokencredit.train.evaluate as evaluate_module
    import tokencredit.train.providers as providers_module

    seen = []

    def spy(task, responses, examples, timeout_s=2.0):
        seen.append(timeout_s)
        return safe_score(task, responses, examples, timeout_s)

    monkeypatch.setattr(providers_module, "safe_score", spy)
    monkeypatch.setattr(evaluate_module, "safe_score", spy)
    train(tiny(finished.parent / "timeout", "verifier_timeout=0.5", "sft.steps=0", "rl.steps=1"))
    assert seen and set(seen) == {0.5}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tokencredit.models import create_tiny_model, load_model

    return load_model(create_tiny_model(tmp_path_factory.mktemp("tiny"), **TINY))


HELD_OUT_SEED_0 = ["6+9+3+9+3=", "7+3+1=", "6+4+8+1+8="]


def test_the_held_out_set_is_pinned_and_not_the_training_stream(finished):
    """The demo's task for seed 0: the held-out set is the stream of seed 0 + 1_000_003 (a changed stream changes
    every reported number), not the training stream of seed 0; the trainer and `eval` use the same one."""
    task = make_task("chain_sum", round_up_rate=0.6, mistake_rate=0.1)
    held_out = task.held_out(200, seed=0)
    assert [e.prompt for e in held_out[:3]] == HELD_OUT_SEED_0
    assert held_out == examples(task, 200, seed=1_000_003)
    stream = random.Random(0)
    assert [task.sample(stream).prompt for _ in range(3)] != HELD_OUT_SEED_0
    assert Trainer(tiny(finished)).eval_examples == make_task("chain_sum").held_out(4, seed=0)


def test_reasoning_gym_holds_items_out():
    task = make_task("reasoning_gym:basic_arithmetic", size=20, held_out=5)
    held_out = task.held_out(10, seed=0)
    assert [e.source_index for e in held_out] == [20, 21, 22, 23, 24]
    stream = random.Random(0)
    assert all(task.sample(stream).source_index < 20 for _ in range(200))
    assert task.score(f"answer: {held_out[0].answer}", held_out[0]) == 1.0


def test_a_checkpoint_argument_may_be_a_run_folder_or_its_latest(finished):
    from tokencredit.train.checkpoint import resolve_checkpoint

    newest = finished / "checkpoints" / "step-4"
    assert resolve_checkpoint(finished) == newest
    assert resolve_checkpoint(finished / "checkpoints") == newest
    assert resolve_checkpoint(finished / "checkpoints" / "latest") == newest
    assert resolve_checkpoint(finished / "checkpoints" / "sft") == finished / "checkpoints" / "sft"
    with pytest.raises(ValueError, match="is not a model folder"):
        resolve_checkpoint(finished / "tensorboard" if (finished / "tensorboard").exists() else finished.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_checkpoint(finished) == newest
