#!/usr/bin/env bash
# nf-core pipelines lint on this repository, offline, then actionlint on the GitHub workflows.
#
#   .ci/lint.sh
#
# nf-core tools (pinned) live in their own virtual environment under the cache folder, not in the
# project's: nf-core pins its own rich/typer/jsonschema. Exits non-zero on any lint failure
# (warnings are printed, not fatal). Needs only a package registry (PyPI) the first time.
set -euo pipefail
# shellcheck source=.ci/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NFCORE_VERSION="4.2.1"
VENV="$CI_CACHE/nfcore-venv"
NFCORE="$VENV/bin/nf-core"


# nf-core tools at the pinned version, once per machine (reinstalled when the pin changes)
install_nfcore() {
    if [[ -x "$NFCORE" ]] && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('nf-core') != '$NFCORE_VERSION')" 2>/dev/null; then
        return 0
    fi
    log "installing nf-core $NFCORE_VERSION into $VENV"
    rm -rf "$VENV"
    mkdir -p "$CI_CACHE"
    python3 -m venv "$VENV" || die "python3 -m venv failed (is the python3-venv package installed?)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "nf-core==$NFCORE_VERSION" \
        || die "pip install nf-core==$NFCORE_VERSION failed (is PyPI reachable?)"
}

# Environment that keeps nf-core and Nextflow off the network. The checks that would fetch
# something (the nf-core template, nf-core/modules, the GitHub workflow schema) are off in
# .nf-core.yml; lint asks no questions when not given --fix.
offline_env() {
    export NFCORE_NO_VERSION_CHECK=1    # no background request to nf-co.re for a newer nf-core/tools
    export NXF_OFFLINE=true             # `nextflow config` (run by lint) fetches nothing
    export NXF_DISABLE_CHECK_LATEST=true
    export HIDE_PROGRESS=1              # no progress bars in CI logs
    export PATH="$REPO/scripts/nextflow:$PATH"   # the `nextflow` that lint calls for `nextflow config`
    # nf-core caches `nextflow config` under $NXF_HOME/nf-core keyed by nextflow.config and main.nf
    # only, so an edit of conf/*.config would be linted against stale values: a fresh home each run
    export NXF_HOME="$WORK/nxf-home"
    mkdir -p "$NXF_HOME"
}

# The counts of the lint's JSON results, and every warning and failure; exits 1 on any failure
summarise() {
    "$VENV/bin/python" - "$1" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
counts = {k: len(results.get(f"tests_{k}", [])) for k in ("pass", "warned", "ignored", "failed")}
print("nf-core lint: passed {pass}, warned {warned}, ignored {ignored}, failed {failed}".format(**counts))
for kind in ("warned", "failed"):
    for name, message in results.get(f"tests_{kind}", []):
        print(f"  {kind.upper()} {name}: {message}")
sys.exit(1 if counts["failed"] else 0)
PY
}

# The repository's path as lint should see it: nf-core runs `nextflow config` with the path
# unquoted (and resolves links), so from a path with a blank it lints a copy of the repository's
# files (tracked, and untracked but not ignored) in the work folder instead
lint_dir() {
    if [[ "$REPO" =~ [[:space:]] && ! "$WORK" =~ [[:space:]] ]]; then
        mkdir "$WORK/pipeline"
        git -C "$REPO" ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' file; do if [[ -e "$REPO/$file" ]]; then printf '%s\0' "$file"; fi; done \
            | tar -C "$REPO" --null -T - -c | tar -C "$WORK/pipeline" -x
        echo "$WORK/pipeline"
    else
        echo "$REPO"
    fi
}

# nf-core pipelines lint on the repository; fails on any failed check or when lint itself fails
run_lint() {
    local json="$WORK/lint.json" status=0 dir
    dir="$(lint_dir)"
    (cd "$dir" && "$NFCORE" pipelines lint --dir "$dir" --json "$json") || status=$?
    [[ -s "$json" ]] || die "nf-core pipelines lint wrote no results (exit $status)"
    summarise "$json" || die "nf-core pipelines lint: failed checks (listed above)"
    [[ $status -eq 0 ]] || die "nf-core pipelines lint exited $status"
}

main() {
    install_nfcore
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    offline_env
    run_lint
    if [[ -f "$REPO/.ci/actionlint.sh" ]]; then
        bash "$REPO/.ci/actionlint.sh"
    else
        log "no .ci/actionlint.sh: workflows not linted"
    fi
}

main "$@"
