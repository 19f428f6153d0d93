import math
import re

import pytest
import torch
from torch.func import functional_call

import tokencredit as tc
from helpers import hand_pairs
from tokencredit.needs import Needs
from tokencredit.preference import ActivationMasks, SparseTokenMasks, token_kl
from tokencredit.registry import needs_of

BETA = 0.5
# chosen Δ = [[1, 0.5], [0.5]], rejected Δ = [[-1], [-0.5, 1]] (helpers.hand_pairs); 9s lie at padding
KL_CHOSEN = [[0.1, 0.2, 9.0], [0.3, 9.0, 9.0]]
KL_REJECTED = [[0.4, 9.0], [0.05, 0.15]]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _batch(dtype=torch.float32, layers=2, size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    extra = {"chosen_hidden": torch.randn(2, 3, layers, size, generator=gen, dtype=dtype),
             "rejected_hidden": torch.randn(2, 2, layers, size, generator=gen, dtype=dtype)}
    p, lc, lr = hand_pairs(dtype, extra=extra)
    kl_c = torch.tensor(KL_CHOSEN, dtype=dtype, requires_grad=True)
    kl_r = torch.tensor(KL_REJECTED, dtype=dtype, requires_grad=True)
    return p, lc, lr, kl_c, kl_r


def _masks(**kwargs):
    torch.manual_seed(0)
    return SparseTokenMasks(4, 2, dropout=0.0, **kwargs)


def test_token_kl_by_hand():
    ref = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]])
    logits = torch.tensor([[[math.log(3.0), 0.0], [1.0, 2.0]]], requires_grad=True)
    kl = token_kl(ref, logits)
    torch.testing.assert_close(kl, torch.tensor([[0.5 * math.log(4 / 3), 0.0]]))
    kl.sum().backward()
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([0.25, -0.25]))  # π_θ − π_ref


def test_unit_masks_give_tdpo1_by_hand():
    p, lc, lr, kl_c, kl_r = _batch()
    loss, stats = tc.get("preference", "sparsepo")(p, lc, lr, beta=BETA, chosen_kl=kl_c, rejected_kl=kl_r)
    # TDPO-1: −log σ(u − δ), u = β(ΣΔ_w − ΣΔ_l), δ = β D(y_l) − β D(y_w), D = Σ_t KL_t
    u, d_w, d_l = [BETA * 2.5, 0.0], [0.3, 0.3], [0.4, 0.2]
    z = [ui - (BETA * dl - BETA * dw) for ui, dw, dl in zip(u, d_w, d_l)]
    assert z == pytest.approx([1.2, 0.05])
    assert loss.item() == pytest.approx(sum(softplus(-x) for x in z) / 2, rel=1e-6)
    loss.backward()
    s = [1 / (1 + math.exp(x)) for x in z]
    torch.testing.assert_close(kl_c.grad, torch.tensor([[-BETA * s[0] / 2] * 2 + [0.0], [-BETA * s[1] / 2, 0.0, 0.0]]))
    torch.testing.assert_close(kl_r.grad, torch.tensor([[BETA * s[0] / 2, 0.0], [BETA * s[1] / 2] * 2]))
    assert stats["chosen_kl"].item() == pytest.approx(0.3) and stats["reward_mask_density"].item() == 1.0
    # the same with kl_term="full" and any learned mask on the KL: m^d ≡ 1 regardless
    p, lc, lr, kl_c, kl_r = _batch()
    full, _ = tc.get("preference", "sparsepo")(p, lc, lr, beta=BETA, masks=_masks(), mask_on_reward=False,
                                               kl_term="full", chosen_kl=kl_c, rejected_kl=kl_r)
    assert full.item() == pytest.approx(loss.item())


