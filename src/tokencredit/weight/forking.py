"""Token masks that keep the top fraction of a per-token score: high-entropy "forking" tokens (score H) and
D³S token down-sampling (score |A|·H)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokencredit.masked import as_float, token_count, true_positions
from tokencredit.needs import Needs
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.weight.inputs import token_field


def top_fraction_mask(score: Tensor, candidates: Tensor, top: float, within: Tensor | None = None,
                      out: Tensor | None = None) -> Tensor:
    """`1[score ≥ τ]` on `within` (default: the candidates) as float32, τ the (1−`top`)-quantile of `score` over
    the `candidates` (a bool tensor shaped like `score`, e.g. `[B,T]`): the top `top_count(n, top)` of the n
    candidate scores, and every score tied with the last of them, pass (so a threshold of 0 passes every zero
    score; −0.0 and +0.0 tie; a NaN ranks above everything and never passes). No candidate gives all zeros;
    `top` = 1 gives `within`.

    How, and why not `torch.topk` / `torch.quantile` (measured at B = 4096, T = 1024, 2.6M candidates, torch
    2.13, 1 thread of a shared 2-core VM): the masked copy `score[candidates]` alone costs ~40 ms, a `topk` of 20%
    of it 50–95 ms, `kthvalue` 30 ms, `sort` 290 ms, and `torch.quantile` refuses more than 2^24 elements. A
    radix select over the float bits needs a `bincount` of the whole batch per 8–12 bits (5 ms on int32 keys,
    25 ms on int64, after a 2–3 ms key pass) and a second narrowing pass: 25–30 ms. This is exact and cheaper:
    a sample of ~2^15 candidates (one per stretch, jittered from a fixed seed) brackets τ between two sample
    order statistics `lo ≤ τ ≤ hi` (±3 binomial standard deviations); two comparison passes count the candidates
    above `hi` and inside the bracket, the positions of the ≈1.5% inside are found 8 mask bytes a word
    (`true_positions`), and `kthvalue` on those few values gives τ exactly. Whole call: 16–25 ms (load-dependent),
    5–8× faster than the `topk`; the comparisons (bool output: a scalar loop in torch, ~0.45 ns an element)
    and the float output are most of it. (Doing it block by block of rows, with reused bool buffers and the float
    output written directly, measured no faster on one thread and slower on two.)
    If the sample missed (unlucky or adversarially ordered data), the bracket is widened to everything on the
    missed side and counted again, which cannot miss; a bracket holding a large tie is split at its ends by two
    more counts; candidates with a NaN score take the compacting `topk` path. Nothing here is limited in size
    (67M-token batches work). `out` (float32, shaped like `score`; it may be `score` itself, which is then
    overwritten) receives the result instead of a fresh tensor."""
    if not 0.0 < top <= 1.0:
        raise ValueError(f"top: expected a fraction in (0, 1], got {top}")
    within = candidates if within is None else within
    if top == 1.0:
        return as_float(within) if out is None else out.copy_(within.view(torch.uint8))
    n = int(token_count(candidates))
    if n == 0:
        return torch.zeros(within.shape, dtype=torch.float32, device=within.device) if out is None else out.zero_()
    k = top_count(n, top)
    bracket = _bracket(score.reshape(-1), candidates.reshape(-1), k, n) if _bracketable(score, n) else None
    passed = _top_k(score, candidates, within, k, n, bracket)
    return as_float(passed) if out is None else out.copy_(passed.view(torch.uint8))


_SMALL = 1 << 16  # fewer candidates than this: compact and rank them directly (a few ms at most)
_SAMPLE = 1 << 15  # candidates sampled to bracket the threshold
_MARGIN = 3.0  # bracket half-width around the sample quantile, in binomial standard deviations (a miss, 0.3%
# of calls, costs a second count: cheaper on average than the 4σ bracket's third more tokens to rank)
_MIN_SAMPLE = 256  # fewer sampled candidates: compact and rank directly
_WIDE = 1 / 16  # a bracket holding more of the candidates than this is checked for ties at its ends


def _bracketable(score: Tensor, n: int) -> bool:
    return n >= _SMALL and score.is_floating_point() and score.device.type == "cpu"


def _add_inside(out: Tensor, positions: Tensor, values: Tensor, ranked: Tensor, kept: Tensor, rank: int,
                n_inside: int) -> None:
    """Set `out` (bool) to 1 at the flat `positions` (the tokens inside the bracket, with their scores `values`,
    candidate flags `ranked` and `within` flags `kept`) whose score reaches the `rank`-th largest score of the
    candidates among them, where `kept`."""
    exact = values.float() if values.element_size() < 4 else values  # kthvalue on 16-bit floats: exact in float32
    tau = torch.kthvalue(exact[ranked], n_inside - rank + 1).values
    out.view(-1).index_fill_(0, positions[(exact >= tau) & kept], 1)


def _gathered(positions: Tensor, *tensors: Tensor) -> list[Tensor]:
    """`positions` and the tensors' values there (`x[positions]` on a big tensor costs 10× `index_select`)."""
    return [positions] + [x.reshape(-1).index_select(0, positions) for x in tensors]


