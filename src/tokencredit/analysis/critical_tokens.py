"""Critical tokens by rollout: the token of a failed response after which no continuation succeeds any more.

Source: "Critical Tokens Matter: Token-Level Contrastive Estimation Enhances LLM's Reasoning Capability"
(Lin et al., ICML 2025), the rollout analysis that motivates cDPO.

For a failed response `y = (y_0, …, y_{T−1})` to a prompt `x`, sample k completions of each prefix `y^{≤t}`
(the prefix *includes* token t) and score them with the task's verifier:

    c_t = #correct completions of (x, y^{≤t}) / k           t = 0 … T−1
    c_∅ = #correct completions of x alone / k                (the prompt state: reported, never a candidate)

A completion counts as correct when its reward is > 0.5 (the convention of `train.evaluate`'s pass@k).

Scanning t upward, the critical token t* is the first t with c_t = 0; a later prefix that *recovers*
(c_t > `recover`, the paper's code: more than 3 of 64 correct) discards that candidate, and the scan looks for
the next zero. So

    r  = max{t : c_t > recover}            (−1 if none)
    t* = min{t > r : c_t = 0}              (None if none)

i.e. t* is the start of the final zero-success run (rates in (0, recover] neither start nor break a run).

Two search modes:

* `scan` (the paper's procedure): every prefix of every response, `k·(T+1)` samples per response, all of them
  in one scorer call.
* `binary`: assumes success collapses once and stays collapsed (c_t > 0 before t*, c_t = 0 from t* on). It
  probes the prompt state and the whole response first (c_{T−1} > 0: no critical token), then bisects for the
  smallest t with c_t = 0: `k·(2 + ⌈log2 T⌉)` samples per response at most. Each round probes one prefix of
  every unfinished response in a single scorer call. On monotone rates it returns the scan's t*; when success
  is non-monotone (a zero followed by a recovery, or a run that ends on a small non-zero rate) the two can
  differ: bisection may land on any 0/non-0 boundary, and it ignores `recover`.

Responses are the generated content tokens without the terminal EOS (a prefix ending in EOS has no
continuation). In both modes the prefix before t* was probed, so `rate_before` / `rate_after` (c_{t*−1}, or
c_∅ when t* = 0, and c_{t*}) are always known for a critical token.
"""

from __future__ import annotations

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
    prompt state, always probed). `samples` counts the continuations sampled for this response.
    """

    index: int | None
    prompt_rate: float
    probed: list[int]
    rates: list[float]
    samples: int

    @property
    def rate_after(self) -> float | None:
        """c_{t*}: the success rate once the critical token is in the prefix (None without one)."""
        return None if self.index is None else self._rate(self.index)

    @property
    def rate_before(self) -> float | None:
        """c_{t*−1} (c_∅ when t* = 0): the success rate just before the critical token (None without one)."""
        return None if self.index is None else self._rate(self.index - 1)

    def _rate(self, t: int) -> float:
        return self.prompt_rate if t < 0 else self.rates[self.probed.index(t)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields plus `rate_before` and `rate_after`."""
        return {**asdict(self), "rate_before": self.rate_before, "rate_after": self.rate_after}


def critical_tokens(
    scorer: ContinuationScorer,
    examples: Sequence[Example],
    responses: Sequence[Sequence[int]],
    *,
    k: int = 64,
    mode: Literal["scan", "binary"] = "scan",
    recover: float = PAPER_RECOVER,
) -> list[CriticalToken]:
    """The critical token of each failed response, by sampling `k` continuations of its prefixes (cDPO).

    `examples[i]` is the prompt (and verifier context) of `responses[i]`, the response's token ids without its
    EOS. c_t = fraction of the k completions of `y^{≤t}` that are correct (reward > 0.5); t* = min{t > r :
    c_t = 0} with r the last t whose c_t > `recover` (a fraction of k; the paper uses 3/64). `mode="scan"`
    probes every prefix (the paper); `mode="binary"` bisects for the first c_t = 0 assuming success collapses
    once and stays collapsed (see the module docstring). An empty response has no critical token.

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
    responses = [list(r) for r in responses]
    probes: list[dict[int, float]] = [{} for _ in responses]  # per response: prefix length -> success rate
    if mode == "scan":
        _probe(scorer, examples, responses, [(i, n) for i, r in enumerate(responses) for n in range(len(r) + 1)],
               k, probes)
        indices = [_final_collapse(_token_rates(p, len(r)), recover) for p, r in zip(probes, responses)]
    else:
        indices = _bisect(scorer, examples, responses, k, probes)
    return [_result(index, p, k) for index, p in zip(indices, probes)]


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
    if tuple(rewards.shape) != (len(requests), k):
        raise ValueError(f"scorer: expected rewards of shape [{len(requests)}, {k}], got {list(rewards.shape)}")
    rates = (rewards > 0.5).float().mean(-1).tolist()
    for (i, n), rate in zip(requests, rates):
        probes[i][n] = rate


def _token_rates(probe: dict[int, float], length: int) -> Tensor:
    """c_t for t = 0 … length−1 (prefix lengths 1 … length) of a fully probed response."""
    return torch.tensor([probe[n] for n in range(1, length + 1)], dtype=torch.float32)


def _final_collapse(rates: Tensor, recover: float) -> int | None:
    """t* = min{t > r : c_t = 0}, r = max{t : c_t > recover} (−1 if none): the start of the final zero run."""
    positions = torch.arange(len(rates))
    recovered = positions[rates > recover]
    last_recovery = int(recovered.max()) if len(recovered) else -1
    zeros = positions[(rates == 0) & (positions > last_recovery)]
    return int(zeros[0]) if len(zeros) else None


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


def _result(index: int | None, probe: dict[int, float], k: int) -> CriticalToken:
    lengths = sorted(n for n in probe if n > 0)
    return CriticalToken(
        index=index,
        prompt_rate=probe[0],
        probed=[n - 1 for n in lengths],
        rates=[probe[n] for n in lengths],
        samples=k * len(probe),
    )
