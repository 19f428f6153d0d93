"""The pieces every policy objective shares: the clamped log-ratio, PPO's clipped surrogate, ratio statistics."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.masked import masked_mean, zero_outside


def log_ratio(logprob: Tensor, old_logprob: Tensor) -> Tensor:
    """`log π_θ − log π_old`, clamped to ±20 so exp never overflows."""
    return (logprob - old_logprob).clamp(-20.0, 20.0)


def clipped_surrogate(
    ratio: Tensor,
    advantage: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's per-token loss `ℓ = max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high))`, 0 outside `mask`; with dual clip
    c > 1, `ℓ ← min(ℓ, −c·A)` where A < 0 ("Mastering Complex Control in MOBA Games with Deep RL", Ye et al.
    2020)."""
    unclipped = -advantage * ratio
    clipped = -advantage * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).float(), mask),
        "clip_frac_low": masked_mean(((ratio < 1.0 - clip_low) & (advantage < 0)).float(), mask),
        "clip_frac_high": masked_mean(((ratio > 1.0 + clip_high) & (advantage > 0)).float(), mask),
    }
    if dual_clip is not None:
        capped = torch.minimum(loss, -dual_clip * advantage)
        stats["dual_clip_frac"] = masked_mean(((advantage < 0) & (capped < loss)).float(), mask)
        loss = torch.where(advantage < 0, capped, loss)
    return zero_outside(loss, mask), stats


def check_clip(clip_low: float, clip_high: float, dual_clip: float | None = None) -> None:
    """Clip ranges are non-negative (ε_low ≥ 1 leaves ratios below 1 unclipped); a dual clip constant is > 1."""
    if clip_low < 0.0 or clip_high < 0.0:
        raise ValueError(f"clip_low, clip_high: expected ranges ≥ 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip: expected a constant > 1, got {dual_clip}")


def ratio_stats(log_r: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """`approx_kl` = mean of `1/r − 1 + log r` (`kl.k3` with π_old as the reference, x = log r: k3(π_θ ‖ π_old) in
    that module's notation) and the largest |r − 1| over the mask (1e-4 at the first on-policy epoch is the
    trainer's correctness check)."""
    ratio = log_r.exp()
    dev = zero_outside((ratio - 1.0).abs(), mask).amax() if mask.numel() else ratio.new_zeros(())
    return {"approx_kl": masked_mean(torch.expm1(-log_r) + log_r, mask), "ratio_max_dev": dev}


def detached(stats: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in stats.items()}
