"""Property tests of the tensor contract (DESIGN.md, "Tensor conventions") for every registered stage function
and every preset recipe, on degenerate-but-valid batches.

The stage functions are discovered through `tc.methods()`, so a newly registered stage is covered without
editing this file. Each stage is called with the signature `Recipe.credit` / `Recipe.loss` use:

    shape, advantage      fn(rollouts)                                   -> [B,T] float, 0 outside mask
    select                fn(rollouts, advantage)                        -> [B] bool
    token_select          fn(rollouts, advantage)                        -> [B,T] bool, False outside mask
    weight                fn(rollouts, advantage, keep=[B,T])            -> [B,T] float, 0 outside mask
    objective             fn(logprob, old_logprob, advantage, mask, ...) -> ([B,T] loss, 0 outside mask; stats)
    aggregate             fn(mask, <advantage=, group=, budget= it reads>) -> coefficients [B]
    kl                    fn(logprob, ref_logprob)                       -> [B,T]

    preference            fn(pairs, chosen_logprob [B,T_c], rejected_logprob [B,T_r], num_pairs=, <policy needs>)
                                                                         -> (scalar loss, stats)

A function that needs an optional `Rollouts` field (gae: value, forking_tokens: entropy, ...) may refuse a
batch without it, but only with a `ValueError` naming `Rollouts.<field>`; it is then called again on the same
batch with every optional field present. Preference losses likewise, naming `Pairs.<field>`; a policy need `q`
they declare (`Needs.policy`) is passed as `chosen_q=` / `rejected_q=` tensors with gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tokencredit as tc
from tokencredit import Pairs, Rollouts
from tokencredit.objective import policy_loss
from tokencredit.objective.aggregate import aggregate, coefficients, weighted_token_sum
from tokencredit.preference import ActivationMasks, ContrastivePromptRewards, CriticalTokenRewards, SparseTokenMasks
from tokencredit.registry import needs_of

OPTIONAL = ("tokens", "logprob", "ref_logprob", "entropy", "value", "truncated", "budget")
TOKEN_STAGES = ("shape", "advantage")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------ strategy

FAMILIES = ("equal", "binary", "huge", "tiny", "mixed")
_HUGE = st.builds(lambda m, s: m * s, st.floats(1e6, 1e8), st.sampled_from([1.0, -1.0]))
_TINY = st.sampled_from([0.0, 1e-8, -1e-8, 2e-8, 5e-9])
_ANY = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5]), _HUGE, _TINY, st.floats(-10.0, 10.0))


def _reward_values(draw, family: str, n: int) -> list[float]:
    if family == "equal":
        return [draw(st.sampled_from([0.0, 1.0, -1.0, 1e-8, 3e7, -1e8]))] * n
    element = {"binary": st.sampled_from([0.0, 1.0]), "huge": _HUGE, "tiny": _TINY, "mixed": _ANY}[family]
    return draw(st.lists(element, min_size=n, max_size=n))


@dataclass(frozen=True)
class Case:
    rollouts: Rollouts  # optional fields present or not, as drawn
    full: Rollouts  # the same batch with every optional field present
    seed: int
    description: str

    @property
    def mask(self) -> torch.Tensor:
        return self.rollouts.mask

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + salt)


@st.composite
def cases(draw) -> Case:
    b = draw(st.integers(1, 12))
    t = draw(st.integers(0, 9))
    pool = draw(st.one_of(st.just([3, 7, 100]), st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=4,
                                                          unique=True)))
    ids = [draw(st.sampled_from(pool)) for _ in range(b)]
    small = all(abs(i) < 2**31 for i in ids)
    group = torch.tensor(ids, dtype=draw(st.sampled_from([torch.int64, torch.int32])) if small else torch.int64)
    lengths = [draw(st.one_of(st.just(0), st.just(t), st.integers(0, t))) for _ in range(b)]
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    fdtype = draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float64]))
    family = draw(st.sampled_from(FAMILIES))
    per_token = draw(st.booleans())
    # per-token rewards: padding positions hold (finite) values too; stages must ignore them
    values = _reward_values(draw, family, b * t if per_token else b)
    reward = torch.tensor(values, dtype=torch.float64).reshape((b, t) if per_token else (b,)).to(fdtype)
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    # everything at padding positions is finite garbage, as a model's outputs would be
    logprob = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 5
    optional = {
        "tokens": torch.randint(0, 3, (b, t), generator=gen),  # small vocabulary: responses share prefixes
        "logprob": logprob.to(fdtype),
        "ref_logprob": (logprob + 0.5 * torch.randn(b, t, generator=gen, dtype=torch.float64)).clamp(max=0)
        .to(fdtype),
        "entropy": (torch.rand(b, t, generator=gen, dtype=torch.float64) * 3).round(decimals=1).to(fdtype),
        "value": torch.randn(b, t, generator=gen, dtype=torch.float64).to(fdtype),
        "truncated": torch.rand(b, generator=gen) < 0.3,
        "budget": t + draw(st.integers(1, 5)),
    }
    present = {name: draw(st.booleans()) for name in OPTIONAL}
    full = Rollouts(group=group, mask=mask, reward=reward, **optional)
    rollouts = replace(full, **{name: None for name in OPTIONAL if not present[name]})
    description = (f"B={b} T={t} lengths={lengths} groups={group.tolist()} reward={family}"
                   f"{'[B,T]' if per_token else '[B]'} dtype={fdtype} present={[k for k, v in present.items() if v]}")
    return Case(rollouts=rollouts, full=full, seed=seed, description=description)


def fixed_case(lengths: list[int], t: int, groups: list[int], reward: list[float], dtype=torch.float32,
               seed: int = 0) -> Case:
    """A hand-picked degenerate batch (every optional field present), run on every test as an `@example`."""
    b = len(lengths)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths, dtype=torch.int64)[:, None]
    logprob = -torch.rand(b, t, generator=gen) * 5
    full = Rollouts(
        group=torch.tensor(groups, dtype=torch.int64), mask=mask,
        reward=torch.tensor(reward, dtype=torch.float64).reshape(-1 if len(reward) == b else (b, t)).to(dtype),
        tokens=torch.randint(0, 3, (b, t), generator=gen), logprob=logprob.to(dtype),
        ref_logprob=(logprob - 0.1).to(dtype), entropy=torch.rand(b, t, generator=gen).to(dtype),
        value=torch.randn(b, t, generator=gen).to(dtype), truncated=torch.zeros(b, dtype=torch.bool), budget=t + 1,
    )
    return Case(rollouts=full, full=full, seed=seed, description=f"fixed: lengths={lengths} T={t} dtype={dtype}")


FIXED = [
    fixed_case([0, 0, 0], 0, [3, 7, 3], [1.0, 0.0, 1.0], torch.bfloat16),  # T = 0
    fixed_case([0, 0], 5, [100, 100], [1e8] * 10, torch.float64),  # every row empty, per-token huge rewards
    fixed_case([4], 4, [7], [1.0]),  # one single-response group
    fixed_case([4, 0, 2, 4], 4, [3, 3, 3, 3], [1e-8, 1e-8, 1e-8, 1e-8]),  # equal tiny rewards
]


def with_fixed(test):
    for case in FIXED:
        test = example(case=case)(test)
    return test


# ------------------------------------------------------------------------------------------------ helpers


def _call_on_rollouts(fn, case: Case, *args, **kwargs):
    """`fn(rollouts, *args, **kwargs)`; on a ValueError naming a missing optional field, again with every field
    present."""
    try:
        return fn(case.rollouts, *args, **kwargs)
    except ValueError as error:
        missing = [f for f in OPTIONAL if getattr(case.rollouts, f) is None and f"Rollouts.{f}" in str(error)]
        if not missing:
            raise
    return fn(case.full, *args, **kwargs)


def _assert_token_tensor(out, case: Case, what: str) -> None:
    mask = case.mask
    assert isinstance(out, torch.Tensor), f"{what}: returned {type(out).__name__}"
    assert tuple(out.shape) == tuple(mask.shape), f"{what}: shape {list(out.shape)} != {list(mask.shape)}"
    assert out.is_floating_point(), f"{what}: dtype {out.dtype}"
    assert torch.isfinite(out).all(), f"{what}: non-finite output {out}\n{case.description}"
    assert (out[~mask] == 0).all(), f"{what}: non-zero outside mask {out}\n{case.description}"


def _assert_scalar(x, what: str, case: Case) -> None:
    assert isinstance(x, torch.Tensor) and x.dim() == 0, f"{what}: expected a scalar tensor, got {x!r}"
    assert torch.isfinite(x), f"{what}: {x}\n{case.description}"


def _assert_grad(grad, case: Case, what: str) -> None:
    assert grad is not None, f"{what}: no gradient"
    assert torch.isfinite(grad).all(), f"{what}: non-finite gradient {grad}\n{case.description}"
    assert (grad[~case.mask] == 0).all(), f"{what}: gradient outside mask {grad}\n{case.description}"


def _advantage(case: Case, salt: int = 1) -> torch.Tensor:
    """An arbitrary stage-valid advantage [B,T]: float32, 0 outside mask, magnitudes up to 1e8, zero rows."""
    gen = case.generator(salt)
    b, t = case.mask.shape
    scale = torch.tensor([0.0, 1e-8, 1.0, 1e8])[torch.randint(0, 4, (b, 1), generator=gen)]
    return torch.randn(b, t, generator=gen) * scale * case.mask


def _logprobs(case: Case, salt: int = 2, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Current log-probs (leaf, requires grad) and behaviour log-probs, both ≤ 0 and finite everywhere,
    with ratios from ~1 to far beyond any clip range."""
    gen = case.generator(salt)
    b, t = case.mask.shape
    old = -torch.rand(b, t, generator=gen) * 5
    step = torch.tensor([0.0, 1e-3, 0.5, 30.0])[torch.randint(0, 4, (b, 1), generator=gen)]
    new = (old + step * torch.randn(b, t, generator=gen)).clamp(max=0)
    return new.to(dtype).requires_grad_(True), old.to(dtype)


