"""Write GSM8K as the parquet files verl's PPO trainer reads (`data_source`, chat `prompt`, `reward_model`), scored by
verl's built-in GSM8K rule reward (`verl.utils.reward_score`, selected by `data_source == "openai/gsm8k"`).

    python3 examples/verl/gsm8k_to_parquet.py --out ~/data/gsm8k       # downloads openai/gsm8k from the Hub
"""

from __future__ import annotations

import argparse
import os
import re

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def final_answer(solution: str) -> str:
    """The number after GSM8K's "#### " marker, without thousands separators."""
    found = re.search(r"#### (-?[0-9.,]+)", solution)
    if found is None:
        raise ValueError(f"no '#### <answer>' in {solution!r}")
    return found.group(1).replace(",", "")


def record(example: dict, index: int, split: str) -> dict:
    """One verl training row for a GSM8K example (`question`, `answer`)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": f"{example['question']} {INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": final_answer(example["answer"])},
        "extra_info": {"split": split, "index": index, "question": example["question"], "answer": example["answer"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="~/data/gsm8k", help="folder for train.parquet and test.parquet")
    parser.add_argument("--dataset", default=DATA_SOURCE, help="Hub id or local path of the raw dataset")
    args = parser.parse_args()
    import datasets

    raw = datasets.load_dataset(args.dataset, "main")
    out = os.path.expanduser(args.out)
    os.makedirs(out, exist_ok=True)
    for split in ("train", "test"):
        rows = raw[split].map(lambda ex, i, split=split: record(ex, i, split), with_indices=True,
                              remove_columns=raw[split].column_names)
        rows.to_parquet(os.path.join(out, f"{split}.parquet"))
        print(f"{split}: {len(rows)} rows -> {out}/{split}.parquet")


if __name__ == "__main__":
    main()
