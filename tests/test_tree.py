"""Prefix trees of response groups (`tokencredit.tree`): hand-built trees, a brute-force reference, the
hash-collision fallback, edge cases and the TVM token labels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokencredit.tree as tree_mod
from helpers import prefix_sharing_sequences
from tokencredit.rollouts import Rollouts, pad_right
from tokencredit.tree import prefix_delta, prefix_node_ids, prefix_tree, tvm_labels

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=15)


def batch(seqs: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_right(seqs, pad=pad, dtype=torch.int64)


# ------------------------------------------------------------------------------------------- reference


def brute_force(seqs: list[list[int]], groups: list[int], score: list[float]) -> dict[str, object]:
    """Definition-level reference: sets of responses compared prefix by prefix (no trie, no sorting)."""
    b, t = len(seqs), max([len(s) for s in seqs] + [0])
    out = {k: torch.zeros(b, t, dtype=torch.float64) for k in ("count", "count_before", "after", "before",
                                                                 "branch", "delta")}
    leaf_count, leaf_value, end_branch = [], [], []
    for i, s in enumerate(seqs):
        mates = [j for j in range(b) if groups[j] == groups[i]]
        same = [j for j in mates if seqs[j] == s]
        leaf_count.append(len(same))
        leaf_value.append(sum(score[j] for j in same) / len(same))
        end_branch.append(any(len(seqs[j]) > len(s) and seqs[j][: len(s)] == s for j in mates))
        for k in range(len(s)):
            after = [j for j in mates if len(seqs[j]) > k and seqs[j][: k + 1] == s[: k + 1]]
            before = [j for j in mates if len(seqs[j]) >= k and seqs[j][:k] == s[:k]]
            v_after = sum(score[j] for j in after) / len(after)
            v_before = sum(score[j] for j in before) / len(before)
            nxt = {seqs[j][k] if len(seqs[j]) > k else "END" for j in before}
            out["count"][i, k], out["count_before"][i, k] = len(after), len(before)
            out["after"][i, k], out["before"][i, k] = v_after, v_before
            out["branch"][i, k] = len(nxt) >= 2
            end_term = leaf_value[-1] - v_after if k == len(s) - 1 else 0.0
            out["delta"][i, k] = v_after - v_before + end_term
    out["leaf_count"], out["leaf_value"], out["end_branch"] = leaf_count, leaf_value, end_branch
    return out


def check_against_reference(seqs, groups, score, pad=0) -> None:
    tokens, mask = batch(seqs, pad)
    g, x = torch.tensor(groups), torch.tensor(score, dtype=torch.float32)
    tr = prefix_tree(tokens, mask, g, x)
    ref = brute_force(seqs, groups, score)
    assert torch.equal(tr.count.double(), ref["count"])
    assert torch.equal(tr.count_before.double(), ref["count_before"])
    assert torch.equal(tr.branch.double(), ref["branch"])
    torch.testing.assert_close(tr.value_after.double(), ref["after"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.value_before.double(), ref["before"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.delta.double(), ref["delta"], atol=1e-5, rtol=1e-5)
    assert tr.leaf_count.tolist() == ref["leaf_count"]
    assert tr.end_branch.tolist() == ref["end_branch"]
    torch.testing.assert_close(tr.leaf_value.double(), torch.tensor(ref["leaf_value"], dtype=torch.float64),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefix_delta(tokens, mask, g, x), tr.delta)
    node = prefix_node_ids(tokens, mask, g)
    for i, si in enumerate(seqs):
        for j, sj in enumerate(seqs):
            for k in range(min(len(si), len(sj))):
                shared = groups[i] == groups[j] and si[: k + 1] == sj[: k + 1]
                assert bool(node[i, k] == node[j, k]) == shared
    assert bool((node[~mask] == -1).all())


@st.composite
def grouped_sequences(draw, max_rows: int = 10, vocab: int = 3, max_len: int = 6):
    """Rows that often share prefixes, with group ids and scores."""
    seqs = draw(prefix_sharing_sequences(max_rows, vocab, max_len))
    n = len(seqs)
    groups = draw(st.lists(st.sampled_from([-3, 0, 7, 11]), min_size=n, max_size=n))
    score = draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, -2.0, 3.25]), min_size=n, max_size=n))
    return seqs, groups, score


# ------------------------------------------------------------------------------------------- hand-built

# group 5: r0 = r4 = [1,2,3], r1 = [1,2,4], r2 = [1,5], r3 = [1,2] (a strict prefix of r0, r1, r4)
# group 9 (ids interleaved with group 5): r5 = [8,8], r6 = [] (empty)
SEQS = [[1, 2, 3], [8, 8], [1, 2, 4], [], [1, 5], [1, 2], [1, 2, 3]]
GROUPS = [5, 9, 5, 9, 5, 5, 5]
SCORE = [1.0, 3.0, 0.0, 1.0, 0.0, 1.0, 0.0]
ROWS = {"r0": 0, "r5": 1, "r1": 2, "r6": 3, "r2": 4, "r3": 5, "r4": 6}


def test_hand_built_tree():
    tokens, mask = batch(SEQS, pad=1)  # padding with a real token id must not matter
    tr = prefix_tree(tokens, mask, torch.tensor(GROUPS), torch.tensor(SCORE))
    r0, r5, r1, r6, r2, r3, r4 = (ROWS[k] for k in ("r0", "r5", "r1", "r6", "r2", "r3", "r4"))
    # group 5: root {all 5} V=0.4 → [1] {all} V=0.4 → [1,2] {r0,r1,r3,r4} V=0.5 → [1,2,3] {r0,r4} V=0.5
    #          [1,2,4] {r1} V=0; [1,5] {r2} V=0; leaves: {r0,r4} 0.5, {r1} 0, {r2} 0, {r3} 1
    assert tr.count[r0].tolist() == [5, 4, 2]
    assert tr.count_before[r0].tolist() == [5, 5, 4]
    torch.testing.assert_close(tr.value_before[r0], torch.tensor([0.4, 0.4, 0.5]))
    torch.testing.assert_close(tr.value_after[r0], torch.tensor([0.4, 0.5, 0.5]))
    assert tr.branch[r0].tolist() == [False, True, True]  # the root has one child (token 1)
    torch.testing.assert_close(tr.delta[r0], torch.tensor([0.0, 0.1, 0.0]))
    assert torch.equal(tr.delta[r4], tr.delta[r0]) and torch.equal(tr.count[r4], tr.count[r0])
    torch.testing.assert_close(tr.value_after[r1], torch.tensor([0.4, 0.5, 0.0]))
    torch.testing.assert_close(tr.delta[r1], torch.tensor([0.0, 0.1, -0.5]))
    torch.testing.assert_close(tr.delta[r2], torch.tensor([0.0, -0.4, 0.0]))
    assert tr.count[r2].tolist() == [5, 1, 0]
    # r3 ends at [1,2], which also continues with 3 and 4: END is a branch, credited to r3's last token
    assert tr.end_branch.tolist() == [False, False, False, True, False, True, False]
    assert tr.branch[r3].tolist() == [False, True, False]
    torch.testing.assert_close(tr.value_after[r3], torch.tensor([0.4, 0.5, 0.0]))  # [1,2]: shared node
    torch.testing.assert_close(tr.delta[r3], torch.tensor([0.0, 0.1 + (1.0 - 0.5), 0.0]))
    assert tr.leaf_count.tolist() == [2, 1, 1, 1, 1, 1, 2]
    torch.testing.assert_close(tr.leaf_value, torch.tensor([0.5, 3.0, 0.0, 1.0, 0.0, 1.0, 0.5]))
    # group 9: root {r5, r6} V=2 branches (token 8 vs END of the empty r6); [8] {r5} V=3
    assert tr.branch[r5].tolist() == [True, False, False]
    torch.testing.assert_close(tr.delta[r5], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(tr.value_before[r5], torch.tensor([2.0, 3.0, 0.0]))
    assert not tr.count[r6].any() and not tr.delta[r6].any() and tr.length[r6] == 0
    # telescoping: Σ_t delta = V(leaf) − V(root)
    root = torch.tensor([0.4, 2.0, 0.4, 2.0, 0.4, 0.4, 0.4])
    torch.testing.assert_close(tr.delta.sum(1), (tr.leaf_value - root) * (tr.length > 0))


def test_hand_built_matches_reference_and_is_zero_outside_mask():
    check_against_reference(SEQS, GROUPS, SCORE, pad=3)
    tokens, mask = batch(SEQS)
    tr = prefix_tree(tokens, mask, torch.tensor(GROUPS), torch.tensor(SCORE))
    for name in ("count", "count_before", "value_after", "value_before", "branch", "delta"):
        assert not getattr(tr, name)[~mask].any(), name


@SETTINGS
@given(grouped_sequences())
def test_matches_brute_force_reference(case):
    check_against_reference(*case, pad=2)


@FEWER
@given(grouped_sequences(), st.randoms(use_true_random=False))
def test_permutation_equivariant_and_group_relabelling_invariant(case, rnd):
    seqs, groups, score = case
    tokens, mask = batch(seqs)
    x = torch.tensor(score)
    tr = prefix_tree(tokens, mask, torch.tensor(groups), x)
    perm = list(range(len(seqs)))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    relabel = {g: 1000 - 17 * k for k, g in enumerate(sorted(set(groups), reverse=True))}
    tp = prefix_tree(tokens[p], mask[p], torch.tensor([relabel[groups[i]] for i in perm]), x[p])
    for name in ("count", "count_before", "branch", "leaf_count", "end_branch", "length"):
        assert torch.equal(getattr(tp, name), getattr(tr, name)[p]), name
    for name in ("value_after", "value_before", "delta", "leaf_value"):
        torch.testing.assert_close(getattr(tp, name), getattr(tr, name)[p], atol=1e-6, rtol=1e-6)


def test_equal_sized_interleaved_groups_match_reference():
    """Equal-sized groups take a per-row sort; ragged ones a flat sort: both against the reference."""
    seqs = [[1, 2], [1, 2, 3], [1], [2, 2], [1, 3], [], [1, 2, 3], [2], [1, 2], [4, 4, 4], [1], [2, 1]]
    groups = [0, 1, 2] * 4
    score = [1.0, 0.0, 2.0, 0.5, 0.0, 1.0, 1.0, 0.0, 3.0, 1.0, 0.0, 0.25]
    check_against_reference(seqs, groups, score)
    check_against_reference(seqs, [0, 1, 2] * 3 + [1, 1, 1], score)


def test_hash_collisions_fall_back_to_an_exact_sort(monkeypatch):
    """With a useless hash (all zeros) every pair looks identical: the verification must catch the wrong
    order, retry and finally sort by exact comparison, with identical results."""
    seqs = [[3, 1, 2], [3, 1], [0, 4, 4, 4], [3, 1, 2], [3, 0], [0, 4], [2]]
    groups, score = [1, 1, 2, 1, 1, 2, 1], [1.0, 0.0, 2.0, 0.0, 1.0, 5.0, 0.0]
    tokens, mask = batch(seqs)
    good = prefix_tree(tokens, mask, torch.tensor(groups), torch.tensor(score))
    calls = []
    exact = tree_mod._exact_pair_lcp
    monkeypatch.setattr(tree_mod, "_hash_coefficients", lambda w, dtype, device, attempt: torch.zeros(
        w, dtype=dtype, device=device))
    monkeypatch.setattr(tree_mod, "_exact_pair_lcp", lambda *a: calls.append(1) or exact(*a))
    bad = prefix_tree(tokens, mask, torch.tensor(groups), torch.tensor(score))
    assert calls, "the exact fallback was not used"
    for name in ("count", "count_before", "branch", "value_after", "value_before", "delta", "leaf_value"):
        assert torch.equal(getattr(bad, name), getattr(good, name)), name
    check_against_reference(seqs, groups, score)


def test_long_rows_share_a_prefix_across_hash_blocks():
    """Prefixes that diverge past the first hash block (32 tokens), at a block boundary and inside one."""
    base = list(range(100, 200))
    seqs = [base, [*base[:64], 7], [*base[:33], 1, 2], base[:31] + [9] * 40, base, base[:64]]
    check_against_reference(seqs, [0] * 6, [1.0, 0.0, 0.0, 1.0, 0.0, 2.0])


def test_token_id_ranges_and_dtypes():
    seqs = [[5, 6, 7], [5, 6, 8], [5, 9]]
    expected = prefix_tree(*batch(seqs), torch.zeros(3, dtype=torch.int64), torch.tensor([1.0, 0.0, 1.0]))
    for shift, dtype in ((0, torch.int32), (0, torch.int16), (2**40, torch.int64), (-(2**62), torch.int64)):
        tokens, mask = batch(seqs)
        got = prefix_tree((tokens + shift).to(dtype), mask, torch.zeros(3, dtype=torch.int32),
                          torch.tensor([1.0, 0.0, 1.0]))
        assert torch.equal(got.count, expected.count) and torch.equal(got.delta, expected.delta)


def test_mask_holes_are_context_without_credit():
    # row 0 = [4, (9), 6]: the masked-out 9 still separates it from row 1 = [4, 8, 6]
    tokens = torch.tensor([[4, 9, 6, 0], [4, 8, 6, 0], [4, 9, 6, 1]])
    mask = torch.tensor([[True, False, True, False], [True, True, True, False], [True, True, True, True]])
    tr = prefix_tree(tokens, mask, torch.zeros(3, dtype=torch.int64), torch.tensor([1.0, 0.0, 0.0]))
    assert tr.length.tolist() == [3, 3, 4]
    assert tr.count[0].tolist() == [3, 0, 2, 0]  # position 1 is masked: 0
    assert tr.branch[1].tolist() == [False, True, False, False]
    assert tr.delta[0, 1] == 0 and tr.end_branch.tolist() == [True, False, False]


def test_prefix_delta_adds_onto_a_base_in_place():
    # [1,2] score 1, [1,3] score 0, [4] score 0: root 1/3, [1] 1/2, [1,2] 1, [1,3] 0, [4] 0
    tokens, mask = batch([[1, 2], [1, 3], [4]])
    group, score = torch.zeros(3, dtype=torch.int64), torch.tensor([1.0, 0.0, 0.0])
    expected = torch.tensor([[1 / 6, 1 / 2], [1 / 6, -1 / 2], [-1 / 3, 0.0]])
    for base in (torch.ones(3, 2) * mask, (torch.ones(2, 3) * mask.t()).t()):  # contiguous or not
        out = prefix_delta(tokens, mask, group, score, scale=2.0, base=base)
        assert out is base
        torch.testing.assert_close(out, mask + 2 * expected)


def test_degenerate_shapes():
    empty = prefix_tree(torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0, 4, dtype=torch.bool),
                        torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    assert empty.count.shape == (0, 4)
    no_tokens = prefix_tree(torch.zeros(3, 0, dtype=torch.int64), torch.zeros(3, 0, dtype=torch.bool),
                            torch.tensor([0, 0, 1]), torch.tensor([1.0, 0.0, 2.0]))
    assert no_tokens.delta.shape == (3, 0)
    assert no_tokens.leaf_count.tolist() == [2, 2, 1]
    torch.testing.assert_close(no_tokens.leaf_value, torch.tensor([0.5, 0.5, 2.0]))
    masked = prefix_tree(torch.ones(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.bool),
                         torch.tensor([0, 0]), torch.tensor([1.0, 0.0]))
    assert not masked.delta.any() and masked.leaf_count.tolist() == [2, 2]
    assert prefix_node_ids(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool),
                           torch.tensor([0, 1])).shape == (2, 0)


def test_validation_names_the_field():
    tokens, mask = batch([[1, 2], [1]])
    group, score = torch.tensor([0, 0]), torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="tokens"):
        prefix_tree(tokens.float(), mask, group, score)
    with pytest.raises(ValueError, match="mask"):
        prefix_tree(tokens, mask.int(), group, score)
    with pytest.raises(ValueError, match="group"):
        prefix_tree(tokens, mask, torch.tensor([0]), score)
    with pytest.raises(ValueError, match="score"):
        prefix_tree(tokens, mask, group, torch.tensor([1, 0]))


# ------------------------------------------------------------------------------------------- TVM labels


def rollouts(seqs, groups, reward) -> Rollouts:
    tokens, mask = batch(seqs)
    return Rollouts(group=torch.tensor(groups), mask=mask, reward=torch.tensor(reward), tokens=tokens)


def test_tvm_labels_hand_built():
    r = rollouts([s for s, g in zip(SEQS, GROUPS) if g == 5], [5] * 5, [1.0, 0.0, 0.0, 1.0, 0.0])
    labels = tvm_labels(r)
    # r0 = [1,2,3]: [1] 2/5 correct, [1,2] 2/4, [1,2,3] 1/2; r3 = [1,2] ends on the shared node [1,2]
    expected = torch.tensor([[0.4, 0.5, 0.5], [0.4, 0.5, 0.0], [0.4, 0.0, 0.0], [0.4, 0.5, 0.0],
                             [0.4, 0.5, 0.5]])
    torch.testing.assert_close(labels, expected)
    # an explicit correctness vector overrides the reward
    torch.testing.assert_close(tvm_labels(r, correct=torch.tensor([True, False, False, False, False]))[0],
                               torch.tensor([0.2, 0.25, 0.5]))


def test_tvm_labels_without_shared_prefixes_are_the_outcome():
    seqs = [[1, 2, 3], [2, 2], [3], [4, 1, 1, 1], [1, 1]]
    reward = [1.0, 0.0, 1.0, 0.0, 0.0]
    r = rollouts(seqs, [0, 0, 0, 0, 1], reward)
    assert torch.equal(tvm_labels(r), torch.tensor(reward)[:, None] * r.mask)


def test_tvm_labels_need_tokens():
    r = Rollouts(group=torch.tensor([0]), mask=torch.ones(1, 2, dtype=torch.bool), reward=torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"Rollouts\.tokens"):
        tvm_labels(r)
    with pytest.raises(ValueError, match="correct"):
        tvm_labels(rollouts([[1]], [0], [1.0]), correct=torch.tensor([1.0, 0.0]))
