"""SPO: segment advantages, V(end of segment) − V(start of segment), from Monte-Carlo values.

Source: "Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large Language
Models" (Guo et al., NeurIPS 2025), chain and tree variants (card `specs/rlvr.md` §8, from the authors' code).

SPO-chain (one response per prompt, values from extra continuations):

    cut points   positions c with π_old(o_c) < τ (τ = 0.9), every k-th of them (k = `interval`, the first one
                 kept), at most `max_cuts` per response; the state of a cut is the prefix *before* o_c
    values       V(c) = mean reward of N completions sampled from that prefix; the terminal value is the
                 response's own reward
    advantage    a token in the segment [c_j, c_{j+1}) gets V(c_{j+1}) − V(c_j); tokens before the first cut
                 get 0 unless the first cut is position 0 (the prompt state)
    prob mask    tokens with π_old(o_t) ≥ τ leave the loss and its normaliser (the `low_probability`
                 token-select stage of the presets): only "decision" tokens are trained

The values come from extra generation, so the advantage stays a pure function: it declares a Monte-Carlo value
request at its cut points (`needs`), and whoever calls it (the reference trainer's `monte_carlo` value
provider, `inspect`, a plug-in) fills `Rollouts.value` with V at the cut positions (0 elsewhere).

SPO-tree (a deliberately sampled tree per prompt): the advantage declares a `segment_tree` rollout request, every
leaf is a row of the batch, and the node values are the leaf means of the group's prefix tree
(`tokencredit.tree`), so `spo_tree` is a pure function of the leaves' tokens and rewards.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from tokencredit.groups import group_stats
from tokencredit.masked import zero_outside
from tokencredit.needs import Needs, Request
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.select.low_probability import low_probability_tokens
from tokencredit.tree import prefix_node_ids, prefix_tree, require_tokens


def spo_cutpoints(rollouts: Rollouts, threshold: float = 0.9, interval: int = 5, max_cuts: int = 25) -> Tensor:
    """Cut positions `[B,T]` bool: low-probability tokens (`exp(logprob) < threshold`), every `interval`-th one
    starting with the first, at most `max_cuts` per response."""
    rows, cols = _cut_positions(low_probability_tokens(rollouts, threshold, "SPO cut points"), interval, max_cuts)
    cuts = torch.zeros(rollouts.mask.shape, dtype=torch.bool, device=rollouts.mask.device)
    cuts[rows, cols] = True
    return cuts


def _check_cuts(interval: int, max_cuts: int) -> None:
    if interval < 1 or max_cuts < 1:
        raise ValueError(f"interval, max_cuts: expected >= 1, got {interval}, {max_cuts}")


def _cut_positions(candidate: Tensor, interval: int, max_cuts: int) -> tuple[Tensor, Tensor]:
    """`(rows, cols)` in row-major order of every `interval`-th true entry of `candidate [B,T]` per row, the
    first one included, at most `max_cuts` per row."""
    _check_cuts(interval, max_cuts)
    rank = candidate.cumsum(-1, dtype=torch.int32)  # 1 for a row's first candidate
    width = max(candidate.shape[-1], 1)
    interval = min(interval, width)  # a row has at most T candidates: same cuts, and int32-safe arithmetic
    last_rank = min(interval * max_cuts, width)
    rows, cols = (candidate & (rank <= last_rank)).nonzero(as_tuple=True)
    keep = _rank_in_row(rows, candidate.shape[0]) % interval == 0
    return rows[keep], cols[keep]


def _rank_in_row(rows: Tensor, num_rows: int) -> Tensor:
    """0-based position of each entry among its row's entries, for row ids `rows [K]` in ascending order."""
    per_row = torch.bincount(rows, minlength=num_rows)
    return torch.arange(len(rows), device=rows.device) - (per_row.cumsum(0) - per_row)[rows]


def _monte_carlo_values(
    threshold: float = 0.9, interval: int = 5, max_cuts: int = 25, mc_samples: int = 9, **_
) -> Needs:
    """SPO-chain needs token ids, behaviour log-probs and V at its cut points: the mean reward of `mc_samples`
    continuations sampled from the state before each cut."""
    if mc_samples < 1:
        raise ValueError(f"mc_samples: expected >= 1 continuations per cut point, got {mc_samples}")
    at = partial(spo_cutpoints, threshold=threshold, interval=interval, max_cuts=max_cuts)
    return Needs(inputs={"tokens", "logprob"}, values=Request("monte_carlo", at=at, samples=mc_samples))