def _top_k(score: Tensor, candidates: Tensor, within: Tensor, k: int, n: int,
           bracket: tuple[Tensor, Tensor] | None) -> Tensor:
    """Bool `within & (score ≥ the k-th largest candidate score)`; `n` = the number of candidates (≥ k ≥ 1),
    `bracket` from `_bracket` (None: compact and rank)."""
    if bracket is None:
        return _top_k_compacted(score, candidates, within, k)
    lo, hi = bracket
    scratch = torch.empty_like(candidates)  # few bool [B,T] buffers: each fresh one costs page faults

    def count(selected: Tensor) -> int:
        return int(token_count(torch.logical_and(selected, candidates, out=scratch)))

    for _ in range(2):
        above, inside = score >= lo, score <= hi
        n_at_most_hi = count(inside)
        inside.logical_and_(above)  # lo ≤ score ≤ hi
        above.logical_xor_(inside)  # score > hi (a NaN is in neither)
        n_above = count(above)
        if n_above + n_at_most_hi != n:  # a candidate's score is NaN
            return _top_k_compacted(score, candidates, within, k)
        n_inside = count(inside)
        if n_above < k <= n_above + n_inside:
            break
        # the sample missed τ: everything on that side of the bracket becomes the bracket (this cannot miss)
        inf = torch.tensor(math.inf, dtype=score.dtype, device=score.device)
        lo, hi = (hi, inf) if k <= n_above else (-inf, lo)
    if bool(lo == hi):  # τ = lo: every candidate inside ties with it
        return above.logical_or_(inside).logical_and_(within)
    if n_inside > _WIDE * n:  # far more than a sample bracket holds: τ may lie on a large tie at lo or hi
        beyond_lo = score > lo
        if count(beyond_lo) < k:  # τ = lo
            return above.logical_or_(inside).logical_and_(within)
        inside.logical_and_(beyond_lo)
        at_least_hi = torch.ge(score, hi, out=beyond_lo)
        n_at_least_hi = count(at_least_hi)
        if n_at_least_hi >= k:  # τ = hi
            return at_least_hi.logical_and_(within)
        inside.logical_and_(torch.logical_not(at_least_hi, out=above))  # lo < score < hi
        above, n_above = at_least_hi, n_at_least_hi  # the ties at hi pass with those above it
        n_inside = count(inside)
    # the few tokens inside the bracket: ranked exactly, and added to the output where they pass
    positions = true_positions(inside.logical_and_(within if within is candidates else within | candidates))
    passed = above.logical_and_(within).contiguous()
    _add_inside(passed, *_gathered(positions, score, candidates, within), k - n_above, n_inside)
    return passed


