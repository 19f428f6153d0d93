"""verl's default (V1) trainer: `PPOTrainer._compute_advantage` on a batch stored in a live TransferQueue (a local Ray
instance), as the agent loop and `_compute_old_log_prob` leave it. verl fetches neither `responses` nor `entropy`
for the estimator; the plug-in's wrapper does, and writes the recipe's credit back to TransferQueue for the loss."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl_batches import BUDGET, check_record, make_batch, rollouts_of

import tokencredit as tc
from tokencredit.inspect.records import read_records
from tokencredit.models.tokenizer import build_char_tokenizer

EOS = 0


@pytest.fixture(scope="module")
def transfer_queue():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    ray.shutdown()


def _v1_batch(data, partition: str):
    """The rows of a legacy batch as the V1 agent loop stores them (unpadded per row, keys `{uid}_{session}_0`),
    padded with verl's synthetic rows to a multiple of 3, then `old_log_probs` and `entropy` as
    `_compute_old_log_prob` writes them."""
    b = data.batch
    rows, keys, tags = [], [], []
    for i in range(len(data)):
        prompt = b["prompts"][i][b["attention_mask"][i, : b["prompts"].shape[1]].bool()]
        n = int(b["response_mask"][i].sum())
        response = b["responses"][i, :n]
        ids = torch.cat([prompt, response])
        rows.append({
            "prompts": prompt, "responses": response, "response_mask": torch.ones(n, dtype=torch.int64),
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(len(ids)),
            "rm_scores": b["token_level_rewards"][i, :n], "rollout_log_probs": b["old_log_probs"][i, :n],
            "uid": data.non_tensor_batch["uid"][i],
        })
        keys.append(f"{data.non_tensor_batch['uid'][i]}_{i}_0")
        tags.append({"prompt_len": len(prompt), "response_len": n, "seq_len": len(ids)})
    meta = tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(rows), tags=tags)
    meta = upsample_batch_to_divisible_size(meta, 3, EOS)
    assert len(meta) > len(data)  # verl's padding rows are part of the batch
    lengths = tq.kv_batch_get(keys=meta.keys, partition_id=partition, select_fields=["response_mask"])
    lengths = lengths["response_mask"].offsets().diff()

    def nested(x):
        values = [x[i, : lengths[i]] if i < len(data) else torch.zeros(int(lengths[i])) for i in range(len(meta))]
        return torch.nested.as_nested_tensor(values, layout=torch.jagged)

    tq.kv_batch_put(keys=meta.keys, partition_id=partition, fields=TensorDict(
        {"old_log_probs": nested(b["old_log_probs"]), "entropy": nested(b["entropy"])}, batch_size=len(meta)))
    return meta


class Trainer:
    """What `_compute_advantage` reads of a V1 trainer."""

    def __init__(self, recipe: str, advantage: str, run: str = "unused", **settings):
        self.global_steps, self.total_training_steps = 1, 10
        self.config = OmegaConf.create({
            "algorithm": {"adv_estimator": f"tc_{advantage}", "use_kl_in_reward": False, "gamma": 1.0, "lam": 1.0,
                          "norm_adv_by_std_in_grpo": True, "tokencredit": {"recipe": recipe, **settings}},
            "actor_rollout_ref": {"rollout": {"n": 4, "response_length": BUDGET}},
            "trainer": {"default_local_dir": run},
        })
        self.tokenizer = build_char_tokenizer()


@pytest.mark.parametrize("name", ["tempo", "forking"])
def test_v1_compute_advantage_supplies_tokens_and_entropies(transfer_queue, name):
    """`tempo` needs the token ids, `forking` the old policy's entropies, truncation and the budget: the credit
    written to TransferQueue equals `Recipe.credit` of the same responses; verl's padding rows get none."""
    rcp = tc.recipe(name)
    data = make_batch()
    meta = _v1_batch(data, partition=f"train-{name}")
    metrics = {}
    PPOTrainer._compute_advantage(Trainer(name, rcp.advantage), meta, metrics)

    stored = tq.kv_batch_get(keys=meta.keys, partition_id=meta.partition_id).to_padded_tensor()
    real = len(data)
    rollouts = rollouts_of(data)
    expected = rcp.credit(rollouts)
    width = rollouts.mask.shape[1]

    def rows(x):
        return x[:real, :width] if x.dim() == 2 else x[:real]

    torch.testing.assert_close(rows(stored["advantages"]), expected.folded(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rows(stored["tc_advantage"]), expected.advantage, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rows(stored["tc_weight"]), expected.weight)
    assert torch.equal(rows(stored["tc_loss_mask"]).bool(), expected.loss_mask(rollouts.mask))
    assert torch.equal(rows(stored["tc_group"]), rollouts.group)
    pads = stored["tc_loss_mask"][real:]
    assert not pads.bool().any() and not stored["advantages"][real:].any()
    assert len(np.unique(stored["tc_group"][real:].numpy())) == 1  # verl's padding rows: one group of their own
    assert metrics["tokencredit/progress"] == 0.0 and 0 < metrics["tokencredit/loss_token_frac"] <= 1


def test_v1_records_fetch_tokens_and_prompts_and_never_draw_padding_rows(transfer_queue, tmp_path):
    """grpo reads neither token ids nor entropies; with records_every=1 the V1 call site fetches them, and the
    recorded rows' prompts, from TransferQueue into `trainer.default_local_dir/records/`. verl's padding rows (a
    group of their own without response tokens) are never drawn: asking for more groups than the batch's 4 records
    the 4."""
    data = make_batch()
    meta = _v1_batch(data, partition="train-records")
    trainer = Trainer("grpo", "grpo", run=str(tmp_path), records_every=1, records_groups=8)
    PPOTrainer._compute_advantage(trainer, meta, {})
    (record,) = read_records(tmp_path)
    assert record.step == 1 and record.recipe == "grpo"
    check_record(record, data, tc.recipe("grpo").credit(rollouts_of(data)), trainer.tokenizer, groups=4,
                 channels={"logprob", "entropy", "advantage", "weight"})


def test_v1_refuses_several_outputs_per_session(transfer_queue):
    data = make_batch()
    meta = _v1_batch(data, partition="train-multi")
    meta.keys[0] = meta.keys[0][:-1] + "1"
    with pytest.raises(ValueError, match="several outputs per session"):
        PPOTrainer._compute_advantage(Trainer("grpo", "grpo"), meta, {})