def _amax(x: torch.Tensor) -> float:
    return x.detach().abs().max().item() if x.numel() else 0.0


def _row_splits(b: int, parts: int, gen: torch.Generator) -> list[torch.Tensor]:
    """`parts` disjoint index sets covering 0..B-1 (shuffled, so not contiguous; some may be empty)."""
    return list(torch.randperm(b, generator=gen).tensor_split(parts))


# ------------------------------------------------------------------------------------------------ stages


@SETTINGS
@given(case=cases())
@with_fixed
def test_shape_and_advantage_stages(case: Case) -> None:
    for stage in TOKEN_STAGES:
        for name in tc.names(stage):
            out = _call_on_rollouts(tc.get(stage, name), case)
            _assert_token_tensor(out, case, f"{stage} {name!r}")
            assert out.dtype == torch.float32, f"{stage} {name!r}: dtype {out.dtype}, contract is float32"


@SETTINGS
@given(case=cases())
@with_fixed
def test_sequence_reward_means_outcome_shaped_token_rewards(case: Case) -> None:
    """`Recipe.credit` skips the `outcome` shape for [B] rewards: every stage must read a [B] reward exactly as
    the outcome shape's token rewards (except that an empty response keeps its reward: nowhere to place it)."""
    if case.full.reward.dim() != 1:
        return
    full = replace(case.full, reward=torch.where(case.mask.any(-1), case.full.reward, 0.0))
    shaped = replace(full, reward=tc.get("shape", "outcome")(full))
    advantage = _advantage(case)
    for name in tc.names("advantage"):
        fn = tc.get("advantage", name)
        torch.testing.assert_close(fn(full), fn(shaped), msg=f"advantage {name!r}\n{case.description}")
    for stage in ("weight", "select", "token_select"):
        for name in tc.names(stage):
            fn = tc.get(stage, name)
            assert torch.equal(fn(full, advantage), fn(shaped, advantage)), f"{stage} {name!r}"


