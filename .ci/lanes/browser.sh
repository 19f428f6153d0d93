#!/usr/bin/env bash
# Lane: the inspector page in a real browser. Installs Debian's chromium (apt-get, as root), builds .lanes/browser/
# with playwright (its Python driver only: the browser is Debian's), and runs tests/integrations/browser/.
# Usage: bash .ci/lanes/browser.sh [--reuse] [-- PYTEST_ARGS...]   (docs/inspect.md)
source "$(dirname "$0")/lib.sh"

lane_install() {
    lane_pip install -q torch==2.13.0 -e . 'pytest>=8' 'playwright>=1.40'
}

lane_env() {
    if ! command -v chromium >/dev/null; then
        lane_log "installing Debian's chromium"
        if ! { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null; then
            lane_log "FAILED: apt-get install chromium did not work (run as root on Debian, with the archive reachable)"
            exit 1
        fi
    fi
    TOKENCREDIT_CHROMIUM="$(command -v chromium)"
    export TOKENCREDIT_CHROMIUM
    lane_log "browser: $("$TOKENCREDIT_CHROMIUM" --version 2>/dev/null || echo "$TOKENCREDIT_CHROMIUM")"
}

lane_main browser playwright "$@"
