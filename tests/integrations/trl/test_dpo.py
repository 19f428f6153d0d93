"""TokenCreditDPOTrainer: tokencredit preference losses with per-token weights inside TRL's DPOTrainer."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

import tokencredit as tc
from tokencredit.integrations.trl import TokenCreditDPOTrainer, check_loss
from tokencredit.models import create_tiny_model, load_model
from tokencredit.preference.cdpo import critical_token_weights

PAIRS = [("3+4=", "7", "81"), ("2+2=", "4", "221"), ("5+1+1=", "7", "6"), ("7+0=", "7", "705")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A reference that differs from the policy (another seed), so the log-ratios are not 0."""
    return create_tiny_model(tmp_path_factory.mktemp("tiny-ref"), seed=1)


def config(tmp_path, **extra):
    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                    per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3, seed=0, beta=5.0) | extra
    return DPOConfig(**settings)


def dataset(**columns):
    data = {"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS],
            "rejected": [r for _, _, r in PAIRS]}
    return Dataset.from_dict(data | columns)


def trainer_of(cls, tiny_model, reference, tmp_path, data, **kwargs):
    return cls(model=str(tiny_model), ref_model=load_model(reference)[0], args=config(tmp_path), train_dataset=data,
               **kwargs)


def batch_loss(trainer):
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item()


def test_dpo_and_unit_weight_cdpo_match_trl_s_dpo_loss(tiny_model, reference, tmp_path):
    trl_loss = batch_loss(trainer_of(DPOTrainer, tiny_model, reference, tmp_path / "trl", dataset()))
    assert abs(trl_loss - 0.6931471805599453) > 1e-4  # the reference differs from the policy
    ours = batch_loss(trainer_of(TokenCreditDPOTrainer, tiny_model, reference, tmp_path / "dpo", dataset(),
                                 loss="dpo"))
    assert ours == pytest.approx(trl_loss, rel=1e-5)
    probe = trainer_of(TokenCreditDPOTrainer, tiny_model, reference, tmp_path / "probe", dataset(), loss="dpo")
    lengths = {side: [len(probe.train_dataset[i][f"{side}_ids"]) for i in range(len(PAIRS))]
               for side in ("chosen", "rejected")}
    unit = dataset(chosen_weight=[[1.0] * n for n in lengths["chosen"]],
                   rejected_weight=[[1.0] * n for n in lengths["rejected"]])
    cdpo = batch_loss(trainer_of(TokenCreditDPOTrainer, tiny_model, reference, tmp_path / "cdpo", unit, loss="cdpo"))
    assert cdpo == pytest.approx(trl_loss, rel=1e-5)


def per_token(model, prompt_ids, ids):
    """Per-token log-probs of `ids` after `prompt_ids` (one unpadded row, as TRL's right-padded rows see it)."""
    seq = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=seq).logits[0, :-1].float(), -1)
    return logp[len(prompt_ids) - 1:].gather(-1, torch.tensor(ids)[:, None])[:, 0]


def test_rollout_critical_weights_give_the_library_s_cdpo_loss(tiny_model, reference, tmp_path):
    critical = [0, 1, -1, 0]
    trainer = trainer_of(TokenCreditDPOTrainer, tiny_model, reference, tmp_path, dataset(rejected_critical=critical),
                         loss="cdpo", loss_params={"weights": "critical", "floor": 0.1})
    got = batch_loss(trainer)
    policy, ref = load_model(tiny_model)[0], load_model(reference)[0]
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    fields = {}
    for side in ("chosen", "rejected"):
        n = max(len(r[f"{side}_ids"]) for r in rows)
        mask = torch.tensor([[t < len(r[f"{side}_ids"]) for t in range(n)] for r in rows])
        fields[f"{side}_mask"] = mask
        for name, model in ((f"{side}_logprob", policy), (f"{side}_ref_logprob", ref)):
            fields[name] = torch.zeros(len(rows), n)
            for i, r in enumerate(rows):
                fields[name][i, : len(r[f"{side}_ids"])] = per_token(model, r["prompt_ids"], r[f"{side}_ids"])
    index = torch.tensor(critical)
    weights = critical_token_weights(index, fields["rejected_mask"], floor=0.1)
    # "81"+EOS with t* = 0: the critical token and the EOS; "6"+EOS without one: DPO's weights
    assert weights[0].tolist() == pytest.approx([1.0, 0.1, 1.0, 0.0]) and weights[2].tolist() == [1.0, 1.0, 0.0, 0.0]
    pairs = tc.Pairs(**{k: v for k, v in fields.items() if k.endswith(("_mask", "_ref_logprob"))},
                     rejected_weight=weights)
    expected, _ = tc.get("preference", "cdpo")(pairs, fields["chosen_logprob"], fields["rejected_logprob"], beta=5.0)
    assert got == pytest.approx(expected.item(), rel=1e-5)
    plain = batch_loss(trainer_of(TokenCreditDPOTrainer, tiny_model, reference, tmp_path / "dpo", dataset(),
                                  loss="dpo"))
    assert got != pytest.approx(plain, rel=1e-4)  # the weights matter


def test_trains_two_steps_and_logs_the_loss_stats(tiny_model, reference, tmp_path):
    trainer = trainer_of(TokenCreditDPOTrainer, tiny_model, reference, tmp_path, dataset(rejected_critical=[0] * 4),
                         loss="t_reg", loss_params={"source": "critical"})
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train()
    assert trainer.state.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(p.detach(), b) for p, b in zip(trainer.model.parameters(), before))
    assert any("tokencredit/margin" in log and "tokencredit/regulariser" in log for log in trainer.state.log_history)


def test_what_trl_cannot_feed_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"preference 'sparsepo' needs the current policy's 'kl'"):
        check_loss("sparsepo", {}, config(tmp_path))
    with pytest.raises(ValueError, match=r"precompute_ref_log_probs=True"):
        check_loss("dpo", {}, config(tmp_path, precompute_ref_log_probs=True))
    with pytest.raises(ValueError, match=r"loss_params \['gamma'\] are not parameters of preference 'dpo'"):
        check_loss("dpo", {"gamma": 1.0}, config(tmp_path))
    with pytest.raises(ValueError, match=r"loss_params 'masks' given as data is a module to build and train"):
        check_loss("sparsepo", {"kl_term": "none", "masks": "sparse"}, config(tmp_path))
    check_loss("sparsepo", {"kl_term": "none"}, config(tmp_path))  # no KL term: nothing TRL lacks