@SETTINGS
@given(case=cases())
@with_fixed
def test_weight_and_select_stages(case: Case) -> None:
    b = case.mask.shape[0]
    t = case.mask.shape[1]
    every_other = case.mask & (torch.arange(b) % 2 == 0)[:, None]  # responses dropped
    checker = case.mask & (torch.arange(b)[:, None] + torch.arange(t)[None, :]) % 2 == 0  # tokens dropped
    for advantage in (_advantage(case), torch.zeros(case.mask.shape)):
        for name in tc.names("weight"):  # keep [B,T]: none given, responses dropped, tokens dropped, none kept
            for keep in (None, every_other, checker, torch.zeros_like(case.mask)):
                out = _call_on_rollouts(tc.get("weight", name), case, advantage, keep=keep)
                _assert_token_tensor(out, case, f"weight {name!r} (keep={keep})")
                assert out.dtype == torch.float32, f"weight {name!r}: dtype {out.dtype}, contract is float32"
        for name in tc.names("select"):
            keep = _call_on_rollouts(tc.get("select", name), case, advantage)
            assert isinstance(keep, torch.Tensor) and keep.dtype == torch.bool, f"select {name!r}: {keep!r}"
            assert tuple(keep.shape) == (b,), f"select {name!r}: shape {list(keep.shape)} != [{b}]"
        for name in tc.names("token_select"):
            keep = _call_on_rollouts(tc.get("token_select", name), case, advantage)
            assert isinstance(keep, torch.Tensor) and keep.dtype == torch.bool, f"token_select {name!r}: {keep!r}"
            assert keep.shape == case.mask.shape and not (keep & ~case.mask).any(), f"token_select {name!r}"


