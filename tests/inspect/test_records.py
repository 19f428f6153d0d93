import json

import pytest
import torch

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
