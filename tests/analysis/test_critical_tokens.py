import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencredit.analysis import CriticalToken, critical_tokens
from tokencredit.models import create_tiny_model, load_model
from tokencredit.sampling import TransformersSampler
from tokencredit.sampling.continuation import TaskContinuations
from tokencredit.tasks import Example, examples, make_task


class TableScorer:
    """Deterministic `ContinuationScorer`: `table[prompt][n]` is the success rate of the prefix of length n
    (n = 0 is the prompt state); round(rate·k) of the k rewards are 1. With `exclude_first` (the counterfactual
    probe) the rate is `replaced[prompt]` (0 if absent). Records every call's size and exclusions."""

    def __init__(self, table: dict[str, list[float]], replaced: dict[str, float] | None = None):
        self.table, self.replaced, self.calls, self.excluded = table, replaced or {}, [], []

    def __call__(self, exs, prefixes, k, exclude_first=None):
        self.calls.append(len(prefixes))
        self.excluded.append(exclude_first)
        rewards = torch.zeros(len(prefixes), k)
        for row, (example, prefix) in enumerate(zip(exs, prefixes)):
            rate = self.table[example.prompt][len(prefix)] if exclude_first is None else \
                self.replaced.get(example.prompt, 0.0)
            rewards[row, : round(rate * k)] = 1.0
        return rewards


def search(rates_per_response, mode="scan", replaced=None, **kwargs):
    """Run the search on responses whose prefix rates are given (index 0: the prompt state); response i's
    tokens are 100·i, 100·i + 1, … and `replaced[i]` is its counterfactual rate."""
    table = {str(i): rates for i, rates in enumerate(rates_per_response)}
    exs = [Example(prompt=p, answer="") for p in table]
    responses = [[100 * i + t for t in range(len(rates) - 1)] for i, rates in enumerate(rates_per_response)]
    scorer = TableScorer(table, {str(i): rate for i, rate in (replaced or {}).items()})
    return critical_tokens(scorer, exs, responses, mode=mode, **kwargs), scorer


def last_run_reference(rates, recover):
    """The authors' scan, transcribed: an open candidate, reset by a recovery, falling back to the last reset one."""
    candidate, last_reset = None, None
    for t, rate in enumerate(rates):
        if rate == 0 and candidate is None:
            candidate = t
        if candidate is not None and rate > recover:
            candidate, last_reset = None, candidate
    if candidate is not None:
        return candidate, False
    return last_reset, last_reset is not None


def test_token_rule_scorer_finds_the_first_bad_token_in_both_modes():
    def scorer(exs, prefixes, k):  # correct iff the prefix does not contain token 7
        return torch.tensor([[float(7 not in p)] * k for p in prefixes]).view(len(prefixes), k)

    for mode in ("scan", "binary"):
        [result] = critical_tokens(scorer, [Example("q", "a")], [[1, 2, 7, 3, 4]], k=8, mode=mode)
        assert result.index == 2
        assert (result.prompt_rate, result.rate_before, result.rate_after) == (1.0, 1.0, 0.0)


def test_scan_falls_back_to_the_last_reset_candidate():
    """The issue's repro: c_∅, c_0 … c_3 = 0.5, 0.5, 0, 0.5, 0.5. The candidate t=1 is reset by c_2 and no zero
    follows, so the authors' code falls back to it."""
    table = {"q": [0.5, 0.5, 0.0, 0.5, 0.5]}
    [result] = critical_tokens(TableScorer(table), [Example("q", "")], [[7, 8, 9, 10]], k=64)
    assert result.index == 1  # the code before the fallback returned None
    assert result.fallback and (result.rate_before, result.rate_after) == (0.5, 0.0)