@SETTINGS
@given(case=cases(), agg=st.sampled_from([None, *tc.names("aggregate")]))
@example(case=FIXED[0], agg=None)
@example(case=FIXED[0], agg="seq_mean_token_sum_norm")
@example(case=FIXED[1], agg="balanced")
@example(case=FIXED[3], agg="seq_mean_token_mean")
def test_objectives(case: Case, agg: str | None) -> None:
    advantage = _advantage(case)
    agg_params = {"group": case.rollouts.group, "budget": case.mask.shape[1] + 1}
    for name in tc.names("objective"):
        logprob, old = _logprobs(case)
        per_token, _ = tc.get("objective", name)(logprob, old, advantage, case.mask)
        _assert_token_tensor(per_token.detach(), case, f"objective {name!r} per-token loss")
        loss, stats = policy_loss(name, logprob, old, advantage, case.mask, agg=agg or "token_mean",
                                  agg_params=agg_params)
        what = f"objective {name!r} agg={agg}"
        _assert_scalar(loss, what, case)
        loss.backward()
        _assert_grad(logprob.grad, case, what)
        for key, value in stats.items():
            assert torch.isfinite(torch.as_tensor(value)).all(), f"{what}: stats[{key!r}] = {value}"


@SETTINGS
@given(case=cases())
@with_fixed
def test_kl_estimators(case: Case) -> None:
    logprob, _ = _logprobs(case)
    ref = case.full.ref_logprob.float()
    for name in tc.names("kl"):
        out = tc.get("kl", name)(logprob, ref)
        assert tuple(out.shape) == tuple(case.mask.shape), f"kl {name!r}: shape {list(out.shape)}"
        assert torch.isfinite(out).all(), f"kl {name!r}: {out}\n{case.description}"
        (grad,) = torch.autograd.grad((out * case.mask).sum(), logprob)
        _assert_grad(grad, case, f"kl {name!r}")


def _per_token_loss(case: Case) -> torch.Tensor:
    gen = case.generator(3)
    b, t = case.mask.shape
    scale = torch.tensor([0.0, 1e-8, 1.0, 1e6])[torch.randint(0, 4, (b, 1), generator=gen)]
    # finite garbage outside the mask too: the aggregation must not read it
    return (torch.randn(b, t, generator=gen) * scale).requires_grad_(True)


