"""`--threads`: one cap for every CPU thread pool (torch, BLAS/OpenMP, tokenizers' rayon, and
torch.compile's compile workers).

Applied at the start of a command, before the heavy libraries load, so their pools start at the
right size. The default is the CPUs this process may use (its affinity mask, which SLURM and
containers set), not the machine's core count; pool variables already in the environment
(OMP_NUM_THREADS, ...) are replaced, never followed.
"""

from __future__ import annotations

import os

# torch.compile's compile workers (processes, read when inductor is imported) count as a pool too
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS",
                  "TORCHINDUCTOR_COMPILE_THREADS")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def limit_threads(threads: int | None) -> int:
    """Size every thread pool at `threads` (default: the CPUs this process may use); returns the size.

    The size replaces any pool variable already in the environment (a user's OMP_NUM_THREADS, a
    cluster's default): settings come from the command line (CONTRACTS.md), so the same command
    computes alike wherever it starts.
    """
    count = _within_cpus(threads)
    for name in POOL_VARIABLES:
        os.environ[name] = str(count)
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    return count


def _within_cpus(threads: int | None) -> int:
    """`threads`, or the available CPUs when not given or more. More threads or worker processes than
    CPUs only add switching and memory (`--threads 1000` once forked 985 processes on 2 CPUs), so a
    larger request is lowered, with a warning."""
    cpus = available_cpus()
    if threads and threads > cpus:
        from virnucpro.console import warn

        warn(f"--threads {threads}: this process may use {cpus} CPUs; using {cpus}")
    return min(threads or cpus, cpus)
