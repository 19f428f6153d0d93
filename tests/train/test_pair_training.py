"""Pair data (JSONL and on-policy) and the trainer's pairs mode: every preference loss trains, resume is exact."""

import json
import random
import re

import pytest
import torch
from safetensors.torch import load_file

import tokencredit as tc
from helpers import TINY_MODEL as TINY
from helpers import metric_records as _records
from helpers import tiny_train_config as tiny_config
from tokencredit.models import create_tiny_model, load_model
from tokencredit.preference.masks import token_masks
from tokencredit.sampling.hf import TransformersSampler, policy_logprob
from tokencredit.tasks import BUILTIN_TASKS, Example, Task
from tokencredit.train import Trainer, load_config, train
from tokencredit.train.pairs import (
    PAIRS_FILE,
    PairContext,
    PairRecord,
    accumulate_pair_gradient,
    build_modules,
    collate,
    pair_inputs,
    read_pairs,
    sample_pairs,
    side_logprob,
    write_pairs,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    create_tiny_model(path, seed=0, **TINY)
    return load_model(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sums(n=6):
    return [{"prompt": f"{a}+{b}=", "chosen": f"{a + b}", "rejected": f"{a + b + 1}x", "rejected_critical": 1}
            for a in range(n // 2) for b in range(2)]


# ---------------------------------------------------------------------------------------------- data
def test_read_pairs_texts_ids_and_critical(tiny, tmp_path):
    _, tok = tiny
    eos = tok.eos_token_id
    ids = tok("12", add_special_tokens=False)["input_ids"]
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "1+2=", "chosen": "3", "rejected": "45", "rejected_critical": 1, "other": "ignored"},
        {"prompt": "2+2=", "chosen_ids": [*ids, eos], "rejected_ids": ids, "answer": 4, "chosen_critical": None},
    ])
    first, second = read_pairs(path, tok)
    assert first.chosen == tok("3", add_special_tokens=False)["input_ids"] and first.chosen_end
    assert first.rejected_critical == 1 and first.chosen_critical is None
    assert second.chosen == ids and second.chosen_end  # ids that ended with EOS
    assert second.rejected == ids and not second.rejected_end  # a truncated response stays truncated
    assert second.example.answer == "4" and second.chosen_critical == -1 and second.rejected_critical is None
    write_pairs(tmp_path / "back.jsonl", [first, second], tok)
    assert read_pairs(tmp_path / "back.jsonl", tok) == [first, second]


@pytest.mark.parametrize(("row", "message"), [
    ({"chosen": "1", "rejected": "2"}, "missing field 'prompt'"),
    ({"prompt": "x", "rejected": "2"}, "missing field 'chosen_ids' or 'chosen'"),
    ({"prompt": "x", "chosen": "1", "rejected": 2}, "field 'rejected' must be a string"),
    ({"prompt": "x", "chosen": "1", "rejected": "2", "rejected_critical": 1},
     "field 'rejected_critical' must be -1 (none) or a token index of the rejected response (0 … 0), got 1"),
    ({"prompt": "x", "chosen": "1", "rejected": "2", "rejected_critical": True}, "field 'rejected_critical'"),
])
def test_bad_pair_lines_name_the_line_and_field(tiny, tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "1", "rejected": "2"}, row])
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:2: {message}")):
        read_pairs(path, tiny[1])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"^pairs.data: .* holds no records"):
        read_pairs(tmp_path / "empty.jsonl", tiny[1])


def test_collate_pads_each_side_and_appends_eos(tiny):
    model, tok = tiny
    sampler = TransformersSampler(model, tok)
    records = [PairRecord(Example("1+2=", "3"), [5, 6], [7], rejected_critical=0),
               PairRecord(Example("10+20=", "30"), [8], [9, 10, 11], rejected_end=False, rejected_critical=-1)]
    batch = collate(records, sampler)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    p = batch.pairs
    assert p.chosen_tokens.tolist() == [[5, 6, eos], [8, eos, pad]]
    assert p.rejected_tokens.tolist() == [[7, eos, pad], [9, 10, 11]]
    assert p.chosen_mask.sum(-1).tolist() == [3, 2] and p.rejected_mask.sum(-1).tolist() == [2, 3]
    assert p.extra["rejected_critical"].tolist() == [0, -1] and "chosen_critical" not in p.extra
    narrowed = batch.select(torch.tensor([0]))
    assert narrowed.pairs.chosen_tokens.shape == (1, 3) and narrowed.pairs.rejected_tokens.shape == (1, 2)