@SETTINGS
@given(case=cases())
@with_fixed
def test_aggregations_and_micro_batches(case: Case) -> None:
    """Every aggregation is finite with a gradient only inside the mask, and a batch split into 1, 2, 4 (and B)
    row micro-batches, each given the whole batch's coefficients, sums to the full batch's loss and gradient."""
    mask, group = case.mask, case.rollouts.group
    advantage = _advantage(case)
    context = {"advantage": advantage, "group": group, "budget": mask.shape[1] + 1}
    num_tokens, num_seqs = mask.sum(), mask.any(-1).sum()
    gen = case.generator(4)
    for name in tc.names("aggregate"):
        loss = _per_token_loss(case)
        full = aggregate(name, loss, mask, **context)
        _assert_scalar(full, f"aggregate {name!r}", case)
        (full_grad,) = torch.autograd.grad(full, loss)
        _assert_grad(full_grad, case, f"aggregate {name!r}")

        coef = coefficients(name, mask, **context)
        assert coef.shape == (mask.shape[0],) and torch.isfinite(coef).all(), f"{name}: weights {coef}"
        # a bound on the summation error: the same sum of absolute terms
        scale = weighted_token_sum(loss.detach().abs(), mask, coef.abs()).item()

        modes: list[tuple[str, dict]] = [("coef", {})]
        if name == "token_mean":
            modes.append(("num_tokens", {"num_tokens": num_tokens}))
        elif name.startswith("seq_mean"):
            modes.append(("num_seqs", {"num_seqs": num_seqs}))
        for mode, normaliser in modes:
            for parts in (1, 2, 4, mask.shape[0]):
                total = torch.zeros(())
                for rows in _row_splits(mask.shape[0], parts, gen):
                    part = {"advantage": advantage[rows], "group": group[rows], "budget": context["budget"]}
                    extra = {"coef": coef[rows]} if mode == "coef" else {**part, **normaliser}
                    total = total + aggregate(name, loss[rows], mask[rows], **extra)
                what = f"aggregate {name!r} via {mode} in {parts} micro-batches\n{case.description}"
                assert abs(total.item() - full.item()) <= 1e-6 * scale + 1e-30, (
                    f"{what}: {total.item()} != {full.item()} (scale {scale})")
                (grad,) = torch.autograd.grad(total, loss)
                torch.testing.assert_close(grad, full_grad, rtol=1e-6, atol=1e-6 * _amax(full_grad),
                                           msg=lambda m, what=what: f"{what}: {m}")


# ------------------------------------------------------------------------------------------------ recipes


def _preset_variants() -> list[tuple[str, dict]]:
    variants = [(name, {}) for name in tc.methods()["presets"]]
    # the KL and entropy-bonus terms of Recipe.loss (no preset turns them on by default)
    variants += [("grpo", {"kl": kl, "kl_coef": 0.1, "entropy_coef": 0.01}) for kl in tc.names("kl")]
    return variants


def _recipe_inputs(case: Case, recipe: tc.Recipe):
    rollouts = case.full  # behaviour log-probs and every other optional field present
    credit = recipe.credit(rollouts, progress=case.seed % 101 / 100)
    entropy = rollouts.entropy.float() if recipe.entropy_coef else None
    return rollouts, credit, entropy


@SETTINGS
@given(case=cases())
@with_fixed
def test_presets_credit_and_loss(case: Case) -> None:
    for name, overrides in _preset_variants():
        recipe = tc.recipe(name, **overrides)
        what = f"preset {name!r} {overrides}"
        rollouts, credit, entropy = _recipe_inputs(case, recipe)
        _assert_token_tensor(credit.advantage, case, f"{what}: credit.advantage")
        _assert_token_tensor(credit.weight, case, f"{what}: credit.weight")
        assert credit.keep.dtype == torch.bool and credit.keep.shape == (case.mask.shape[0],), what
        _assert_token_tensor(credit.folded(), case, f"{what}: credit.folded()")
        logprob, _ = _logprobs(case)
        loss, stats = recipe.loss(logprob, rollouts, credit, entropy=entropy)
        _assert_scalar(loss, what, case)
        loss.backward()
        _assert_grad(logprob.grad, case, what)
        for key, value in stats.items():
            assert torch.isfinite(torch.as_tensor(value)).all(), f"{what}: stats[{key!r}] = {value}"


