"""`--threads`: one cap for every CPU thread pool (torch, BLAS/OpenMP, tokenizers' rayon, and
torch.compile's compile workers).

Applied at the start of a command, before the heavy libraries load, so their pools start at the
right size. The default is the CPUs this process may use (its affinity mask, which SLURM and
`docker --cpuset-cpus` set, lowered to a container's CPU quota: `docker --cpus`, Kubernetes limits), not
the machine's core count; pool variables already in the environment
(OMP_NUM_THREADS, ...) are replaced, never followed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")  # where a container sees its own cgroup (v2: cpu.max; v1: cpu/cpu.cfs_*)
# torch.compile's compile workers (processes, read when inductor is imported) count as a pool too
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS",
                  "TORCHINDUCTOR_COMPILE_THREADS")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count), no more than
    its cgroup's CPU quota allows, rounded up (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs' worth of time the cgroup at `cgroup_root` may use (CFS quota / period: `docker --cpus`,
    Kubernetes limits), from cgroup v2's `cpu.max` ("QUOTA PERIOD", "max PERIOD": none) or v1's
    `cpu/cpu.cfs_quota_us` (-1: none) and `cpu/cpu.cfs_period_us`. None without a quota, or where the
    files cannot be read or make no sense: the quota only ever lowers the count."""
    for read in (_cgroup_v2_quota, _cgroup_v1_quota):
        try:
            quota, period = read(cgroup_root)
            quota, period = int(quota), int(period)
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def _cgroup_v2_quota(root: Path) -> tuple[str, str]:
    """cgroup v2's quota and period, as written in `cpu.max` ("max", no quota, as v1's -1)."""
    quota, period = (root / "cpu.max").read_text().split()
    return "-1" if quota == "max" else quota, period


def _cgroup_v1_quota(root: Path) -> tuple[str, str]:
    """cgroup v1's quota and period, as written in their two files."""
    return ((root / "cpu" / "cpu.cfs_quota_us").read_text().strip(),
            (root / "cpu" / "cpu.cfs_period_us").read_text().strip())


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
