"""Sampling a tree of segments per prompt (SPO-tree): branch every `segment_tokens` tokens, keep the leaves.

Source: "Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large Language
Models" (Guo et al., NeurIPS 2025), tree variant (card `specs/rlvr.md` §8): depth D = len(branching); level j
draws `branching[j]` continuations of every open node, `segment_tokens` long except at the last level, which
runs to EOS within the sampler's `max_new_tokens` budget for the whole response. A node whose segment ended
with EOS is a leaf and is not expanded further.

The result is an ordinary `Samples` of the leaves (prompt-major, the leaves of one prompt contiguous), so the
trainer and `tokencredit.tree` treat it like any group of responses; `advantage="spo_tree"` recovers the nodes
from the shared prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokencredit.sampling.base import Sampler
from tokencredit.sampling.hf import Samples


@dataclass
class _Node:
    prompt: int
    tokens: list[int]
    logprob: list[float] | None  # None: the sampler does not record it (tokencredit.sampling.base)
    entropy: list[float] | None
    ended: bool = False  # reached EOS: a leaf


def _joined(head: list[float] | None, rows: list[list[float]] | None, r: int, n: int) -> list[float] | None:
    return None if head is None or rows is None else head + rows[r][:n]


def sample_segment_tree(
    sampler: Sampler, prompts: list[str], branching: Sequence[int], segment_tokens: int
) -> tuple[Samples, torch.Tensor]:
    """Leaves of one sampled segment tree per prompt, and the prompt index `[N]` of each leaf.

    At most `prod(branching)` leaves per prompt (fewer when segments end early). Behaviour log-probs and
    entropies are those recorded while sampling each segment, concatenated along the leaf's path (None when the
    sampler records none).
    """
    if not branching or any(k < 1 for k in branching) or segment_tokens < 1:
        raise ValueError(f"branching, segment_tokens: expected positive integers, got {list(branching)}, "
                         f"{segment_tokens}")
    nodes = [_Node(i, [], [], []) for i in range(len(prompts))]
    for level, k in enumerate(branching):
        budget = sampler.max_new_tokens - level * segment_tokens
        open_nodes = [n for n in nodes if not n.ended]
        if not open_nodes or budget <= 0:
            break
        final = level == len(branching) - 1
        out = sampler.continue_from([prompts[n.prompt] for n in open_nodes], [n.tokens for n in open_nodes], k,
                                    max_new_tokens=budget if final else min(segment_tokens, budget))
        lengths = out.response_mask.sum(-1).tolist()
        ids = out.response_ids.tolist()
        logprob = None if out.logprob is None else out.logprob.tolist()
        entropy = None if out.entropy is None else out.entropy.tolist()
        ended = (~out.truncated).tolist()
        children = [
            _Node(parent.prompt, parent.tokens + ids[r][:n], _joined(parent.logprob, logprob, r, n),
                  _joined(parent.entropy, entropy, r, n), ended[r])
            for r, (parent, n) in enumerate(zip((p for p in open_nodes for _ in range(k)), lengths))
        ]
        nodes = [n for n in nodes if n.ended] + children
    nodes.sort(key=lambda n: n.prompt)  # stable: prompt-major, sampling order within a prompt
    return _pack(sampler, prompts, nodes), torch.tensor([n.prompt for n in nodes])


def _pack(sampler: Sampler, prompts: list[str], nodes: list[_Node]) -> Samples:
    width = max(1, max(len(n.tokens) for n in nodes))
    length = torch.tensor([len(n.tokens) for n in nodes])
    response_mask = torch.arange(width)[None, :] < length[:, None]

    def padded(rows: list[list | None], fill: float, dtype: torch.dtype) -> torch.Tensor | None:
        if any(r is None for r in rows):
            return None
        return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=dtype)

    logprob = padded([n.logprob for n in nodes], 0.0, torch.float32)
    entropy = padded([n.entropy for n in nodes], 0.0, torch.float32)

    prompt_ids, prompt_mask = sampler.encode_prompts([prompts[n.prompt] for n in nodes])
    device = prompt_ids.device
    return Samples(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=padded([n.tokens for n in nodes], sampler.pad_id, torch.long).to(device),
        response_mask=response_mask.to(device),
        logprob=None if logprob is None else logprob.to(device),
        entropy=None if entropy is None else entropy.to(device),
        truncated=torch.tensor([not n.ended for n in nodes], device=device),
        texts=sampler.tokenizer.batch_decode([n.tokens for n in nodes], skip_special_tokens=True),
    )