MICRO_BATCH_VARIANTS = [(name, {}) for name in tc.methods()["presets"]] + [
    ("grpo", {"kl": "k3", "kl_coef": 0.1, "entropy_coef": 0.01}),
]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
@with_fixed
@pytest.mark.parametrize("name, overrides", MICRO_BATCH_VARIANTS)
def test_recipe_loss_micro_batches(case: Case, name: str, overrides: dict) -> None:
    """`Recipe.loss` over row micro-batches of a batch, each with its slice of the whole batch's credit and
    `coefficients`, sums to the full batch's loss and gradient."""
    recipe = tc.recipe(name, **overrides)
    rollouts, credit, entropy = _recipe_inputs(case, recipe)
    coef = recipe.coefficients(rollouts, credit)
    logprob, _ = _logprobs(case)

    def loss_of(rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return recipe.loss(logprob, rollouts, credit, entropy=entropy)[0]
        ent = None if entropy is None else entropy[rows]
        return recipe.loss(logprob[rows], rollouts.select(rows), credit.select(rows), entropy=ent, coef=coef[rows])[0]

    full = loss_of(None)
    (full_grad,) = torch.autograd.grad(full, logprob)
    b = case.mask.shape[0]
    rows_alone = [loss_of(torch.tensor([i])) for i in range(b)]
    scale = sum(abs(x.item()) for x in rows_alone)  # no cancellation across rows in this bound
    alone = sum(x.item() for x in rows_alone)
    assert abs(alone - full.item()) <= 1e-6 * scale + 1e-30, f"preset {name!r}: one row at a time {alone} != {full}"
    gen = case.generator(5)
    for parts in (1, 2, 4):
        total = sum((loss_of(rows) for rows in _row_splits(b, parts, gen)), torch.zeros(()))
        what = f"preset {name!r} {overrides} in {parts} micro-batches\n{case.description}"
        assert abs(total.item() - full.item()) <= 1e-6 * scale + 1e-30, f"{what}: {total.item()} != {full.item()}"
        (grad,) = torch.autograd.grad(total, logprob)
        torch.testing.assert_close(grad, full_grad, rtol=1e-5, atol=1e-6 * _amax(full_grad),
                                   msg=lambda m, what=what: f"{what}: {m}")


# ------------------------------------------------------------------------------------------------ preference


@dataclass(frozen=True)
class PairCase:
    pairs: Pairs  # every optional field (and every extra a built-in loss or source reads) present
    seed: int
    identical: bool  # chosen and rejected are the same responses (and get the same log-probs)
    description: str

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + salt)


def _pair_case(b: int, tc_: int, tr: int, lengths_c: list[int], lengths_r: list[int], identical: bool,
               dtype: torch.dtype, seed: int) -> PairCase:
    gen = torch.Generator().manual_seed(seed)
    cmask = torch.arange(tc_)[None, :] < torch.tensor(lengths_c, dtype=torch.int64).reshape(b, 1)
    rmask = torch.arange(tr)[None, :] < torch.tensor(lengths_r, dtype=torch.int64).reshape(b, 1)

    def side(t: int) -> dict[str, torch.Tensor]:
        # finite garbage at padding, as a model's outputs would be
        return {
            "tokens": torch.randint(0, 3, (b, t), generator=gen),
            "ref_logprob": (-torch.rand(b, t, generator=gen) * 5).to(dtype),
            "weight": (torch.rand(b, t, generator=gen) * 2).round(decimals=1).to(dtype),  # zeros included
            "token_reward": (torch.rand(b, t, generator=gen) - 0.5).to(dtype),
            "hidden": torch.randn(b, t, 2, 4, generator=gen).to(dtype),
            "plus_logprob": -torch.rand(b, t, generator=gen) * 5,
            "minus_logprob": -torch.rand(b, t, generator=gen) * 5,
            "critical": torch.randint(-1, t + 2, (b,), generator=gen),
        }

    chosen = side(tc_)
    rejected = {k: v.clone() for k, v in chosen.items()} if identical else side(tr)
    fields = {f"{s}_{k}": v[k] for s, v in (("chosen", chosen), ("rejected", rejected))
              for k in ("tokens", "ref_logprob", "weight", "token_reward")}
    extra = {f"{s}_{k}": v[k] for s, v in (("chosen", chosen), ("rejected", rejected))
             for k in ("hidden", "plus_logprob", "minus_logprob", "critical")}
    pairs = Pairs(chosen_mask=cmask, rejected_mask=rmask, extra=extra, **fields)
    description = (f"B={b} T_c={tc_} T_r={tr} chosen lengths={lengths_c} rejected lengths={lengths_r} "
                   f"identical={identical} dtype={dtype} seed={seed}")
    return PairCase(pairs=pairs, seed=seed, identical=identical, description=description)


@st.composite
def pair_cases(draw) -> PairCase:
    b = draw(st.integers(1, 8))
    identical = draw(st.booleans())
    tc_ = draw(st.integers(0, 7))
    tr = tc_ if identical else draw(st.integers(0, 7))

    def lengths(t: int) -> list[int]:
        return [draw(st.one_of(st.just(0), st.just(t), st.integers(0, t))) for _ in range(b)]

    lengths_c = lengths(tc_)
    lengths_r = lengths_c if identical else lengths(tr)
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float64]))
    return _pair_case(b, tc_, tr, lengths_c, lengths_r, identical, dtype, draw(st.integers(0, 2**31 - 1)))


