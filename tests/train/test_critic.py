import json
import random

import pytest
import torch

from helpers import TIMING_KEYS
from tokencredit.models import create_tiny_model, load_model
from tokencredit.rollouts import Rollouts
from tokencredit.sampling.hf import TransformersSampler, policy_logprob
from tokencredit.tasks import BUILTIN_TASKS, Example, Task
from tokencredit.train import Trainer, train
from tokencredit.train.critic import (
    TARGET,
    accumulate_value_gradient,
    critic_values,
    explained_variance,
    load_critic,
    tvm_value_target,
)
from tokencredit.tree import tvm_labels
from train.test_trainer import TINY, as_batch, tiny_config

VALUE_KEYS = ("value_loss", "value_mean", "explained_variance", "value_grad_norm")


class FirstCharTask(Task):
    """Reward 1 iff the response starts with a letter or digit: about 60% of an untrained tiny model's responses
    (an untrained model never solves chain_sum, and all-zero rewards leave nothing for a critic to learn)."""

    name = "first_alnum"

    def sample(self, rng: random.Random) -> Example:
        a = rng.randint(0, 9)
        return Example(prompt=f"{a}+{a}=", answer=str(2 * a))

    def score(self, response: str, example: Example) -> float:
        return float(response[:1].isalnum())


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (on a busy 2-core machine two threads made a tiny run 25× slower); the process-wide
    setting is restored for the tests after these."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def first_alnum(monkeypatch):
    monkeypatch.setitem(BUILTIN_TASKS, FirstCharTask.name, FirstCharTask)
    return f"task={FirstCharTask.name}"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return create_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0, **TINY)


def _records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in path.read_text().splitlines()]


def _rl_records(path):
    return [r for r in _records(path) if r["phase"] == "rl"]