class HasDigit(Task):
    """A stub verifier an untrained model passes about half the time: correct iff the response has a digit."""

    name = "has_digit"

    def sample(self, rng: random.Random) -> Example:
        a = rng.randrange(100)
        return Example(f"{a}=", "1", demonstration="1")

    def score(self, response: str, example: Example) -> float:
        return float(any(c.isdigit() for c in response))


def test_on_policy_pairs_pair_a_correct_with_a_wrong_response(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    sampler = TransformersSampler(model, tok, max_new_tokens=8)
    examples = [Example(f"{i}=", "1") for i in range(8)]
    records = sample_pairs(sampler, HasDigit(), examples, 4)
    assert records
    for r in records:
        assert HasDigit().score(tok.decode(r.chosen), r.example) == 1.0
        assert HasDigit().score(tok.decode(r.rejected), r.example) == 0.0
        assert r.rejected_critical is None
    assert len({r.example.prompt for r in records}) == len(records)  # at most one pair per prompt


def test_micro_batches_give_the_batch_gradient(tiny):
    model, tok = tiny
    sampler = TransformersSampler(model, tok)
    rows = [PairRecord(Example(f"{a}+1=", ""), tok(f"{a + 1}", add_special_tokens=False)["input_ids"],
                       tok(f"{a}{a}9", add_special_tokens=False)["input_ids"], rejected_critical=a % 3)
            for a in range(5)]
    batch = collate(rows, sampler)
    ctx = PairContext(reference=model, params={"beta": 0.5})
    masks = token_masks("sparse", model.config.hidden_size, model.config.num_hidden_layers, dropout=0.0)
    # (each loss's own micro-batch exactness is tested on tensors; here: the trainer's path, inputs and policy KL)
    for loss, params in (("cdpo", {"weights": "critical", "window": 1}), ("sparsepo", {}),
                         ("sparsepo", {"masks": masks})):
        needs = tc.registry.needs_of("preference", loss, params)
        grads = []
        for micro in (5, 2):
            model.zero_grad()
            accumulate_pair_gradient(model, tc.get("preference", loss), {"beta": 0.5, **params}, ctx, batch, needs,
                                     micro)
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        for g in grads[1:]:
            torch.testing.assert_close(g, grads[0], atol=1e-6, rtol=1e-4)
    model.zero_grad()


def test_one_reference_pass_gives_hidden_states_and_log_probs(tiny):
    model, tok = tiny
    batch = collate([PairRecord(Example("3+4=", ""), [5, 6], [7, 8, 9]), PairRecord(Example("12=", ""), [5], [7])],
                    TransformersSampler(model, tok))
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        needs = tc.registry.needs_of("preference", "sparsepo", {"masks": "sparse"})
        pairs = pair_inputs(PairContext(reference=model, params={}), batch, needs).pairs
    finally:
        hook.remove()
    assert needs.inputs == {"ref_logprob", "hidden"} and len(calls) == 2  # one pass per side
    cfg = model.config
    assert pairs.extra["chosen_hidden"].shape == (2, 3, cfg.num_hidden_layers, cfg.hidden_size)
    assert pairs.extra["rejected_last_hidden"].shape == (2, 4, cfg.hidden_size)
    torch.testing.assert_close(pairs.extra["rejected_last_hidden"], pairs.extra["rejected_hidden"][:, :, -1])
    torch.testing.assert_close(pairs.chosen_ref_logprob, side_logprob(model, batch, "chosen"))


def test_reference_log_probs_are_the_policy_s_at_the_start(tiny):
    # the policy is its own reference at the start: DPO's loss is log 2 and its stats are 0
    model, tok = tiny
    sampler = TransformersSampler(model, tok)
    batch = collate([PairRecord(Example("3+4=", ""), [5, 6], [7, 8, 9])], sampler)
    ctx = PairContext(reference=model, params={})
    model.zero_grad()
    stats = accumulate_pair_gradient(model, tc.get("preference", "dpo"), {}, ctx, batch,
                                     tc.registry.needs_of("preference", "dpo"), 4)
    assert stats["loss"] == pytest.approx(0.6931471805599453, abs=1e-6) and stats["margin"] == pytest.approx(0)
    logprob, _ = policy_logprob(model, batch.prompt_ids, batch.prompt_mask, batch.pairs.chosen_tokens)
    assert logprob.shape == batch.pairs.chosen_tokens.shape
    model.zero_grad()


# ---------------------------------------------------------------------------------------------- the trainer
def pair_config(out, *extra):
    return tiny_config(out, "mode=pairs", "sft.steps=0", "pairs.batch_size=4", "pairs.micro_batch_size=2",
                       "pairs.epochs=1", "eval.size=2", "eval.every=100", "eval.pass_k_size=1", "checkpoint_every=100",
                       *extra)


LOSSES = {"dpo": [], "ipo": [], "cdpo": ["pairs.loss_params.weights=critical"],
          "t_reg": ["pairs.loss_params.source=critical"], "sparsepo": [], "tab_po": [], "tgdpo": ["GUIDE"]}


def test_every_preference_loss_has_a_smoke_entry():
    assert set(LOSSES) == set(tc.names("preference"))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_pair_training_smoke(tmp_path, loss):
    data = write_jsonl(tmp_path / "pairs.jsonl", sums())
    extra = [f"pairs.guide={tmp_path / 'guide'}" if e == "GUIDE" else e for e in LOSSES[loss]]
    if loss == "tgdpo":
        create_tiny_model(tmp_path / "guide", seed=1, **TINY)
    summary = train(pair_config(tmp_path / "run", f"pairs.data=jsonl:{data}", f"pairs.loss={loss}", *extra))
    assert summary["finished"] and summary["global_step"] == 2  # 6 pairs in batches of 4
    steps = [r for r in _records(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "pairs"]
    assert [r["pairs"] for r in steps] == [4, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in steps)
    assert "eval_accuracy" in steps[-1]
    latest = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert len(read_pairs(latest / PAIRS_FILE, load_model(latest)[1])) == 6


def test_pair_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    # on-policy pairs on a stub task with the critical-token search (cDPO from rollout weights), killed mid-epoch
    monkeypatch.setitem(BUILTIN_TASKS, "has_digit", HasDigit)
    args = ["task=has_digit", "sft.steps=2", "rl.max_new_tokens=6", "pairs.prompts=8", "pairs.samples=4",
            "pairs.batch_size=2", "pairs.epochs=2", "pairs.loss=cdpo", "pairs.loss_params.weights=critical",
            "pairs.critical_k=2", "eval.every=3", "eval.pass_k=2", "checkpoint_every=2"]
    full = train(pair_config(tmp_path / "full", *args))
    assert full["finished"]
    root = tmp_path / "full" / "checkpoints"
    saved = [json.loads(line) for line in (root / (root / "latest").read_text() / PAIRS_FILE).read_text().splitlines()]
    assert len(saved) >= 4 and all("rejected_critical" in r for r in saved), len(saved)
    cfg = pair_config(tmp_path / "killed", *args)
    partial = Trainer(cfg).run(stop_after=5)  # 2 warm-start steps + 3 pair steps; resumes from pair step 2
    assert not partial["finished"]
    resumed = Trainer(cfg).run()
    assert resumed["finished"]
    assert _records(tmp_path / "killed" / "metrics.jsonl") == _records(tmp_path / "full" / "metrics.jsonl")
    assert resumed["history"] == full["history"]


MASKS = {"sparse": "sparse", "sparse_last_independent": "{kind: sparse, layers: last, independent: true}",
         "activation": "activation"}


@pytest.mark.parametrize("masks", sorted(MASKS))
def test_sparsepo_trains_its_masks_in_pairs_mode(tmp_path, masks):
    data = write_jsonl(tmp_path / "pairs.jsonl", sums())
    cfg = pair_config(tmp_path / "run", f"pairs.data=jsonl:{data}", "pairs.loss=sparsepo", "pairs.lr=0.01",
                      f"pairs.loss_params.masks={MASKS[masks]}")
    summary = train(cfg)
    assert summary["finished"]
    steps = [r for r in _records(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "pairs"]
    assert all(0 < r["reward_mask_density"] <= 1 and 0 < r["kl_mask_density"] <= 1 for r in steps), steps
    root = tmp_path / "run" / "checkpoints"
    saved = root / (root / "latest").read_text() / "loss_masks.safetensors"
    if masks == "activation":  # no parameters: nothing to train or save
        assert not saved.exists()
        return
    needs = tc.registry.needs_of("preference", "sparsepo", {"masks": cfg.pairs.loss_params["masks"]})
    reference = load_model(root / "sft")[0]
    start = build_modules(PairContext(reference=reference, params={}), needs, cfg.seed)["masks"]
    trained = load_file(str(saved))
    assert set(trained) == set(start.state_dict())
    assert any(not torch.equal(trained[k], v) for k, v in start.state_dict().items())  # the loss trained them
    start.load_state_dict(trained)  # the checkpoint fits the module the run builds (round trip)
    assert all(torch.equal(start.state_dict()[k], v) for k, v in trained.items())


@pytest.mark.parametrize("kill_at", [2, 5])  # right after the warm start; mid-epoch (resumes from pair step 2)
def test_pair_resume_with_learned_masks_reproduces_the_uninterrupted_run(tmp_path, kill_at):
    data = write_jsonl(tmp_path / "pairs.jsonl", sums(10))
    args = [f"pairs.data=jsonl:{data}", "pairs.loss=sparsepo", "pairs.lr=0.01", "pairs.batch_size=2",
            "pairs.epochs=2", "pairs.loss_params.masks={independent: true, dropout: 0.2}",
            "pairs.loss_params.lambda_u=0.01", "sft.steps=2", "checkpoint_every=2", "eval.every=3"]
    full = train(pair_config(tmp_path / "full", *args))
    cfg = pair_config(tmp_path / "killed", *args)
    assert not Trainer(cfg).run(stop_after=kill_at)["finished"]
    resumed = Trainer(cfg).run()
    assert resumed["finished"] and resumed["history"] == full["history"]
    assert _records(tmp_path / "killed" / "metrics.jsonl") == _records(tmp_path / "full" / "metrics.jsonl")
    final = [load_file(str(tmp_path / run / "checkpoints" / "step-12" / "loss_masks.safetensors"))
             for run in ("full", "killed")]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])


@pytest.mark.parametrize(("masks", "message"), [
    ("dense", "masks.kind: expected one of ['sparse', 'activation'], got 'dense'"),
    ("{layers: first}", "masks.layers: expected one of ['all', 'last'], got 'first'"),
    ("{dropout: 1}", "masks.dropout: expected a probability in [0, 1), got 1"),
    ("{independent: 2}", "masks.independent: expected true or false, got 2"),
    ("{kind: activation, independent: true}", "masks: ['independent'] are not options of 'activation' masks"),
    ("{lr: 1}", "masks: ['lr'] are not options of 'sparse' masks"),
])
def test_bad_mask_config_is_one_line_naming_the_field(masks, message):
    with pytest.raises(ValueError, match=r"^invalid training config: pairs.loss_params: " + re.escape(message)) as err:
        load_config(None, ["pairs.loss=sparsepo", f"pairs.loss_params.masks={masks}"])
    assert "\n" not in str(err.value)


def test_pair_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"pairs.loss: .*unknown preference loss 'dpo2'"):
        load_config(None, ["pairs.loss=dpo2"])
    with pytest.raises(ValueError, match=r"pairs.loss_params: .*\['gamma'\] are not parameters of preference 'dpo'"):
        load_config(None, ["pairs.loss_params.gamma=1"])
    with pytest.raises(ValueError, match=r"pairs.data: .*expected on_policy or jsonl:PATH, got 'pairs.jsonl'"):
        load_config(None, ["pairs.data=pairs.jsonl"])
    with pytest.raises(ValueError, match=r"mode: "):
        load_config(None, ["mode=dpo"])


