import json

import pytest

from tokencredit.train.demo import demo_config, run_demo

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
    # the folder now holds this demo: another seed or step count is refused before anything runs, naming it
    with pytest.raises(ValueError, match=r"holds another demo \(rl.steps \(1 → 2\), seed \(0 → 1\)\); pass --fresh"):
        run_demo(tmp_path, ["grpo"], seed=1, model={"tiny": TINY}, sft={"steps": 2, "batch_size": 4},
                 rl={"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "minibatch_size": 4,
                     "micro_batch_size": 4},
                 eval={"every": 1, "size": 4, "pass_k": 2, "pass_k_size": 2})


def test_fresh_deletes_only_what_the_other_demo_wrote(tmp_path):
    from tokencredit.train.demo import prepare_demo_folder

    base = demo_config(tmp_path)
    for name in ("sft", "grpo", "tempo", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="holds a demo that recorded no settings; pass --fresh"):
        prepare_demo_folder(tmp_path, base, ["grpo"])
    prepare_demo_folder(tmp_path, base, ["grpo", "tempo"], fresh=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "mine.txt", "notes"]
    prepare_demo_folder(tmp_path, base, ["dapo"])  # the same demo, another preset: kept, and recorded
    assert json.loads((tmp_path / "demo.json").read_text())["presets"] == ["grpo", "tempo", "dapo"]
    with pytest.raises(ValueError, match=r"another demo \(task_params.mistake_rate \(0.1 → 0.3\)\)"):
        prepare_demo_folder(tmp_path, demo_config(tmp_path, task_params={"mistake_rate": 0.3}), ["grpo"])
