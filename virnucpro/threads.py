"""`--threads`: one cap for every CPU thread pool (torch, BLAS/OpenMP, tokenizers' rayon, and
torch.compile's compile workers).

Applied at the start of a command, before the heavy libraries load, so their pools start at the
right size. The default is the CPUs this process may use (its affinity mask, which SLURM and
containers set), not the machine's core count.
"""

from __future__ import annotations

import os

# torch.compile's compile workers (processes, read when inductor is imported) count as a pool too
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS",
                  "TORCHINDUCTOR_COMPILE_THREADS")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def limit_threads(threads: int | None) -> int:
    """Cap the thread pools at `threads` (default: available CPUs, and never more); returns the cap.

    More threads or worker processes than CPUs only add switching and memory (`--threads 1000` once
    forked 985 processes on 2 CPUs), so a larger request is lowered, with a warning.
    """
    cpus = available_cpus()
    if threads and threads > cpus:
        from virnucpro.console import warn

        warn(f"--threads {threads}: this process may use {cpus} CPUs; using {cpus}")
        threads = cpus
    count = threads or cpus
    for name in POOL_VARIABLES:
        if threads or name not in os.environ:
            os.environ[name] = str(count)
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    return count