def test_jsonl_pairs_without_critical_tokens_are_refused_by_a_loss_that_reads_them(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "rejected_critical"} for r in sums()]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = pair_config(tmp_path / "run", f"pairs.data=jsonl:{data}", "pairs.loss=cdpo",
                      "pairs.loss_params.weights=critical")
    with pytest.raises(ValueError, match=r"^pairs.data: the loss needs each rejected response's critical-token index"):
        train(cfg)


def test_tgdpo_without_a_guide_names_pairs_guide(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", sums())
    with pytest.raises(ValueError, match=r"^pairs.guide: the loss needs per-token rewards"):
        train(pair_config(tmp_path / "run", f"pairs.data=jsonl:{data}", "pairs.loss=tgdpo"))


def test_missing_pair_file_and_guide_are_refused_before_the_warm_start(tmp_path):
    with pytest.raises(ValueError, match=r"^pairs.data: no such file '.*nope.jsonl'"):
        Trainer(pair_config(tmp_path / "a", f"pairs.data=jsonl:{tmp_path / 'nope.jsonl'}"))
    with pytest.raises(ValueError, match=r"^pairs.guide: '.*nomodel' is not a local model folder"):
        Trainer(pair_config(tmp_path / "b", f"pairs.guide={tmp_path / 'nomodel'}"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resume_refuses_another_pair_config(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", sums())
    train(pair_config(tmp_path / "run", f"pairs.data=jsonl:{data}"))
    with pytest.raises(ValueError, match=r"pairs.loss \('dpo' → 'ipo'\)"):
        Trainer(pair_config(tmp_path / "run", f"pairs.data=jsonl:{data}", "pairs.loss=ipo"))


def test_a_pad_id_inside_a_sampled_response_is_a_token(tiny, tmp_path):
    _, tok = tiny
    record = PairRecord(Example("1=", "1"), [5, tok.pad_token_id, 6], [7], rejected_end=False)
    write_pairs(tmp_path / "p.jsonl", [record], tok)
    assert read_pairs(tmp_path / "p.jsonl", tok) == [record]
