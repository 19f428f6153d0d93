"""`tokencredit eval`, `critical` and `inspect` with `--sampler vllm`, and a trainer run whose recipe needs what
vLLM does not record (steer: entropies; with top_p < 1 also behaviour log-probs), on one vLLM engine: every
`make_sampler("vllm", ...)` call of this module gets the engine built by the first (its settings and mirrored
model swapped in, the model's weights loaded), since each engine start costs 12–45 s on CPU."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tokencredit.sampling as sampling
import tokencredit.train.trainer as trainer_module
from tokencredit.cli import app
from tokencredit.models import load_model
from tokencredit.sampling.vllm import VLLMSampler
from tokencredit.train import Trainer, load_config
from tokencredit.train.config import VLLMConfig

CALLS: list[dict] = []


@pytest.fixture(scope="module")
def one_engine(tiny_model):
    made: dict[str, VLLMSampler] = {}
    original = sampling.make_sampler

    def shared(kind, model, tokenizer, *, path=None, temperature=1.0, top_p=1.0, max_new_tokens=64, engine=None):
        assert kind == "vllm" and str(path) == str(tiny_model)  # asked for by the command, for its checkpoint
        CALLS.append({"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens})
        if "engine" not in made:
            made["engine"] = original(kind, model, tokenizer, path=path, temperature=temperature, top_p=top_p,
                                      max_new_tokens=max_new_tokens, engine=engine)
            return made["engine"]
        sampler = made["engine"]
        sampler.model, sampler.tokenizer = model, tokenizer
        sampler.temperature, sampler.top_p, sampler.max_new_tokens = temperature, top_p, max_new_tokens
        sampler.push_weights()
        return sampler

    patch = pytest.MonkeyPatch()
    patch.setattr(sampling, "make_sampler", shared)
    patch.setattr(trainer_module, "make_sampler", shared)
    # started here, outside CliRunner: vLLM points its log handler at the sys.stderr of the moment it starts,
    # and CliRunner closes its stand-in stderr when a command returns
    shared("vllm", *load_model(tiny_model), path=tiny_model, engine=VLLMConfig().engine(0))
    CALLS.clear()
    yield made
    patch.undo()
    made.clear()


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result


def test_eval_with_vllm(one_engine, tiny_model):
    result = run("eval", "--checkpoint", tiny_model, "--sampler", "vllm", "--size", 8, "--pass-k", 2,
                 "--max-new-tokens", 12, "--temperature", 0.7)
    metrics = json.loads(result.stdout)  # vLLM's logs go to stderr
    assert {"accuracy", "pass@2"} <= set(metrics) and metrics["examples"] == 8
    assert CALLS[-1] == {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 12}


def test_critical_with_vllm(one_engine, tiny_model, tmp_path):
    out = tmp_path / "critical.jsonl"
    result = run("critical", "--checkpoint", tiny_model, "--sampler", "vllm", "--prompts", 2, "--k", 2,
                 "--max-new-tokens", 4, "--counterfactual", "--out", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and "critical tokens" in result.output  # a random model fails every prompt
    for row in rows:
        found = row["index"] is not None
        assert row["samples"] == 2 * (len(row["probed"]) + 1 + found)


def test_inspect_with_vllm(one_engine, tiny_model, tmp_path):
    """grpo, forking (needs entropies: the `entropy` provider's no-grad pass) and spo_chain (Monte-Carlo values
    from vLLM continuations) on one batch sampled by vLLM."""
    out = tmp_path / "credit.html"
    result = run("inspect", "--checkpoint", tiny_model, "--sampler", "vllm", "--recipes", "grpo,forking,spo_chain",
                 "--prompts", 2, "--group-size", 2, "--max-new-tokens", 8, "--out", out)
    assert out.is_file() and "forking" in result.output and "spo_chain" in result.output


def test_trainer_supplies_entropies_and_top_p_logprobs_for_vllm(one_engine, tiny_model, tmp_path):
    """steer needs inputs `logprob` and `entropy`; with top_p = 0.9 vLLM returns neither: both come from no-grad
    passes of the policy, and the first-epoch ratio stays 1."""
    cfg = load_config(None, [
        f"out={tmp_path / 'run'}", f"model.path={tiny_model}", "sft.steps=0", "recipe=steer", "rl.sampler=vllm",
        "rl.steps=2", "rl.temperature=0.7", "rl.top_p=0.9", "rl.prompts_per_step=2", "rl.group_size=4",
        "rl.max_new_tokens=12", "rl.minibatch_size=4", "rl.micro_batch_size=4", "eval.size=4", "eval.pass_k=1",
        "log.progress=false", "log.tensorboard=false"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.sampler, VLLMSampler) and trainer.sampler.top_p == 0.9
    trainer.run()
    rl = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["phase"] == "rl"]
    assert len(rl) == 2 and all(r["first_epoch_ratio_max_dev"] <= 1e-4 for r in rl)
    assert all(r["entropy"] > 0 for r in rl)  # the `entropy` provider's values reach the record
    assert set(trainer.providers.inputs) == {"entropy", "logprob"}
