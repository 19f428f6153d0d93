#!/usr/bin/env bash
# Lane: TRL (GRPOTrainer). Builds .lanes/trl/ from scratch and runs tests/integrations/trl/.
# Usage: bash .ci/lanes/trl.sh [--reuse] [-- PYTEST_ARGS...]   (docs/engines.md)
source "$(dirname "$0")/lib.sh"

lane_install() {
    # torch==2.13.0 takes the CPU wheel from this machine's disk; the trl extra pins the engine.
    lane_pip install -q torch==2.13.0 -e '.[trl]' 'pytest>=8'
}

lane_main trl trl "$@"
