"""Critical tokens by rollout: the token of a failed response after which no continuation succeeds any more.

Source: "Critical Tokens Matter: Token-Level Contrastive Estimation Enhances LLM's Reasoning Capability"
(Lin et al., ICML 2025), the rollout analysis that motivates cDPO; the rule below follows the candidate scan of
the authors' released analysis script (`src/rollout_sampling_for_critical_tokens.py`, `analyse_all_token`).

For a failed response `y = (y_0, …, y_{T−1})` to a prompt `x`, sample k completions of each prefix `y^{≤t}`
(the prefix *includes* token t) and score them with the task's verifier:

    c_t = #correct completions of (x, y^{≤t}) / k           t = 0 … T−1
    c_∅ = #correct completions of x alone / k                (the prompt state: reported, never a candidate)

A completion counts as correct when its reward is > 0.5 (the convention of `train.evaluate`'s pass@k).

The rule (the authors' scan). Walk t upward holding at most one open candidate. A prefix with c_t = 0 opens a
candidate t when none is open; a prefix that *recovers* (c_t > `recover`; the paper's code: more than 3 of 64
correct) while a candidate is open resets it, remembering it as the last reset candidate. Rates in
(0, `recover`] neither open nor reset a candidate. At the end, t* is the open candidate if there is one, else
the last reset candidate (the code's `elif last_min_predix is not None` fallback), else None. In closed form:

    z  = max{t : c_t = 0}                  (no zero anywhere: t* = None)
    r  = max{t < z : c_t > recover}        (−1 if none)
    t* = min{t > r : c_t = 0}

i.e. t* is the start of the last zero-success run, a run being a stretch that starts at a zero and ends at the
next recovery. Two consequences worth knowing: with the fallback, scan reports a critical token iff *some*
prefix has c_t = 0; and `fallback` (on the result) is True iff a prefix after the last zero recovers, i.e. the
run of t* was reset and t* is the last reset candidate rather than an open one. Example: rates c_0 … c_3 =
0.5, 0.0, 0.5, 0.5 give z = 1, r = 0, t* = 1 with `fallback=True`.

Two search modes:

* `scan` (the paper's procedure): every prefix of every response, `k·(T+1)` samples per response, all of them
  in one scorer call; the rule above.
* `binary`: assumes success collapses once and stays collapsed (c_t > 0 before t*, c_t = 0 from t* on). It
  probes the prompt state and the whole response first (c_{T−1} > 0: no critical token), then bisects for the
  smallest t with c_t = 0: `k·(2 + ⌈log2 T⌉)` samples per response at most. Each round probes one prefix of
  every unfinished response in a single scorer call. On monotone rates it returns the scan's t* (the fallback
  never fires there: it needs a recovery after a zero). On non-monotone rates the two can differ: bisection
  may land on any 0/non-0 boundary, ignores `recover`, and never falls back: a response whose last prefix
  still succeeds (c_{T−1} > 0, recovered or merely small) has no critical token in binary mode, while the scan
  returns its last reset (or still open) candidate. `fallback` is always False in binary mode.

Counterfactual check (`counterfactual=True`, the paper's "w/o critical token"): for each response with a
critical token, sample k continuations of `y^{<t*}` whose *first token differs from y_{t*}* (the scorer's
`exclude_first`) and score them:

    c'_{t*} = #correct of k completions of (x, y^{<t*}, y' ≠ y_{t*}) / k
    rises   = c'_{t*} > c_{t*}        (c_{t*} = 0 in both modes, so: any replacement succeeds)

All counterfactual probes of a call go to the scorer in one extra call; they add k samples per critical token.

Choices:

* The replacement token is drawn at the sampler's temperature, jointly with its completion (continuations of
  `y^{<t*}` with y_{t*} masked out of the first step, renormalised). The paper draws it from the untempered
  softmax with the original token's probability set to 0 and then completes each draw once at the sampling
  temperature; at temperature 1 both are the same distribution.
* The paper reports pass@k over a dataset (unbiased estimator); per response we report the rate c'_{t*} and
  whether it rises, from which pass@k follows (pass@k of n = k samples with c = k·c'_{t*} correct).
* Responses are the generated content tokens without the terminal EOS (a prefix ending in EOS has no
  continuation). In both modes the prefix before t* was probed, so `rate_before` / `rate_after` (c_{t*−1}, or
  c_∅ when t* = 0, and c_{t*}) are always known for a critical token.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from tokencredit.sampling.continuation import ContinuationScorer
from tokencredit.tasks import Example

MODES = ("scan", "binary")
PAPER_RECOVER = 3 / 64  # the paper's code resets the candidate when more than 3 of 64 continuations succeed


@dataclass(frozen=True)
class CriticalToken:
    """The critical-token search result of one response.

    `index` is t* (0-based token position in the response) or None. `probed` lists the token positions t whose
    prefix `y^{≤t}` was sampled, ascending, and `rates[j]` is c_t of `probed[j]`; `prompt_rate` is c_∅ (the
    prompt state, always probed). `samples` counts the continuations sampled for this response (counterfactual
    ones included). `fallback` is True when t* is the last reset candidate: a prefix after t*'s zero run
    recovered (scan only). `counterfactual_rate` is c'_{t*}, the success rate of continuations of `y^{<t*}`
    whose first token differs from y_{t*}; None unless the search ran with `counterfactual=True` and found t*.
    """

    index: int | None
    prompt_rate: float
    probed: list[int]
    rates: list[float]
    samples: int
    fallback: bool = False
    counterfactual_rate: float | None = None

    @property
    def rate_after(self) -> float | None:
        """c_{t*}: the success rate once the critical token is in the prefix (None without one)."""
        return None if self.index is None else self._rate(self.index)

    @property
    def rate_before(self) -> float | None:
        """c_{t*−1} (c_∅ when t* = 0): the success rate just before the critical token (None without one)."""
        return None if self.index is None else self._rate(self.index - 1)

    @property
    def counterfactual_rises(self) -> bool | None:
        """Whether replacing the critical token raises the success rate: c'_{t*} > c_{t*} (None when not run)."""
        if self.counterfactual_rate is None or self.rate_after is None:
            return None
        return self.counterfactual_rate > self.rate_after

    def _rate(self, t: int) -> float:
        return self.prompt_rate if t < 0 else self.rates[self.probed.index(t)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields plus `rate_before`, `rate_after` and `counterfactual_rises`."""
        return {**asdict(self), "rate_before": self.rate_before, "rate_after": self.rate_after,
                "counterfactual_rises": self.counterfactual_rises}


def critical_tokens(
    scorer: ContinuationScorer,
    examples: Sequence[Example],
    responses: Sequence[Sequence[int]],
    *,
    k: int = 64,
    mode: Literal["scan", "binary"] = "scan",
    recover: float = PAPER_RECOVER,
    counterfactual: bool = False,
) -> list[CriticalToken]:
    """The critical token of each failed response, by sampling `k` continuations of its prefixes (cDPO).

    `examples[i]` is the prompt (and verifier context) of `responses[i]`, the response's token ids without its
    EOS. c_t = fraction of the k completions of `y^{≤t}` that are correct (reward > 0.5). `mode="scan"` probes
    every prefix (the paper) and applies the authors' rule: t* = min{t > r : c_t = 0}, r the last t before the
    last zero whose c_t > `recover` (a fraction of k; the paper uses 3/64), i.e. the open candidate or else the
    last reset one. `mode="binary"` bisects for the first c_t = 0 assuming success collapses once and stays
    collapsed (see the module docstring). `counterfactual=True` also samples k continuations of `y^{<t*}` whose
    first token is not y_{t*} (the scorer must accept `exclude_first`) and reports their success rate. An empty
    response has no critical token.

    Source: Lin et al., "Critical Tokens Matter: Token-Level Contrastive Estimation Enhances LLM's Reasoning
    Capability", ICML 2025.
    """
    if len(responses) != len(examples):
        raise ValueError(f"responses: expected one per example ({len(examples)}), got {len(responses)}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not 0.0 <= recover < 1.0:
        raise ValueError(f"recover: expected a fraction in [0, 1), got {recover}")
    if counterfactual and not _accepts_exclude_first(scorer):
        raise ValueError("counterfactual: the scorer must accept an `exclude_first` keyword (see ContinuationScorer)")
    responses = [list(r) for r in responses]
    probes: list[dict[int, float]] = [{} for _ in responses]  # per response: prefix length -> success rate
    if mode == "scan":
        _probe(scorer, examples, responses, [(i, n) for i, r in enumerate(responses) for n in range(len(r) + 1)],
               k, probes)
        found = [final_collapse(_token_rates(p, len(r)), recover) for p, r in zip(probes, responses)]
    else:
        found = [(index, False) for index in _bisect(scorer, examples, responses, k, probes)]
    replaced = _counterfactual(scorer, examples, responses, [t for t, _ in found], k) if counterfactual else {}
    return [_result(t, fallback, probe, k, replaced.get(i))
            for i, ((t, fallback), probe) in enumerate(zip(found, probes))]


def _accepts_exclude_first(scorer: ContinuationScorer) -> bool:
    """Whether `scorer` can be called with `exclude_first=` (a named parameter or `**kwargs`)."""
    try:
        parameters = inspect.signature(scorer).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin, an extension type): let the call decide
        return True
    return any(p.name == "exclude_first" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _rates_of(rewards: Tensor, rows: int, k: int) -> list[float]:
    if tuple(rewards.shape) != (rows, k):
        raise ValueError(f"scorer: expected rewards of shape [{rows}, {k}], got {list(rewards.shape)}")
    return (rewards > 0.5).float().mean(-1).tolist()


def _probe(
    scorer: ContinuationScorer,
    examples: Sequence[Example],
    responses: list[list[int]],
    requests: list[tuple[int, int]],
    k: int,
    probes: list[dict[int, float]],
) -> None:
    """Score the prefixes `(response i, length n)` of `requests` in one scorer call; record c into `probes`."""
    if not requests:
        return
    rewards = scorer([examples[i] for i, _ in requests], [responses[i][:n] for i, n in requests], k)
    for (i, n), rate in zip(requests, _rates_of(rewards, len(requests), k)):
        probes[i][n] = rate


def _counterfactual(
    scorer: ContinuationScorer,
    examples: Sequence[Example],
    responses: list[list[int]],
    indices: list[int | None],
    k: int,
) -> dict[int, float]:
    """c'_{t*} per response with a critical token: k continuations of `y^{<t*}` whose first token is not y_{t*},
    all responses in one scorer call."""
    found = [(i, t) for i, t in enumerate(indices) if t is not None]
    if not found:
        return {}
    rewards = scorer([examples[i] for i, _ in found], [responses[i][:t] for i, t in found], k,
                     exclude_first=[responses[i][t] for i, t in found])
    return {i: rate for (i, _), rate in zip(found, _rates_of(rewards, len(found), k))}


def _token_rates(probe: dict[int, float], length: int) -> Tensor:
    """c_t for t = 0 … length−1 (prefix lengths 1 … length) of a fully probed response."""
    return torch.tensor([probe[n] for n in range(1, length + 1)], dtype=torch.float32)


def final_collapse(rates: Tensor, recover: float = PAPER_RECOVER) -> tuple[int | None, bool]:
    """The scan's rule on the token rates `c_0 … c_{T−1}`: `(t*, fallback)`.

    z = max{t : c_t = 0}, r = max{t < z : c_t > recover} (−1 if none), t* = min{t > r : c_t = 0}: the start of
    the last zero run (the authors' open candidate, else their last reset candidate). `fallback` is True when a
    rate after z recovers (t* is a reset candidate). `(None, False)` when no rate is 0.
    """
    positions = torch.arange(len(rates))
    zero = rates == 0
    if not bool(zero.any()):
        return None, False
    last_zero = int(positions[zero].max())
    recovers = rates > recover
    before = positions[recovers & (positions < last_zero)]
    last_recovery = int(before.max()) if len(before) else -1
    index = int(positions[zero & (positions > last_recovery)].min())
    return index, bool(recovers[last_zero + 1 :].any())


def _bisect(
    scorer: ContinuationScorer,
    examples: Sequence[Example],
    responses: list[list[int]],
    k: int,
    probes: list[dict[int, float]],
) -> list[int | None]:
    """Smallest t with c_t = 0 per response, assuming c_t > 0 before it and c_t = 0 from it on.

    Round 0 probes the prompt state and the whole response (c_{T−1} > 0 → None); each later round probes the
    midpoint of every unfinished search interval `[lo, hi]` (c_hi = 0 known) in one scorer call.
    """
    _probe(scorer, examples, responses,
           [(i, n) for i, r in enumerate(responses) for n in sorted({0, len(r)})], k, probes)
    bounds = {i: [0, len(r) - 1] for i, r in enumerate(responses) if r and probes[i][len(r)] == 0}
    while midpoints := {i: (lo + hi) // 2 for i, (lo, hi) in bounds.items() if lo < hi}:
        _probe(scorer, examples, responses, [(i, mid + 1) for i, mid in midpoints.items()], k, probes)
        for i, mid in midpoints.items():
            if probes[i][mid + 1] == 0:
                bounds[i][1] = mid  # collapsed at mid: t* <= mid
            else:
                bounds[i][0] = mid + 1  # still alive at mid: t* > mid
    return [bounds[i][0] if i in bounds else None for i in range(len(responses))]


def _result(index: int | None, fallback: bool, probe: dict[int, float], k: int,
            counterfactual_rate: float | None) -> CriticalToken:
    lengths = sorted(n for n in probe if n > 0)
    return CriticalToken(
        index=index,
        prompt_rate=probe[0],
        probed=[n - 1 for n in lengths],
        rates=[probe[n] for n in lengths],
        samples=k * (len(probe) + (counterfactual_rate is not None)),
        fallback=fallback,
        counterfactual_rate=counterfactual_rate,
    )
