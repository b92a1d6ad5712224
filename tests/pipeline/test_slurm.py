"""The pipeline on a real one-node SLURM cluster (.ci/slurm.sh: slurmctld, slurmd, munge, two
simulated GPUs): every task a SLURM job, a time limit and a preemption survived mid-shard, GPUs
granted one per concurrent EMBED job, bad queue settings refused with a clear error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from engine import (TEST_INPUTS, assert_same_tables, coding_reads, finish, run_pipeline, start_pipeline,
                    tiny_models_of, virnucpro_run, wait_for)

pytestmark = pytest.mark.pipeline

# Every check computes on the CPU (--device cpu); EMBED asks for one CPU so that two of its jobs
# fit the node at once
ONE_CPU_EMBED = """
process {
    withName: 'VIRNUCPRO_EMBED' {
        cpus = 1
        ext.args = '--precision fp32 %s'
    }
}
"""
NO_PERIODIC_CHECKPOINTS = "--checkpoint-every 1000000 --checkpoint-seconds 1000000"
# The slurm profile polls a shared scheduler gently (one squeue a minute); this one-node cluster is
# ours alone, so the tests poll it every second
FAST_POLL = """
executor {
    queueStatInterval = '2 sec'
    pollInterval      = '1 sec'
    submitRateLimit   = '100/1s'
}
"""


@pytest.fixture(scope="module", autouse=True)
def _cluster():
    problem = None
    if not shutil.which("sinfo"):
        problem = "no SLURM client commands (bash .ci/slurm.sh up)"
    elif subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        problem = "no SLURM controller answers (bash .ci/slurm.sh up)"
    if problem and os.environ.get("CI"):
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)


def write_config(launch: Path, text: str = "") -> Path:
    """A site config for one run: `text` and the fast polling of this test cluster."""
    launch.mkdir(parents=True, exist_ok=True)
    path = launch / "site.config"
    path.write_text(FAST_POLL + text)
    return path


def embed_job(launch: Path) -> tuple[str, int] | None:
    """(job id, pid of its virnucpro embed) of the run's EMBED job once embed has computed a while."""
    jobs = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout.split("\n")
    for line in filter(None, jobs):
        job_id, name = line.split(maxsplit=1)
        if "EMBED" not in name:
            continue
        for proc in Path("/proc").iterdir():
            try:
                words = (proc / "cmdline").read_bytes().split(b"\0")
                cwd = os.readlink(proc / "cwd")
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if str(launch) in cwd and b"embed" in words and any(w.endswith(b"virnucpro") for w in words):
                cpu_seconds = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
                if cpu_seconds >= 8:  # imports and model loading are done: vectors are being computed
                    return job_id, int(proc.name)
    return None


def embedded_before_resume(workdir: Path) -> int:
    """How many vectors the resumed attempt found saved (the log line of `virnucpro embed`)."""
    log = (workdir / ".command.err").read_text()
    found = re.search(r"already embedded: ([\d,]+)/[\d,]+ dnabert_s, ([\d,]+)/[\d,]+ esm2", log)
    assert found, f"the retry did not resume from a checkpoint:\n{log}"
    return sum(int(n.replace(",", "")) for n in found.groups())


def interrupted_run(tmp_path: Path, interrupt) -> list:
    """One sample whose EMBED job gets `interrupt(job_id)` mid-shard, with no periodic checkpoint:
    the retry must find what was computed before the interruption and the tables must be whole."""
    launch = tmp_path / "launch"
    reads = coding_reads(tmp_path / "coding.fa", 3000)
    config = write_config(launch, ONE_CPU_EMBED % NO_PERIODIC_CHECKPOINTS)
    args = ("-profile", "test,slurm", "-c", str(config), "--input", str(reads), "--shard_size", "100000",
            "--skip_multiqc")
    process = start_pipeline(launch, *args)
    job_id, _ = wait_for(lambda: embed_job(launch), "an EMBED job computing vectors", process)
    interrupt(job_id)
    run = finish(process, launch)
    run.assert_ok()
    attempts = run.tasks("VIRNUCPRO_EMBED")
    assert attempts[0]["status"] == "FAILED" and attempts[0]["native_id"] == job_id, attempts
    assert attempts[-1]["status"] == "COMPLETED"
    assert embedded_before_resume(Path(attempts[1]["workdir"])) > 0, "nothing was saved at the interruption"
    single = virnucpro_run([reads], tiny_models_of(run), tmp_path / "single")
    assert_same_tables(run.outdir / "coding", single)
    return attempts


