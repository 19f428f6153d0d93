import math

import pytest
import torch

import tokencredit as tc
from tokencredit.objective.aggregate import aggregate, coefficients

LOSS = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0], [6.0, 0.0, 0.0, 0.0]])
MASK = LOSS != 0


def agg(name, **kw):
    return aggregate(name, LOSS, MASK, **kw).item()


def test_hand_computed_aggregations():
    expected = {
        ("token_mean", ()): 21 / 6,
        ("seq_mean_token_mean", ()): (2 + 4.5 + 6) / 3,
        ("seq_mean_token_sum", ()): 21 / 3,
        ("seq_mean_token_sum_norm", (("budget", 4),)): 21 / (3 * 4),
        ("seq_mean_token_sum_norm", (("budget", 10),)): 21 / 30,
        ("token_mean", (("num_tokens", 12),)): 21 / 12,
        ("seq_mean_token_mean", (("num_seqs", 6),)): (2 + 4.5 + 6) / 6,
    }
    for (name, kw), value in expected.items():
        assert math.isclose(agg(name, **dict(kw)), value, rel_tol=1e-6), name


def test_balanced_hand_computed():
    adv = torch.tensor([1.0, -1.0, -1.0])[:, None] * MASK
    # one group: P = {0} (3 tokens), N = {1, 2} (3 tokens); L = 1/3·(6/3) + 2/3·(15/3)
    assert math.isclose(agg("balanced", advantage=adv), 1 / 3 * 2 + 2 / 3 * 5, rel_tol=1e-6)
    # groups {0,1} and {2}: group 0 = ½·6/3 + ½·9/2, group 1 = 6 (negative side only); mean of both
    got = agg("balanced", advantage=adv, group=torch.tensor([0, 0, 1]))
    assert math.isclose(got, ((0.5 * 2 + 0.5 * 4.5) + 6) / 2, rel_tol=1e-6)
    # zero-advantage responses are dropped; with denominator="group" the weights use the group size
    adv0 = torch.tensor([1.0, 0.0, -1.0])[:, None] * MASK
    assert math.isclose(agg("balanced", advantage=adv0, denominator="group"), 1 / 3 * 2 + 1 / 3 * 6, rel_tol=1e-6)


def test_balanced_equals_token_mean_for_equal_lengths_and_counts():
    torch.manual_seed(0)
    loss = torch.randn(8, 5)
    mask = torch.ones(8, 5, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0] * 4)[:, None].expand(8, 5)
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    balanced = aggregate("balanced", loss, mask, advantage=adv, group=group)
    torch.testing.assert_close(balanced, aggregate("token_mean", loss, mask))
    torch.testing.assert_close(balanced, aggregate("seq_mean_token_mean", loss, mask))


@pytest.mark.parametrize("name", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                  "seq_mean_token_sum_norm", "balanced"])
@pytest.mark.parametrize("parts", [1, 2, 4])
def test_micro_batches_reproduce_the_full_batch_gradient(name, parts):
    torch.manual_seed(1)
    b, t = 8, 6
    mask = torch.arange(t)[None] < torch.randint(0, t + 1, (b,))[:, None]
    adv = torch.randn(b, 1).expand(b, t) * mask
    group = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])
    base = torch.randn(b, t)
    full = base.clone().requires_grad_(True)
    aggregate(name, full, mask, advantage=adv, group=group, budget=t).backward()
    coef = coefficients(name, mask, advantage=adv, group=group, budget=t)
    split = base.clone().requires_grad_(True)
    total = sum(aggregate(name, split[rows], mask[rows], coef=coef[rows]) for rows in torch.arange(b).chunk(parts))
    total.backward()
    torch.testing.assert_close(split.grad, full.grad)


def test_dr_grpo_normaliser_is_the_budget_not_the_padded_width():
    """Dr.GRPO's constant is the generation budget: padding a batch wider (the trainer pads each step to its
    longest response) must not change its loss. The old default, the tensor width, made it 21/12 vs 21/24."""
    wide_loss = torch.nn.functional.pad(LOSS, (0, 4))
    wide_mask = torch.nn.functional.pad(MASK, (0, 4))
    narrow = aggregate("seq_mean_token_sum_norm", LOSS, MASK, budget=48)
    torch.testing.assert_close(aggregate("seq_mean_token_sum_norm", wide_loss, wide_mask, budget=48), narrow)
    with pytest.raises(ValueError, match="budget"):
        aggregate("seq_mean_token_sum_norm", LOSS, MASK)


def test_recipes_resolve_aggregations_through_the_registry():
    """`Recipe` coefficients come from the registered function: a newly registered aggregation just works."""
    from tokencredit.registry import register, unregister

    register("aggregate", "test_first_response_only")(lambda mask: (torch.arange(mask.shape[0]) == 0).float())
    try:
        recipe = tc.recipe("grpo", agg="test_first_response_only")
        rollouts = tc.Rollouts(group=torch.tensor([0, 0, 0]), mask=MASK, reward=torch.tensor([1.0, 0.0, 0.0]),
                               logprob=torch.zeros(3, 4))
        credit = recipe.credit(rollouts)
        assert recipe.coefficients(rollouts, credit).tolist() == [1.0, 0.0, 0.0]
        loss, _ = recipe.loss(torch.zeros(3, 4), rollouts, credit)
        torch.testing.assert_close(loss, -credit.advantage[0, :3].sum())
    finally:
        unregister("aggregate", "test_first_response_only")


def test_kl_estimators_hand_computed():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    x = math.log(2.0)
    assert math.isclose(tc.get("kl", "k1")(lp, ref).item(), x, rel_tol=1e-6)
    assert math.isclose(tc.get("kl", "abs")(ref, lp).item(), x, rel_tol=1e-6)
    assert math.isclose(tc.get("kl", "k2")(lp, ref).item(), 0.5 * x * x, rel_tol=1e-6)
    assert math.isclose(tc.get("kl", "k3")(lp, ref).item(), 0.5 - 1 + x, rel_tol=1e-6)
    assert tc.get("kl", "k3")(torch.tensor([0.0]), torch.tensor([-1e9])).isfinite().all()
