"""The `virnucpro` console script and `python -m virnucpro`.

Stop signals are held back from this module's first line: one that arrives while the command line
loads (its imports take a few tenths of a second) stays pending until the command's handlers are
in place, then ends the command with exit 6 like any other stop, instead of killing it (143) first.
"""

import os
import signal
import sys

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


def _refuse_deleted_current_folder() -> None:
    """Exit 2 with one message when the current folder was deleted under the shell: checked before
    the heavy imports, where it was a bug report from a relative --outdir, or a oneMKL fatal error
    while torch loaded (exit 2 with no word of the cause)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        from virnucpro.console import error
        from virnucpro.errors import ExitCode

        error("the current folder no longer exists: it was deleted while this shell was in it\n"
              "  fix: cd to an existing folder (`cd ~`; `cd \"$PWD\"` if it was made again) and rerun the command")
        sys.exit(int(ExitCode.USAGE))


def _tolerant_standard_streams() -> None:
    """Write what stdout and stderr cannot encode as escapes (`\\u2026`) instead of failing: under a
    locale that is not UTF-8 (LC_ALL=tr_TR.ISO-8859-9, PYTHONIOENCODING=latin-1) the help's `…`, or a
    file name in a message, raised UnicodeEncodeError and `--help` ended as a bug report (exit 1). A
    stream already lenient (stderr's own backslashreplace, surrogateescape) is left as it is."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (OSError, ValueError):
                pass  # a stream that is gone or closed: nothing will be written there


def _flush_standard_streams() -> None:
    """Flush stdout and stderr at the end; one whose reader left (`| head -1`) goes to /dev/null, so
    that the interpreter's own flush at exit cannot turn the command's exit code into 120."""
    from virnucpro.console import silence_dead_stream

    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except OSError:
            silence_dead_stream(stream)


def main() -> None:
    """Load the command line and run it (`virnucpro.cli.main` lets the stop signals through)."""
    _fill_closed_standard_streams()
    _tolerant_standard_streams()
    _refuse_deleted_current_folder()
    from virnucpro.cli import main as run

    try:
        run(exiting=True)
    finally:
        _flush_standard_streams()
