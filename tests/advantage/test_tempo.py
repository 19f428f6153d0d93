"""TEMPO advantages (`tokencredit.advantage.tempo`): invariants of the card (specs/rlvr.md §1), hand-built
trees and contract properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokencredit.advantage.tempo  # noqa: F401  (registers "tempo")
from helpers import prefix_sharing_sequences
from tokencredit.advantage.group import grpo, grpo_sequence_advantage
from tokencredit.advantage.tempo import tempo
from tokencredit.registry import get
from tokencredit.rollouts import Rollouts, pad_right
from tokencredit.tree import prefix_tree

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=15)
EPS = 1e-6


def rollouts(seqs: list[list[int]], groups: list[int], reward: list[float]) -> Rollouts:
    tokens, mask = pad_right(seqs, dtype=torch.int64)
    return Rollouts(group=torch.tensor(groups), mask=mask, reward=torch.tensor(reward, dtype=torch.float32),
                    tokens=tokens)


@st.composite
def batches(draw, max_rows: int = 12, vocab: int = 3, max_len: int = 7):
    """Groups whose responses often share prefixes (and are sometimes identical or empty)."""
    seqs = draw(prefix_sharing_sequences(max_rows, vocab, max_len))
    n = len(seqs)
    groups = draw(st.lists(st.sampled_from([4, -1, 9]), min_size=n, max_size=n))
    reward = draw(st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e6, 1e-8]), min_size=n, max_size=n))
    return rollouts(seqs, groups, reward)


def test_registered_and_callable_through_the_registry():
    r = rollouts([[1, 2], [1, 3]], [0, 0], [1.0, 0.0])
    torch.testing.assert_close(get("advantage", "tempo")(r, lam=1.0), tempo(r))


def test_hand_built_tree():
    # one group: r0 = r4 = [1,2,3], r1 = [1,2,4], r2 = [1,5], r3 = [1,2]; rewards 1,0,0,1,0
    # mean 0.4, unbiased std sqrt(0.3); V in reward units: root 0.4, [1] 0.4, [1,2] 0.5, [1,2,3] 0.5,
    # [1,2,4] 0, [1,5] 0, leaf(r3) 1. With R̃ = Â every V (and δ) is divided by (std + ε) and V(root) = 0.
    r = rollouts([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2], [1, 2, 3]], [3] * 5, [1.0, 0.0, 0.0, 1.0, 0.0])
    scale = math.sqrt(0.3) + EPS
    adv = torch.tensor([0.6, -0.4, -0.4, 0.6, -0.4]) / scale
    delta = torch.tensor([
        [0.0, 0.1, 0.0],  # [1]→[1,2] +0.1; [1,2]→[1,2,3] 0 (the pair r0, r4 has mean reward 0.5)
        [0.0, 0.1, -0.5],  # [1,2]→[1,2,4]: 0 − 0.5
        [0.0, -0.4, 0.0],  # [1]→[1,5]: 0 − 0.4
        [0.0, 0.1 + 0.5, 0.0],  # last token: [1]→[1,2] +0.1, then END at [1,2]: leaf 1 − 0.5
        [0.0, 0.1, 0.0],
    ]) / scale
    expected = (adv[:, None] + delta) * r.mask
    torch.testing.assert_close(tempo(r), expected)
    torch.testing.assert_close(tempo(r, lam=0.5), (adv[:, None] + 0.5 * delta) * r.mask)


def test_ragged_groups_with_identical_and_empty_responses():
    # group 8: two identical [7,7] (rewards 1, 0 → their shared leaf has value 0.5 in reward units),
    #          [7,1] reward 1, [] reward 0 (empty: the root branches on END)
    # group 2: a single response → 0 everywhere
    seqs = [[7, 7], [5, 5, 5], [7, 1], [7, 7], []]
    r = rollouts(seqs, [8, 2, 8, 8, 8], [1.0, 1.0, 1.0, 0.0, 0.0])
    # group 8 rewards 1,1,0,0: mean 0.5, unbiased std sqrt(1/3)
    scale = math.sqrt(1 / 3) + EPS
    # V (reward units): root 0.5; [7] {r0,r2,r3} 2/3; [7,7] {r0,r3} 1/2; [7,1] {r2} 1
    adv = torch.tensor([0.5, 0.0, 0.5, -0.5, -0.5]) / scale
    delta = torch.tensor([
        [2 / 3 - 0.5, 0.5 - 2 / 3, 0.0],
        [0.0, 0.0, 0.0],
        [2 / 3 - 0.5, 1 - 2 / 3, 0.0],
        [2 / 3 - 0.5, 0.5 - 2 / 3, 0.0],
        [0.0, 0.0, 0.0],
    ]) / scale
    torch.testing.assert_close(tempo(r), (adv[:, None] + delta) * r.mask)
    # identical responses with different rewards get the same TD terms, and their sum telescopes to
    # V(shared leaf) − V(root) = mean of their Â (here 0), not to their own Â
    td = tempo(r) - adv[:, None] * r.mask
    assert torch.equal(td[0], td[3])
    torch.testing.assert_close(td[0].sum(), torch.tensor(0.0))


def test_no_shared_first_token_adds_the_advantage_on_token_zero():
    """Root fork convention: the root is a branch node, so δ_{i,0} = V([o_{i,0}]) − V(root) = Â_i − 0 and
    δ = 0 afterwards (each path is unique): TEMPO = GRPO + Â_i on the first token only."""
    r = rollouts([[5, 1, 1], [6], [7, 7, 7, 7], [8, 1]], [0, 0, 0, 0], [1.0, 0.0, 0.0, 1.0])
    a = grpo(r)
    expected = a.clone()
    expected[:, 0] *= 2
    torch.testing.assert_close(tempo(r), expected)


def test_lambda_zero_is_grpo_and_lambda_scales_the_td_term():
    r = rollouts([[1, 2, 3], [1, 2], [1, 4], [2], [1, 2, 3]], [0, 0, 0, 1, 1], [1.0, 0.0, 0.5, 1.0, 0.0])
    assert torch.equal(tempo(r, lam=0.0), grpo(r))
    td = tempo(r, lam=1.0) - grpo(r)
    torch.testing.assert_close(tempo(r, lam=2.5) - grpo(r), 2.5 * td)


def test_zero_variance_and_single_response_groups_are_zero():
    r = rollouts([[1, 2], [1, 3], [4], [9, 9, 9], [9, 8]], [0, 0, 0, 1, 2], [1.0, 1.0, 1.0, 0.0, 1.0])
    assert torch.equal(tempo(r), torch.zeros(5, 3))


def test_needs_tokens():
    r = Rollouts(group=torch.tensor([0, 0]), mask=torch.ones(2, 2, dtype=torch.bool),
                 reward=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"Rollouts\.tokens"):
        tempo(r)


@SETTINGS
@given(batches(), st.floats(0.0, 3.0))
def test_contract_properties(r, lam):
    out = tempo(r, lam=lam)
    assert out.shape == r.mask.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not out[~r.mask].any()
    adv = grpo_sequence_advantage(r)
    tree = prefix_tree(r.tokens, r.mask, r.group, adv)
    torch.testing.assert_close(out, (adv[:, None] + lam * tree.delta) * r.mask, atol=1e-5, rtol=1e-5)
    # the TD term lives on branching tokens (the last token also carries the END edge)
    last = torch.arange(r.mask.shape[1])[None, :] == (tree.length - 1)[:, None]
    gate = tree.branch | (last & tree.end_branch[:, None])
    assert not tree.delta[~gate].any()


@FEWER
@given(batches())
def test_td_term_telescopes_to_the_leaf_advantage(r):
    """Σ_t δ_{i,t} = V(leaf_i) − V(root) = mean Â over the responses identical to i (= Â_i if their
    rewards are equal), for every non-empty response."""
    adv = grpo_sequence_advantage(r)
    td = (tempo(r) - adv[:, None] * r.mask).double().sum(1)
    same = (r.tokens[:, None, :] == r.tokens[None, :, :]).all(-1) & (r.mask[:, None, :] == r.mask[None, :, :]).all(-1)
    same &= r.group[:, None] == r.group[None, :]
    leaf = (same.double() @ adv.double()) / same.sum(1)
    nonempty = r.mask.any(1)
    scale = 1 + adv.abs().max().item()
    torch.testing.assert_close(td[nonempty], leaf[nonempty], atol=1e-5 * scale, rtol=1e-5)
    distinct_rewards = r.sequence_reward()
    equal_leaf = ((distinct_rewards[:, None] == distinct_rewards[None, :]) | ~same).all(1) & nonempty
    torch.testing.assert_close(td[equal_leaf], adv[equal_leaf].double(), atol=1e-5 * scale, rtol=1e-5)


@FEWER
@given(batches(), st.randoms(use_true_random=False))
def test_permutation_equivariant_and_group_relabelling_invariant(r, rnd):
    out = tempo(r)
    perm = list(range(r.batch_size))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    group = r.group[p] * 31 - 5  # an injective relabelling
    shuffled = Rollouts(group=group, mask=r.mask[p], reward=r.reward[p], tokens=r.tokens[p])
    torch.testing.assert_close(tempo(shuffled), out[p], atol=1e-5, rtol=1e-5)
