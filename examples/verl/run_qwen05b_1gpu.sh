#!/usr/bin/env bash
# A tokencredit recipe in verl 0.9.1 on ONE GPU: Qwen2.5-0.5B-Instruct on GSM8K, vLLM rollouts (docs/verl.md).
#
#   pip install -e '.[verl]' 'verl[vllm]==0.9.1'                  # the pins of docs/verl.md (vLLM 0.24.0)
#   python3 examples/verl/gsm8k_to_parquet.py --out ~/data/gsm8k   # once
#   RECIPE=forking bash examples/verl/run_qwen05b_1gpu.sh [hydra overrides ...]
#
# RECIPE: any tokencredit preset verl can feed (default tempo; spo_chain and spo_tree are refused; ppo also needs
# critic.enable=True: verl's critic supplies its values). Settings: +algorithm.tokencredit.<field>=...
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE="${RECIPE:-tempo}"
# verl's estimator is tc_<the recipe's advantage>: tc_grpo for grpo, dapo, forking, steer, d3s, ...
ADVANTAGE="$(python3 -c 'import sys, tokencredit as tc; print(tc.recipe(sys.argv[1]).advantage)' "$RECIPE")"

exec python3 -m verl.trainer.main_ppo \
    --config-path "$HERE" --config-name tokencredit_qwen05b \
    algorithm.adv_estimator="tc_${ADVANTAGE}" \
    algorithm.tokencredit.recipe="${RECIPE}" \
    "$@"
