#!/usr/bin/env bash
# A tokencredit recipe in verl 0.9.1 on SEVERAL NODES: Qwen2.5-0.5B-Instruct on GSM8K, vLLM rollouts, FSDP data
# parallel over NNODES × GPUS_PER_NODE GPUs (docs/verl.md).
#
# Every node: the same environment (pip install -e '.[verl]' 'verl[vllm]==0.9.1') and the data at the same path.
#   head node:    ray start --head --port=6379
#   other nodes:  ray start --address=<head-ip>:6379
#   head node:    NNODES=2 GPUS_PER_NODE=8 RECIPE=forking bash examples/verl/run_qwen05b_multinode.sh [overrides ...]
#
# The plug-in is loaded by `import verl` in every Ray worker through its entry point (installed with tokencredit),
# so nothing else is shipped to the nodes. The batch grows with the GPUs (64 prompts × 8 responses per node); the
# recipe's normaliser stays exact across the data-parallel ranks and the 2 mini-batches per step.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE="${RECIPE:-tempo}"
NNODES="${NNODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
ADVANTAGE="$(python3 -c 'import sys, tokencredit as tc; print(tc.recipe(sys.argv[1]).advantage)' "$RECIPE")"

exec python3 -m verl.trainer.main_ppo \
    --config-path "$HERE" --config-name tokencredit_qwen05b \
    algorithm.adv_estimator="tc_${ADVANTAGE}" \
    algorithm.tokencredit.recipe="${RECIPE}" \
    trainer.nnodes="${NNODES}" \
    trainer.n_gpus_per_node="${GPUS_PER_NODE}" \
    data.train_batch_size=$((64 * NNODES)) \
    actor_rollout_ref.actor.ppo_mini_batch_size=$((32 * NNODES)) \
    +ray_kwargs.ray_init.address=auto \
    "$@"
