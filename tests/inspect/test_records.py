import json

import pytest
import torch

import tokencredit as tc
from group_records import synthetic_step
from tokencredit.inspect.records import (
    FORMAT,
    StepRecord,
    read_critical,
    read_records,
    records_from_tensors,
    responses_jsonl,
    round_significant,
    sample_groups,
    write_records,
)
from tokencredit.inspect.report import token_pieces
from tokencredit.integrations.common import write_group_records


def test_round_trip_through_json_and_files(tmp_path):
    record = synthetic_step(3)
    back = StepRecord.from_json(json.loads(record.dumps()))
    assert back == record
    path = write_records(tmp_path, record, max_bytes=10**7)
    assert path == tmp_path / "records" / "step-000003.json"
    write_records(tmp_path, synthetic_step(1, seed=2), max_bytes=10**7)
    assert [r.step for r in read_records(tmp_path)] == [1, 3] and read_records(tmp_path)[1] == record
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["version"] == 1
    assert set(data["groups"][0]["responses"][0]) >= {"ids", "text", "node", "logprob", "ref_logprob", "entropy",
                                                      "advantage", "weight", "value", "keep", "token_keep"}


def test_node_ids_are_shared_exactly_along_common_prefixes():
    tokens = torch.tensor([[5, 6, 7, 0], [5, 6, 9, 9], [5, 1, 0, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    record = records_from_tensors(step=1, recipe="grpo", prompts=["p"] * 4, group=torch.tensor([0, 0, 0, 1]),
                                  mask=mask, tokens=tokens, reward=torch.tensor([1.0, 0.0, 1.0, 0.0]),
                                  token_text=[["x"] * int(m.sum()) for m in mask])
    a, b, c = (r.node for r in record.groups[0].responses)
    assert a == [0, 1, 2] and b == [0, 1, 3, 4] and c == [0, 5]
    assert record.groups[1].responses[0].node == [0, 1, 2, 3]  # ids restart in each group


def test_values_are_rounded_to_four_significant_digits():
    x = torch.tensor([0.123456, -0.00098765, 123456.0, 0.0, 1.0, -2.5e-9])
    assert round_significant(x).tolist() == [0.1235, -0.0009877, 123500.0, 0.0, 1.0, -2.5e-9]
    assert json.dumps(round_significant(torch.tensor([0.1 + 0.2])).tolist()) == "[0.3]"


def test_write_leaves_out_groups_to_fit_and_warns_when_none_fits(tmp_path):
    record = synthetic_step(1, groups=3, length=40)
    one = len(StepRecord(1, "grpo", record.groups[:1]).dumps().encode())
    path = write_records(tmp_path, record, max_bytes=one + 10)
    assert len(read_records(tmp_path)[0].groups) == 1 and path.stat().st_size <= one + 10
    with pytest.warns(UserWarning, match="larger than records.max_bytes"):
        assert write_records(tmp_path / "b", record, max_bytes=one // 2) is None


def test_bad_files_are_errors_naming_the_field(tmp_path):
    data = json.loads(synthetic_step(1).dumps())
    data["groups"][0]["responses"][0]["entropy"].pop()
    with pytest.raises(ValueError, match=r"responses\[0\]\.entropy: expected \d+ entries"):
        StepRecord.from_json(data)
    with pytest.raises(ValueError, match="version 2; this tokencredit reads version 1"):
        StepRecord.from_json({**data, "version": 2})
    with pytest.raises(ValueError, match="has no group records"):
        read_records(tmp_path)


def test_sample_groups_is_seeded_and_does_not_touch_torch_random_state():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    chosen = sample_groups(torch.tensor([4, 4, 9, 9, 2, 2, 7, 7]), 2, seed=5)
    assert torch.rand(1) == before
    assert chosen == sample_groups(torch.tensor([4, 4, 9, 9, 2, 2, 7, 7]), 2, seed=5) and len(set(chosen)) == 2
    assert set(chosen) <= {2, 4, 7, 9}


def test_critical_rows_come_back_by_place(tmp_path):
    record = synthetic_step(6)
    rows = responses_jsonl([record])
    assert len(rows) == 8 and rows[5] == {**rows[5], "step": 6, "group": 1, "response": 1}
    path = tmp_path / "critical.jsonl"
    path.write_text(json.dumps({"step": 6, "group": 1, "response": 1, "index": 3}) + "\n"
                    + json.dumps({"step": 6, "group": 0, "response": 2, "index": None}) + "\n")
    assert read_critical(path).index == {(6, 1, 1): 3}


class LetterTokenizer:
    """Token id i decodes to the i-th lowercase letter; counts the ids it decodes."""

    def __init__(self) -> None:
        self.decoded: set[int] = set()

    def decode(self, ids):
        self.decoded.update(ids)
        return "".join(chr(97 + i) for i in ids)


def test_engine_plugins_record_only_the_drawn_groups_rows(tmp_path):
    """`write_group_records` (what the TRL and verl plug-ins call) writes the record that `records_from_tensors`
    gives for the whole batch and the same drawn groups, but detokenizes and asks prompts of those rows only, and
    draws among the `candidates` rows' groups."""
    g = torch.Generator().manual_seed(0)
    group = torch.arange(12) // 3
    tokens = torch.randint(0, 26, (12, 5), generator=g)
    mask = torch.arange(5)[None, :] < torch.randint(1, 6, (12, 1), generator=g)
    rollouts = tc.Rollouts(group=group, mask=mask, reward=torch.randint(0, 2, (12,), generator=g).float(),
                           tokens=tokens, entropy=torch.rand(12, 5, generator=g) * mask, truncated=mask.all(-1),
                           budget=5)
    credit = tc.recipe("forking", weight_params={"top": 0.5}).credit(rollouts)
    asked = []

    def prompts(rows):
        asked.extend(rows)
        return [f"prompt {int(group[i])}" for i in rows]

    tokenizer = LetterTokenizer()
    candidates = group != 3
    path = write_group_records(tmp_path, rollouts, credit, step=4, recipe="forking", source="test", tokenizer=tokenizer,
                               prompts=prompts, groups=2, max_bytes=10**6, candidates=candidates)
    chosen = sample_groups(group[candidates], 2, seed=4)
    rows = torch.isin(group, torch.tensor(chosen)).nonzero().squeeze(-1).tolist()
    assert sorted(asked) == rows and 3 not in chosen
    assert tokenizer.decoded == {int(t) for i in rows for t in tokens[i][mask[i]]}
    whole = records_from_tensors(
        step=4, recipe="forking", prompts=[f"prompt {int(i)}" for i in group], group=group, mask=mask, tokens=tokens,
        reward=rollouts.reward, token_text=[token_pieces(tokenizer, t[m].tolist()) for t, m in zip(tokens, mask)],
        groups=chosen, truncated=rollouts.truncated, keep=credit.keep, token_keep=credit.token_keep, source="test",
        entropy=rollouts.entropy, advantage=credit.advantage, weight=credit.weight)
    assert path == tmp_path / "records" / "step-000004.json" and read_records(tmp_path) == [whole]
