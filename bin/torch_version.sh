#!/bin/sh
# The version of torch in the Python that runs virnucpro, for the run's versions file; "unknown"
# when it cannot tell: a version probe runs after the task's work and must never fail it. `python`
# on the PATH may be another interpreter, or none (python3 only), so the interpreter is the one
# named by the first line of virnucpro's own script. POSIX sh only.
interpreter=$(sed -n '1s/^#! *//p' "$(command -v virnucpro)" 2> /dev/null)
# unquoted: a first line such as `/usr/bin/env python3` is a command and its argument
$interpreter -c 'import torch; print(torch.__version__)' 2> /dev/null || echo unknown