PAIR_FIXED = [
    _pair_case(0, 0, 0, [], [], False, torch.float32, 0),  # no pairs
    _pair_case(2, 0, 3, [0, 0], [0, 0], False, torch.float32, 1),  # every response empty
    _pair_case(3, 4, 4, [4, 0, 2], [4, 0, 2], True, torch.bfloat16, 2),  # identical chosen and rejected
    _pair_case(1, 5, 2, [5], [1], False, torch.float64, 3),  # one pair
]


def with_pair_fixed(test):
    for case in PAIR_FIXED:
        test = example(case=case)(test)
    return test


with torch.random.fork_rng():
    torch.manual_seed(0)
    PREFERENCE_VARIANTS = [(name, {}) for name in tc.names("preference")] + [
        ("dpo", {"label_smoothing": 0.2}),
        ("ipo", {"length_normalise": True}),
        ("cdpo", {"reduction": "position_aligned"}),
        ("cdpo", {"reduction": "position_aligned", "positions": 20}),
        ("t_reg", {"source": CriticalTokenRewards()}),
        ("t_reg", {"source": ContrastivePromptRewards(), "weighting": "static", "reg_reduction": "mean"}),
        ("sparsepo", {"masks": SparseTokenMasks(4, 2, dropout=0.0), "lambda_u": 1e-3, "lambda_d": 1e-3}),
        ("sparsepo", {"masks": SparseTokenMasks(4, 2, dropout=0.0, independent=True), "lambda_u": 1e-2}),
        ("sparsepo", {"masks": ActivationMasks(), "kl_term": "full"}),
        ("sparsepo", {"kl_term": "none"}),
        ("tab_po", {"tau": 1.0}),
    ]
VARIANT_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(PREFERENCE_VARIANTS)]


def _pair_logprobs(case: PairCase, salt: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Current log-probs of both sides (leaves, requiring grad), ≤ 0 and finite everywhere, from ~the reference
    to far from it; identical pairs get identical values."""
    gen = case.generator(salt)
    p = case.pairs

    def one(ref: torch.Tensor) -> torch.Tensor:
        b, t = ref.shape
        step = torch.tensor([0.0, 1e-3, 0.5, 30.0])[torch.randint(0, 4, (b, 1), generator=gen)]
        return (ref.float() + step * torch.randn(b, t, generator=gen)).clamp(max=0)

    chosen = one(p.chosen_ref_logprob)
    rejected = chosen.clone() if case.identical else one(p.rejected_ref_logprob)
    return chosen.requires_grad_(True), rejected.requires_grad_(True)


def _policy_inputs(name: str, params: dict, case: PairCase) -> dict[str, torch.Tensor]:
    """The current-policy quantities the loss declares (`Needs.policy`), as `chosen_<q>` / `rejected_<q>`
    leaves with gradient (here: non-negative, like a KL)."""
    gen = case.generator(7)
    out = {}
    for need in sorted(needs_of("preference", name, params).policy):
        for side in ("chosen", "rejected"):
            shape = getattr(case.pairs, f"{side}_mask").shape
            out[f"{side}_{need}"] = (torch.rand(shape, generator=gen) * 2).requires_grad_(True)
    return out


def _stripped(case: PairCase) -> Pairs:
    """The case's pairs without the optional fields and extras a seed-chosen subset drops."""
    gen = case.generator(9)
    p = case.pairs
    drop = {f for f in ("chosen_tokens", "rejected_tokens", "chosen_ref_logprob", "rejected_ref_logprob",
                        "chosen_weight", "rejected_weight", "chosen_token_reward", "rejected_token_reward")
            if torch.rand((), generator=gen) < 0.3}
    extra = {k: v for k, v in p.extra.items() if torch.rand((), generator=gen) >= 0.3}
    return replace(p, **{f: None for f in drop}, extra=extra)


@SETTINGS
@given(case=pair_cases())
@with_pair_fixed
def test_preference_losses(case: PairCase) -> None:
    """Every preference loss (and variant) is a finite scalar with finite gradients that are 0 outside the
    masks, finite stats, and refuses a batch without an input it needs only with a `ValueError` naming it."""
    p = case.pairs
    for name, params in PREFERENCE_VARIANTS:
        fn = tc.get("preference", name)
        what = f"preference {name!r} {params}\n{case.description}"
        logprob_c, logprob_r = _pair_logprobs(case)
        policy = _policy_inputs(name, params, case)
        try:
            fn(_stripped(case), logprob_c, logprob_r, **params, **policy)
        except ValueError as error:
            assert "Pairs." in str(error), f"{what}: a missing input must be named: {error}"
        loss, stats = fn(p, logprob_c, logprob_r, **params, **policy)
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and torch.isfinite(loss), f"{what}: {loss}"
        leaves = [logprob_c, logprob_r, *policy.values()]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        masks = [p.chosen_mask, p.rejected_mask] + [getattr(p, f"{k.split('_')[0]}_mask") for k in policy]
        for grad, mask in zip(grads, masks):
            grad = torch.zeros(mask.shape) if grad is None else grad
            assert torch.isfinite(grad).all(), f"{what}: non-finite gradient {grad}"
            assert (grad[~mask] == 0).all(), f"{what}: gradient outside the mask {grad}"
        for key, value in stats.items():
            assert torch.isfinite(torch.as_tensor(value)).all(), f"{what}: stats[{key!r}] = {value}"
        # identical chosen and rejected responses (same weights too): the symmetric point of the loss
        symmetric = {"dpo": math.log(2.0), "cdpo": math.log(2.0), "ipo": 25.0}  # IPO: 1/(4β²), β = 0.1
        if case.identical and p.num_pairs and name in symmetric and not params:
            assert loss.item() == pytest.approx(symmetric[name], rel=1e-5), f"{what}: identical pairs give {loss}"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pair_cases())
