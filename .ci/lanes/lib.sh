# Shared by the engine lanes (.ci/lanes/<engine>.sh); sourced, never run on its own.
#
# A lane builds its own virtual environment under .lanes/<engine>/ from scratch (python3 -m venv, then pip),
# checks that the engine imports, then runs pytest on tests/integrations/<engine>/ only, with
# TOKENCREDIT_LANE=<engine> (tests/integrations/conftest.py collects nothing under tests/integrations without it).
# Any failure (pip cannot install the engine, the engine does not import, a test fails or is skipped, no test ran)
# exits non-zero. `--reuse` skips the build when .lanes/<engine>/ holds a complete one (for local iteration; CI
# never passes it). Extra arguments after `--` go to pytest.
set -Eeuo pipefail

LANE_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$LANE_REPO"

lane_log() { printf '[lane %s] %s\n' "$LANE" "$*"; }

lane_now() { date +%s.%N; }

# pip in the lane's venv, without the "Location 'file://…' is ignored" lines that a machine whose pip config names
# local indexes prints for every package; pip's own exit status is kept (pipefail).
lane_pip() {
    "$LANE_VENV/bin/pip" "$@" 2>&1 | { grep -v "^WARNING: Location 'file://.*' is ignored" || true; }
}

lane_secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# lane_main <engine> <python module of the engine> [script args...]; the lane script defines lane_install
# (pip steps into "$LANE_VENV") and may define lane_env (exports for the tests).
lane_main() {
    LANE="$1"
    local module="$2"
    shift 2
    local reuse=0
    local pytest_args=()
    while (($#)); do
        case "$1" in
            --reuse) reuse=1 ;;
            --) shift; pytest_args=("$@"); break ;;
            *) echo "usage: bash .ci/lanes/$LANE.sh [--reuse] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
        esac
        shift
    done
    LANE_VENV="$LANE_REPO/.lanes/$LANE"
    local py="$LANE_VENV/bin/python"
    trap 'lane_log "FAILED (exit $?)"' ERR

    if ((reuse)) && [[ -f "$LANE_VENV/.lane-built" ]]; then
        lane_log "reusing $LANE_VENV (built $(cat "$LANE_VENV/.lane-built"))"
    else
        lane_log "building $LANE_VENV from scratch"
        rm -rf "$LANE_VENV"
        local t0
        t0=$(lane_now)
        python3 -m venv "$LANE_VENV"
        lane_install
        "$LANE_VENV/bin/pip" freeze --exclude-editable >"$LANE_VENV/freeze.txt"
        local size
        size=$(du -sm "$LANE_VENV" | cut -f1)
        local built
        built="$(date -u +%FT%TZ), $(lane_secs "$t0" "$(lane_now)") s, ${size} MiB"
        echo "$built" >"$LANE_VENV/.lane-built"
        lane_log "environment built: $built"
    fi

    # The engine must import; an install that "succeeded" without a working engine fails the lane here.
    if ! "$py" -c "import $module, sys; print('[lane $LANE] $module', getattr($module, '__version__', '?'), 'on python', sys.version.split()[0])"; then
        lane_log "FAILED: the engine ($module) does not import in $LANE_VENV"
        exit 1
    fi
    "$py" -c "import torch, transformers; print('[lane $LANE] torch', torch.__version__, '| transformers', transformers.__version__)"

    export TOKENCREDIT_LANE="$LANE" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
    if declare -F lane_env >/dev/null; then lane_env; fi
    local t1
    t1=$(lane_now)
    "$py" -m pytest -p no:cacheprovider "tests/integrations/$LANE" "${pytest_args[@]}"
    lane_log "tests passed in $(lane_secs "$t1" "$(lane_now)") s"
}
