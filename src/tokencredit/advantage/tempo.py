"""TEMPO: GRPO advantages plus a prefix-tree TD term at the branching tokens of each group.

Source: "Exploiting Tree Structure for Credit Assignment in RL Training of LLMs" (Tran, Yao, Yu,
arXiv 2509.18314), "Tree-Estimated Mean Prefix Value for Policy Optimization" with Prefix-to-Tree (P2T).
No official code was found; the equation below follows the algorithm card (`specs/rlvr.md` §1), whose
**[recon]** choices are marked and documented.
"""

from __future__ import annotations

from torch import Tensor

from tokencredit.advantage.group import broadcast, grpo_sequence_advantage
from tokencredit.needs import Needs
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.tree import prefix_delta, require_tokens


@register("advantage", "tempo", needs=Needs(inputs={"tokens"}))
def tempo(rollouts: Rollouts, lam: float = 1.0, eps: float = 1e-6) -> Tensor:
    """TEMPO advantage `[B,T]` float32 (0 outside mask):

        A_{i,t} = Â_i + λ · δ_{i,t} · 1[s_{i,t} branches],    δ_{i,t} = V(s_{i,t+1}) − V(s_{i,t}),
        V(s) = mean_{j ∈ L(s)} R̃_j,    R̃_j = Â_j

    over the prefix tree (trie) of each group's token sequences (`tokencredit.tree`): `s_{i,t} = o_{i,<t}`,
    `L(s)` the group's responses through `s`, `Â` the GRPO advantage (`grpo`, same ε, unbiased std).

    Choices (the paper's exact equation was not available; card `specs/rlvr.md` §1):

    * [recon] `R̃ = Â`: V is the mean *normalised* reward of the descendant responses, in advantage units,
      so `V(root) = 0` and, along every response, `Σ_t δ_{i,t} = V(leaf_i) − V(root) = Â_i` (identical
      responses share a leaf whose value is the mean of their Â; it equals Â_i when their rewards are equal).
      The TD term redistributes the response's own advantage onto its forking tokens; with λ = 1 a
      response's total credit is 2·Â_i.
    * [recon] `λ = 1` by default (`lam`); `lam = 0` gives GRPO exactly.
    * The gate `1[branch]` is implied: `δ` is exactly 0 at a node with a single continuation (same
      descendant set). The root is a node like any other: it branches iff the group has ≥ 2 distinct first
      tokens (or an empty response), so when no two responses share their first token the TD term is
      `Â_i` on token 0 and 0 elsewhere (TEMPO = GRPO + Â_i on the first token).
    * End of response is its own child: a response that is a strict prefix of another ends at a branch
      node (END vs the next token), and that END edge's TD term `V(leaf_i) − V(s_{i,L_i})` is credited to the
      response's last token (no token of its own). The longer response gets its share on its next token.
    * The trie is over token ids (not normalised text), built exactly; γ = 1, no intermediate rewards.
    * Degenerate groups: zero-variance groups and single-response groups have `Â ≡ 0`, hence `V ≡ 0` and a
      zero advantage (like `grpo`).

    Requires `rollouts.tokens`. Pair it with the GRPO objective and aggregation, as the paper does.
    """
    tokens = require_tokens(rollouts, "advantage tempo")
    seq = grpo_sequence_advantage(rollouts, eps)
    base = broadcast(seq, rollouts.mask)
    if lam == 0:
        return base
    return prefix_delta(tokens, rollouts.mask, rollouts.group, seq, scale=lam, base=base)