def test_no_kl_mask_gives_dpo_and_token_weighted_dpo():
    sparsepo = tc.get("preference", "sparsepo")
    p, lc, lr, _, _ = _batch()
    torch.testing.assert_close(sparsepo(p, lc, lr, beta=BETA, kl_term="none")[0],
                               tc.get("preference", "dpo")(p, lc, lr, beta=BETA)[0])  # m^u ≡ 1, m^d ≡ 0
    masks = _masks()
    m_c, m_r = masks(p.extra["chosen_hidden"], p.chosen_mask), masks(p.extra["rejected_hidden"], p.rejected_mask)
    weighted = p.with_inputs(chosen_weight=m_c.detach(), rejected_weight=m_r.detach())
    torch.testing.assert_close(sparsepo(p, lc, lr, beta=BETA, masks=masks, kl_term="none")[0],
                               tc.get("preference", "cdpo")(weighted, lc, lr, beta=BETA)[0])


def test_l1_terms_by_hand():
    sparsepo = tc.get("preference", "sparsepo")
    p, lc, lr, kl_c, kl_r = _batch()
    common = _masks()
    m = [common(p.extra[f"{s}_hidden"], getattr(p, f"{s}_mask")).detach() for s in ("chosen", "rejected")]
    l1 = (m[0].sum(-1) + m[1].sum(-1))  # per pair, over both responses' tokens
    base, _ = sparsepo(p, lc, lr, masks=common, chosen_kl=kl_c, rejected_kl=kl_r)
    lam, _ = sparsepo(p, lc, lr, masks=common, chosen_kl=kl_c, rejected_kl=kl_r, lambda_u=0.1, lambda_d=0.02)
    # one mask serving both terms: the coefficients are halved
    assert (lam - base).item() == pytest.approx((0.5 * (0.1 + 0.02) * l1).mean().item(), rel=1e-5)
    only_reward, _ = sparsepo(p, lc, lr, masks=common, kl_term="full", chosen_kl=kl_c, rejected_kl=kl_r,
                              lambda_u=0.1, lambda_d=0.02)
    base_reward, _ = sparsepo(p, lc, lr, masks=common, kl_term="full", chosen_kl=kl_c, rejected_kl=kl_r)
    assert (only_reward - base_reward).item() == pytest.approx((0.1 * l1).mean().item(), rel=1e-5)
    two = _masks(independent=True)
    (u_c, d_c), (u_r, d_r) = (two(p.extra[f"{s}_hidden"], getattr(p, f"{s}_mask")) for s in ("chosen", "rejected"))
    assert not torch.equal(u_c, d_c)
    lam, _ = sparsepo(p, lc, lr, masks=two, chosen_kl=kl_c, rejected_kl=kl_r, lambda_u=0.1, lambda_d=0.02)
    base, _ = sparsepo(p, lc, lr, masks=two, chosen_kl=kl_c, rejected_kl=kl_r)
    expected = 0.1 * (u_c.sum(-1) + u_r.sum(-1)) + 0.02 * (d_c.sum(-1) + d_r.sum(-1))
    assert (lam - base).item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_mask_head_by_hand():
    masks = SparseTokenMasks(2, 2, dropout=0.0)
    with torch.no_grad():
        masks.weight.copy_(torch.tensor([[[2.0, 0.5], [0.0, 1.0]]]))
        masks.bias.copy_(torch.tensor([[0.1, -0.2]]))
        masks.mix.copy_(torch.tensor([[0.5, 2.0]]))
    # LN of [3, 1] is [1, −1]/sqrt(1 + eps); of [1, 3], [−1, 1]; of [0, 4], [−1, 1]; of [5, 5], [0, 0]
    hidden = torch.tensor([[[[3.0, 1.0], [0.0, 4.0]], [[1.0, 3.0], [5.0, 5.0]], [[7.0, 7.0], [7.0, 7.0]]]])
    mask = torch.tensor([[True, True, False]])
    n = 1 / math.sqrt(1 + 1e-5)
    relu = lambda x: max(x, 0.0)  # noqa: E731
    token0 = relu(0.5 * relu(2 * n - 0.5 * n + 0.1) + 2.0 * relu(n - 0.2))
    token1 = relu(0.5 * relu(-2 * n + 0.5 * n + 0.1) + 2.0 * relu(-0.2))  # both heads 0: an exact zero
    torch.testing.assert_close(masks(hidden, mask), torch.tensor([[token0, token1, 0.0]]))
    assert masks(hidden, mask)[0, 1].item() == 0.0
    one_layer = SparseTokenMasks(2, 1, dropout=0.0)
    assert one_layer(hidden[:, :, 0], mask).shape == (1, 3)  # [B,T,d] is one layer


