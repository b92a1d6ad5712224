"""The `virnucpro` console script and `python -m virnucpro`.

Stop signals are held back from this module's first line: one that arrives while the command line
loads (its imports take a few tenths of a second) stays pending until the command's handlers are
in place, then ends the command with exit 6 like any other stop, instead of killing it (143) first.
"""

import os
import signal

signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP))


def _fill_closed_standard_streams() -> None:
    """Open /dev/null on a closed stdin, stdout or stderr (`<&-`, `2>&-`), so that no file we open
    later takes its number: `/dev/stdin` would read our lock file, and whatever a library or a child
    writes to fd 2 would land in an output. Python has already set sys.stdin (...) to None for them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main() -> None:
    """Load the command line and run it (`virnucpro.cli.main` lets the stop signals through)."""
    _fill_closed_standard_streams()
    from virnucpro.cli import main as run

    run(exiting=True)
