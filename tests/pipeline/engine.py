"""Running the pipeline on the real Nextflow engine (scripts/nextflow/nextflow) from tests.

Each run gets its own launch folder (work/, .nextflow/, results/ inside it), the test environment's
`virnucpro` first on PATH (tasks without a container use it), and no network lookups by Nextflow.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pytest

from nextflow_helpers import quick_jvm

REPO = Path(__file__).resolve().parents[2]
NEXTFLOW = REPO / "scripts" / "nextflow" / "nextflow"
TEST_INPUTS = REPO / "assets" / "test"
# The six per-sample tables of `virnucpro predict` that a pipeline run publishes
TABLES = ("prediction_results.txt", "prediction_results_highestscore.csv", "chunks.tsv", "sequences.tsv")
SAMPLE_FILES = TABLES + ("report.html", "run_info.json")


def engine_problem() -> Optional[str]:
    """None when the engine can be launched here (Java 17+ and Maven, or its jars cached), else why."""
    if not shutil.which("java"):
        return "no java on PATH"
    if not shutil.which("mvn") and not any(Path.home().glob(".cache/virnucpro-nextflow/*/complete")):
        return "no mvn on PATH to resolve Nextflow from Maven Central"
    return None


def require_engine() -> None:
    """Skip without an engine, except in CI, where a missing engine is a failure."""
    problem = engine_problem()
    if problem and os.environ.get("CI"):
        pytest.fail(f"CI must run the pipeline on a real engine: {problem}")
    if problem:
        pytest.skip(problem)


def task_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a run: this interpreter's scripts first on PATH, Nextflow offline."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true", "NXF_ANSI_LOG": "false"})
    env.update(extra or {})
    return quick_jvm(env)


@dataclass
class Run:
    """One `nextflow run` of the pipeline and where it wrote."""
    launch: Path
    outdir: Path
    returncode: int
    output: str

    @property
    def workdir(self) -> Path:
        return self.launch / "work"

    def trace(self) -> List[Dict[str, str]]:
        """The rows of this run's trace, the newest pipeline_info/execution_trace_<start>.txt
        (every attempt of every task)."""
        traces = sorted((self.outdir / "pipeline_info").glob("execution_trace_*.txt"))
        assert traces, f"no trace in {self.outdir / 'pipeline_info'}"
        return read_tsv(traces[-1])

    def tasks(self, process: str) -> List[Dict[str, str]]:
        """The trace rows of one process (name without the workflow prefix), in attempt order."""
        rows = [row for row in self.trace() if row["process"].split(":")[-1] == process]
        return sorted(rows, key=lambda row: (row["tag"], int(row["attempt"])))

    def assert_ok(self) -> None:
        assert self.returncode == 0, f"nextflow exited {self.returncode}:\n{self.output[-6000:]}"


def command(launch: Path, *args: str, outdir: str = "results") -> List[str]:
    return [str(NEXTFLOW), "run", str(REPO), "-ansi-log", "false", "--outdir", str(launch / outdir), *args]


def run_pipeline(launch: Path, *args: str, timeout: float = 900, env: Optional[Dict[str, str]] = None,
                 outdir: str = "results") -> Run:
    """`nextflow run <repo> --outdir LAUNCH/OUTDIR ARGS` in LAUNCH, waited for."""
    launch.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command(launch, *args, outdir=outdir), cwd=launch, env=task_env(env), capture_output=True,
                          text=True, timeout=timeout)
    return Run(launch, launch / outdir, done.returncode, done.stdout + done.stderr)


def start_pipeline(launch: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """The same run, started in its own process group and not waited for."""
    launch.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command(launch, *args), cwd=launch, env=task_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen, launch: Path, timeout: float = 900) -> Run:
    """Wait for a started run; on a time-out its whole process group is killed."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the pipeline did not finish in {timeout:.0f} s:\n{output[-6000:]}")
    return Run(launch, launch / "results", process.returncode, output)


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 600, poll: float = 0.05):
    """Return `condition()` once it is truthy; fail if the run ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the pipeline ended (exit {process.returncode}) before {what}:\n"
                        f"{process.stdout.read()[-6000:]}")
        time.sleep(poll)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"{what} did not happen in {timeout:.0f} s")


def checkpoint_parts(checkpoint_dir: Path) -> List[Path]:
    """The checkpoint part files of every shard in progress (samples/<sample>/<key>/part_*.npz)."""
    return sorted(checkpoint_dir.glob("samples/*/*/part_*.npz"))


def embed_pids(marker: str) -> List[int]:
    """Processes running `virnucpro embed` whose command line holds `marker` (e.g. the launch path)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if any(w.endswith("virnucpro") for w in words) and "embed" in words and marker in cwd:
            pids.append(int(proc.name))
    return pids


def computing_embed(launch: Path, cpu_seconds: float = 8) -> Optional[int]:
    """The pid of a `virnucpro embed` of the run in `launch` once it has used `cpu_seconds` of CPU:
    imports and model loading are done, vectors are being computed."""
    for pid in embed_pids(str(launch)):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK") >= cpu_seconds:
            return pid
    return None


def processes_in(launch: Path, argv_start: List[str]) -> List[int]:
    """Processes whose command line starts with `argv_start` and whose folder is under `launch`."""
    wanted = [word.encode() for word in argv_start]
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if proc.name.isdigit() and argv[:len(wanted)] == wanted and cwd.startswith(str(launch)):
            pids.append(int(proc.name))
    return pids


