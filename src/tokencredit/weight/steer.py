"""Entropy-change reweighting: damp the tokens whose update would move the policy's entropy the most."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from tokencredit.masked import as_float, token_count
from tokencredit.needs import Needs
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.weight.inputs import token_field

MODES = ("exp", "linear")
_LOG_P_FLOOR = math.log(1e-8)  # p ≥ 1e-8, as the paper's code clamps it; its upper clamp 1 − 1e-8 is 1.0 in float32
_LOG2_E = 1.0 / math.log(2.0)
_CHUNK = 1 << 19  # elements a chunk (2 MB of float32): a chunk's temporaries stay in cache between passes
_INF_BITS = 0x7F800000  # +inf as int32 bits


def entropy_change(rollouts: Rollouts, advantage: Tensor) -> Tensor:
    """First-order entropy change a unit step on each token causes, `[B,T]`, 0 outside the mask:
    `Ω_{i,t} = (A_{i,t}/π_old)·π_θ·(1 − π_θ)·(log π_θ + H_{i,t})` at `π_θ = π_old = p` (the sampling policy's
    probability of the token, from `rollouts.logprob`), i.e. `A·(1 − p)·(log p + H)`, with p clamped to
    [1e-8, 1 − 1e-8] as the paper's code does (a token with p → 0 would otherwise set the batch's scale alone;
    1 − 1e-8 is 1.0 in float32), computed as `log p = clamp(logprob, ln 1e-8, 0)`, `p = exp(log p)`."""
    omega = torch.empty(rollouts.mask.shape, dtype=torch.float32, device=rollouts.mask.device)
    _entropy_change_into(omega, rollouts, advantage)
    return omega


def _entropy_change_into(out: Tensor, rollouts: Rollouts, advantage: Tensor, absolute: bool = False,
                         need_min: bool = False, ranked: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Write `Ω` (or `|Ω|`), 0 outside the mask, into `out` `[B,T]`; return the rows' maxima of it over the
    `ranked` tokens (a bool `[B,T]` within the mask; None: the mask; 0 for a row without any), and with
    `need_min` the rows' minima over them (+inf for a row without any).

    Speed (CPU, [4096, 1024], torch 2.13, 1 thread): the formula written out makes 8 fresh `[B,T]` temporaries
    and the masked copy `|Ω|[mask]` for the batch maximum (40 ms alone): 100–160 ms per `steer` call. Here each
    block of rows (`_CHUNK` elements: 2^19 measured 2× faster than 2^21 and 3× faster than whole tensors) goes
    through float32 operations in place in two cache-sized buffers and the output; the mask is applied by an
    integer AND with all-ones/zero words (what `torch.where(mask, x, 0)` gives, NaN and inf included, where
    `where` itself is a scalar loop: 1.9 ms a block against 0.15 ms), and the maximum is taken per row, where
    |Ω| ≥ 0 everywhere and 0 outside the mask. Two choices remove the costliest passes (`log` 2.5 ns an
    element, `exp` 0.9, `exp2` 0.3): log p is the given log-probability clamped to [ln 1e-8, 0] rather than
    `log(clamp(exp(log p)))` (the same number up to its last bits, and exact where the round trip is not), and
    every exponential is `exp2` of the argument times log₂e (relative error ≤ |x|·2^-24 more than `exp`'s: 1e-6
    at x = ln 1e-8). So Ω agrees with the formula as written to float32 rounding (≤ 1e-6 of `|A|·(|log p| + H)`),
    not bit for bit."""
    mask = rollouts.mask
    shape = mask.shape
    logprob = token_field(rollouts, "logprob", "steer").expand(shape)
    entropy = token_field(rollouts, "entropy", "steer").expand(shape)
    advantage = advantage.float().expand(shape)
    rows = max(1, _CHUNK // max(shape[-1], 1))
    p, log_p = (torch.empty((min(rows, shape[0]), *shape[1:]), device=mask.device) for _ in range(2))
    bits = torch.empty(p.shape, dtype=torch.int32, device=mask.device)
    ranked_bits = None if ranked is None else torch.empty_like(bits)
    row_max = out.new_zeros(shape[:-1])
    row_min = out.new_full(shape[:-1], math.inf) if need_min else None
    if not out.numel():
        return row_max, row_min
    one = torch.ones((), device=mask.device)
    for start in range(0, shape[0], rows):
        block = slice(start, start + rows)
        n = out[block].shape[0]
        p_, log_p_, bits_, out_ = p[:n], log_p[:n], bits[:n], out[block]
        torch.clamp(logprob[block], _LOG_P_FLOOR, 0.0, out=log_p_)  # log p, p clamped to [1e-8, 1]
        torch.mul(log_p_, _LOG2_E, out=p_).exp2_()  # p = 2^(log₂e · log p): exp2 costs a third of exp
        log_p_.add_(entropy[block])
        omega = torch.sub(one, p_, out=out_).mul_(advantage[block]).mul_(log_p_)  # (1 − p)·A·(log p + H)
        if absolute:
            omega.abs_()
        omega.view(torch.int32).bitwise_and_(_mask_bits(mask[block], bits_))
        if not absolute:
            continue
        only = omega  # |Ω| on the ranked tokens (≥ 0), 0 elsewhere
        if ranked is not None:
            bits_ = _mask_bits(ranked[block], ranked_bits[:n])
            only = torch.bitwise_and(omega.view(torch.int32), bits_, out=p_.view(torch.int32)).view(torch.float32)
        torch.amax(only, -1, out=row_max[block])
        if need_min:  # +inf instead of 0 off the ranked tokens: |Ω| ≥ 0 orders like its int32 bits, +inf's exceed them
            beyond = torch.bitwise_not(bits_, out=log_p_.view(torch.int32)).bitwise_and_(_INF_BITS)
            torch.maximum(beyond, only.view(torch.int32), out=beyond)
            torch.amin(log_p_, -1, out=row_min[block])
    return row_max, row_min


def _mask_bits(mask: Tensor, out: Tensor) -> Tensor:
    """int32 like `mask`, into `out`: all bits set on the mask, 0 elsewhere, so that `x.view(int32) & bits` zeroes
    a float32 `x` outside the mask (NaN and inf included), as `torch.where(mask, x, 0)`."""
    return out.copy_(mask.view(torch.int8)).neg_()


@register("weight", "steer", needs=Needs(inputs={"logprob", "entropy"}))
def steer(
    rollouts: Rollouts,
    advantage: Tensor,
    w_min: float = 0.8,
    w_max: float = 1.0,
    mode: str = "exp",
    fused: bool = False,
    keep: Tensor | None = None,
) -> Tensor:
    """STEER token weights from the estimated entropy change `|Ω|` (see `entropy_change`), ranked over the tokens
    in the loss (`keep [B,T]`, passed by `Recipe.credit`; None: every token of the mask):

    * `exp` (the paper's): `λ = clamp(exp(−k·|Ω|), w_min, 1)`, `k = −ln(w_min) / max(max|Ω|, 0.02)`, so the
      token with the largest |Ω| gets `w_min` (`w_max` must be 1);
    * `linear`: `λ = w_max − (|Ω| − min|Ω|)·(w_max − w_min)/(max|Ω| − min|Ω|)`, (w_min + w_max)/2 when all |Ω|
      are equal (the paper's linear script: 0.8, 1.2).

    Source: "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective" (Hao et al., 2025).
    Choices: π_θ is taken as the sampling policy (exact on the first on-policy minibatch); the paper's code
    takes min/max per micro-batch, here they are per batch (so micro-batching cannot change the weights);
    log p is the clamped log-probability itself, not `log(exp(·))`, and exponentials are `exp2` (float32
    rounding apart, the formula's weights; the call takes 12–13 ms, not 26, at [4096, 1024]: `_entropy_change_into`).
    Where log p + H cancels, Ω is known to ~1e-6 of |A|·(|log p| + H) only, in any float32 evaluation, and k (up to
    −ln(w_min)/0.02) or a tiny linear spread magnifies that in the weights (2% measured against `log(exp(·))`).
    `w_min = w_max = 1` gives weight 1 everywhere. No kept token gives the mask (weights of dropped responses
    are not used).

    `fused=True` computes the same formula (float32 rounding apart) in two `torch.compile`d kernels, one pass over
    the inputs and one over the weights, instead of ~18 eager passes over each block: 9–10 ms instead of 13–16 at
    [4096, 1024] on one CPU thread (3.5–4.3× grpo against 5.2–6.0×, from a cold cache). The first call compiles
    (3–5 s with inductor's on-disk cache, 20–25 s without; one compilation serves every shape), which pays back
    only after ~500–4,000 calls of that size, so it is off by default. It needs what inductor needs (a C++
    compiler on CPU, Triton on CUDA; checked on CPU only) and raises naming `fused` when compilation fails.
    With `keep` short of the mask its first kernel reads a second mask and is slower (about eager speed).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not 0.0 < w_min <= w_max:
        raise ValueError(f"w_min, w_max: expected 0 < w_min ≤ w_max, got {w_min}, {w_max}")
    if mode == "exp" and (w_min > 1.0 or w_max != 1.0):
        raise ValueError(f"w_min, w_max: mode 'exp' weighs in [w_min, 1] (w_min ≤ 1, w_max = 1), got {w_min}, {w_max}")
    mask = rollouts.mask
    if not mask.numel():
        return as_float(mask)
    ranked = None if keep is None or keep is mask else mask & keep
    if ranked is not None:  # (ranking over the whole mask needs no count: an empty mask gives 0 everywhere anyway)
        n_ranked = token_count(ranked)
        if not n_ranked:
            return as_float(mask)
        if n_ranked == token_count(mask):  # ranked ⊆ mask, so all of it: no second mask to apply
            ranked = None
    weight = torch.empty(mask.shape, dtype=torch.float32, device=mask.device)
    if fused:
        inputs = token_field(rollouts, "logprob", "steer"), token_field(rollouts, "entropy", "steer"), advantage.float()
        *flat_inputs, flat_mask = (x.expand(mask.shape).reshape(-1) for x in (*inputs, mask))
        flat_ranked = flat_mask if ranked is None else ranked.reshape(-1)  # the same tensor twice: one input compiled
        largest, smallest = _compiled(_abs_entropy_change_fused)(weight.view(-1), *flat_inputs, flat_mask, flat_ranked,
                                                                 mode == "linear")
        bounds = [torch.tensor(w, device=mask.device) for w in (w_min, w_max)]  # tensors: a float would recompile
    else:
        row_max, row_min = _entropy_change_into(weight, rollouts, advantage, absolute=True,
                                                need_min=mode == "linear", ranked=ranked)
        largest = row_max.max()  # over the ranked tokens: |Ω| ≥ 0, and 0 in a row without any
        smallest = None if row_min is None else row_min.min()
    if mode == "exp":
        factor = math.log2(w_min) / largest.clamp(min=0.02)  # −k·log₂e
        if fused:
            _compiled(_exp_weights_fused)(weight.view(-1), flat_mask, factor, *bounds)
        else:
            _in_blocks(weight, mask, lambda w: w.mul_(factor).exp2_().clamp_(w_min, w_max))
        return weight
    spread = largest - smallest
    scale = (w_max - w_min) / spread.clamp(min=torch.finfo(weight.dtype).tiny)
    if not spread > 0:  # nothing to rank (or a NaN): the middle, as the paper
        _in_blocks(weight, mask, lambda w: w.fill_((w_min + w_max) / 2).clamp_(w_min, w_max))
    elif fused:
        _compiled(_linear_weights_fused)(weight.view(-1), flat_mask, smallest, scale, *bounds)
    else:  # w_max − (|Ω| − min)·scale
        _in_blocks(weight, mask, lambda w: w.sub_(smallest).mul_(scale).neg_().add_(w_max).clamp_(w_min, w_max))
    return weight


def _abs_entropy_change_fused(out: Tensor, logprob: Tensor, entropy: Tensor, advantage: Tensor, mask: Tensor,
                              ranked: Tensor, need_min: bool) -> tuple[Tensor, Tensor | None]:
    """`fused=True`'s first kernel, on flat `[N]` tensors: |Ω| into `out`, 0 off the mask; its maximum over the
    `ranked` tokens and, with `need_min`, its minimum. The formula as written: `torch.compile` makes it one pass."""
    log_p = logprob.clamp(_LOG_P_FLOOR, 0.0)
    omega = torch.where(mask, ((1.0 - torch.exp2(log_p * _LOG2_E)) * advantage * (log_p + entropy)).abs(), 0.0)
    out.copy_(omega)
    return torch.where(ranked, omega, 0.0).amax(), torch.where(ranked, omega, math.inf).amin() if need_min else None


def _exp_weights_fused(weight: Tensor, mask: Tensor, factor: Tensor, w_min: Tensor, w_max: Tensor) -> None:
    weight.copy_(torch.where(mask, torch.exp2(weight * factor).clamp(w_min, w_max), 0.0))


def _linear_weights_fused(weight: Tensor, mask: Tensor, smallest: Tensor, scale: Tensor, w_min: Tensor,
                          w_max: Tensor) -> None:
    weight.copy_(torch.where(mask, (w_max - (weight - smallest) * scale).clamp(w_min, w_max), 0.0))


@functools.cache
def _compiled(kernel):
    """`kernel` through `torch.compile` (built once, for any length), raising naming `fused` if that fails."""
    compiled = torch.compile(kernel, dynamic=True, fullgraph=True)

    @functools.wraps(kernel)
    def run(*args):
        try:
            return compiled(*args)
        except Exception as error:  # inductor's failures have no common base class
            raise RuntimeError(f"fused: weight 'steer' with fused=True needs torch.compile, which failed here "
                               f"({type(error).__name__}: {error}); set fused: false") from error

    return run


def _in_blocks(x: Tensor, mask: Tensor, fn) -> None:
    """`fn` in place on blocks of rows of `x`, then 0 outside the mask."""
    rows = max(1, _CHUNK // max(x.shape[-1], 1))
    bits = torch.empty((min(rows, x.shape[0]), *x.shape[1:]), dtype=torch.int32, device=x.device)
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        fn(block).view(torch.int32).bitwise_and_(_mask_bits(mask[start : start + rows], bits[: block.shape[0]]))
