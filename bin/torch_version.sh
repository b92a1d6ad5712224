#!/bin/sh
# The version of torch in the Python that runs virnucpro, for the run's versions file; "unknown"
# when it cannot tell: a version probe runs after the task's work and must never fail it. `python`
# on the PATH may be another interpreter, or none (python3 only), so the interpreter is the one
# virnucpro's own script names: its first line (`#!/path/python3`, `#!/usr/bin/env python3`), or
# pip's launcher for an interpreter path with spaces or over 127 characters (`#!/bin/sh`, then
# `'''exec' "/path/python3" "$0" "$@"`). Only a program named python* is ever run. POSIX sh only.
script=$(command -v virnucpro) || { echo unknown; exit 0; }
interpreter=$(sed -n '1s/^#! *//p' "$script" 2> /dev/null | tr -d '\r')
case "$interpreter" in
    */env\ *) interpreter=${interpreter#*/env } && interpreter=${interpreter%% -*} ;;
    */sh | */bash) interpreter=$(sed -n "2s/^'''exec' \"\\([^\"]*\\)\".*/\\1/p" "$script" 2> /dev/null) ;;
    *) interpreter=${interpreter%% -*} ;;  # `#!/usr/bin/python3 -sP`: without its options
esac
case "${interpreter##*/}" in
    python*) "$interpreter" -c 'import torch; print(torch.__version__)' 2> /dev/null || echo unknown ;;
    *) echo unknown ;;
esac