def _bracket(flat_score: Tensor, flat_candidates: Tensor, k: int, n: int) -> tuple[Tensor, Tensor] | None:
    """Two candidate scores `lo ≤ hi` (or ±inf) that bracket the k-th largest with high probability, from a
    sample of ~`_SAMPLE` candidates (one position drawn in each stretch of `stride`, from a fixed seed, so that
    periodic patterns in the batch cannot bias it); None when the sample holds too few candidates."""
    stride = max(1, n // _SAMPLE)
    strata = flat_score.numel() // stride
    device = flat_score.device
    offset = torch.randint(stride, (strata,), generator=torch.Generator(device).manual_seed(0), device=device)
    positions = torch.arange(strata, device=device).mul_(stride).add_(offset)
    sample = flat_score.index_select(0, positions)
    sample = sample[flat_candidates.index_select(0, positions).logical_and_(~sample.isnan())]
    m = sample.numel()
    if m < _MIN_SAMPLE:
        return None
    below = 1.0 - (k - 0.5) / n  # fraction of the candidates below τ
    spread = _MARGIN * math.sqrt(m * below * (1.0 - below)) + 2.0
    low, high = math.floor(below * m - spread), math.ceil(below * m + spread)
    inf = torch.tensor(math.inf, dtype=flat_score.dtype, device=device)
    exact = sample.float() if sample.element_size() < 4 else sample
    if low < 1 or high > m:
        lo = -inf if low < 1 else torch.kthvalue(exact, low).values.to(flat_score.dtype)
        hi = inf if high > m else torch.kthvalue(exact, high).values.to(flat_score.dtype)
        return lo, hi
    # the low-th and high-th smallest: the m − low + 1 largest (unsorted) hold both, a third of two kthvalues' cost
    largest = torch.topk(exact, m - low + 1, sorted=False).values
    return largest.min().to(flat_score.dtype), torch.kthvalue(largest, high - low + 1).values.to(flat_score.dtype)


def _top_k_compacted(score: Tensor, candidates: Tensor, within: Tensor, k: int) -> Tensor:
    """The same, by `topk` on the compacted candidate scores (NaN ranks first): for small or odd inputs."""
    threshold = torch.topk(score[candidates], k).values[-1]
    return (score >= threshold) & within


def top_count(n: int, top: float) -> int:
    """How many of n tokens a top fraction keeps: round(top·n), at least one."""
    return max(1, round(top * n))


@register("weight", "forking_tokens", needs=Needs(inputs={"entropy"}))
def forking_tokens(rollouts: Rollouts, advantage: Tensor, top: float = 0.2, keep: Tensor | None = None) -> Tensor:
    """`m_{i,t} = 1[H_{i,t} ≥ τ_ρ]`, τ_ρ the (1−ρ)-quantile of token entropy over the response tokens of the
    batch's kept responses (ρ = `top`, paper value 0.2; ρ = 1 keeps every token). The loss normaliser is
    unchanged.

    Source: "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning"
    (Wang et al., 2025). Entropy is read from `rollouts.entropy` (the sampling policy's; it equals the
    current policy's at the first on-policy epoch). Ties at τ are all kept. `keep [B,T]` (passed by
    `Recipe.credit`: the tokens in the loss) leaves dropped responses and tokens out of the quantile, as the
    paper's DAPO batches hold only the groups that dynamic sampling kept.
    """
    entropy = token_field(rollouts, "entropy", "forking_tokens")
    return top_fraction_mask(entropy, _ranked(rollouts.mask, keep), top, within=rollouts.mask)


@register("weight", "d3s_tokens", needs=Needs(inputs={"entropy"}))
def d3s_tokens(rollouts: Rollouts, advantage: Tensor, top: float = 0.2, keep: Tensor | None = None) -> Tensor:
    """D³S token-level down-sampling: `m_{i,t} = 1[|A_{i,t}|·H_{i,t} ≥ τ_K]`, τ_K the (1−K)-quantile of the score
    over the tokens in the loss (`keep [B,T]`: those of the sample-selected responses), K = `top`. With a
    per-response advantage this ranks tokens by entropy within a response and by |A| across responses. K = 1 keeps
    every token.

    Source: "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy
    Optimization" (Wang et al., 2025). Pair it with the `d3s_samples` select stage (the `d3s` preset); K may
    follow a schedule over training progress. Ties at τ are all kept.
    """
    entropy = token_field(rollouts, "entropy", "d3s_tokens")
    score = torch.abs(advantage.float().expand(rollouts.mask.shape)).mul_(entropy)  # a fresh [B,T]: the output too
    return top_fraction_mask(score, _ranked(rollouts.mask, keep), top, within=rollouts.mask, out=score)


def _ranked(mask: Tensor, keep: Tensor | None) -> Tensor:
    """The tokens the quantile ranks: those of the mask in the loss (`keep [B,T]`; None: every token of the
    mask)."""
    return mask if keep is None else mask & keep
