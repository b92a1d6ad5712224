"""What an unexpected failure tells the user: one line, and the traceback saved for the bug report.

The machine's memory running out and a limit on open files or threads are said plainly (they are no
bugs); a module shadowed from PYTHONPATH, not installed, or built for another numpy is a usage
error (exit 2, the fix names the package); anything else is a bug, exit 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import NamedTuple, Optional

from virnucpro import __version__
from virnucpro.console import error
from virnucpro.errors import ExitCode, is_panic, process_limit


# how memory running out reads when it is no MemoryError: torch's CPU allocator, a shared library
# that cannot be mapped (a library loaded under `ulimit -v`), the kernel's ENOMEM text
OUT_OF_MEMORY_TEXTS = ("DefaultCPUAllocator", "failed to map segment", os.strerror(errno.ENOMEM))


def _out_of_host_memory(exc: BaseException) -> bool:
    """Whether `exc` is the machine's memory (or the process's memory limit) running out."""
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return True
    return isinstance(exc, (RuntimeError, ImportError, OSError)) and any(text in str(exc) for text in OUT_OF_MEMORY_TEXTS)


def report_bug(exc: BaseException) -> int:
    """Unexpected exception: one line for the user, the traceback in a file for the bug report; the
    machine's memory running out is said plainly (it is no bug, and more memory is the fix) and is
    exit 137, what the kernel's out-of-memory killer gives, so that pipelines retry with more memory;
    a limit on open files or threads is said plainly too (`process_limit`)."""
    if _out_of_host_memory(exc):
        error(f"out of memory: this machine's RAM, or the memory limit of this process (`ulimit -v`), ran out "
              f"({type(exc).__name__}: {' '.join(str(exc)[:200].split())})\n  fix: give the command more memory "
              "(the task's memory in Nextflow): prepare holds one record of its input at a time (a genome-sized "
              "one needs its size several times over); a smaller --token-budget makes embed need less, down to "
              "what its longest sequence needs alone, which grows with the square of the chunk size")
        return ExitCode.OUT_OF_MEMORY
    limit = process_limit(exc)
    if limit is not None:
        error(str(limit))
        return limit.code
    from virnucpro.entry import foreign_module_message, installation_fault, module_from_pythonpath

    foreign = module_from_pythonpath(exc)
    fault = foreign_module_message(exc, foreign) if foreign is not None else installation_fault(exc)
    if fault is not None:
        error(fault)
        return ExitCode.USAGE
    saved = _save_traceback(exc)
    if not saved.path:
        where = f"below (it could not be saved: {saved.why})"
    elif in_container():
        where = f"below (also saved in {saved.path}, which goes when this container ends)"
    else:
        where = f"saved in {saved.path}"
    what = (f"a library failed: its native (Rust) code panicked: {exc}\n  this is a bug in that library or in "
            f"how virnucpro {__version__} uses it" if is_panic(exc) else
            f"unexpected {type(exc).__name__}: {exc}\n  this is a bug in virnucpro {__version__}")
    error(f"{what}; please report it with the traceback {where}")
    if not saved.path or in_container():
        _print_traceback(exc, sys.stderr)
    return ExitCode.UNEXPECTED


CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv", "/.singularity.d")  # Docker, Podman, Apptainer


def in_container() -> bool:
    """Running in a container, whose temporary folder may go with it (Docker's `--rm`, a Nextflow
    task's container): a saved traceback alone would then be lost, so it is printed too."""
    return any(os.path.lexists(marker) for marker in CONTAINER_MARKERS)


class _Saved(NamedTuple):
    """Where the traceback was saved (None: nowhere), and why not."""
    path: Optional[str]
    why: str = ""


def _save_traceback(exc: BaseException) -> _Saved:
    """The traceback of `exc` in a new temporary file, for the bug report. No writable temporary
    folder, or one that fills up, gives no path and the reason: the report still reaches the user
    (the traceback on stderr instead) and exits 1, where the failure itself was a second traceback."""
    path = None
    try:
        fd, path = tempfile.mkstemp(prefix="virnucpro-crash-", suffix=".txt", dir=_crash_folder())
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:  # a name not UTF-8
            _print_traceback(exc, handle, quiet=False)
        return _Saved(path)
    except OSError as failure:
        if path:
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)  # our own file, cut short: useless for the report
        return _Saved(None, failure.strerror or str(failure))


def _crash_folder() -> str | None:
    """The temporary folder virnucpro uses (not the current folder, nor /tmp for TMPDIR); None (the
    system's) when the module that knows it cannot load, which may be the failure being reported."""
    try:
        from virnucpro.encoders.compiled import temporary_folder
    except Exception:  # noqa: BLE001 - a report must not fail on a second import
        return None
    return str(temporary_folder())


def _print_traceback(exc: BaseException, stream, quiet: bool = True) -> None:
    """Write the traceback of `exc` to `stream`; `quiet`: a stream that is gone (stderr closed) is no
    second failure."""
    try:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
    except OSError:
        if not quiet:
            raise
