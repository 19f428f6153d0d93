"""Recipes: a choice per stage plus its parameters; presets name the published methods.

    credit = recipe.credit(rollouts, progress)        # shape → advantage → select → weight (given keep)
    loss, stats = recipe.loss(logprob, rollouts, credit)   # objective + aggregation (+ KL, entropy bonus)

A parameter may follow training progress p ∈ [0,1]: give `{"start": a, "end": b}` (linear) instead of a
number, e.g. `weight_params={"top": {"start": 0.1, "end": 0.5}}`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from tokencredit.masked import zero_outside
from tokencredit.objective.aggregate import aggregation_weight, weighted_token_sum
from tokencredit.registry import get, names
from tokencredit.rollouts import Credit, Rollouts

Params = dict[str, Any]


def at_progress(params: Params, progress: float) -> Params:
    """Resolve `{"start": a, "end": b}` entries to `(1−p)·a + p·b`."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and set(value) == {"start", "end"}:
            value = (1.0 - progress) * value["start"] + progress * value["end"]
        out[key] = value
    return out


class Recipe(BaseModel):
    """A choice of function per stage (names from `tokencredit.methods()`) and their parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    shape: str = "outcome"
    advantage: str = "grpo"
    weight: str | None = None
    select: str | None = None
    objective: str = "ppo_clip"
    agg: str = "token_mean"
    kl: str | None = None
    kl_coef: float = Field(0.0, ge=0.0)
    entropy_coef: float = 0.0
    shape_params: Params = Field(default_factory=dict)
    advantage_params: Params = Field(default_factory=dict)
    weight_params: Params = Field(default_factory=dict)
    select_params: Params = Field(default_factory=dict)
    objective_params: Params = Field(default_factory=dict)
    agg_params: Params = Field(default_factory=dict)

    @field_validator("shape", "advantage", "weight", "select", "objective", "kl")
    @classmethod
    def _registered(cls, value: str | None, info) -> str | None:
        if value is not None:
            get(info.field_name, value)  # raises ValueError listing the registered names
        return value

    @field_validator("agg")
    @classmethod
    def _registered_agg(cls, value: str) -> str:
        get("aggregate", value)
        return value

    @model_validator(mode="after")
    def _kl_needs_estimator(self) -> Recipe:
        if self.kl_coef > 0 and self.kl is None:
            raise ValueError("kl: kl_coef > 0 needs an estimator name, one of " + str(names("kl")))
        return self

    def shaped(self, rollouts: Rollouts, progress: float = 0.0) -> Rollouts:
        """`rollouts` with the shape stage's token rewards as `reward`."""
        # every stage reads a [B] reward as the outcome shape's token rewards: skip building that [B,T] tensor
        # (an empty response then keeps its reward in its group's statistics; the shape has nowhere to put it)
        if self.shape == "outcome" and rollouts.reward.dim() == 1:
            return rollouts
        return replace(rollouts, reward=get("shape", self.shape)(rollouts, **at_progress(self.shape_params, progress)))

    def credit(self, rollouts: Rollouts, progress: float = 0.0) -> Credit:
        """Token rewards, then advantage `[B,T]`, keep `[B]` and weight `[B,T]` (the weight stage is handed `keep=`),
        all 0 outside mask."""
        mask = rollouts.mask
        shaped = self.shaped(rollouts, progress)
        advantage = get("advantage", self.advantage)(shaped, **at_progress(self.advantage_params, progress))
        advantage = zero_outside(advantage, mask)
        keep = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
        if self.select is not None:
            keep = get("select", self.select)(shaped, advantage, **at_progress(self.select_params, progress))
        weight = mask.float()
        if self.weight is not None:  # after select: a batch-level token quantile counts the kept responses only
            weight_fn = get("weight", self.weight)
            params = at_progress(self.weight_params, progress)
            if _takes_keep(weight_fn):  # weight functions written before `keep=` existed still work
                params["keep"] = keep
            weight = zero_outside(weight_fn(shaped, advantage, **params), mask)
        return Credit(advantage=advantage, weight=weight, keep=keep)

    def aggregation_weight(self, rollouts: Rollouts, credit: Credit) -> Tensor:
        """Per-response aggregation coefficients `[B]` of the whole batch (slice them for micro-batches)."""
        mask = rollouts.mask & credit.keep[:, None]
        return aggregation_weight(
            self.agg, mask, advantage=credit.advantage, group=rollouts.group, **self.agg_params
        )

    def loss(
        self,
        logprob: Tensor,
        rollouts: Rollouts,
        credit: Credit,
        *,
        entropy: Tensor | None = None,
        seq_weight: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss and stats. `logprob [B,T]`: current policy's log-probs of the sampled tokens (with grad).
        `entropy [B,T]`: current policy's token entropy (needed when `entropy_coef != 0`). `seq_weight [B]`:
        the whole batch's aggregation coefficients when this call sees one micro-batch of it."""
        if logprob.shape != rollouts.mask.shape:
            raise ValueError(f"logprob: expected shape [B,T] = {list(rollouts.mask.shape)}, got {list(logprob.shape)}")
        if rollouts.logprob is None:
            raise ValueError("Rollouts.logprob: the objective needs behaviour log-probs [B,T]; got None")
        mask = rollouts.mask & credit.keep[:, None]
        if seq_weight is None:
            seq_weight = self.aggregation_weight(rollouts, credit)
        loss, stats = get("objective", self.objective)(
            logprob, rollouts.logprob, credit.advantage, mask,
            agg=self.agg, weight=credit.weight, group=rollouts.group, seq_weight=seq_weight,
            **self.objective_params,
        )
        if self.kl_coef > 0:
            if rollouts.ref_logprob is None:
                raise ValueError("Rollouts.ref_logprob: kl_coef > 0 needs reference log-probs [B,T]; got None")
            kl = weighted_token_sum(get("kl", self.kl)(logprob, rollouts.ref_logprob), mask, seq_weight)
            loss = loss + self.kl_coef * kl
            stats["kl"] = kl.detach()
        if self.entropy_coef != 0:
            if entropy is None:
                raise ValueError("entropy: entropy_coef != 0 needs the current policy's entropy [B,T]; got None")
            ent = weighted_token_sum(entropy, mask, seq_weight)
            loss = loss - self.entropy_coef * ent
            stats["entropy"] = ent.detach()
        stats["kept_frac"] = credit.keep.float().mean()
        return loss, stats


def _takes_keep(fn: Callable[..., Tensor]) -> bool:
    parameters = inspect.signature(fn).parameters.values()
    return any(p.name == "keep" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


PRESETS: dict[str, dict[str, Any]] = {
    # GRPO: "DeepSeekMath" (Shao et al., 2024)
    "grpo": dict(advantage="grpo", agg="seq_mean_token_mean"),
    # Dr.GRPO: "Understanding R1-Zero-Like Training" (Liu et al., 2025)
    "dr_grpo": dict(advantage="dr_grpo", agg="seq_mean_token_sum_norm"),
    # DAPO: clip-higher, dynamic sampling, token-level loss (Yu et al., 2025)
    "dapo": dict(advantage="grpo", select="dynamic_filter", agg="token_mean",
                 objective_params={"clip_low": 0.2, "clip_high": 0.28}),
    # RLOO: "Back to Basics" (Ahmadian et al., 2024)
    "rloo": dict(advantage="rloo", agg="token_mean"),
    # REINFORCE++ (Hu, 2025)
    "reinforce_pp": dict(advantage="reinforce_pp", agg="token_mean"),
    # GSPO: "Group Sequence Policy Optimization" (Zheng et al., 2025)
    "gspo": dict(advantage="grpo", objective="gspo", agg="seq_mean_token_mean"),
    # PPO with a critic and GAE (Schulman et al., 2017)
    "ppo": dict(advantage="gae", agg="token_mean"),
    # Balanced Aggregation (Zeng et al., 2026)
    "ba": dict(advantage="grpo", agg="balanced"),
    # Negative samples only: GRPO-N / NSR (Yao et al., 2025; Zhu et al., 2025)
    "nsr": dict(advantage="grpo", objective="negative_only", agg="token_mean"),
    # TEMPO: prefix-tree TD credit at branching tokens ("Exploiting Tree Structure for Credit Assignment", 2025)
    "tempo": dict(advantage="tempo", agg="seq_mean_token_mean"),
    # SPO-chain: Monte-Carlo segment values at low-probability cut points ("Segment Policy Optimization", 2025)
    "spo_chain": dict(advantage="spo_chain", agg="token_mean",
                      advantage_params={"threshold": 0.9, "interval": 5, "max_cuts": 25, "mc_samples": 9}),
    # SPO-tree: edge values from a sampled tree of segments (same paper); each edge trained once, constant normaliser
    "spo_tree": dict(advantage="spo_tree", agg="seq_mean_token_sum_norm",
                     advantage_params={"branching": [6, 6, 6], "segment_tokens": 30, "mode": "rloo"}),
    # Forking tokens: DAPO on the top-20% entropy tokens ("Beyond the 80/20 Rule", Wang et al., 2025)
    "forking": dict(advantage="grpo", select="dynamic_filter", weight="forking_tokens", agg="token_mean",
                    weight_params={"top": 0.2}, objective_params={"clip_low": 0.2, "clip_high": 0.28}),
    # STEER: damp tokens by their estimated entropy change; dual-clip PPO, clip-higher, token mean ("Rethinking
    # Entropy Interventions in RLVR", Hao et al., 2025)
    "steer": dict(advantage="grpo", weight="steer", agg="token_mean", weight_params={"w_min": 0.8},
                  objective_params={"clip_low": 0.2, "clip_high": 0.28, "dual_clip": 10.0}),
    # D³S: the max-variance half of the batch's responses and their top-20% |A|·H tokens, both relaxed linearly
    # to the whole batch ("Learning More with Less", Wang et al., 2025; the paper's schedule is not published, so
    # it ends at plain GRPO)
    "d3s": dict(advantage="grpo", select="d3s_samples", weight="d3s_tokens", agg="seq_mean_token_mean",
                select_params={"fraction": {"start": 0.5, "end": 1.0}},
                weight_params={"top": {"start": 0.2, "end": 1.0}}),
}


def recipe(name: str, **overrides: Any) -> Recipe:
    """The preset `name` with `overrides` applied (any `Recipe` field), validated."""
    if name not in PRESETS:
        raise ValueError(f"recipe: unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return Recipe(**{"name": name, **PRESETS[name], **overrides})


def register_preset(name: str, **fields: Any) -> None:
    """Add a named preset (used by method modules outside the core, e.g. `tempo`)."""
    Recipe(name=name, **fields)  # validate now, not at first use
    PRESETS[name] = fields
