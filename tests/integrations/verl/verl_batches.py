"""Shared by the verl lane's tests and `two_ranks.py`: a verl batch as the legacy trainer holds it at advantage
time (a `DataProto` with left-padded prompts, right-padded responses, rewards on the last token, old/reference
log-probs, entropies, critic values, `uid`), the same batch as tokencredit `Rollouts`, and a small policy whose
log-probs come out in verl's no-padding layout; the check of a group record the plug-in wrote from such a batch."""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict
from verl import DataProto
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import left_right_2_no_padding

from tokencredit.inspect.records import round_significant
from tokencredit.rollouts import Rollouts, group_ids

VOCAB = 9
PROMPT = 3
BUDGET = 6


def make_batch(seed: int = 0, groups: int = 4, per_group: int = 4, width: int = BUDGET) -> DataProto:
    """`groups` prompts × `per_group` responses of at most `width` tokens (some reach it: truncated). Responses of a
    group share prefixes of random length (so TEMPO's prefix tree branches inside them); the last group's rewards
    are all equal (DAPO's dynamic filter drops it); token ids are in [1, VOCAB)."""
    g = torch.Generator().manual_seed(seed)
    b = groups * per_group
    group = torch.arange(b) // per_group
    stems = torch.randint(1, VOCAB, (groups, width), generator=g)
    responses = torch.randint(1, VOCAB, (b, width), generator=g)
    shared = torch.randint(0, width, (b,), generator=g)
    keep_stem = torch.arange(width)[None, :] < shared[:, None]
    responses = torch.where(keep_stem, stems[group], responses)
    lengths = torch.randint(1, width + 1, (b,), generator=g)
    lengths[::5] = width  # some responses hit the budget
    response_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    responses = responses * response_mask
    prompt_lengths = (torch.randint(1, PROMPT + 1, (groups,), generator=g))[group]
    prompt_mask = (torch.arange(PROMPT)[None, :] >= PROMPT - prompt_lengths[:, None]).long()
    prompts = torch.randint(1, VOCAB, (groups, PROMPT), generator=g)[group] * prompt_mask
    reward = torch.randint(0, 2, (b,), generator=g).float()
    reward[group == groups - 1] = 1.0
    rewards = torch.zeros(b, width)
    rewards[torch.arange(b), lengths - 1] = reward
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    mask = response_mask.bool()

    def per_token(x: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, x, 0.0)

    old = per_token(-2 * torch.rand(b, width, generator=g))
    tensors = {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "response_mask": response_mask,
        "token_level_scores": rewards,
        "token_level_rewards": rewards,
        "old_log_probs": old,
        "ref_log_prob": per_token(old - 0.1 * torch.randn(b, width, generator=g)),
        "entropy": per_token(2 * torch.rand(b, width, generator=g)),
        "values": per_token(torch.randn(b, width, generator=g)),
    }
    uid = np.array([f"prompt-{int(i)}" for i in group], dtype=object)
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": uid})


def rollouts_of(data: DataProto, budget: int = BUDGET) -> Rollouts:
    """The batch as tokencredit sees it, built independently of the plug-in."""
    batch = data.batch
    mask = batch["response_mask"].bool()
    return Rollouts(group=group_ids(list(data.non_tensor_batch["uid"])), mask=mask,
                    reward=batch["token_level_rewards"].float(), tokens=batch["responses"],
                    logprob=batch["old_log_probs"], ref_logprob=batch["ref_log_prob"], entropy=batch["entropy"],
                    value=batch["values"], truncated=mask.sum(-1) >= budget, budget=budget)


def algorithm_config(estimator: str, **tokencredit):
    from omegaconf import OmegaConf

    return OmegaConf.create({"adv_estimator": estimator, "tokencredit": {"budget": BUDGET, **tokencredit}})


def check_record(record, data: DataProto, expected, tokenizer, groups: int, channels: set[str]) -> None:
    """`record` (written by the plug-in's estimator) holds `groups` whole groups of `data`, each response with its
    ids, text, prompt, truncation, the per-token `channels` of the batch and the credit `expected`, rounded as the
    format rounds."""
    batch = data.batch
    mask = batch["response_mask"].bool()
    group = group_ids(list(data.non_tensor_batch["uid"]))
    assert record.source == "verl" and len(record.groups) == groups
    for g in record.groups:
        rows = (group == g.group).nonzero().squeeze(-1).tolist()
        assert len(g.responses) == len(rows)
        first = rows[0]
        prompt = batch["prompts"][first][batch["attention_mask"][first, : batch["prompts"].shape[1]].bool()]
        assert g.prompt == tokenizer.decode(prompt.tolist())
        for i, response in zip(rows, g.responses):
            m = mask[i]
            assert response.ids == batch["responses"][i][m].tolist() and len(response.text) == int(m.sum())
            assert response.truncated == (int(m.sum()) >= BUDGET) and response.keep == bool(expected.keep[i])
            assert set(response.channels) == channels
            for channel, value in {"advantage": expected.advantage, "weight": expected.weight,
                                   "logprob": batch["old_log_probs"], "ref_logprob": batch["ref_log_prob"],
                                   "entropy": batch["entropy"], "value": batch["values"]}.items():
                if channel in channels:
                    assert response.channels[channel] == round_significant(value[i][m].float()).tolist(), channel
            if expected.token_keep is not None:
                assert response.token_keep == expected.token_keep[i][m].tolist()


def worker_batch(data: DataProto) -> TensorDict:
    """What the actor worker receives for this batch (legacy trainer `_update_actor`: no-padding layout)."""
    td = left_right_2_no_padding(data.to_tensordict())
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    return td


class BigramPolicy(torch.nn.Module):
    """A policy whose next-token distribution depends on the previous token only: shared parameters, so several
    ranks' gradients can be averaged like a data-parallel model's."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logits = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=g))

    def forward(self, data: TensorDict) -> dict[str, torch.Tensor]:
        """verl's model output for a no-padding batch: per position of each (prompt + response) sequence, the
        log-prob of the next token and the entropy of its distribution (0 at each sequence's last position), flat
        over the batch (`total_nnz`)."""
        ids = data["input_ids"]
        values, offsets = ids.values(), ids.offsets()
        logp = torch.log_softmax(self.logits, -1)[values]  # [nnz, V]: the distribution after each token
        nxt = torch.cat([values[1:], values[:1]])
        log_probs = logp.gather(-1, nxt[:, None]).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        last = torch.zeros(len(values), dtype=torch.bool)
        last[offsets[1:] - 1] = True
        return {"log_probs": torch.where(last, 0.0, log_probs), "entropy": torch.where(last, 0.0, entropy)}

    def response_log_probs(self, data: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B,T]` log-probs and entropies of the response tokens of a padded batch (the reference computation)."""
        prompts, responses = data.batch["prompts"], data.batch["responses"]
        logp = torch.log_softmax(self.logits, -1)
        previous = torch.cat([prompts[:, -1:], responses[:, :-1]], dim=1)
        dist = logp[previous]  # [B,T,V]
        mask = data.batch["response_mask"].bool()
        log_probs = torch.where(mask, dist.gather(-1, responses[..., None]).squeeze(-1), 0.0)
        entropy = torch.where(mask, -(dist.exp() * dist).sum(-1), 0.0)
        return log_probs, entropy
