"""bin/container_init.py, the image's PID 1: a stop signal reaches every process of the container and
the container ends only once they have; otherwise it is the command, exit code and all.

The PID-1 cases run in a PID namespace of their own (`unshare --pid`, as root), which is what a
container gives: there the kernel drops a signal sent to PID 1 unless PID 1 handles it, which is how
`docker stop` used to miss `virnucpro embed`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

INIT = Path(__file__).resolve().parents[1] / "bin" / "container_init.py"

# the shape of Nextflow's container command: a shell whose last command is another shell, which
# waits for the task's script in the background (the task wrapper's trace mode)
SAVER = """trap 'echo got "$1"; sleep 1; echo saved > {saved}; exit 6' TERM
sleep 60 &
echo started > {started}
wait $!
"""


def _namespace_or_skip() -> list[str]:
    """The prefix that runs a command as PID 1 of a new PID namespace."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"],
                                  capture_output=True).returncode == 0:
        return [unshare, "--pid", "--fork", "--mount-proc"]
    pytest.skip("cannot make a PID namespace here (needs root or user namespaces)")


def _wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _pid_one(launcher: subprocess.Popen) -> int:
    """The host PID of the init that `unshare --fork` started (its only child)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _end_namespace(launcher: subprocess.Popen) -> None:
    """Kill the namespace's PID 1, and with it every process in it, then its launcher: a failed test
    leaves no init behind (killing `unshare` alone leaves its namespace running)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    try:
        for child in children.read_text().split():
            os.kill(int(child), signal.SIGKILL)
    except (OSError, ValueError):
        pass  # already gone
    launcher.kill()
    launcher.wait(timeout=30)


