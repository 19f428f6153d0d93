"""Per-token KL estimators between the current policy π and a reference π_ref, from sampled-token log-probs.

With `x = log π(o_t) − log π_ref(o_t)` (samples from π):  k1 = x,  abs = |x|,  k2 = x²/2,
k3 = exp(−x) − 1 + x (unbiased and non-negative). Source: J. Schulman, "Approximating KL Divergence" (2020);
names as in verl's `kl_penalty`. x is clamped to [−20, 20] so that k3 stays finite (verl's `low_var_kl`
clamps the result to ±10 instead; the gradient differs only for absurd ratios).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.needs import Needs
from tokencredit.registry import register

REFERENCE = Needs(inputs={"ref_logprob"})


def _log_ratio(logprob: Tensor, ref_logprob: Tensor) -> Tensor:
    return (logprob - ref_logprob).clamp(-20.0, 20.0)


@register("kl", "k1", needs=REFERENCE)
def k1(logprob: Tensor, ref_logprob: Tensor) -> Tensor:
    """k1 = log π − log π_ref."""
    return _log_ratio(logprob, ref_logprob)


@register("kl", "abs", needs=REFERENCE)
def abs_kl(logprob: Tensor, ref_logprob: Tensor) -> Tensor:
    """abs = |log π − log π_ref|."""
    return _log_ratio(logprob, ref_logprob).abs()


@register("kl", "k2", needs=REFERENCE)
def k2(logprob: Tensor, ref_logprob: Tensor) -> Tensor:
    """k2 = ½ (log π − log π_ref)²."""
    return 0.5 * _log_ratio(logprob, ref_logprob) ** 2


@register("kl", "k3", needs=REFERENCE)
def k3(logprob: Tensor, ref_logprob: Tensor) -> Tensor:
    """k3 = π_ref/π − 1 − log(π_ref/π)."""
    x = _log_ratio(logprob, ref_logprob)
    return torch.expm1(-x) + x