def test_mask_gradients_match_finite_differences():
    p, lc, lr, kl_c, kl_r = _batch(torch.float64)
    for independent in (False, True):
        masks = _masks(independent=independent).double()
        names = [name for name, _ in masks.named_parameters()]

        def loss_of(*params, masks=masks, names=names):
            def call(hidden, mask):
                return functional_call(masks, dict(zip(names, params)), (hidden, mask))
            call.independent = masks.independent
            return tc.get("preference", "sparsepo")(p, lc, lr, beta=BETA, masks=call, chosen_kl=kl_c,
                                                    rejected_kl=kl_r, lambda_u=0.05, lambda_d=0.03)[0]

        params = tuple(param.detach().clone().requires_grad_(True) for param in masks.parameters())
        assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-6)
    # and with respect to the policy's log-probs and token KLs
    masks = _masks().double()

    def of_policy(lc, lr, kl_c, kl_r):
        return tc.get("preference", "sparsepo")(p, lc, lr, beta=BETA, masks=masks, chosen_kl=kl_c, rejected_kl=kl_r,
                                                lambda_u=0.05)[0]

    assert torch.autograd.gradcheck(of_policy, (lc, lr, kl_c, kl_r), eps=1e-6, atol=1e-6)


def test_masks_round_trip_through_state_dict(tmp_path):
    p, lc, lr, kl_c, kl_r = _batch()
    masks = _masks(independent=True)
    with torch.no_grad():
        masks.mix.mul_(1.5)  # not the initial values
    torch.save(masks.state_dict(), tmp_path / "masks.pt")
    torch.manual_seed(1)
    fresh = SparseTokenMasks(4, 2, dropout=0.0, independent=True)
    assert not torch.equal(fresh.weight, masks.weight)
    fresh.load_state_dict(torch.load(tmp_path / "masks.pt"))
    assert set(masks.state_dict()) == {"norm.weight", "norm.bias", "weight", "bias", "mix"}
    args = {"beta": BETA, "chosen_kl": kl_c, "rejected_kl": kl_r, "lambda_u": 0.1}
    sparsepo = tc.get("preference", "sparsepo")
    assert sparsepo(p, lc, lr, masks=fresh, **args)[0].item() == sparsepo(p, lc, lr, masks=masks, **args)[0].item()
    assert ActivationMasks().state_dict() == {}


