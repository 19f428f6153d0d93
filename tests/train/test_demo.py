import json

from tokencredit.train.demo import run_demo

TINY = {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64}


def test_demo_writes_summary_and_plot(tmp_path):
    summary = run_demo(
        tmp_path, ["grpo", "dapo"], workers=2,
        model={"tiny": TINY}, sft={"steps": 2, "batch_size": 4},
        rl={"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "minibatch_size": 4,
            "micro_batch_size": 4},
        eval={"every": 1, "size": 4, "pass_k": 2, "pass_k_size": 2},
    )
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == summary and set(written) == {"grpo", "dapo"}
    for row in written.values():
        assert set(row) == {"sft_accuracy", "final_accuracy", "seconds"}
        assert 0 <= row["final_accuracy"] <= 1 and row["seconds"] > 0
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert (tmp_path / "grpo" / "metrics.jsonl").is_file()