def test_test_profile_runs_every_task_as_a_slurm_job_with_the_local_tables(tmp_path):
    config = write_config(tmp_path / "launch")
    run = run_pipeline(tmp_path / "launch", "-profile", "test,slurm", "-c", str(config), "--skip_multiqc")
    run.assert_ok()
    trace = run.trace()
    assert trace and all(row["native_id"].isdigit() for row in trace), "a task did not run as a SLURM job"
    for sample, reads in {"sample_a": "sample_a.fasta", "sample_b": "sample_b.fastq"}.items():
        single = virnucpro_run([TEST_INPUTS / reads], tiny_models_of(run), tmp_path / sample)
        assert_same_tables(run.outdir / sample, single)


def test_time_limit_warning_saves_a_checkpoint_and_the_retry_resumes(tmp_path):
    """SLURM's warning before the time limit is SIGUSR2 to the job's batch shell (--signal=B:USR2@N,
    which the slurm profile asks for): `scancel --batch --signal=USR2` sends exactly that, at a
    moment the test chooses (SLURM's own timing of the warning varies by up to a minute)."""
    attempts = interrupted_run(tmp_path, lambda job: subprocess.run(
        ["scancel", "--batch", "--signal=USR2", job], check=True))
    assert attempts[0]["exit"] == "140"
    assert "--signal=B:USR2@60" in (Path(attempts[0]["workdir"]) / ".command.run").read_text()


def test_preempted_embed_job_is_retried_and_resumes(tmp_path):
    """Preemption (PreemptMode=CANCEL/REQUEUE) and scancel end a running job the same way."""
    attempts = interrupted_run(tmp_path, lambda job: subprocess.run(["scancel", job], check=True))
    assert attempts[0]["exit"] in {"143", "137", "140", "-"}


def test_concurrent_embed_jobs_are_granted_distinct_gpus_and_use_them(tmp_path):
    launch = tmp_path / "launch"
    config = write_config(launch, ONE_CPU_EMBED % "")
    # auto: the cluster's GPUs are GRES entries without hardware, so embed falls back to the CPU
    # (--device cpu asks SLURM for no GPU at all); a sample with no ORF asks for none either
    no_orf = tmp_path / "no_orf.fa"
    no_orf.write_text(">only_n\n" + "N" * 120 + "\n")
    sheet = tmp_path / "samples.csv"
    sheet.write_text(f"sample,file\nsample_a,{TEST_INPUTS / 'sample_a.fasta'}\nsample_b,{TEST_INPUTS / 'sample_b.fastq'}\n"
                     f"no_orf,{no_orf}\n")
    run = run_pipeline(launch, "-profile", "test,slurm,gpu", "-c", str(config), "--device", "auto",
                       "--input", str(sheet), "--skip_multiqc")
    run.assert_ok()
    granted = {}
    for row in run.tasks("VIRNUCPRO_EMBED"):
        log = (Path(row["workdir"]) / ".command.err").read_text()
        if row["tag"].startswith("no_orf:"):
            assert "--gres" not in (Path(row["workdir"]) / ".command.run").read_text() and "no model loaded" in log
            continue
        found = re.search(r"gpu_slot: CUDA_VISIBLE_DEVICES=(\S+) \(granted by the scheduler", log)
        assert found, f"{row['name']}: no GPU granted:\n{log}"
        assert "--gres=gpu:1" in (Path(row["workdir"]) / ".command.run").read_text()
        granted[row["name"]] = (found.group(1), moment(row["start"]), moment(row["complete"]))
    overlapping = [(a, b) for a in granted for b in granted
                   if a < b and granted[a][1] < granted[b][2] and granted[b][1] < granted[a][2]]
    assert overlapping, f"no two EMBED jobs ran at once: {granted}"
    for a, b in overlapping:
        assert granted[a][0] != granted[b][0], f"{a} and {b} ran at once on GPU {granted[a][0]}"


def moment(text: str) -> datetime:
    """A trace file time (`2026-11-30 13:05:01.123`)."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


@pytest.mark.parametrize("args, culprits", [
    (["--slurm_queue", "nosuchpartition"], ["nosuchpartition"]),
    (["--slurm_options=--gres=gpu:9"], ["gpu:9"]),  # `=`: a value starting with -- is not an option
    # the cluster's GPUs have no type: sbatch refused gpu:a100 once PREPARE had run, naming neither
    (["--device", "cuda", "--gpu_type", "a100"], ["--gpu_type a100: no node of the cluster has GPUs of that type",
                                                  "its GPUs have no type: leave --gpu_type out"]),
], ids=["unknown-partition", "impossible-request", "unknown-gpu-type"])
def test_bad_queue_settings_stop_the_run_with_a_clear_error(tmp_path, args, culprits):
    started = time.monotonic()
    config = write_config(tmp_path)
    run = run_pipeline(tmp_path, "-profile", "test,slurm", "-c", str(config), "--skip_multiqc", *args, timeout=300)
    assert run.returncode != 0, run.output[-3000:]
    for culprit in culprits:
        assert culprit in run.output, run.output[-3000:]
    assert time.monotonic() - started < 300