def test_l1_training_makes_the_masks_sparse():
    p, lc, lr, kl_c, kl_r = _batch()
    masks = _masks()
    with torch.no_grad():
        masks.bias.fill_(1.0)  # every token's mask starts positive
    sparsepo = tc.get("preference", "sparsepo")
    args = {"masks": masks, "chosen_kl": kl_c.detach(), "rejected_kl": kl_r.detach(), "lambda_u": 0.5, "lambda_d": 0.5}
    before = sparsepo(p, lc, lr, **args)[1]["reward_mask_density"].item()
    optimizer = torch.optim.Adam(masks.parameters(), lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        sparsepo(p, lc.detach(), lr.detach(), **args)[0].backward()
        optimizer.step()
    after = sparsepo(p, lc, lr, **args)[1]["reward_mask_density"].item()
    assert before == 1.0 and after < 0.5


def test_dropout_acts_in_training_mode_only():
    p = _batch()[0]
    torch.manual_seed(0)
    masks = SparseTokenMasks(4, 2, dropout=0.5)
    with torch.no_grad():
        masks.bias.fill_(1.0)
    hidden = p.extra["chosen_hidden"]
    masks.eval()
    assert torch.equal(masks(hidden, p.chosen_mask), masks(hidden, p.chosen_mask))
    masks.train()
    draws = {tuple(masks(hidden, p.chosen_mask).flatten().tolist()) for _ in range(8)}
    assert len(draws) > 1


def test_activation_masks_by_hand():
    masks = ActivationMasks()
    # token means 1, 3, 2 (over layers and hidden dimensions): rescaled to 0, 1, 0.5
    hidden = torch.tensor([[[[0.0, 2.0], [1.0, 1.0]], [[3.0, 3.0], [2.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]],
                            [[50.0, 50.0], [50.0, 50.0]]]])
    mask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(masks(hidden, mask), torch.tensor([[0.0, 1.0, 0.5, 0.0]]))
    # all equal, one token, no tokens: 1 on the response's tokens
    torch.testing.assert_close(masks(torch.ones(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]])),
                               torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert masks(torch.ones(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 0)
    p, lc, lr, kl_c, kl_r = _batch()
    loss, _ = tc.get("preference", "sparsepo")(p, lc, lr, masks=masks, chosen_kl=kl_c, rejected_kl=kl_r)
    loss.backward()
    assert torch.isfinite(lc.grad).all()


def test_needs_and_errors():
    assert needs_of("preference", "sparsepo") == Needs(inputs={"ref_logprob"}, policy={"kl"})
    assert needs_of("preference", "sparsepo", {"masks": _masks()}) == Needs(inputs={"ref_logprob", "hidden"},
                                                                            policy={"kl"})
    assert needs_of("preference", "sparsepo", {"kl_term": "none"}) == Needs(inputs={"ref_logprob"})
    unused = {"masks": _masks(), "mask_on_reward": False, "kl_term": "full"}  # the masks are not used
    assert needs_of("preference", "sparsepo", unused) == Needs(inputs={"ref_logprob"}, policy={"kl"})
    sparsepo = tc.get("preference", "sparsepo")
    p, lc, lr, kl_c, kl_r = _batch()
    with pytest.raises(ValueError, match=re.escape("chosen_kl: preference 'sparsepo' with kl_term='masked' needs")):
        sparsepo(p, lc, lr)
    with pytest.raises(ValueError, match=re.escape("rejected_kl: expected a float tensor of shape [B,T_r]")):
        sparsepo(p, lc, lr, chosen_kl=kl_c, rejected_kl=kl_c)
    bare, lc, lr = hand_pairs()
    with pytest.raises(ValueError, match=re.escape("Pairs.extra['chosen_hidden']: preference 'sparsepo' needs")):
        sparsepo(bare, lc, lr, masks=_masks(), chosen_kl=kl_c, rejected_kl=kl_r)
    with pytest.raises(ValueError, match=re.escape("hidden: SparseTokenMasks has 2 layers of size 4")):
        SparseTokenMasks(4, 2)(torch.zeros(2, 3, 3, 4), p.chosen_mask)
    with pytest.raises(ValueError, match=re.escape("hidden: SparseTokenMasks expected float hidden states")):
        SparseTokenMasks(4, 2)(torch.zeros(2, 2, 2, 4), p.chosen_mask)
    for kwargs, field in (({"kl_term": "half"}, "kl_term"), ({"lambda_u": -1.0}, "lambda_u"),
                          ({"lambda_d": float("nan")}, "lambda_d"), ({"masks": 3}, "masks")):
        with pytest.raises(ValueError, match=field):
            sparsepo(p, lc, lr, chosen_kl=kl_c, rejected_kl=kl_r, **kwargs)
    for kwargs, field in (({"hidden_size": 0}, "hidden_size"), ({"hidden_size": 4, "num_layers": 0}, "num_layers"),
                          ({"hidden_size": 4, "dropout": 1.0}, "dropout")):
        with pytest.raises(ValueError, match=field):
            SparseTokenMasks(**kwargs)
