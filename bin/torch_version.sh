#!/bin/sh
# The version of torch in the Python that runs virnucpro, for the run's versions file; "unknown"
# when it cannot tell: a version probe runs after the task's work and must never fail it. `python`
# on the PATH may be another interpreter, or none (python3 only, or none at all): the interpreter is
# virnucpro's own, found and run by virnucpro_python beside this script, which runs nothing but a
# program named python*. POSIX sh only.
case "$0" in
    */*) here=${0%/*} ;;
    *) here=. ;;
esac
"$here/virnucpro_python" -c 'import torch; print(torch.__version__)' 2> /dev/null || echo unknown
