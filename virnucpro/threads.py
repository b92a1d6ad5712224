"""`--threads`: one cap for every CPU thread pool (torch, BLAS/OpenMP, tokenizers' rayon, and
torch.compile's compile workers).

Applied at the start of a command, before the heavy libraries load, so their pools start at the
right size. The default is the CPUs this process may use (its affinity mask, which SLURM and
`docker --cpuset-cpus` set, lowered to the CPU quota of its cgroup or of one above it: `docker
--cpus`, Kubernetes limits, `systemd-run -p CPUQuota=`), not the machine's core count; pool variables
already in the environment (OMP_NUM_THREADS, ...) are replaced, never followed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")  # where a container sees its own cgroup (v2: cpu.max; v1: cpu/cpu.cfs_*)
CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")  # this process's cgroup below that root, per hierarchy
# torch.compile's compile workers (processes, read when inductor is imported) count as a pool too
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS",
                  "TORCHINDUCTOR_COMPILE_THREADS")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count), no more than
    its cgroups' CPU quota allows, rounded up (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root, membership)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> float | None:
    """The CPUs' worth of time this process may use: the smallest CFS quota / period among its own
    cgroup and every one above it (`docker --cpus` and Kubernetes set the container's root;
    `systemd-run -p CPUQuota=`, SLURM and Apptainer without a cgroup namespace set a nested one).
    None without a quota, or where the files cannot be read or make no sense: the quota only ever
    lowers the count."""
    quotas = [quota for folder, read in _quota_folders(cgroup_root, membership)
              if (quota := _folder_quota(folder, read)) is not None]
    return min(quotas, default=None)


def _quota_folders(root: Path, membership: Path):
    """(folder, reader) for this process's cgroup and its ancestors, up to the mounted root, for
    cgroup v2 (`cpu.max` under `root`) and v1 (the `cpu` controller's tree under `root/cpu`)."""
    own = _own_cgroups(membership)
    for base, relative, read in ((root, own.get("v2", ""), _cgroup_v2_quota),
                                 (root / "cpu", own.get("cpu", ""), _cgroup_v1_quota)):
        parts = [part for part in relative.split("/") if part not in ("", ".", "..")]
        for depth in range(len(parts), -1, -1):
            yield base.joinpath(*parts[:depth]), read


def _own_cgroups(membership: Path) -> dict[str, str]:
    """This process's cgroup paths from /proc/self/cgroup: "v2" (the `0::` line) and "cpu" (the v1
    line whose controllers include cpu); missing or unreadable: none (the root alone is read)."""
    try:
        lines = membership.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    own = {}
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and not controllers:
            own["v2"] = path
        elif "cpu" in controllers.split(","):
            own["cpu"] = path
    return own


def _folder_quota(folder: Path, read) -> float | None:
    """The quota in CPUs that one cgroup folder sets; None for none, unreadable or nonsense."""
    try:
        quota, period = (int(value) for value in read(folder))
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError, OverflowError):  # OverflowError: a quota too large for a float
        return None


def _cgroup_v2_quota(folder: Path) -> tuple[str, str]:
    """cgroup v2's quota and period, as written in `cpu.max` ("max", no quota, as v1's -1)."""
    quota, period = (folder / "cpu.max").read_text().split()
    return "-1" if quota == "max" else quota, period


def _cgroup_v1_quota(folder: Path) -> tuple[str, str]:
    """cgroup v1's quota and period, as written in the cpu controller's two files."""
    return ((folder / "cpu.cfs_quota_us").read_text().strip(),
            (folder / "cpu.cfs_period_us").read_text().strip())


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

    if "numpy" not in sys.modules:
        _import_numpy_starting_its_threads()
    if sys.modules.get("torch") is not None:  # None: marked missing; the import that needs it says so
        sys.modules["torch"].set_num_threads(count)
    return count


def _import_numpy_starting_its_threads() -> None:
    """Imports numpy, whose OpenBLAS starts its thread pool as it loads. A thread it cannot start
    (`ulimit -u`, a container's pids limit) makes OpenBLAS send SIGINT to this very process, which read
    as a user's stop: exit 6, "rerun to resume", retried by the pipeline under the same limit. A SIGINT
    during the import is held: when no thread can be started then, it was the limit (exit 10);
    otherwise it is delivered as the stop it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        import numpy  # noqa: F401 - signal handlers belong to the main thread
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        import numpy  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and not _can_start_a_thread():
        from virnucpro.errors import THREAD_LIMIT, THREAD_LIMIT_HINT, ProcessLimitError

        raise ProcessLimitError(f"{THREAD_LIMIT} (numpy's OpenBLAS could not start its threads{_address_space_note()})",
                                THREAD_LIMIT_HINT)
    if held:
        signal.raise_signal(signal.SIGINT)


def _address_space_note() -> str:
    """Under a memory limit (`ulimit -v`) a thread's stack may not fit either: said with the number."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return ""
    return (f"; or the memory limit of this process, `ulimit -v` {soft // 1024:,} kB, left no room for their "
            "stacks: then raise that")


def import_torch_whole() -> None:
    """Imports torch with stop signals held until it is done: a stop raised inside torch's C++
    start-up (a Ctrl-C as the first `import torch` ran) aborted the process, exit 134 and a C++ trace,
    its output folder's lock left behind. Commands that use torch call this first; a stop then ends
    them as any other (exit 6)."""
    import sys

    if "torch" not in sys.modules:
        from virnucpro.errors import stop_signals_deferred

        with stop_signals_deferred():
            import torch  # noqa: F401


def _can_start_a_thread() -> bool:
    """Whether this process may start one more thread now."""
    import threading

    thread = threading.Thread(target=lambda: None)
    try:
        thread.start()
    except RuntimeError:  # "can't start new thread"
        return False
    thread.join()
    return True


def _within_cpus(threads: int | None) -> int:
    """`threads`, or the available CPUs when not given or more. More threads or worker processes than
    CPUs only add switching and memory (`--threads 1000` once forked 985 processes on 2 CPUs), so a
    larger request is lowered, with a warning."""
    cpus = available_cpus()
    if threads and threads > cpus:
        from virnucpro.console import warn

        warn(f"--threads {threads}: this process may use {cpus} CPUs; using {cpus}")
    return min(threads or cpus, cpus)