def test_tvm_target_is_the_label_of_the_state_before_each_token():
    # group 0: three responses sharing "1", two sharing "1 2"; group 1 (interleaved): "7" is a prefix of "7 8"
    tokens = torch.tensor([[1, 2, 3], [7, 8, 0], [1, 2, 4], [7, 0, 0], [1, 5, 6], [9, 9, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    rollouts = Rollouts(group=torch.tensor([0, 1, 0, 1, 0, 1]), mask=mask,
                        reward=torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), tokens=tokens)
    target = tvm_value_target(rollouts)
    expected = torch.tensor([
        [2 / 3, 2 / 3, 1 / 2],  # before "1": the group; before "2": all three share "1"; before "3": "1 2" (1, 0)
        [2 / 3, 1 / 2, 0.0],  # before "8": "7" is shared with the response that stops there
        [2 / 3, 2 / 3, 1 / 2],
        [2 / 3, 0.0, 0.0],
        [2 / 3, 2 / 3, 1.0],  # "1 5" is its own path: its own outcome
        [2 / 3, 1.0, 1.0],
    ])
    torch.testing.assert_close(target, expected)
    # the shift of the TVM labels (prefix up to and including t) by one token, the group mean first
    shifted = torch.cat([torch.full((6, 1), 2 / 3), tvm_labels(rollouts)[:, :-1]], dim=1) * mask
    torch.testing.assert_close(target, shifted)


@pytest.fixture(scope="module")
def batch(tiny_path):
    model, tokenizer = load_model(tiny_path)
    torch.manual_seed(0)
    sampler = TransformersSampler(model, tokenizer, temperature=1.0, max_new_tokens=10)
    samples = sampler.sample(["1+2=", "33+4+5=", "7=", "12+1="] * 2)  # prompts of different lengths: left padding
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    return samples, as_batch(samples, rewards, torch.tensor([0, 1, 2, 3] * 2))


def _random_head(critic):
    """A critic whose (zero-initialised) head reads the hidden state, so values differ between positions."""
    with torch.no_grad():
        for param in critic.score.parameters():
            param.normal_(generator=torch.Generator().manual_seed(1))
    return critic


def test_value_of_token_t_sees_only_the_prompt_and_earlier_tokens(tiny_path, batch):
    samples, _ = batch
    critic = _random_head(load_critic(tiny_path))
    prompt_ids, prompt_mask, response = samples.prompt_ids, samples.prompt_mask, samples.response_ids
    with torch.no_grad():
        value = critic_values(critic, prompt_ids, prompt_mask, response)
        t = 3
        perturbed = response.clone()
        perturbed[:, t] = (perturbed[:, t] + 1) % critic.config.vocab_size
        changed = critic_values(critic, prompt_ids, prompt_mask, perturbed)
        torch.testing.assert_close(changed[:, : t + 1], value[:, : t + 1], atol=1e-6, rtol=0)
        assert (changed[:, t + 1] - value[:, t + 1]).abs().min() > 1e-6
        # position ids ignore the left padding: each row alone (no padding) gives the same values, and the
        # value before the first response token is read at the last prompt position
        for i in range(len(prompt_ids)):
            alone = prompt_ids[i, prompt_mask[i]][None]
            solo = critic_values(critic, alone, torch.ones_like(alone, dtype=torch.bool), response[i : i + 1])
            torch.testing.assert_close(solo[0], value[i], atol=1e-5, rtol=0)
            prompt_only = critic(input_ids=alone).logits[0, -1, 0]
            torch.testing.assert_close(prompt_only, value[i, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("micro_batch_size", [1, 3])
def test_no_grad_passes_in_micro_batches_equal_one_pass(tiny_path, batch, micro_batch_size):
    """Critic values and reference log-probs are computed micro-batch by micro-batch, each narrowed to its
    longest response; inside each response they equal one pass over the whole batch."""
    samples, _ = batch
    critic = _random_head(load_critic(tiny_path))
    policy, _ = load_model(tiny_path)
    inputs = (samples.prompt_ids, samples.prompt_mask, samples.response_ids)
    mask = samples.response_mask
    for fn in (lambda *x: critic_values(critic, *x), lambda *x: policy_logprob(policy, *x, 0.7)[0]):
        chunked = batch[1].per_token(lambda micro, fn=fn: fn(*micro.model_inputs()), micro_batch_size)
        assert chunked.shape == mask.shape and not chunked.requires_grad
        torch.testing.assert_close(chunked[mask], fn(*inputs)[mask].detach(), atol=1e-5, rtol=1e-5)


def test_critic_starts_at_zero_and_loads_gpt2_bodies(tiny_path, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    samples_shape = (2, 5)
    ids = torch.randint(4, 40, samples_shape)
    ones = torch.ones(samples_shape, dtype=torch.bool)
    assert critic_values(load_critic(tiny_path), ids, ones, ids).abs().max() == 0
    cfg = GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    gpt2 = load_critic(tmp_path / "gpt2")
    assert not gpt2.training and critic_values(gpt2, ids, ones, ids).abs().max() == 0


def test_value_loss_decreases_and_micro_batches_give_the_minibatch_gradient(tiny_path, batch):
    samples, full = batch
    critic = load_critic(tiny_path)
    target = tvm_value_target(full.rollouts)
    full = full.with_inputs(**{TARGET: target})
    rows = torch.arange(len(target))
    grads = []
    for micro in (8, 3, 1):
        critic.zero_grad()
        accumulate_value_gradient(critic, full, rows, micro)
        grads.append(torch.cat([p.grad.flatten() for p in critic.parameters() if p.grad is not None]))
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], atol=1e-6, rtol=1e-4)
    critic.zero_grad()
    optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        losses.append(accumulate_value_gradient(critic, full, rows, 4))
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        value = critic_values(critic, samples.prompt_ids, samples.prompt_mask, samples.response_ids)
    assert explained_variance(value, target, samples.response_mask) > 0.3


@pytest.mark.parametrize("target", ["return", "tvm"])
def test_ppo_trains_with_a_critic(tmp_path, first_alnum, target):
    summary = train(tiny_config(tmp_path / "run", "recipe=ppo", "sft.steps=0", "rl.steps=3", first_alnum,
                                f"critic.target={target}"))
    assert summary["finished"]
    rl = _rl_records(tmp_path / "run" / "metrics.jsonl")
    assert all(key in r and torch.isfinite(torch.tensor(r[key])) for r in rl for key in (*VALUE_KEYS, "loss"))
    assert any(r["value_loss"] > 0 for r in rl) and rl[-1]["value_mean"] != 0  # the critic learned something
    assert (tmp_path / "run" / "checkpoints" / "step-3" / "critic" / "model.safetensors").is_file()


def test_critic_settings_are_ignored_without_gae(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", "sft.steps=0", "rl.steps=1", "critic.target=tvm"))
    trainer.run()
    assert trainer.providers.values is None
    assert not any(key in r for r in _rl_records(tmp_path / "run" / "metrics.jsonl") for key in VALUE_KEYS)


def test_ppo_resume_reproduces_the_uninterrupted_run(tmp_path, first_alnum):
    def config(out):
        return tiny_config(tmp_path / out, "recipe=ppo", "sft.steps=0", "rl.steps=3", "eval.size=2", first_alnum,
                           "critic.target=tvm")

    train(config("full"))
    partial = Trainer(config("killed")).run(stop_after=2)  # killed mid-RL, after the step-2 checkpoint
    assert not partial["finished"]
    resumed = Trainer(config("killed")).run()
    assert resumed["finished"]
    assert _records(tmp_path / "killed" / "metrics.jsonl") == _records(tmp_path / "full" / "metrics.jsonl")
    # a critic re-initialised at resume would value every state at exactly 0
    assert all(r["value_mean"] != 0 for r in _rl_records(tmp_path / "killed" / "metrics.jsonl") if r["step"] > 2)