def read_tsv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def rows(path: Path) -> List[List[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle, delimiter="\t"))


def same_cell(a: str, b: str) -> bool:
    """Equal text, or numbers equal within float32 noise of a different batch composition."""
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-7)
    except ValueError:
        return False


def assert_same_tables(got_dir: Path, want_dir: Path, tables: Iterable[str] = TABLES) -> None:
    """Every table of `got_dir` equals the one of `want_dir`, cell by cell."""
    for table in tables:
        got, want = rows(got_dir / table), rows(want_dir / table)
        assert len(got) == len(want), f"{table}: {len(got)} rows in {got_dir}, {len(want)} in {want_dir}"
        for g, w in zip(got, want):
            assert len(g) == len(w) and all(same_cell(a, b) for a, b in zip(g, w)), \
                f"{table}: {g} != {w}"


def virnucpro_run(inputs: List[Path], models: Path, outdir: Path, *extra: str) -> Path:
    """The same job by `virnucpro run` in one process (the reference for the pipeline's tables)."""
    done = subprocess.run([str(Path(sys.executable).parent / "virnucpro"), "run", *map(str, inputs),
                           "--models", str(models), "--outdir", str(outdir), "--device", "cpu",
                           "--precision", "fp32", *extra],
                          capture_output=True, text=True, env=task_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return outdir


def coding_reads(path: Path, n: int, length: int = 450, seed: int = 7, prefix: str = "read") -> Path:
    """FASTA of `n` reads of sense codons only (every read has an ORF), deterministic."""
    import random
    stops = {"TAA", "TAG", "TGA"}
    sense = sorted(a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in stops)
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(n):
            out.write(f">{prefix}_{i}\n{''.join(rng.choices(sense, k=length // 3))}\n")
    return path


def tiny_models_of(run) -> Path:
    """The tiny models folder that the run's VIRNUCPRO_MODELS_TINY task wrote."""
    (task,) = [row for row in run.trace() if row["process"].endswith("VIRNUCPRO_MODELS_TINY")]
    return Path(task["workdir"]) / "tiny_models"


# Checkpoint every 10 records: ~60 windows in the shard, so the kill lands mid-shard
CHECKPOINT_CONFIG = """
process {
    withName: 'VIRNUCPRO_EMBED' {
        ext.args = '--precision fp32 --checkpoint-every 10'
    }
}
"""


def killed_embed_run(launch: Path, reads: Path, *profile_args: str, kill_after_parts: int = 3):
    """Run one sample whose single EMBED task is SIGKILLed once 3 checkpoint parts exist."""
    launch.mkdir(parents=True, exist_ok=True)
    (launch / "checkpoints.config").write_text(CHECKPOINT_CONFIG)
    args = (*profile_args, "-c", str(launch / "checkpoints.config"), "--input", str(reads),
            "--shard_size", "100000")
    process = start_pipeline(launch, *args)
    checkpoints = launch / "work" / "virnucpro-checkpoints"
    wait_for(lambda: len(checkpoint_parts(checkpoints)) >= kill_after_parts, f"{kill_after_parts} checkpoint parts",
             process)
    pids = wait_for(lambda: embed_pids(str(launch)), "a running virnucpro embed", process)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return finish(process, launch), args


def resumed_after_head_killed(launch: Path, reads: Path, *profile_args: str):
    """Kill -9 Nextflow while its EMBED task runs (held with SIGSTOP, so it cannot finish first),
    -resume at once, and let the orphaned task go on once the resumed one waits for it."""
    launch.mkdir(parents=True, exist_ok=True)
    (launch / "checkpoints.config").write_text(CHECKPOINT_CONFIG)
    args = (*profile_args, "-c", str(launch / "checkpoints.config"), "--input", str(reads), "--shard_size", "100000")
    first = start_pipeline(launch, *args)
    wait_for(lambda: checkpoint_parts(launch / "work" / "virnucpro-checkpoints"), "a checkpoint part", first)
    orphans = wait_for(lambda: embed_pids(str(launch)), "a running virnucpro embed", first)
    try:
        for pid in orphans:
            os.kill(pid, signal.SIGSTOP)
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
        resumed = start_pipeline(launch, *args, "-resume")
        # the task runs again in the same work folder, where its wrapper waits for the orphan's lock
        wait_for(lambda: processes_in(launch / "work", ["flock", "9"]), "the resumed task waiting", resumed)
    finally:
        for pid in orphans:
            os.kill(pid, signal.SIGCONT)
    return finish(resumed, launch)


def assert_retried_and_resumed(run) -> None:
    run.assert_ok()
    attempts = run.tasks("VIRNUCPRO_EMBED")
    assert [(row["attempt"], row["exit"]) for row in attempts][:1] == [("1", "137")], attempts
    assert attempts[-1]["status"] == "COMPLETED" and int(attempts[-1]["attempt"]) >= 2
    log = (Path(attempts[-1]["workdir"]) / ".command.err").read_text()
    at, _, total = log.split("resuming from checkpoint at record ")[1].split()[:3]
    assert 0 < int(at.replace(",", "")) < int(total.replace(",", "")), f"not resumed mid-shard: {log}"
