"""What every preference loss shares: input checks, the per-token log-ratio, the pair reduction and the stats.

Every loss of the `preference` stage is a mean of per-pair losses,

    L = (1/N) Σ_i ℓ_i,       N = num_pairs (the whole batch's pair count; default: this call's B),

so a batch split into micro-batches (or ranks), each called with the whole batch's `num_pairs=`, sums to the
full batch's loss and gradient exactly (the preference form of the RL stages' one aggregation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencredit.masked import masked_sum, token_count, zero_outside
from tokencredit.pairs import Pairs

Count = int | float | Tensor | None


def work_dtype(*xs: Tensor | None) -> torch.dtype:
    """float64 when any input is float64 (finite-difference tests), else float32 (bf16/fp16 inputs are promoted:
    the credit math runs in float32, as for `Rollouts`)."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in xs) else torch.float32


def check_logprob(name: str, x: object, mask: Tensor, shape_text: str) -> None:
    """A `ValueError` naming `name` unless `x` is a float tensor shaped like `mask`."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.shape != mask.shape:
        got = f"dtype {x.dtype}, shape {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a float tensor of shape {shape_text} = {list(mask.shape)}, got {got}")


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")


def check_nonnegative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative finite number, got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def policy_logprobs(pairs: Pairs, chosen_logprob: Tensor, rejected_logprob: Tensor) -> tuple[Tensor, Tensor]:
    """The current policy's per-token log-probs of both sides, checked (`[B,T_c]`, `[B,T_r]`) and 0 outside the
    masks (so finite garbage at padding neither enters the loss nor gets a gradient)."""
    if not isinstance(pairs, Pairs):
        raise ValueError(f"pairs: expected a tokencredit.Pairs, got {type(pairs).__name__}")
    check_logprob("chosen_logprob", chosen_logprob, pairs.chosen_mask, "[B,T_c]")
    check_logprob("rejected_logprob", rejected_logprob, pairs.rejected_mask, "[B,T_r]")
    dtype = work_dtype(chosen_logprob, rejected_logprob)
    return (zero_outside(chosen_logprob.to(dtype), pairs.chosen_mask),
            zero_outside(rejected_logprob.to(dtype), pairs.rejected_mask))


def side_inputs(pairs: Pairs, name: str, who: str, dtype: torch.dtype, *, default: float | None = None
                ) -> tuple[Tensor, Tensor]:
    """The per-side per-token input `name` (`Pairs.chosen_<name>`, `Pairs.rejected_<name>`) as constants
    (detached) of `dtype`, 0 outside the masks. A side that does not carry it is `default` on its mask, or, without
    a default, a `ValueError` naming the field and `who`."""
    out = []
    for side, x, mask in zip(("chosen", "rejected"), pairs.side(name), (pairs.chosen_mask, pairs.rejected_mask)):
        if x is None and default is None:
            pairs.require(name, who, sides=(side,))
        x = torch.full(mask.shape, default, dtype=dtype, device=mask.device) if x is None else x.detach().to(dtype)
        out.append(zero_outside(x, mask))
    return out[0], out[1]


def log_ratios(pairs: Pairs, chosen_logprob: Tensor, rejected_logprob: Tensor, who: str) -> tuple[Tensor, Tensor]:
    """`Δ_t(y) = log π_θ(y^t|s_t) − log π_ref(y^t|s_t)` of both sides, `[B,T_c]` and `[B,T_r]`, 0 outside the masks
    (the reference log-probs are constants)."""
    lc, lr = policy_logprobs(pairs, chosen_logprob, rejected_logprob)
    ref_c, ref_r = side_inputs(pairs, "ref_logprob", who, lc.dtype)
    return lc - ref_c, lr - ref_r


def implicit_token_reward(logprob: Tensor, ref_logprob: Tensor, mask: Tensor, beta: float = 0.1) -> Tensor:
    """The DPO implicit token reward `r̂_t = β·(log π(y^t|s_t) − log π_ref(y^t|s_t))`, `[B,T]`, 0 outside `mask`,
    detached. With `logprob` a DPO-trained policy's it is TGDPO's guidance reward (`Pairs.<side>_token_reward`);
    the rewards of a response sum to its sequence-level implicit reward.

    Source: "From r to Q*: Your Language Model is Secretly a Q-Function" (Rafailov et al., 2024)."""
    check_positive("beta", beta)
    check_logprob("logprob", logprob, mask, "[B,T]")
    check_logprob("ref_logprob", ref_logprob, mask, "[B,T]")
    dtype = work_dtype(logprob, ref_logprob)
    return zero_outside(beta * (logprob.detach().to(dtype) - ref_logprob.detach().to(dtype)), mask)


def pair_count(pairs: Pairs, num_pairs: Count) -> float:
    """N, the denominator of the pair mean: `num_pairs` (the whole batch's pair count when this call sees a
    micro-batch of it, so at least this call's B) or this call's B; at least 1 (an empty batch's loss is 0)."""
    b = pairs.num_pairs
    if num_pairs is None:
        return float(max(b, 1))
    value = float(num_pairs.item() if isinstance(num_pairs, Tensor) else num_pairs)
    if isinstance(num_pairs, bool) or not math.isfinite(value) or value < b:
        raise ValueError(f"num_pairs: expected the whole batch's pair count (at least this call's B = {b}), "
                         f"got {num_pairs!r}")
    return max(value, 1.0)


def mean_over_pairs(per_pair: Tensor, pairs: Pairs, num_pairs: Count) -> Tensor:
    """`Σ_i ℓ_i / N` (see `pair_count`)."""
    return per_pair.sum() / pair_count(pairs, num_pairs)


def nll_sigmoid(logit: Tensor) -> Tensor:
    """`−log σ(z)`, stable for any finite z (softplus(−z))."""
    return F.softplus(-logit)


def sequence_sum(x: Tensor, mask: Tensor) -> Tensor:
    return masked_sum(x, mask, -1)


def sequence_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over each row's tokens; 0 for an empty row."""
    return masked_sum(x, mask, -1) / token_count(mask, -1).clamp(min=1).to(x.dtype)


def pair_stats(chosen_reward: Tensor, rejected_reward: Tensor, **extra: Tensor) -> dict[str, Tensor]:
    """Detached means over this call's pairs (0 for an empty batch): the implicit rewards of both sides, their
    margin and the fraction of pairs where the chosen reward is higher (`accuracy`), and any `extra` [B] entries."""
    def mean(x: Tensor) -> Tensor:
        x = x.detach().float()
        return x.sum() / max(x.numel(), 1)

    margin = chosen_reward - rejected_reward
    out = {"chosen_reward": mean(chosen_reward), "rejected_reward": mean(rejected_reward), "margin": mean(margin),
           "accuracy": mean((margin > 0).float())}
    return out | {k: mean(v) for k, v in extra.items()}


def weighted_rewards(delta_chosen: Tensor, delta_rejected: Tensor, pairs: Pairs, beta: float,
                     chosen_weight: Tensor | float = 1.0, rejected_weight: Tensor | float = 1.0
                     ) -> tuple[Tensor, Tensor]:
    """The token-weighted implicit rewards `β Σ_t a_t Δ_t(y_w)` and `β Σ_t b_t Δ_t(y_l)`, `[B]` each; the logit of
    the generic token-weighted DPO (spec §0) is their difference (minus an offset δ where a loss has one)."""
    return (beta * sequence_sum(chosen_weight * delta_chosen, pairs.chosen_mask),
            beta * sequence_sum(rejected_weight * delta_rejected, pairs.rejected_mask))
