# Sourced by the .ci/ scripts: the repository root, the cache folder kept between CI runs on one
# machine, and messages prefixed with the calling script's name (on stderr).
# shellcheck shell=bash

# shellcheck disable=SC2034  # used by the scripts that source this file
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034
CI_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/virnucpro-ci"
CI_SCRIPT="$(basename "${BASH_SOURCE[1]:-$0}")"

log() { printf '[%s] %s\n' "$CI_SCRIPT" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$CI_SCRIPT" "$*" >&2; exit 1; }
