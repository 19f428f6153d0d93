"""SparsePO: TDPO with learned sparse token masks on the reward and the KL terms (and MaPO's activation masks)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tokencredit.masked import token_count, zero_outside
from tokencredit.needs import Needs
from tokencredit.pairs import Pairs
from tokencredit.preference.common import (
    Count,
    check_choice,
    check_logprob,
    check_nonnegative,
    check_positive,
    log_ratios,
    mean_over_pairs,
    nll_sigmoid,
    pair_stats,
    sequence_sum,
)
from tokencredit.preference.masks import LAYERS, mask_request
from tokencredit.registry import register

KL_TERMS = ("masked", "full", "none")
WHO = "preference 'sparsepo'"


def token_kl(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """`KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) = Σ_v π_ref(v) (log π_ref(v) − log π_θ(v))` per position, `[...]` from
    `[..., V]` logits of both models, in closed form over the vocabulary (SparsePO's and TDPO's token KL; the
    gradient flows to `logits`). The SparsePO loss takes it as `chosen_kl=` / `rejected_kl=`."""
    if ref_logits.shape != logits.shape:
        raise ValueError(f"logits: expected the shape of ref_logits {list(ref_logits.shape)}, got {list(logits.shape)}")
    ref = torch.log_softmax(ref_logits.detach().float(), -1)
    return (ref.exp() * (ref - torch.log_softmax(logits.float(), -1))).sum(-1)


def _needs(masks: nn.Module | str | dict | None = None, mask_on_reward: bool = True, kl_term: str = "masked",
           **_) -> Needs:
    """A mask given as data (`"sparse"`, `"activation"`, `{kind: ..., options}`: a config's) is a module for the
    caller to build and train (`Needs.modules`), reading the reference hidden states its `layers` option names."""
    modules = {} if masks is None or isinstance(masks, nn.Module) else {"masks": mask_request(masks)}
    uses_masks = masks is not None and (mask_on_reward or kl_term == "masked")
    reads = {LAYERS[modules["masks"].params["layers"]]} if modules else set(getattr(masks, "inputs", {"hidden"}))
    inputs = {"ref_logprob"} | (reads if uses_masks else set())
    return Needs(inputs=inputs, policy={"kl"} if kl_term != "none" else (), modules=modules)


@register("preference", "sparsepo", needs=_needs)
def sparsepo(
    pairs: Pairs,
    chosen_logprob: Tensor,
    rejected_logprob: Tensor,
    *,
    beta: float = 0.1,
    masks: nn.Module | None = None,
    mask_on_reward: bool = True,
    kl_term: str = "masked",
    lambda_u: float = 0.0,
    lambda_d: float = 0.0,
    chosen_kl: Tensor | None = None,
    rejected_kl: Tensor | None = None,
    num_pairs: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SparsePO (TDPO-1 with token masks): per response `U(y) = Σ_t m^u_t Δ_t(y)` and
    `D(y) = Σ_t m^d_t KL(π_ref(·|s_t) ‖ π_θ(·|s_t))`,

        ℓ_i = −log σ(β [U(y_w) − U(y_l) + D(y_w) − D(y_l)]) + λ_u (‖m^u(y_w)‖₁ + ‖m^u(y_l)‖₁)
                                                            + λ_d (‖m^d(y_w)‖₁ + ‖m^d(y_l)‖₁),

    `L = Σ_i ℓ_i / num_pairs` (‖m‖₁ sums over the response's tokens). The masks come from `masks`, a module called
    on the reference model's hidden states (`Pairs.extra["<side>_hidden"]`): `SparseTokenMasks` (learned, trained
    by this loss: not detached) or `ActivationMasks` (MaPO); from a config, `masks` is data (`"sparse"`,
    `"activation"` or a mapping, `masks.mask_request`), a module the caller builds and trains (`Needs.modules`).
    `mask_on_reward=False` sets m^u ≡ 1; `kl_term`:
    `"masked"` (m^d from `masks`), `"full"` (m^d ≡ 1, TDPO's sequential KL) or `"none"` (m^d ≡ 0, no KL).
    The per-token KL is a current-policy quantity (policy need `kl`): pass `chosen_kl [B,T_c]` and
    `rejected_kl [B,T_r]`, computed with gradient from both models' logits (`token_kl`).

    Source: "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token Masks" (Christopoulou et al.,
    Findings of EMNLP 2025); code `huawei-noah/HEBO`, `SparsePO/src/trainers/sparse_trainer.py`.
    Sign: the code's KL term is Σ_v π_ref (log π_θ − log π_ref) = −KL and its logit β(u − d) with
    d = (−D_w) − (−D_l), which is the logit above: TDPO-1's −log σ(u − δ), δ = β D(y_l) − β D(y_w).
    Choices: `masks=None` makes every mask 1; with one mask serving both terms (`masks` not independent,
    `mask_on_reward`, `kl_term="masked"`) the L1 coefficients are halved, as the code does; L1 terms apply to the
    masks `masks` produces only (a constant mask has no L1 gradient). Defaults: β = 0.1, λ_u = λ_d = 0 (the
    config's). Degenerate: m^u ≡ m^d ≡ 1 is TDPO-1; m^u ≡ 1, m^d ≡ 0 (`kl_term="none"`) is DPO; m^d ≡ 0 with a
    general m^u is token-weighted DPO.
    """
    check_positive("beta", beta)
    check_choice("kl_term", kl_term, KL_TERMS)
    check_nonnegative("lambda_u", lambda_u)
    check_nonnegative("lambda_d", lambda_d)
    delta_c, delta_r = log_ratios(pairs, chosen_logprob, rejected_logprob, WHO)
    dtype, cmask, rmask = delta_c.dtype, pairs.chosen_mask, pairs.rejected_mask
    learned = _masks(pairs, masks, dtype) if masks is not None and (mask_on_reward or kl_term == "masked") else None
    ones = (cmask.to(dtype), rmask.to(dtype))
    reward_masks = learned[0] if learned is not None and mask_on_reward else ones
    kl_masks = {"masked": learned[1] if learned is not None else ones, "full": ones, "none": None}[kl_term]

    u_c = sequence_sum(reward_masks[0] * delta_c, cmask)
    u_r = sequence_sum(reward_masks[1] * delta_r, rmask)
    logit = beta * (u_c - u_r)
    d_c = d_r = torch.zeros_like(u_c)
    if kl_masks is not None:
        kl_c, kl_r = _kl(pairs, chosen_kl, rejected_kl, kl_term, dtype)
        d_c, d_r = sequence_sum(kl_masks[0] * kl_c, cmask), sequence_sum(kl_masks[1] * kl_r, rmask)
        logit = logit + beta * (d_c - d_r)
    per_pair = nll_sigmoid(logit)
    if learned is not None:
        shared = not getattr(masks, "independent", False) and mask_on_reward and kl_term == "masked"
        scale = 0.5 if shared else 1.0
        if mask_on_reward and lambda_u:
            per_pair = per_pair + scale * lambda_u * (sequence_sum(reward_masks[0], cmask)
                                                      + sequence_sum(reward_masks[1], rmask))
        if kl_term == "masked" and lambda_d:
            per_pair = per_pair + scale * lambda_d * (sequence_sum(kl_masks[0], cmask)
                                                      + sequence_sum(kl_masks[1], rmask))
    tokens = (token_count(cmask, -1) + token_count(rmask, -1)).clamp(min=1)

    def density(m: tuple[Tensor, Tensor] | None) -> Tensor:
        if m is None:
            return torch.zeros_like(u_c)
        return (((m[0] > 0) & cmask).sum(-1) + ((m[1] > 0) & rmask).sum(-1)) / tokens

    stats = pair_stats(beta * u_c, beta * u_r, chosen_kl=d_c, rejected_kl=d_r,
                       reward_mask_density=density(reward_masks), kl_mask_density=density(kl_masks))
    return mean_over_pairs(per_pair, pairs, num_pairs), stats


def _masks(pairs: Pairs, masks: nn.Module, dtype: torch.dtype) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """`((m^u_w, m^u_l), (m^d_w, m^d_l))` from `masks` on each side's reference hidden states."""
    if not callable(masks):
        raise ValueError(f"masks: expected a mask module (e.g. SparseTokenMasks), got {type(masks).__name__}")
    hidden_c, hidden_r = pairs.require(getattr(masks, "input", "hidden"), WHO)
    out = []
    for hidden, mask in ((hidden_c, pairs.chosen_mask), (hidden_r, pairs.rejected_mask)):
        m = masks(hidden, mask)
        m = m if isinstance(m, tuple) else (m, m)
        out.append(tuple(zero_outside(x.to(dtype), mask) for x in m))
    (u_c, d_c), (u_r, d_r) = out
    return (u_c, u_r), (d_c, d_r)


def _kl(pairs: Pairs, chosen_kl: Tensor | None, rejected_kl: Tensor | None, kl_term: str,
        dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    out = []
    for name, x, mask, text in (("chosen_kl", chosen_kl, pairs.chosen_mask, "[B,T_c]"),
                                ("rejected_kl", rejected_kl, pairs.rejected_mask, "[B,T_r]")):
        if x is None:
            raise ValueError(f"{name}: {WHO} with kl_term={kl_term!r} needs the current policy's per-token "
                             f"KL(π_ref‖π_θ) {text} with gradient (token_kl of both models' logits); got None")
        check_logprob(name, x, mask, text)
        out.append(zero_outside(x.to(dtype), mask))
    return out[0], out[1]
