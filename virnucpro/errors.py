"""The exit-code table of CONTRACTS.md and the errors that carry those codes.

Every user-facing failure is raised as a `VirnucproError` subclass; the CLI prints its one-line
message and exits with its code. Nextflow's retry rules use the same numbers.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Iterator


class ExitCode(IntEnum):
    """Process exit codes shared by the CLI and the Nextflow configuration."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    BAD_INPUT = 3
    MODELS = 4
    INCONSISTENT = 5
    INTERRUPTED = 6
    GPU_OOM = 7
    DEVICE = 8
    NUMERICAL = 9


class VirnucproError(Exception):
    """A failure the user can act on: one message, one exit code, no traceback."""

    code: ExitCode = ExitCode.UNEXPECTED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"

    def __reduce__(self):
        # keep the hint when the error crosses a process boundary (prepare's workers)
        return (self.__class__, (self.message, self.hint))


class BadInputError(VirnucproError):
    """Input file missing, unreadable, not FASTA/FASTQ, duplicate ids, protein given as DNA."""

    code = ExitCode.BAD_INPUT


class ModelsError(VirnucproError):
    """Models missing, not downloadable (offline) or failing their checksum."""

    code = ExitCode.MODELS


class InconsistentInputsError(VirnucproError):
    """Files from different stages do not belong together (models, chunk size, missing shard)."""

    code = ExitCode.INCONSISTENT


class InterruptedByUser(VirnucproError):
    """A signal arrived; a checkpoint was saved and a rerun resumes."""

    code = ExitCode.INTERRUPTED


class GpuOutOfMemory(VirnucproError):
    """One sequence alone does not fit in GPU memory."""

    code = ExitCode.GPU_OOM


class DeviceError(VirnucproError):
    """CUDA or other device failure (including `--device cuda` without a GPU)."""

    code = ExitCode.DEVICE


class NumericalError(VirnucproError):
    """NaN or Inf in embeddings or scores."""

    code = ExitCode.NUMERICAL


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


@contextmanager
def stop_signals_exit_interrupted() -> Iterator[None]:
    """While a resumable command runs, a stop signal raises `InterruptedByUser` (exit 6) at once.

    The embedding loop installs its own handlers that finish the batch in flight and save a
    checkpoint first; outside it (imports, model loading, writing) nothing is left to save.
    """
    def stop(signum, _frame) -> None:
        raise InterruptedByUser(f"{signal.Signals(signum).name} received: stopped (finished work and "
                                "checkpoints are kept)", "rerun the same command to resume")

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def make_output_dir(path: Path, option: str) -> None:
    """Create an output directory, or fail with exit 3 naming the option when that is impossible."""
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{option} {path} is a file", "choose a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create {option} {path}: {exc.strerror}",
                            "choose a writable location") from None
