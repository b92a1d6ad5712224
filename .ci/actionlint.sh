#!/usr/bin/env bash
# Lint the GitHub Actions workflows with actionlint (built from the Go module proxy, pinned, cached).
#
#   .ci/actionlint.sh [WORKFLOW_DIR]     default: .github/workflows of this repository
#
# Exits non-zero on any finding. The `run:` scripts are checked by shellcheck too (installed with
# apt when missing, where apt and root are available; otherwise they are skipped, with a warning).
set -euo pipefail
# shellcheck source=.ci/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACTIONLINT_VERSION="v1.7.12"
WORKFLOWS="${1:-$REPO/.github/workflows}"
BIN_DIR="$CI_CACHE/actionlint-$ACTIONLINT_VERSION"
ACTIONLINT="$BIN_DIR/actionlint"


# actionlint at the pinned version, once per machine (GOBIN in the cache folder)
install_actionlint() {
    [[ -x "$ACTIONLINT" ]] && return 0
    command -v go >/dev/null 2>&1 || die "no 'go' on PATH: needed to build actionlint $ACTIONLINT_VERSION"
    log "building actionlint $ACTIONLINT_VERSION into $BIN_DIR"
    mkdir -p "$BIN_DIR"
    GOBIN="$BIN_DIR" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" \
        || die "go install of actionlint $ACTIONLINT_VERSION failed (is the Go module proxy reachable?)"
    [[ -x "$ACTIONLINT" ]] || die "go install succeeded but $ACTIONLINT is missing"
}

# The shellcheck linter for the `run:` blocks; best effort, since actionlint runs without it
ensure_shellcheck() {
    command -v shellcheck >/dev/null 2>&1 && return 0
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing shellcheck with apt (checks the workflows' run: scripts)"
        if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1 \
            || { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; }; then
            return 0
        fi
    fi
    log "WARNING: no shellcheck: the workflows' run: scripts are not checked"
}

main() {
    local files=()
    [[ -d "$WORKFLOWS" ]] || die "no workflow folder $WORKFLOWS"
    mapfile -t files < <(find "$WORKFLOWS" -maxdepth 1 -type f \( -name '*.yml' -o -name '*.yaml' \) | sort)
    [[ ${#files[@]} -gt 0 ]] || die "no *.yml / *.yaml workflow in $WORKFLOWS"
    install_actionlint
    ensure_shellcheck
    log "actionlint $ACTIONLINT_VERSION on ${#files[@]} workflow(s) in $WORKFLOWS"
    if "$ACTIONLINT" -no-color "${files[@]}"; then
        log "no findings"
    else
        die "actionlint reported findings (above)"
    fi
}

main "$@"