@register("advantage", "spo_chain", needs=_monte_carlo_values, check=_check_cuts)
def spo_chain(rollouts: Rollouts, threshold: float = 0.9, interval: int = 5, max_cuts: int = 25) -> Tensor:
    """SPO-chain segment advantages `A_t = V(next boundary) − V(segment start)`, reading the cut values from
    `rollouts.value` (V of the state before each cut; a recipe's caller fills them, `mc_samples` continuations
    per cut point, as the stage's needs declare). Terminal value = the response's reward. Every token gets its
    segment's advantage; the presets drop tokens with π_old ≥ τ from the loss (`low_probability`)."""
    if rollouts.value is None:
        raise ValueError("Rollouts.value: advantage 'spo_chain' needs Monte-Carlo values at the cut points "
                         "(spo_cutpoints; see the stage's needs); got None")
    low_probability = low_probability_tokens(rollouts, threshold, "advantage 'spo_chain'")
    rows, cols = _cut_positions(low_probability, interval, max_cuts)
    cut_value = rollouts.value[rows, cols].float()
    advantage = segment_advantage(rows, cols, cut_value, rollouts.sequence_reward(), rollouts.mask.shape)
    return zero_outside(advantage, rollouts.mask, out=advantage)


def segment_advantage(rows: Tensor, cols: Tensor, cut_value: Tensor, terminal: Tensor,
                      shape: tuple[int, int] | torch.Size) -> Tensor:
    """`[B,T]`: token t in segment `[c_j, c_{j+1})` of its row gets `V(c_{j+1}) − V(c_j)`, where the cuts
    `(rows, cols)` are listed in row-major order with values `cut_value [K]`, and the value after a row's
    last cut is `terminal [B]`. Tokens before a row's first cut get 0; nothing is masked (callers mask).

    Each row's segment differences go into a small table `[B, cuts + 1]` (column 0: before the first cut);
    a token reads the column given by the number of cuts at or before it. Exact: a segment whose values are
    equal gets exactly 0 (a running sum of changes would leave rounding residue, and signs of summed
    advantages decide `negative_samples` and `balanced`)."""
    b = shape[0]
    dev = cut_value.device
    same_row_next = rows[1:] == rows[:-1]
    next_value = terminal.to(cut_value.dtype)[rows]
    next_value[:-1] = torch.where(same_row_next, cut_value[1:], next_value[:-1])
    column = _rank_in_row(rows, b) + 1
    width = int(column.max()) + 1 if len(column) else 1
    table = torch.zeros(b, width, dtype=cut_value.dtype, device=dev)
    table[rows, column] = next_value - cut_value
    is_cut = torch.zeros(shape, dtype=torch.bool, device=dev)
    is_cut[rows, cols] = True
    out = torch.empty(shape, dtype=cut_value.dtype, device=dev)
    for chunk in range(0, b, _ROWS_PER_GATHER):  # the int64 gather index stays small and in cache
        part = slice(chunk, chunk + _ROWS_PER_GATHER)
        segment = is_cut[part].cumsum(-1, dtype=torch.int32).long()
        torch.gather(table[part], 1, segment, out=out[part])
    return out


_ROWS_PER_GATHER = 256


SPO_TREE_BRANCHING = (6, 6, 6)  # the paper's tree: depth 3, six children per node
SPO_TREE_SEGMENT_TOKENS = 30  # its GSM8K segment length


def _segment_tree(
    branching: Sequence[int] = SPO_TREE_BRANCHING, segment_tokens: int = SPO_TREE_SEGMENT_TOKENS, **_
) -> Needs:
    """SPO-tree needs its responses sampled as the leaves of one segment tree per prompt, and their token ids."""
    return Needs(inputs={"tokens"},
                 rollout=Request("segment_tree", branching=tuple(branching), segment_tokens=segment_tokens))


def _check_tree(branching: Sequence[int], segment_tokens: int, mode: str) -> None:
    if mode not in ("rloo", "grpo"):
        raise ValueError(f"mode: expected 'rloo' or 'grpo', got {mode!r}")
    if len(branching) < 1 or segment_tokens < 1:
        raise ValueError(f"branching, segment_tokens: expected a non-empty list and >= 1, got {list(branching)}, "
                         f"{segment_tokens}")


