import json

import pytest
import torch

from helpers import TINY_MODEL, metric_records, tiny_train_config
from tokencredit import recipe
from tokencredit.models import create_tiny_model, load_model
from tokencredit.sampling.hf import TransformersSampler, policy_logprob
from tokencredit.tasks import Example
from tokencredit.train import Trainer, train
from tokencredit.train.batch import Batch
from tokencredit.train.trainer import accumulate_policy_gradient

TINY = TINY_MODEL
tiny_config = tiny_train_config


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    create_tiny_model(path, seed=0, **TINY)
    return load_model(path)


def sample(model, tokenizer, temperature=0.7, n=8, max_new_tokens=10):
    torch.manual_seed(0)
    sampler = TransformersSampler(model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens)
    return sampler.sample(["1+2=", "33+4+5="] * (n // 2))


def as_batch(samples, rewards, group, budget=10):
    """The trainer's batch of `samples` (one dummy example per row)."""
    examples = [Example(prompt="", answer="") for _ in range(len(rewards))]
    return Batch.from_samples(samples, rewards, group, examples, budget=budget)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_first_epoch_ratio_is_one(tiny_model, temperature):
    model, tokenizer = tiny_model
    s = sample(model, tokenizer, temperature)
    logprob, entropy = policy_logprob(model, s.prompt_ids, s.prompt_mask, s.response_ids, temperature)
    dev = ((logprob - s.logprob).exp() - 1).abs()[s.response_mask].max().item()
    assert dev <= 1e-4
    torch.testing.assert_close(entropy * s.response_mask, s.entropy, atol=1e-4, rtol=0)


def test_micro_batches_give_the_minibatch_gradient(tiny_model):
    model, tokenizer = tiny_model
    s = sample(model, tokenizer, n=8)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    batch = as_batch(s, rewards, torch.tensor([0, 1] * 4))
    for name in ("grpo", "ba", "dr_grpo", "dapo"):
        rcp = recipe(name)
        credit = rcp.credit(batch.rollouts)
        rows = torch.arange(8)
        grads = []
        for micro in (8, 3, 1):
            model.zero_grad()
            accumulate_policy_gradient(model, rcp, batch, credit, rows, micro, 0.7)
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        for g in grads[1:]:
            torch.testing.assert_close(g, grads[0], atol=1e-6, rtol=1e-4)
    model.zero_grad()


def test_degenerate_groups_train_without_nan(tiny_model):
    model, tokenizer = tiny_model
    s = sample(model, tokenizer, n=8, max_new_tokens=2)  # most responses hit the token limit
    assert s.truncated.any()
    s.response_mask[0] = False  # an empty response
    batch = as_batch(s, torch.zeros(8), torch.tensor([0, 0, 0, 0, 1, 1, 2, 3]))
    for name in ("grpo", "dapo", "ba", "gspo", "nsr", "rloo", "reinforce_pp"):
        rcp = recipe(name)
        credit = rcp.credit(batch.rollouts)
        model.zero_grad()
        stats = accumulate_policy_gradient(model, rcp, batch, credit, torch.arange(8), 3, 0.7)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()


_records = metric_records


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = train(tiny_config(tmp_path / "full"))
    assert full["finished"]
    cfg = tiny_config(tmp_path / "killed")
    partial = Trainer(cfg).run(stop_after=6)  # killed mid-RL (4 warm-start steps + 2 RL steps)
    assert not partial["finished"]
    resumed = Trainer(cfg).run()
    assert resumed["finished"]
    assert _records(tmp_path / "killed" / "metrics.jsonl") == _records(tmp_path / "full" / "metrics.jsonl")
    assert resumed["history"] == full["history"]


def test_checkpoint_written_atomically(tmp_path):
    train(tiny_config(tmp_path / "run", "rl.steps=2"))
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text() == "step-6"
    assert not list(root.glob(".tmp-*"))
    assert (root / "step-6" / "model.safetensors").is_file()
    assert (root / "step-6" / "trainer_state.safetensors").is_file()


def test_metrics_record_ratio_truncation_and_throughput(tmp_path):
    train(tiny_config(tmp_path / "run", "rl.steps=1", "rl.temperature=0.8", "log.tensorboard=true"))
    rl = next(r for r in _records(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "rl")
    assert rl["first_epoch_ratio_max_dev"] <= 1e-4
    for key in ("reward", "truncated_frac", "kept_frac", "verifier_exceptions", "eval_accuracy", "eval_pass@2"):
        assert key in rl
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_any_local_causal_lm_trains(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tokencredit.models import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    summary = train(tiny_config(tmp_path / "run", f"model.path={tmp_path / 'gpt2'}", "rl.steps=1"))
    assert summary["finished"]


def test_reasoning_gym_task_trains(tmp_path):
    summary = train(tiny_config(tmp_path / "run", "task=reasoning_gym:basic_arithmetic", "sft.steps=0",
                                "rl.steps=1", "task_params.size=20"))
    assert summary["finished"] and summary["final_accuracy"] is not None


def test_jsonl_task_trains_with_math_verify(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}/{b}=", "answer": f"{a}/{b}"}) + "\n"
                            for a, b in [(1, 2), (3, 4), (2, 3)]))
    summary = train(tiny_config(tmp_path / "run", f"task=jsonl:{data}", "sft.steps=0", "rl.steps=1"))
    assert summary["finished"]


def test_spo_chain_trains_with_continuations(tmp_path):
    summary = train(tiny_config(tmp_path / "run", "recipe=spo_chain", "sft.steps=0", "rl.steps=1",
                                "recipe_overrides.advantage_params.mc_samples=2",
                                "recipe_overrides.advantage_params.interval=3"))
    assert summary["finished"]


def test_spo_tree_trains_on_sampled_trees(tmp_path):
    summary = train(tiny_config(tmp_path / "run", "recipe=spo_tree", "sft.steps=0", "rl.steps=1",
                                "recipe_overrides.advantage_params.branching=[3, 2]",
                                "recipe_overrides.advantage_params.segment_tokens=4"))
    rl = next(r for r in _records(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "rl")
    # the leaves' behaviour log-probs, concatenated from the segments, are the policy's own
    assert summary["finished"] and rl["first_epoch_ratio_max_dev"] <= 1e-4


def test_step_with_every_group_dropped_is_skipped(tmp_path):
    # an untrained model never answers correctly: every group has equal rewards and DAPO drops them all
    summary = train(tiny_config(tmp_path / "run", "recipe=dapo", "sft.steps=0", "rl.steps=1"))
    rl = next(r for r in _records(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "rl")
    assert summary["finished"] and rl["kept_frac"] == 0.0 and rl["reward"] == 0.0


def test_d3s_trains_on_a_down_sampled_batch(tmp_path):
    summary = train(tiny_config(tmp_path / "run", "recipe=d3s", "sft.steps=0", "rl.steps=2"))
    kept = [r["kept_frac"] for r in _records(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "rl"]
    assert summary["finished"] and kept[0] == 0.5  # step 0 (progress 0) keeps half the batch


def test_records_every_n_steps_hold_the_batch_as_trained(tmp_path):
    from tokencredit.inspect.records import read_records

    train(tiny_config(tmp_path / "run", "rl.steps=3", "records.every=2", "records.groups=1"))
    records = read_records(tmp_path / "run")
    assert [r.step for r in records] == [1, 3] and all(r.recipe == "grpo" for r in records)
    for record in records:
        [group] = record.groups
        assert len(group.responses) == 4 and group.answer is not None and "+" in group.prompt
        rewards = [r.reward for r in group.responses]
        for r in group.responses:
            assert len(r.ids) == len(r.text) == len(r.node) == len(r.channels["logprob"]) > 0
            assert set(r.channels) >= {"logprob", "advantage", "weight"}
            assert len(set(r.channels["advantage"])) == 1  # GRPO: one advantage per response
            if len(set(rewards)) == 1:
                assert r.channels["advantage"][0] == 0.0
        firsts = {r.ids[0] for r in group.responses}
        assert len({r.node[0] for r in group.responses}) == len(firsts)  # same first token, same node