@pytest.mark.parametrize(
    ("rates", "expected", "fallback"),
    [
        ([1, 0, 0, 5 / 64, 0, 0], 3, False),  # 5/64 > 3/64 recovers: the candidate t=0 is reset
        ([1, 0, 2 / 64, 0], 0, False),  # 2/64 <= 3/64: not a recovery, the run started at t=0 continues
        ([1, 1, 0, 0, 4 / 64, 0], 4, False),
        ([1, 0.5, 0.25, 1], None, False),  # never collapses
        ([1, 0, 0, 1], 0, True),  # collapses, then recovers at the end: the reset candidate t=0
        ([1, 0, 1, 0, 0, 1, 1], 2, True),  # two reset runs: the last one's start
        ([1, 1, 0, 1], 1, True),  # a recovery before the first zero changes nothing
        ([1, 0, 2 / 64, 0, 5 / 64], 0, True),  # 2/64 neither breaks the run nor resets it; 5/64 does
        ([1, 0, 5 / 64, 2 / 64, 0, 1 / 64], 3, False),  # open candidate t=3: 1/64 does not reset it
        ([0.5, 0, 0, 0], 0, False),  # collapse at the first token
        ([0, 0, 0], 0, False),  # the prompt state is context, never a candidate
        ([0, 1, 1], None, False),  # nor is it a zero that can be fallen back to
    ],
)
def test_scan_returns_the_start_of_the_last_zero_run(rates, expected, fallback):
    [result], _ = search([rates], k=64)
    assert result.index == expected
    assert result.fallback == fallback
    assert result.probed == list(range(len(rates) - 1))
    assert result.rates == pytest.approx(rates[1:], abs=1 / 128)
    assert result.prompt_rate == rates[0] and result.samples == 64 * len(rates)


RATES = st.lists(st.sampled_from([0, 1 / 64, 3 / 64, 4 / 64, 1 / 2, 1]), max_size=12)
RECOVER = st.sampled_from([0.0, 3 / 64, 1 / 4])


@settings(max_examples=300, deadline=None)
@given(rates=RATES, recover=RECOVER)
def test_scan_index_matches_the_authors_candidate_scan(rates, recover):
    [result], _ = search([[1.0, *rates]], k=64, recover=recover)
    assert result.index == last_run_reference(rates, recover)[0]
    assert (result.index is None) == (0 not in rates)  # with the fallback: a critical token iff some c_t = 0


@settings(max_examples=300, deadline=None)
@given(rates=RATES, recover=RECOVER)
def test_fallback_flag_and_final_collapse_match_the_authors_candidate_scan(rates, recover):
    from tokencredit.analysis.critical_tokens import final_collapse

    [result], _ = search([[1.0, *rates]], k=64, recover=recover)
    assert (result.index, result.fallback) == last_run_reference(rates, recover)
    assert final_collapse(torch.tensor(rates, dtype=torch.float32), recover) == last_run_reference(rates, recover)


def test_recover_threshold_is_configurable():
    rates = [1, 0, 2 / 64, 0]
    assert search([rates], k=64, recover=1 / 64)[0][0].index == 2


def test_rates_before_and_after_the_critical_token():
    [first, later], _ = search([[0.5, 0, 0], [1, 0.75, 0.25, 0]], k=4)
    assert (first.rate_before, first.rate_after) == (0.5, 0.0)
    assert (later.index, later.rate_before, later.rate_after) == (2, 0.25, 0.0)
    [none], _ = search([[1, 1]], k=4)
    assert none.index is None and none.rate_before is None and none.rate_after is None


def test_binary_equals_scan_on_monotone_rates():
    rng = random.Random(0)
    cases = []
    for _ in range(40):
        steps = sorted((rng.choice([0, 1 / 8, 1 / 4, 1 / 2, 1]) for _ in range(rng.randint(1, 12))), reverse=True)
        cases.append([1.0, *steps])
    cases += [[1.0], [0.0]]  # empty responses
    scan, _ = search(cases, k=8)
    binary, _ = search(cases, mode="binary", k=8)
    assert [r.index for r in binary] == [r.index for r in scan]
    assert any(r.index is None for r in scan) and any(r.index is not None for r in scan)
    for b, s in zip(binary, scan):  # every prefix bisection probed has the scan's rate
        assert b.rates == [s.rates[t] for t in b.probed] and b.rate_before == s.rate_before