def test_a_stop_reaches_the_task_and_the_container_waits_for_its_checkpoint(tmp_path):
    prefix = _namespace_or_skip()
    started, saved = tmp_path / "started", tmp_path / "saved"
    script = tmp_path / "task.sh"
    script.write_text(SAVER.format(started=started, saved=saved))
    command = f"eval true; /bin/bash -c '/bin/bash {script} TERM & wait'"
    launcher = subprocess.Popen([*prefix, sys.executable, str(INIT), "/bin/bash", "-c", command],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(started)
        os.kill(_pid_one(launcher), signal.SIGTERM)  # what `docker stop` does
        output, _ = launcher.communicate(timeout=30)
    finally:
        _end_namespace(launcher)
    assert "got TERM" in output, output
    assert saved.read_text() == "saved\n"  # written before the container's end, not cut short
    assert launcher.returncode == 128 + signal.SIGTERM  # the shell Nextflow started died of the stop


# a command that saves on the one stop signal it traps, as virnucpro does on each of its own
TRAPPER = """trap 'echo got {name}; sleep 1; echo saved > {saved}; exit 6' {name}
echo started > {started}
while :; do sleep 0.1; done
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP, signal.SIGUSR2], ids=lambda s: s.name)
def test_each_of_virnucpros_other_stop_signals_reaches_the_command(tmp_path, signum):
    """Ctrl-C through an attached `docker run` (SIGINT), a closed terminal (SIGHUP), SLURM's
    warning (SIGUSR2): each reaches the command, which saves and ends the container with its code."""
    prefix = _namespace_or_skip()
    started, saved = tmp_path / "started", tmp_path / "saved"
    script = tmp_path / "task.sh"
    script.write_text(TRAPPER.format(name=signum.name[3:], started=started, saved=saved))
    launcher = subprocess.Popen([*prefix, sys.executable, str(INIT), "/bin/bash", str(script)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(started)
        os.kill(_pid_one(launcher), signum)
        output, _ = launcher.communicate(timeout=30)
    finally:
        _end_namespace(launcher)
    assert f"got {signum.name[3:]}" in output and saved.read_text() == "saved\n", output
    assert launcher.returncode == 6, output


def test_a_command_that_ends_by_itself_ends_the_container_with_its_code(tmp_path):
    prefix = _namespace_or_skip()
    started = time.monotonic()
    done = subprocess.run([*prefix, sys.executable, str(INIT), "/bin/bash", "-c", "sleep 60 & exit 3"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 20  # a leftover background process does not hold it up


@pytest.mark.parametrize("in_namespace", [True, False])
def test_the_command_gets_default_signal_dispositions(tmp_path, in_namespace):
    """Python ignores SIGPIPE; a shell pipeline started by it must not inherit that (`yes | head`
    would print write errors and run on)."""
    prefix = _namespace_or_skip() if in_namespace else []
    done = subprocess.run([*prefix, sys.executable, str(INIT), "/bin/bash", "-c",
                           "yes | head -1; grep SigIgn /proc/self/status"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("y\n"), done
    assert "Broken pipe" not in done.stderr, done.stderr
    ignored = int(done.stdout.split()[-1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), done.stdout


@pytest.mark.parametrize("in_namespace", [True, False])
@pytest.mark.parametrize("argv, code, message", [
    ([], 2, "usage: container_init.py [--] COMMAND"),
    (["--"], 2, "usage: container_init.py [--] COMMAND"),  # `--` alone names no command (tini's reading)
    (["no-such-command-virnucpro"], 127, "cannot run no-such-command-virnucpro"),
    (["/etc/passwd"], 126, "cannot run /etc/passwd: Permission denied"),  # there, not executable: a shell's 126
    ([""], 127, "cannot run '': the command is an empty string"),  # exec's ValueError, said plainly
    (["--", ""], 127, "cannot run ''"),
])
def test_no_command_or_one_that_cannot_run_is_said_plainly(argv, code, message, in_namespace):
    prefix = _namespace_or_skip() if in_namespace else []
    done = subprocess.run([*prefix, sys.executable, str(INIT), *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == code and message in done.stderr and "Traceback" not in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("in_namespace", [True, False])
def test_a_leading_double_dash_ends_the_init_arguments(in_namespace):
    """`container_init.py -- COMMAND ARGS` runs COMMAND ARGS, as tini does; the `--` is no option of
    virnucpro's (it became `virnucpro -- ...`, exit 2), and a later `--` stays the command's."""
    prefix = _namespace_or_skip() if in_namespace else []
    done = subprocess.run([*prefix, sys.executable, str(INIT), "--", "/bin/bash", "-c", 'echo "$0|$1"', "--", "x"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "--|x\n", done


@pytest.mark.parametrize("in_namespace", [True, False])
def test_a_signal_ignored_when_given_stays_ignored_for_the_command(in_namespace):
    """`nohup` (or apptainer run under it) ignores SIGHUP: the command must inherit that, not have a
    hang-up stop it again."""
    prefix = _namespace_or_skip() if in_namespace else []
    done = subprocess.run(["nohup", *prefix, sys.executable, str(INIT), "/bin/bash", "-c",
                           "grep SigIgn /proc/self/status >&2"], capture_output=True, text=True, timeout=30)
    ignored = int(done.stderr.split("SigIgn:")[1].split()[0], 16)
    assert ignored & (1 << (signal.SIGHUP - 1)), done.stderr


def test_a_process_started_while_the_stop_goes_round_gets_it_too(tmp_path):
    """A process forked just after the stop was passed on (here: started by a trap once the stop
    arrived) must not hold the container up: when the command ends, the stop is passed on again."""
    prefix = _namespace_or_skip()
    started = tmp_path / "started"
    script = tmp_path / "late.sh"
    script.write_text(f"trap 'sleep 120 & exit 6' TERM\necho started > {started}\nsleep 60 & wait $!\n")
    launcher = subprocess.Popen([*prefix, sys.executable, str(INIT), "/bin/bash", str(script)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(started)
        os.kill(_pid_one(launcher), signal.SIGTERM)
        launcher.wait(timeout=30)
    finally:
        _end_namespace(launcher)
    assert launcher.returncode == 6


@pytest.mark.parametrize("in_namespace", [True, False])
@pytest.mark.parametrize("option, said", [("--version", "virnucpro"), ("--help", "Usage"), ("-h", "Usage"),
                                          ("-- virnucpro --version", "virnucpro")])
def test_options_alone_go_to_virnucpro(in_namespace, option, said):
    """`docker run IMAGE --version` replaces the image's CMD with the option alone: the init tried to
    run a program named `--version` (exit 127). Arguments starting with `-` are virnucpro's options; a
    first `--` only ends the init's own (`-- virnucpro --version` is `virnucpro --version`)."""
    prefix = _namespace_or_skip() if in_namespace else []
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # where `virnucpro` is
    done = subprocess.run([*prefix, sys.executable, str(INIT), *option.split()], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": path})
    assert done.returncode == 0 and said in done.stdout, done


def _blocked(status: str) -> set[int]:
    """The signals a /proc/PID/status text says are blocked (SigBlk, a hexadecimal bit mask)."""
    mask = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


@pytest.mark.parametrize("as_pid_one", [True, False])
def test_virnucpro_starts_with_its_stop_signals_held_back_and_other_commands_with_none(tmp_path, as_pid_one):
    """A review's case: a `docker stop` in the first tenth of a second, while Python started, killed
    virnucpro (143) before its first line could hold the stop back (virnucpro/entry.py): it now starts
    with them blocked, and ends with exit 6 once its handlers are in place. Other commands (the
    shell Nextflow runs) start with nothing blocked, as before."""
    prefix = _namespace_or_skip() if as_pid_one else []
    stand_in = tmp_path / "bin" / "virnucpro"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexec cat /proc/self/status\n")
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_in.parent}:{os.environ['PATH']}"}
    stops = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2}
    python = tmp_path / "bin" / "python3"  # a stand-in for `python -m virnucpro` (the README's other form)
    python.write_text("#!/bin/sh\nexec cat /proc/self/status\n")
    python.chmod(0o755)
    for command, held in ((["virnucpro", "run"], stops), ([str(stand_in), "run"], stops),
                          (["python3", "-m", "virnucpro", "run"], stops), (["python3", "-m", "other"], set()),
                          (["cat", "/proc/self/status"], set())):
        done = subprocess.run([*prefix, sys.executable, str(INIT), *command], capture_output=True, text=True,
                              env=env, timeout=30)
        assert done.returncode == 0, done.stderr
        assert _blocked(done.stdout) == held, (command, done.stdout)


def test_a_command_of_virnucpro_given_alone_is_named_with_the_program():
    """A review's case: `docker run IMAGE run x.fa` said only 'cannot run run' (options alone go to
    virnucpro; a command name does not, as it may be any program of the image)."""
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no virnucpro and no program named `run` on it
    done = subprocess.run([sys.executable, str(INIT), "run", "x.fa"], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode == 127 and "cannot run run" in done.stderr, done.stderr
    assert "fix: name the program: docker run IMAGE virnucpro run ..." in done.stderr, done.stderr
