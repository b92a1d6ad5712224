"""The pipeline in the project's own image (-profile test,docker), built from the Dockerfile by .ci/run.

The image must run as a non-root user, give the same tables as the local run, and a killed EMBED
task in a container must find its checkpoints on the retry (the checkpoint folder is mounted); a
stopped one (`docker stop`) must save what it computed first.
MultiQC's image comes from a registry that CI cannot reach, so these runs use --skip_multiqc.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engine import (REPO, TEST_INPUTS, assert_retried_and_resumed, assert_same_tables, coding_reads,
                    computing_embed, finish, killed_embed_run, run_pipeline, start_pipeline, tiny_models_of,
                    virnucpro_run, wait_for)
from virnucpro import __version__

pytestmark = pytest.mark.pipeline


def image_name() -> str:
    """process.container of conf/base.config: the image the docker profile runs."""
    text = (REPO / "conf" / "base.config").read_text()
    return re.search(r"^\s*container\s*=\s*'([^']+)'", text, re.M).group(1)


@pytest.fixture(scope="module", autouse=True)
def _docker():
    problem = None
    if not shutil.which("docker"):
        problem = "no docker client"
    elif subprocess.run(["docker", "image", "inspect", image_name()], capture_output=True).returncode != 0:
        problem = f"image {image_name()} not built (bash .ci/docker.sh up base build)"
    if problem and os.environ.get("CI"):
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)


def docker_run(*args: str) -> str:
    done = subprocess.run(["docker", "run", "--rm", image_name(), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_image_runs_as_a_user_and_has_the_cli():
    assert docker_run("id", "-u") != "0"
    assert docker_run("virnucpro", "--version") == f"virnucpro {__version__}"
    docker_run("ps", "-p", "1")  # Nextflow's task wrapper needs ps for its resource trace


def test_docker_profile_tables_equal_the_local_run(tmp_path):
    run = run_pipeline(tmp_path / "launch", "-profile", "test,docker", "--skip_multiqc")
    run.assert_ok()
    embed_task = Path(run.tasks("VIRNUCPRO_EMBED")[0]["workdir"])
    assert "docker run" in (embed_task / ".command.run").read_text(), "the task did not run in a container"
    for sample, reads in {"sample_a": "sample_a.fasta", "sample_b": "sample_b.fastq"}.items():
        single = virnucpro_run([TEST_INPUTS / reads], tiny_models_of(run), tmp_path / sample)
        assert_same_tables(run.outdir / sample, single)


def test_killed_embed_in_a_container_resumes_from_its_checkpoints(tmp_path):
    reads = coding_reads(tmp_path / "coding.fa", 300)
    run, _ = killed_embed_run(tmp_path / "killed", reads, "-profile", "test,docker", "--skip_multiqc")
    assert_retried_and_resumed(run)


# EMBED on one CPU and without periodic checkpoints: what the retry finds was saved at the stop
STOP_CONFIG = """
process {
    withName: 'VIRNUCPRO_EMBED' {
        cpus = 1
        ext.args = '--precision fp32 --checkpoint-every 1000000 --checkpoint-seconds 1000000'
    }
}
"""


def container_of(pid: int) -> str | None:
    """The id of the running container that holds host process `pid`."""
    ids = subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True, check=True).stdout.split()
    for container in ids:
        top = subprocess.run(["docker", "top", container, "-o", "pid"], capture_output=True, text=True).stdout
        if str(pid) in top.split():
            return container
    return None


def test_a_stopped_embed_container_saves_its_checkpoint_and_the_retry_resumes(tmp_path):
    """`docker stop` (Nextflow killing a task, AWS Batch, a user) signals the container's PID 1 only;
    the image's init (bin/container_init.py) passes the stop on to `virnucpro embed`, which saves
    what it computed, so the retry resumes from there although no periodic checkpoint was written."""
    launch = tmp_path / "launch"
    launch.mkdir()
    (launch / "stop.config").write_text(STOP_CONFIG)
    reads = coding_reads(tmp_path / "coding.fa", 3000)
    process = start_pipeline(launch, "-profile", "test,docker", "-c", str(launch / "stop.config"),
                             "--input", str(reads), "--shard_size", "100000", "--skip_multiqc")
    pid = wait_for(lambda: computing_embed(launch), "a virnucpro embed computing vectors", process)
    # a short grace before docker's SIGKILL: long enough for embed's stop checkpoint (tiny models),
    # too short for the task to finish anyway had the stop not reached embed
    subprocess.run(["docker", "stop", "--time", "3", container_of(pid)], check=True, capture_output=True,
                   timeout=300)
    run = finish(process, launch)
    run.assert_ok()
    attempts = run.tasks("VIRNUCPRO_EMBED")
    assert attempts[0]["status"] == "FAILED" and attempts[-1]["status"] == "COMPLETED", attempts
    log = (Path(attempts[0]["workdir"]) / ".command.err").read_text()
    assert "checkpoint" in log.lower() and "SIGTERM" in log, log[-3000:]
    resumed = (Path(attempts[1]["workdir"]) / ".command.err").read_text()
    found = re.search(r"already embedded: ([\d,]+)/[\d,]+ dnabert_s", resumed)
    assert found and int(found.group(1).replace(",", "")) > 0, f"the retry found nothing saved:\n{resumed}"
    single = virnucpro_run([reads], tiny_models_of(run), tmp_path / "single")
    assert_same_tables(run.outdir / "coding", single)