def test_binary_can_differ_from_scan_when_success_is_not_monotone():
    rates = [1, 1, 1, 0, 1, 0]  # collapses at t=2, recovers at t=3, collapses for good at t=4
    assert search([rates], k=8)[0][0].index == 4
    assert search([rates], mode="binary", k=8)[0][0].index == 2
    tail = [1, 0, 0, 2 / 64]  # ends on a small non-zero rate: scan keeps t=0, bisection sees no collapse
    assert search([tail], k=64)[0][0].index == 0
    assert search([tail], mode="binary", k=64)[0][0].index is None


def test_binary_never_falls_back():
    rates = [0.5, 0.5, 0.0, 0.5, 0.5]  # the scan falls back to t=1; the whole response still succeeds
    [scan], _ = search([rates], k=64)
    [binary], _ = search([rates], mode="binary", k=64)
    assert (scan.index, scan.fallback) == (1, True)
    assert (binary.index, binary.fallback, binary.probed) == (None, False, [3])


def test_binary_uses_fewer_samples_and_batches_one_probe_per_response_per_round():
    long = [1.0] * 21 + [0.0] * 12  # 32 tokens, t* = 20
    short = [1.0] * 4 + [0.0] * 5  # 8 tokens, t* = 3
    alive = [1.0] * 6  # 5 tokens, no collapse: settled by round 0
    scan, scan_scorer = search([long, short, alive], k=64)
    binary, binary_scorer = search([long, short, alive], mode="binary", k=64)
    assert [r.index for r in scan] == [r.index for r in binary] == [20, 3, None]
    assert scan_scorer.calls == [33 + 9 + 6]  # every prefix of every response in one call
    assert [r.samples for r in scan] == [64 * 33, 64 * 9, 64 * 6]
    # round 0: prompt state + whole response of each; then log2(32) = 5 rounds, log2(8) = 3 of them for `short`
    assert binary_scorer.calls == [6, 2, 2, 2, 1, 1]
    assert [r.samples for r in binary] == [64 * 7, 64 * 5, 64 * 2]


def test_empty_response_has_no_critical_token():
    for mode in ("scan", "binary"):
        [result], scorer = search([[0.0]], mode=mode, k=4)
        assert result == CriticalToken(index=None, prompt_rate=0.0, probed=[], rates=[], samples=4)
        assert scorer.calls == [1]


def test_result_serialises_to_json():
    [result], _ = search([[1, 0.5, 0]], k=2)
    row = json.loads(json.dumps(result.to_dict()))
    assert row == {"index": 1, "prompt_rate": 1.0, "probed": [0, 1], "rates": [0.5, 0.0], "samples": 6,
                   "fallback": False, "counterfactual_rate": None, "rate_before": 0.5, "rate_after": 0.0,
                   "counterfactual_rises": None}
    [checked], _ = search([[1, 0.5, 0]], k=2, replaced={0: 0.5}, counterfactual=True)
    row = json.loads(json.dumps(checked.to_dict()))
    assert (row["counterfactual_rate"], row["counterfactual_rises"], row["samples"]) == (0.5, True, 8)


@pytest.mark.parametrize("mode", ["scan", "binary"])
def test_counterfactual_resamples_at_the_critical_token(mode):
    """One extra scorer call: the prefix before t* of each response with a critical token, excluding y_{t*}."""
    rates = [[1, 1, 0, 0], [1, 1, 1], [1, 0.5, 0.5, 0, 0]]  # t* = 1, none, 2
    results, scorer = search(rates, mode=mode, k=8, replaced={0: 0.25, 2: 0.0}, counterfactual=True)
    assert [r.index for r in results] == [1, None, 2]
    assert scorer.excluded[-1] == [1, 202] and scorer.calls[-1] == 2  # y_1 of response 0, y_2 of response 2
    assert all(excluded is None for excluded in scorer.excluded[:-1])
    assert [r.counterfactual_rate for r in results] == [0.25, None, 0.0]
    assert [r.counterfactual_rises for r in results] == [True, None, False]
    plain, _ = search(rates, mode=mode, k=8)
    assert [r.samples for r in results] == [p.samples + (8 if p.index is not None else 0) for p in plain]