@register("advantage", "spo_tree", needs=_segment_tree, check=_check_tree)
def spo_tree(
    rollouts: Rollouts,
    branching: Sequence[int] = SPO_TREE_BRANCHING,
    segment_tokens: int = SPO_TREE_SEGMENT_TOKENS,
    mode: str = "rloo",
    dedup: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """SPO-tree edge advantages `[B,T]` for the leaves of sampled segment trees (one tree per group).

    A tree of depth D = len(branching) branches at the cuts `c_j = j·segment_tokens`, j < D: each edge below
    the root and above the last level is a segment of `segment_tokens` tokens, the last segment runs to EOS
    (`sample_segment_tree` draws such trees). For leaf row i and its segment j (tokens `[c_j, c_{j+1})`):

        V(n)      = mean reward of the leaves below node n (the group's prefix-tree value, `tokencredit.tree`)
        A_{i,t}   = V(child_j) − V(parent_j)                               mode "rloo"
        A_{i,t}   = (V(child_j) − V(parent_j)) / (std_{c ∈ children(parent_j)} V(c) + ε)   mode "grpo"

    `parent_j` is the node at `c_j` (the root for j = 0), `child_j` the node at the segment's end (the leaf for
    the last segment, or when the response ended early). Choices:

    * Nodes are prefixes of token ids: two sampled siblings with identical segments are one node, and a leaf
      that ended early counts as one leaf in its ancestors' means (the card's leaf mean; not re-weighted).
    * `std` is the unbiased std over the distinct children; a parent whose children's std is ≤ ε (one child,
      or equal values) gives advantage 0.
    * `dedup=True`: the leaves below an edge all contain its tokens; only the first such row (lowest index)
      carries the edge's advantage, the others get 0, so every edge is trained once as in SPO's episodes.
      Pair it with a constant-normaliser aggregation (`seq_mean_token_sum_norm`, the preset's choice) so the
      zeroed copies do not rescale the loss.
    * The probability mask inherited from SPO-chain is the presets' `low_probability` token-select stage.
    * Depth 1 (`branching=(G,)`) is a plain group of G samples: mode "grpo" equals the `grpo` advantage and
      mode "rloo" the `dr_grpo` advantage (mean baseline), when the G responses are distinct.
    """
    tokens = require_tokens(rollouts, "advantage spo_tree")
    _check_tree(branching, segment_tokens, mode)
    depth = len(branching)
    mask, group = rollouts.mask, rollouts.group
    b, t = mask.shape
    if b == 0 or t == 0:
        return torch.zeros(b, t, device=mask.device)
    tree = prefix_tree(tokens, mask, group, rollouts.sequence_reward())
    # per (row, segment j): where the segment starts and ends, and whether the row reaches it
    start = (torch.arange(depth, device=mask.device) * segment_tokens).clamp(max=t).expand(b, depth)
    end = torch.cat([start[:, 1:], start.new_full((b, 1), t)], dim=1).minimum(tree.length[:, None])  # exclusive
    present = start < tree.length[:, None]  # [B,D]
    last = (end - 1).clamp(min=0)
    # a row's last segment ends in the row's own leaf (END below the node after its last token: that node may
    # also lead on to a longer sibling), so its child is that leaf
    ended = present & (end == tree.length[:, None])
    child_value = torch.where(ended, tree.leaf_value[:, None], tree.value_after.gather(1, last))
    parent_value = tree.value_before.gather(1, start.clamp(max=t - 1))
    edge = torch.where(present, child_value - parent_value, 0.0)
    if mode == "grpo" or dedup:
        # node ids (−1 where a segment boundary falls in a mask hole: such an edge is its own node)
        node = prefix_node_ids(tokens, mask, group)
        child = torch.where(present, node.gather(1, last), -1)
        child = torch.where(ended & (child >= 0), child + b * t, child)  # leaf ids: past every node id
    if mode == "grpo":
        # the parent of segment j is the node after token c_j − 1 (the root of the group, id −2 − g, for j = 0)
        parent = torch.where(start > 0, node.gather(1, (start - 1).clamp(min=0)), -2 - group.long()[:, None])
        std = _children_std(parent, child, child_value, present & (child >= 0) & (parent != -1))
        edge = torch.where(std > eps, edge / (std + eps), 0.0)  # float noise must not be amplified by 1/ε
    if dedup:
        rows = torch.arange(b, device=mask.device)[:, None].expand(b, depth)
        known = child >= 0
        owner = torch.full((2 * b * t,), b, dtype=torch.long, device=mask.device)
        owner.scatter_reduce_(0, child[known], rows[known], "amin")
        edge = torch.where(~known | (owner[child.clamp(min=0)] == rows), edge, 0.0)
    segment = (torch.arange(t, device=mask.device) // segment_tokens).clamp(max=depth - 1)
    return zero_outside(edge.gather(1, segment.expand(b, t)), mask)


def _children_std(parent: Tensor, child: Tensor, child_value: Tensor, present: Tensor) -> Tensor:
    """Unbiased std `[B,D]` over the distinct children of each (row, segment)'s parent node (0 elsewhere)."""
    pairs = torch.stack([parent[present], child[present]], dim=-1)
    distinct, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    value = torch.zeros(len(distinct), device=child_value.device).scatter_(0, inverse, child_value[present])
    _, std, _ = group_stats(value, distinct[:, 0])
    out = torch.zeros(child_value.shape, device=child_value.device)
    out[present] = std[inverse]
    return out
