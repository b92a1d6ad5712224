"""scripts/nextflow/nextflow, the Maven Central launcher, keeps the promises of Nextflow's own
launcher that docs/usage.md relies on: `-bg` detaches the run and writes its pid, and an NXF_VER it
cannot honour is named instead of being silently ignored. Real JVM runs; skipped without Java or
Maven (failed with CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from nextflow_helpers import REPO, java_problem, quick_jvm, skip_unless_ci

LAUNCHER = REPO / "scripts" / "nextflow" / "nextflow"
PIPELINE = """
workflow {
    new File(params.mark).text = 'finished'
}
"""


def _environment() -> dict:
    problem = java_problem()
    if problem is None and shutil.which("mvn") is None:
        problem = "no `mvn` on PATH (the launcher resolves Nextflow from Maven Central with it)"
    if problem:
        skip_unless_ci(f"cannot run the Nextflow launcher: {problem}")
    env = {key: value for key, value in os.environ.items() if key not in ("NXF_VER", "NXF_PID_FILE")}
    return quick_jvm(dict(env, NXF_ANSI_LOG="false", NXF_OFFLINE="true"))


def _wait_until_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists(), f"the background run {pid} did not end"


def test_bg_detaches_the_run_and_writes_its_pid(tmp_path):
    env = _environment()
    (tmp_path / "main.nf").write_text(PIPELINE)
    mark = tmp_path / "mark"
    proc = subprocess.run([str(LAUNCHER), "-q", "run", "main.nf", "-bg", "--mark", str(mark)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pid = int((tmp_path / ".nextflow.pid").read_text())
    _wait_until_gone(pid, 300)
    assert mark.read_text() == "finished"
    assert (tmp_path / ".nextflow.log").is_file()


def test_an_nxf_ver_it_cannot_honour_is_named(tmp_path):
    env = dict(_environment(), NXF_VER="99.1.0")
    proc = subprocess.run([str(LAUNCHER), "-version"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "NXF_VER=99.1.0 is not used: this launcher runs Nextflow 24.10.0" in proc.stderr
    assert "24.10.0" in proc.stdout


def _processes_in(folder: Path) -> list:
    """The pids of processes whose working directory is `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_bg_starts_nothing_when_its_pid_file_cannot_be_written(tmp_path):
    env = dict(_environment(), NXF_PID_FILE=str(tmp_path / "no such folder" / "run.pid"))
    (tmp_path / "main.nf").write_text(PIPELINE)
    proc = subprocess.run([str(LAUNCHER), "-q", "run", "main.nf", "-bg", "--mark", str(tmp_path / "mark")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "cannot write the pid file" in proc.stderr and "nothing was started" in proc.stderr, proc.stderr
    time.sleep(2)  # a JVM started in the background is a process in this folder from its fork on
    assert _processes_in(tmp_path) == [] and not (tmp_path / "mark").exists()


def test_launchers_resolving_nextflow_at_once_take_turns(tmp_path):
    """Two launchers on a machine without Nextflow yet (the unit suite runs on every core) both
    resolved it into one cache folder, and one failed copying a jar the other was moving. A launcher
    finding the cache being resolved waits for the lock, then uses what was resolved."""
    import fcntl

    cache = tmp_path / "xdg" / "virnucpro-nextflow" / "24.10.0"
    cache.mkdir(parents=True)
    env = dict(_environment(), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    said = tmp_path / "stderr"
    with open(cache / ".lock", "w") as held, open(said, "w") as stderr:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a launcher resolving Nextflow holds
        waiting = subprocess.Popen([str(LAUNCHER), "-version"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True)
        time.sleep(3)
        assert waiting.poll() is None and "Resolving" not in said.read_text(), "it resolved without the lock"
    out, _ = waiting.communicate(timeout=600)
    assert waiting.returncode == 0 and "24.10.0" in out, said.read_text()
    assert (cache / "complete").is_file() and "Resolving Nextflow" in said.read_text()



def test_a_relative_or_missing_cache_home_never_resolves_into_the_checkout(tmp_path):
    """A relative XDG_CACHE_HOME made Maven resolve 40 MB of jars into scripts/nextflow/rel/ (it
    reads a relative folder against pom.xml's), then fail; an unset HOME stopped on `unbound
    variable`. A relative XDG_CACHE_HOME is ignored (as XDG says), and no absolute HOME is said in
    one line."""
    env = _environment()
    done = subprocess.run([str(LAUNCHER), "-version"], cwd=tmp_path, env=dict(env, XDG_CACHE_HOME="rel"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "24.10.0" in done.stdout, done.stderr
    assert not (LAUNCHER.parent / "rel").exists() and not (tmp_path / "rel").exists()
    homeless = {key: value for key, value in env.items() if key not in ("HOME", "XDG_CACHE_HOME")}
    for home in ({}, {"HOME": ""}, {"HOME": "relative"}):
        done = subprocess.run([str(LAUNCHER), "-version"], cwd=tmp_path, env=dict(homeless, **home),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "set XDG_CACHE_HOME to an absolute folder" in done.stderr, done.stderr
        assert "unbound variable" not in done.stderr
