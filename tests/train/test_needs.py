"""The needs/providers contract end to end: a method that needs something the library has never supplied plugs in
with its provider, and the reference trainer supplies it without any edit under train/, inspect/ or cli.py."""

import json

import pytest
import torch

import tokencredit as tc
from helpers import registered
from tokencredit.needs import Needs, Request
from tokencredit.sampling.hf import prompt_response_inputs
from tokencredit.train import Provider, register_provider, train
from tokencredit.train.providers import unregister_provider
from train.test_trainer import tiny_config

SEEN: dict[str, list] = {"hidden_norm": [], "accuracy": [], "prompts": []}


class HiddenNorm(Provider):
    """A new kind of input: the L2 norm `[N,T]` of the sampling policy's last hidden state before each token."""

    def provide(self, batch):
        def norms(micro):
            out = self.ctx.model(**prompt_response_inputs(*micro.model_inputs()), output_hidden_states=True)
            width = micro.rollouts.mask.shape[1]
            return out.hidden_states[-1][:, -width - 1 : -1].norm(dim=-1)

        value = batch.per_token(norms, self.ctx.cfg.rl.micro_batch_size) * batch.rollouts.mask
        SEEN["hidden_norm"].append(value.shape)
        return value


class RepeatFirstPrompt(Provider):
    """A new prompt scheduler: the task's first example, `n` times (a degenerate curriculum)."""

    def next(self, n):
        example = self.ctx.task.sample(self.ctx.rng)
        SEEN["prompts"].append(example.prompt)
        return [example] * n


def hidden_weight(rollouts, advantage, accuracy, keep=None):
    """Weight each token by its hidden-state norm relative to the batch mean; reads the accuracy signal."""
    SEEN["accuracy"].append(accuracy)
    norm = rollouts.extra["hidden_norm"]
    return norm / norm[rollouts.mask].mean().clamp(min=1e-6) * rollouts.mask


NEEDS = Needs(inputs={"hidden_norm"}, signals={"accuracy"}, prompts=Request("repeat_first"))


@pytest.fixture
def throwaway_method():
    register_provider("input", "hidden_norm")(HiddenNorm)
    register_provider("prompts", "repeat_first")(RepeatFirstPrompt)
    with registered("weight", "test_hidden_weight", hidden_weight, needs=NEEDS):
        tc.register_preset("test_hidden", advantage="grpo", weight="test_hidden_weight", agg="token_mean")
        for values in SEEN.values():
            values.clear()
        yield
        tc.PRESETS.pop("test_hidden")
    unregister_provider("input", "hidden_norm")
    unregister_provider("prompts", "repeat_first")


def test_a_new_kind_of_input_trains_with_its_provider_alone(tmp_path, throwaway_method):
    recipe = tc.recipe("test_hidden")
    assert recipe.needs().inputs == {"hidden_norm", "logprob"} and recipe.needs().signals == {"accuracy"}
    summary = train(tiny_config(tmp_path / "run", "recipe=test_hidden", "sft.steps=0", "rl.steps=2"))
    assert summary["finished"]
    assert len(SEEN["hidden_norm"]) == 2 and SEEN["hidden_norm"][0][0] == 8  # 2 prompts × 4, every step
    assert len(SEEN["accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in SEEN["accuracy"])  # the last eval's
    assert len(SEEN["prompts"]) == 2  # the scheduler chose every step's prompts
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "rl"] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if r["phase"] == "rl")


def test_a_need_without_a_provider_is_a_clear_error(tmp_path):
    with registered("weight", "test_unprovided", lambda r, a: r.mask.float(), needs=Needs(inputs={"nowhere"})):
        tc.register_preset("test_unprovided", weight="test_unprovided")
        try:
            with pytest.raises(ValueError, match=r"input 'nowhere': the reference trainer has no provider for it"):
                train(tiny_config(tmp_path / "run", "recipe=test_unprovided", "sft.steps=0", "rl.steps=1"))
        finally:
            tc.PRESETS.pop("test_unprovided")


def test_a_missing_signal_is_a_clear_error(throwaway_method):
    r = tc.Rollouts(group=torch.tensor([0, 0]), mask=torch.ones(2, 3, dtype=torch.bool), reward=torch.tensor([1.0, 0]),
                    logprob=torch.zeros(2, 3), extra={"hidden_norm": torch.ones(2, 3)})
    with pytest.raises(ValueError, match=r"accuracy: weight 'test_hidden_weight' .* needs the training signal"):
        tc.recipe("test_hidden").credit(r)
    assert tc.recipe("test_hidden").credit(r, accuracy=0.5).weight.eq(1).all()
