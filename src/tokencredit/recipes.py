"""Recipes: a choice per stage plus its parameters; presets name the published methods.

    needs = recipe.needs(progress)                     # what the caller must supply (tokencredit.needs)
    credit = recipe.credit(rollouts, progress)         # shape → advantage → select → token_select → weight
    loss, stats = recipe.loss(logprob, rollouts, credit)   # objective · weight + KL − entropy, aggregated once

A parameter may follow training progress p ∈ [0,1]: give `{"start": a, "end": b}` (linear) instead of a
number, e.g. `weight_params={"top": {"start": 0.1, "end": 0.5}}`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import Tensor

from tokencredit.masked import masked_mean, rows_kept, token_count, zero_outside
from tokencredit.needs import INPUTS, Needs
from tokencredit.objective.aggregate import weighted_token_sum
from tokencredit.registry import accepted, check_params, get, names, needs_of, parameters
from tokencredit.rollouts import Credit, Rollouts

Params = dict[str, Any]

# stage → (the Recipe field naming its function, the field holding its parameters)
STAGE_FIELDS: dict[str, tuple[str, str | None]] = {
    "shape": ("shape", "shape_params"),
    "advantage": ("advantage", "advantage_params"),
    "select": ("select", "select_params"),
    "token_select": ("token_select", "token_select_params"),
    "weight": ("weight", "weight_params"),
    "objective": ("objective", "objective_params"),
    "aggregate": ("agg", "agg_params"),
    "kl": ("kl", None),
}
CREDIT_STAGES = ("shape", "advantage", "select", "token_select", "weight")


def is_schedule(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"start", "end"}


def at_progress(params: Params, progress: float) -> Params:
    """Resolve `{"start": a, "end": b}` entries to `(1−p)·a + p·b`."""
    return {k: (1.0 - progress) * v["start"] + progress * v["end"] if is_schedule(v) else v for k, v in params.items()}


class Recipe(BaseModel):
    """A choice of function per stage (names from `tokencredit.methods()`) and their parameters, checked when the
    recipe is made: unknown names and parameters are errors naming the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    shape: str = "outcome"
    advantage: str = "grpo"
    select: str | None = None
    token_select: str | None = None
    weight: str | None = None
    objective: str = "ppo_clip"
    agg: str = "token_mean"
    kl: str | None = None
    kl_coef: float = Field(0.0, ge=0.0)
    entropy_coef: float = 0.0
    shape_params: Params = Field(default_factory=dict)
    advantage_params: Params = Field(default_factory=dict)
    select_params: Params = Field(default_factory=dict)
    token_select_params: Params = Field(default_factory=dict)
    weight_params: Params = Field(default_factory=dict)
    objective_params: Params = Field(default_factory=dict)
    agg_params: Params = Field(default_factory=dict)

    @field_validator("shape", "advantage", "select", "token_select", "weight", "objective", "agg", "kl")
    @classmethod
    def _registered(cls, value: str | None, info) -> str | None:
        if value is not None:
            stage = next(s for s, (f, _) in STAGE_FIELDS.items() if f == info.field_name)
            get(stage, value)  # raises ValueError listing the registered names
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.kl_coef > 0 and self.kl is None:
            raise ValueError("kl: kl_coef > 0 needs an estimator name, one of " + str(names("kl")))
        for stage, (name_field, params_field) in STAGE_FIELDS.items():
            name = getattr(self, name_field)
            params = getattr(self, params_field) if params_field else {}
            if params and name is None:
                raise ValueError(f"{params_field}: parameters given but no {stage} stage is chosen")
            if name is not None:
                _check_params(stage, name, params_field, params)
        self.needs()  # conflicting needs (two rollout shapes, two value sources) are an error now
        return self

    # ------------------------------------------------------------------------------------------ needs
    def stages(self, progress: float = 0.0) -> list[tuple[str, str, Params]]:
        """`(stage, function name, parameters at progress)` of every stage this recipe runs."""
        out = []
        for stage, (name_field, params_field) in STAGE_FIELDS.items():
            name = getattr(self, name_field)
            if name is not None and (stage != "kl" or self.kl_coef > 0):
                out.append((stage, name, at_progress(getattr(self, params_field), progress) if params_field else {}))
        return out

    def needs(self, progress: float = 0.0, stages: tuple[str, ...] | None = None) -> Needs:
        """Everything a caller must supply for `credit` and `loss` at training progress `progress` (or only what
        `stages` need, e.g. `CREDIT_STAGES`: what `credit` reads)."""
        needs = Needs(policy={"entropy"} if self.entropy_coef != 0 and stages is None else ())
        for stage, name, params in self.stages(progress):
            if stages is None or stage in stages:
                needs = needs.merged(needs_of(stage, name, params), f"{stage} {name!r}")
        return needs

    def _check(self, rollouts: Rollouts, stages: tuple[str, ...], progress: float, signals: dict[str, Any]) -> None:
        """A `ValueError` naming the first input or signal that `stages` need and the caller did not supply."""
        for stage, name, params in self.stages(progress):
            if stage not in stages:
                continue
            needs = needs_of(stage, name, params)
            who = f"{stage} {name!r} (recipe {self.name!r})"
            for field in sorted(needs.inputs) + (["value"] if needs.values is not None else []):
                if rollouts.input(field) is None:
                    what = INPUTS.get(field, f"the per-token input {field!r} [B,T,...] in Rollouts.extra")
                    if field == "value" and needs.values is not None:
                        what += f" from the {needs.values.name!r} value source"
                    raise ValueError(f"Rollouts.{field}: {who} needs {what}; got None")
            missing = sorted(needs.signals - {"progress"} - set(signals))
            if missing:
                raise ValueError(f"{missing[0]}: {who} needs the training signal {missing[0]!r}; pass credit(..., "
                                 f"{missing[0]}=...)")

    # ------------------------------------------------------------------------------------------ credit
    def _run(self, stage: str, *args: Any, progress: float, signals: dict[str, Any], **context: Any) -> Any:
        """Call the chosen function of `stage` on `args` with the `context` it takes, its parameters at `progress`
        (which override context entries of the same name) and the signals it declares."""
        name_field, params_field = STAGE_FIELDS[stage]
        name = getattr(self, name_field)
        fn = get(stage, name)
        params = at_progress(getattr(self, params_field), progress) if params_field else {}
        needs = needs_of(stage, name, params)
        declared = {s: progress if s == "progress" else signals[s] for s in needs.signals}
        return fn(*args, **accepted(fn, {**context, **params, **declared}))

    def shaped(self, rollouts: Rollouts, progress: float = 0.0, **signals: Any) -> Rollouts:
        """`rollouts` with the shape stage's token rewards as `reward`."""
        # every stage reads a [B] reward as the outcome shape's token rewards: skip building that [B,T] tensor
        # (an empty response then keeps its reward in its group's statistics; the shape has nowhere to put it)
        if self.shape == "outcome" and rollouts.reward.dim() == 1:
            return rollouts
        return rollouts.with_inputs(reward=self._run("shape", rollouts, progress=progress, signals=signals))

    def credit(self, rollouts: Rollouts, progress: float = 0.0, **signals: Any) -> Credit:
        """Token rewards, then advantage `[B,T]`, keep `[B]`, token keep `[B,T]` and weight `[B,T]` (the weight stage
        is handed `keep=` the tokens in the loss), all 0 / False outside mask. `signals`: training signals that
        stages declare (e.g. `accuracy=`); a missing input or signal is a `ValueError` naming it."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress: expected training progress in [0, 1], got {progress}")
        self._check(rollouts, CREDIT_STAGES, progress, signals)
        run = {"progress": progress, "signals": signals}
        mask = rollouts.mask
        shaped = self.shaped(rollouts, progress, **signals)
        advantage = zero_outside(self._run("advantage", shaped, **run), mask)
        keep = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
        if self.select is not None:
            keep = self._run("select", shaped, advantage, **run)
        token_keep = mask
        if self.token_select is not None:
            token_keep = mask & self._run("token_select", shaped, advantage, **run)
        weight = mask.float()
        if self.weight is not None:  # after selection: a batch-level token quantile counts the tokens in the loss
            in_loss = token_keep if self.select is None else rows_kept(token_keep, keep)  # no select: every row kept
            weight = zero_outside(self._run("weight", shaped, advantage, keep=in_loss, **run), mask)
        return Credit(advantage=advantage, weight=weight, keep=keep, token_keep=token_keep, progress=progress)

    # ------------------------------------------------------------------------------------------ loss
    def coefficients(self, rollouts: Rollouts, credit: Credit) -> Tensor:
        """Per-response aggregation coefficients `c [B]` of the whole batch (slice them for micro-batches)."""
        self._check(rollouts, ("aggregate",), credit.progress, {})
        return self._run("aggregate", credit.loss_mask(rollouts.mask), progress=credit.progress, signals={},
                         advantage=credit.advantage, group=rollouts.group, budget=rollouts.budget)

    def loss(
        self,
        logprob: Tensor,
        rollouts: Rollouts,
        credit: Credit,
        *,
        coef: Tensor | None = None,
        **policy: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss `Σ_i c_i Σ_t m_{i,t} (w_{i,t} ℓ_{i,t} + β·kl_{i,t} − α·H_{i,t})` and stats, over the tokens in
        the loss (`credit.loss_mask`). `logprob [B,T]`: the current policy's log-probs of the sampled tokens (with
        grad). `policy`: the current-policy quantities `needs().policy` names (e.g. `entropy=` `[B,T]`, needed when
        `entropy_coef != 0`). `coef [B]`: the whole batch's coefficients when this call sees a micro-batch of it."""
        if logprob.shape != rollouts.mask.shape:
            raise ValueError(f"logprob: expected shape [B,T] = {list(rollouts.mask.shape)}, got {list(logprob.shape)}")
        self._check(rollouts, ("objective", "kl"), credit.progress, {})
        policy = {k: v for k, v in policy.items() if v is not None}
        missing = sorted(self.needs(credit.progress).policy - set(policy))
        if missing:
            raise ValueError(f"{missing[0]}: recipe {self.name!r} needs the current policy's {missing[0]} [B,T]; "
                             f"pass loss(..., {missing[0]}=...)")
        mask = credit.loss_mask(rollouts.mask)
        if coef is None:
            coef = self.coefficients(rollouts, credit)
        run = {"progress": credit.progress, "signals": {}}
        per_token, stats = self._run("objective", logprob, rollouts.logprob, credit.advantage, mask, **run, **policy)
        per_token = per_token * credit.weight
        if self.kl_coef > 0:
            kl = self._run("kl", logprob, rollouts.ref_logprob, **run)
            per_token = per_token + self.kl_coef * kl
            stats["kl"] = masked_mean(kl.detach(), mask)
        if self.entropy_coef != 0:
            per_token = per_token - self.entropy_coef * policy["entropy"]
            stats["entropy"] = masked_mean(policy["entropy"].detach(), mask)
        stats["tokens"] = token_count(mask).float()
        stats["advantage_mean"] = masked_mean(credit.advantage, mask)
        stats["kept_frac"] = credit.keep.float().mean()
        return weighted_token_sum(per_token, mask, coef), stats