@with_pair_fixed
@pytest.mark.parametrize("name, params", PREFERENCE_VARIANTS, ids=VARIANT_IDS)
def test_preference_micro_batches(case: PairCase, name: str, params: dict) -> None:
    """The pairs split into 1, 2, 4 and B micro-batches, each called with the whole batch's `num_pairs`, sum to
    the full batch's loss and gradient; trailing padding (narrowing to the longest responses) changes nothing."""
    fn = tc.get("preference", name)
    p = case.pairs
    b = p.num_pairs
    logprob_c, logprob_r = _pair_logprobs(case)
    policy = _policy_inputs(name, params, case)
    leaves = [logprob_c, logprob_r, *policy.values()]

    def loss_of(rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return fn(p, logprob_c, logprob_r, **params, **policy)[0]
        return fn(p.select(rows), logprob_c[rows], logprob_r[rows], num_pairs=b, **params,
                  **{k: v[rows] for k, v in policy.items()})[0]

    full = loss_of(None)
    full_grads = torch.autograd.grad(full, leaves, allow_unused=True)
    rows_alone = [loss_of(torch.tensor([i])) for i in range(b)]
    scale = sum(abs(x.item()) for x in rows_alone)
    what = f"preference {name!r} {params}\n{case.description}"
    assert abs(sum(x.item() for x in rows_alone) - full.item()) <= 1e-6 * scale + 1e-30, f"{what}: one row at a time"
    gen = case.generator(5)
    for parts in (1, 2, 4, max(b, 1)):
        total = sum((loss_of(rows) for rows in _row_splits(b, parts, gen)), torch.zeros(()))
        assert abs(total.item() - full.item()) <= 1e-6 * scale + 1e-30, f"{what} in {parts}: {total} != {full}"
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        for grad, full_grad in zip(grads, full_grads):
            if full_grad is None:
                assert grad is None or not grad.any(), what
                continue
            torch.testing.assert_close(grad, full_grad, rtol=1e-5, atol=1e-6 * _amax(full_grad),
                                       msg=lambda m, what=what, parts=parts: f"{what} in {parts}: {m}")
    # narrowed to the longest responses: the same loss
    wc = int(p.chosen_length.max().item()) if b else 0
    wr = int(p.rejected_length.max().item()) if b else 0
    narrow_policy = {k: v[:, : wc if k.startswith("chosen") else wr] for k, v in policy.items()}
    narrow = fn(p.narrow(wc, wr), logprob_c[:, :wc], logprob_r[:, :wr], **params, **narrow_policy)[0]
    assert abs(narrow.item() - full.item()) <= 1e-6 * scale + 1e-30, f"{what}: narrowed {narrow} != {full}"