def test_counterfactual_prefix_is_the_one_before_the_critical_token():
    seen = []

    def scorer(exs, prefixes, k, exclude_first=None):  # correct iff 7 is not in the response
        seen.extend((list(p), exclude_first) for p in prefixes)
        return torch.tensor([[float(7 not in p)] * k for p in prefixes]).view(len(prefixes), k)

    [result] = critical_tokens(scorer, [Example("q", "a")], [[1, 2, 7, 3]], k=4, counterfactual=True)
    assert result.index == 2 and seen[-1] == ([1, 2], [7])
    assert (result.rate_after, result.counterfactual_rate, result.counterfactual_rises) == (0.0, 1.0, True)


def test_counterfactual_without_a_critical_token_makes_no_extra_call():
    [result], scorer = search([[1, 1, 1]], k=4, counterfactual=True)
    assert result.counterfactual_rate is None and result.counterfactual_rises is None
    assert scorer.calls == [3] and result.samples == 12


def test_counterfactual_needs_a_scorer_that_can_exclude_a_first_token():
    def plain(exs, prefixes, k):
        return torch.zeros(len(prefixes), k)

    with pytest.raises(ValueError, match="counterfactual: the scorer must accept an `exclude_first` keyword"):
        critical_tokens(plain, [Example("q", "a")], [[1, 2]], k=2, counterfactual=True)
    assert critical_tokens(plain, [Example("q", "a")], [[1, 2]], k=2)[0].index == 0  # without it: fine


def test_counterfactual_scorer_with_wrong_shape_is_reported():
    def scorer(exs, prefixes, k, exclude_first=None):
        return torch.zeros(len(prefixes), k if exclude_first is None else 1)

    with pytest.raises(ValueError, match=r"scorer: expected rewards of shape \[1, 2\], got \[1, 1\]"):
        critical_tokens(scorer, [Example("q", "a")], [[1, 2]], k=2, counterfactual=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"responses": [[1], [2]]}, r"responses: expected one per example \(3\), got 2"),
        ({"k": 0}, "k: expected >= 1"),
        ({"mode": "linear"}, "mode: expected one of"),
        ({"recover": 1.0}, r"recover: expected a fraction in \[0, 1\)"),
    ],
)
def test_invalid_arguments_are_named(kwargs, message):
    args = {"responses": [[1], [2], [3]], **kwargs}
    with pytest.raises(ValueError, match=message):
        critical_tokens(TableScorer({}), [Example("q", "a")] * 3, **args)


def test_scorer_with_wrong_shape_is_reported():
    with pytest.raises(ValueError, match=r"scorer: expected rewards of shape \[3, 2\], got \[3, 1\]"):
        critical_tokens(lambda exs, prefixes, k: torch.zeros(len(prefixes), 1), [Example("q", "a")], [[1, 2]], k=2)


def test_task_continuations_on_a_tiny_model(tmp_path):
    create_tiny_model(tmp_path, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    model, tok = load_model(tmp_path)
    torch.manual_seed(0)
    task = make_task("chain_sum")
    exs = examples(task, 3, seed=0)
    responses = [tok(text, add_special_tokens=False)["input_ids"] for text in ("1+2=3 3+", "", "answer: 7")]
    scorer = TaskContinuations(TransformersSampler(model, tok, max_new_tokens=3), task)
    for mode in ("scan", "binary"):
        results = critical_tokens(scorer, exs, responses, k=2, mode=mode, counterfactual=True)
        assert len(results) == 3 and results[1].index is None and results[1].probed == []
        for result, response in zip(results, responses):
            assert set(result.probed) <= set(range(len(response)))
            assert all(0.0 <= rate <= 1.0 for rate in [result.prompt_rate, *result.rates])
            assert result.samples == 2 * (len(result.probed) + 1 + (result.index is not None))
            assert result.index is None or result.rate_after == 0.0
            assert (result.counterfactual_rate is None) == (result.index is None)
