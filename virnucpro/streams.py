"""stderr and stdout as the console script leaves them to the command: what a stream that cannot be
written (a reader gone, a full disk under the log, a closed descriptor) does to a command is lose its
messages, never its work or exit code. Without rich, so that the entry point can set it up before
rich (which PYTHONPATH may shadow) is loaded."""

from __future__ import annotations

import os


def silence_dead_stream(stream) -> None:
    """Point the file descriptor of `stream`, whose reader is gone (`| head -1`), at /dev/null, so
    that later writes and the interpreter's flush at exit succeed unseen (the recipe of the Python
    docs on SIGPIPE): a closed pipe loses the messages, never the command or its exit code."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return  # no descriptor (a StringIO) or closed already: nothing will be flushed there
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class LogStream:
    """stderr as the log (the console script's): a write or flush that fails there (a full disk under
    the log file, a descriptor closed or opened read-only, a terminal gone) points it at /dev/null
    and the command goes on; its exit code is its own, never that of the log (a usage error stays
    exit 2, not 10 for a "disk full" that only the log met)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            silence_dead_stream(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            silence_dead_stream(self._stream)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
