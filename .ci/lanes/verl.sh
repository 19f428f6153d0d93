#!/usr/bin/env bash
# Lane: verl (advantage / policy-loss registries, verl.plugins entry points). Builds .lanes/verl/ from scratch
# and runs tests/integrations/verl/.
# Usage: bash .ci/lanes/verl.sh [--reuse] [-- PYTEST_ARGS...]   (docs/engines.md)
source "$(dirname "$0")/lib.sh"

lane_install() {
    # torch==2.13.0 takes the CPU wheel from this machine's disk; the verl extra pins verl and what it
    # imports without declaring.
    lane_pip install -q torch==2.13.0 -e '.[verl]' 'pytest>=8'
}

lane_env() {
    export RAY_USAGE_STATS_ENABLED=0
}

lane_main verl verl "$@"
