import pytest
import torch

import tokencredit as tc
from helpers import registered, rollouts
from tokencredit.objective import policy_loss

EXPECTED_PRESETS = {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "gspo", "ppo", "ba", "nsr"}


def batch():
    torch.manual_seed(0)
    r = rollouts([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [0, 0, 0, 0, 1, 1], [3, 2, 4, 1, 2, 3], width=4)
    b, t = r.mask.shape
    fields = dict(
        tokens=torch.randint(0, 9, (b, t)), logprob=-torch.rand(b, t), ref_logprob=-torch.rand(b, t),
        entropy=torch.rand(b, t), value=torch.randn(b, t), truncated=torch.zeros(b, dtype=torch.bool),
    )
    return tc.Rollouts(group=r.group, mask=r.mask, reward=r.reward, budget=4, **fields)


def test_methods_lists_stages_and_presets():
    m = tc.methods()
    assert set(m) == set(tc.STAGES) | {"presets"}
    assert set(m["presets"]) >= EXPECTED_PRESETS
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"} <= set(m["advantage"])
    assert {"ppo_clip", "gspo", "cispo", "negative_only"} <= set(m["objective"])
    assert {"k1", "k2", "k3", "abs"} == set(m["kl"])


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS | {"forking"}))
def test_every_preset_runs_and_is_finite(name):
    r = batch()
    recipe = tc.recipe(name)
    credit = recipe.credit(r)
    assert credit.advantage.shape == r.mask.shape and credit.keep.shape == (6,)
    logprob = r.logprob.clone().requires_grad_(True)
    loss, _stats = recipe.loss(logprob, r, credit)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprob.grad).all()
    assert torch.all(logprob.grad[~r.mask] == 0)


def test_grpo_recipe_matches_stage_functions():
    r = batch()
    credit = tc.recipe("grpo").credit(r)
    torch.testing.assert_close(credit.advantage, tc.get("advantage", "grpo")(r))
    logprob = r.logprob.clone().requires_grad_(True)
    loss, _ = tc.recipe("grpo").loss(logprob, r, credit)
    direct, _ = policy_loss("ppo_clip", logprob, r.logprob, credit.advantage, r.mask, agg="seq_mean_token_mean")
    torch.testing.assert_close(loss, direct)


def test_dapo_drops_uniform_groups_from_the_loss():
    r = batch()
    credit = tc.recipe("dapo").credit(r)
    assert credit.keep.tolist() == [True] * 4 + [False] * 2


def test_kl_and_entropy_terms():
    r = batch()
    base = tc.recipe("grpo")
    reg = tc.recipe("grpo", kl="k1", kl_coef=0.5, entropy_coef=0.1)
    credit = base.credit(r)
    ent = torch.rand_like(r.logprob)
    l0, _ = base.loss(r.logprob, r, credit)
    l1, stats = reg.loss(r.logprob, r, credit, entropy=ent)
    w = base.coefficients(r, credit)
    kl = ((r.logprob - r.ref_logprob) * r.mask).sum(-1) @ w
    h = (ent * r.mask).sum(-1) @ w
    torch.testing.assert_close(l1, l0 + 0.5 * kl - 0.1 * h)
    # the logged KL and entropy are token means (a micro-batch's share of a sum would not read as a KL)
    torch.testing.assert_close(stats["kl"], ((r.logprob - r.ref_logprob) * r.mask).sum() / r.mask.sum())
    torch.testing.assert_close(stats["entropy"], (ent * r.mask).sum() / r.mask.sum())


def test_progress_schedule_is_linear():
    r = batch()
    rec = tc.recipe("forking", weight_params={"top": {"start": 0.1, "end": 1.0}})
    assert rec.credit(r, progress=1.0).weight.sum() == r.mask.sum()
    assert rec.credit(r, progress=0.0).weight.sum() < r.mask.sum()


def test_recipe_validation_errors_name_the_field():
    with pytest.raises(ValueError, match="advantage"):
        tc.Recipe(advantage="nope")
    with pytest.raises(ValueError, match="unknown preset"):
        tc.recipe("nope")
    with pytest.raises(ValueError, match="kl"):
        tc.Recipe(kl_coef=0.1)
    with pytest.raises(ValueError, match=r"extra|forbidden|permitted"):
        tc.Recipe(advantge="grpo")


def test_credit_fold_and_group_ids():
    r = batch()
    credit = tc.recipe("dapo").credit(r)
    torch.testing.assert_close(credit.folded(), credit.advantage * credit.weight * credit.keep[:, None])
    assert tc.group_ids(["a", "b", "a", "c"]).tolist() == [0, 1, 0, 2]


def test_weight_functions_without_keep_still_work():
    seen = {}

    def halves(rollouts, advantage, scale=0.5):  # takes no keep=: it is not passed
        return rollouts.mask.float() * scale

    def spy(rollouts, advantage, **params):  # **params: receives keep, the tokens in the loss [B,T]
        seen.update(params)
        return rollouts.mask.float()

    r = rollouts([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], [2, 1, 2, 2])
    with registered("weight", "halves", halves), registered("weight", "spy", spy):
        credit = tc.recipe("grpo", select="dynamic_filter", weight="halves").credit(r)
        torch.testing.assert_close(credit.weight, r.mask.float() * 0.5)
        tc.recipe("grpo", select="dynamic_filter", weight="spy").credit(r)
    assert torch.equal(seen["keep"], r.mask & torch.tensor([True, True, False, False])[:, None])
