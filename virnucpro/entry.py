"""The `virnucpro` console script and `python -m virnucpro`.

Stop signals are held back from this module's first line: one that arrives while the command line
loads (its imports take a few tenths of a second) stays pending until the command's handlers are
in place, then ends the command with exit 6 like any other stop, instead of killing it (143) first.
"""

import signal

signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT))


def main() -> None:
    """Load the command line and run it (`virnucpro.cli.main` lets the stop signals through)."""
    from virnucpro.cli import main as run

    run()