def _check_params(stage: str, name: str, params_field: str | None, params: Params) -> None:
    """Every key of `params` is a parameter of the stage; every schedule is `{"start": number, "end": number}`;
    the values pass the stage's registered check (at both ends of every schedule)."""
    known, anything = parameters(stage, name)
    for key, value in params.items():
        if not anything and key not in known:
            raise ValueError(f"{params_field}: {stage} {name!r} has no parameter {key!r}; it takes {sorted(known)}")
        if isinstance(value, dict) and not (is_schedule(value) and all(_finite(v) for v in value.values())):
            raise ValueError(f"{params_field}.{key}: a schedule is {{'start': number, 'end': number}}, got {value!r}")
    scheduled = any(is_schedule(v) for v in params.values())
    for progress in (0.0, 1.0) if scheduled else (0.0,):
        try:
            check_params(stage, name, at_progress(params, progress))
        except ValueError as err:
            at = f" at progress {progress:g}" if scheduled else ""
            raise ValueError(f"{params_field or stage}: {stage} {name!r}{at}: {err}") from err


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


PRESETS: dict[str, dict[str, Any]] = {
    # GRPO: "DeepSeekMath" (Shao et al., 2024)
    "grpo": dict(advantage="grpo", agg="seq_mean_token_mean"),
    # Dr.GRPO: "Understanding R1-Zero-Like Training" (Liu et al., 2025)
    "dr_grpo": dict(advantage="dr_grpo", agg="seq_mean_token_sum_norm"),
    # DAPO: clip-higher, dynamic sampling, token-level loss, overlong filtering and soft overlong punishment over
    # the last 20% of the generation budget (Yu et al., 2025)
    "dapo": dict(advantage="grpo", select="dynamic_filter", agg="token_mean", shape="overlong",
                 shape_params={"cache": 0.2}, select_params={"drop_truncated": True},
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
    # (the probability mask: tokens with π_old ≥ 0.9 leave the loss and its normaliser, as SPO's trainer does)
    "spo_chain": dict(advantage="spo_chain", agg="token_mean", token_select="low_probability",
                      advantage_params={"threshold": 0.9, "interval": 5, "max_cuts": 25, "mc_samples": 9},
                      token_select_params={"threshold": 0.9}),
    # SPO-tree: edge values from a sampled tree of segments (same paper); each edge trained once, constant normaliser
    "spo_tree": dict(advantage="spo_tree", agg="seq_mean_token_sum_norm", token_select="low_probability",
                     advantage_params={"branching": [6, 6, 6], "segment_tokens": 30, "mode": "rloo"},
                     token_select_params={"threshold": 0.9}),
    # Forking tokens: DAPO on the top-20% entropy tokens ("Beyond the 80/20 Rule", Wang et al., 2025)
    "forking": dict(weight="forking_tokens", weight_params={"top": 0.2}),
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


PRESETS["forking"] = {**PRESETS["dapo"], **PRESETS["forking"]}


def recipe(name: str, **overrides: Any) -> Recipe:
    """The preset `name` with `overrides` applied (any `Recipe` field), validated."""
    if name not in PRESETS:
        raise ValueError(f"recipe: unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return Recipe(**{"name": name, **PRESETS[name], **overrides})


def register_preset(name: str, **fields: Any) -> None:
    """Add a named preset (used by method modules outside the core, e.g. `tempo`)."""
    Recipe(name=name, **fields)  # validate now, not at first use
    PRESETS[name] = fields


def validation_messages(err: ValidationError) -> list[str]:
    """One `field: message` per error of a pydantic `ValidationError` (a `Recipe`'s, or any config model's): no
    input echo, no URL, so that callers can report a bad recipe or config on one line. A message that already
    starts with its field (a validator naming it) is not prefixed twice."""
    out = []
    for e in err.errors():
        loc = ".".join(map(str, e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(f"{loc}: {msg}" if loc and not msg.startswith(f"{loc}: ") else msg)
    return out
