"""bin/gpu_slot.py: concurrent EMBED tasks on one machine each get a GPU of their own.

Nextflow 24.x's local executor and `docker --gpus all` show every GPU to every task; the script
chooses, with a simulated device count here (--count), and honours a scheduler's choice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from permission_helpers import unprivileged

SCRIPT = Path(__file__).resolve().parents[1] / "bin" / "gpu_slot.py"

# A task that says which GPU it got, then holds it until told to finish
HOLD = ("import os, pathlib, sys, time\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "out.with_suffix('.tmp').write_text(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))\n"
        "out.with_suffix('.tmp').rename(out)\n"
        "release = pathlib.Path(sys.argv[2])\n"
        "while not release.exists(): time.sleep(0.01)\n")


def start(lock_dir: Path, report: Path, release: Path, count: int | None = 2, env: dict | None = None):
    args = [sys.executable, str(SCRIPT), "--lock-dir", str(lock_dir)]
    args += ["--count", str(count)] if count is not None else []
    args += ["--", sys.executable, "-c", HOLD, str(report), str(release)]
    environment = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environment.update(env or {})
    return subprocess.Popen(args, env=environment, stderr=subprocess.PIPE, text=True)


def wait_file(path: Path, process: subprocess.Popen, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


def test_concurrent_tasks_get_distinct_gpus_and_a_third_waits_for_a_free_one(tmp_path):
    locks, release = tmp_path / "locks", tmp_path / "release"
    first = start(locks, tmp_path / "a", release)
    second = start(locks, tmp_path / "b", release)
    got = {wait_file(tmp_path / "a", first), wait_file(tmp_path / "b", second)}
    assert got == {"0", "1"}
    third = start(locks, tmp_path / "c", tmp_path / "release_c")
    # The third announces it is waiting (stderr says so) and does not start while both are held
    assert "waiting for one" in third.stderr.readline()
    assert not (tmp_path / "c").exists()
    first.send_signal(signal.SIGKILL)  # however a task ends, the kernel frees its slot
    first.wait()
    freed = wait_file(tmp_path / "c", third)
    assert freed in {"0", "1"} and freed != (tmp_path / "b").read_text()
    release.touch()
    (tmp_path / "release_c").touch()
    assert second.wait(30) == 0 and third.wait(30) == 0


def test_a_scheduler_granted_gpu_is_used_as_is(tmp_path):
    release = tmp_path / "release"
    release.touch()
    task = start(tmp_path / "locks", tmp_path / "a", release, env={"CUDA_VISIBLE_DEVICES": "3"})
    assert task.wait(30) == 0 and (tmp_path / "a").read_text() == "3"
    assert not any((tmp_path / "locks").glob("*.lock")), "a granted GPU needs no slot"
    assert "granted by the scheduler" in task.stderr.read()


def test_gpus_listed_in_an_inherited_variable_are_shared_out_one_per_task(tmp_path):
    """A CUDA_VISIBLE_DEVICES set in the launching shell (several GPUs) reaches every task: each gets
    one GPU of that list, not all of them the first (torch takes the first visible GPU)."""
    locks, release = tmp_path / "locks", tmp_path / "release"
    listed = {"CUDA_VISIBLE_DEVICES": "2,GPU-8f3c"}
    first = start(locks, tmp_path / "a", release, count=None, env=listed)
    second = start(locks, tmp_path / "b", release, count=None, env=listed)
    got = {wait_file(tmp_path / "a", first), wait_file(tmp_path / "b", second)}
    assert got == {"2", "GPU-8f3c"}
    release.touch()
    assert first.wait(30) == 0 and second.wait(30) == 0


def test_mig_instances_whose_names_hold_slashes_get_a_slot_each(tmp_path):
    """MIG instances are named MIG-GPU-<uuid>/<gi>/<ci>: a slot file named as it is would be a path
    into folders that do not exist, and every task would run with every instance visible."""
    release = tmp_path / "release"
    release.touch()
    task = start(tmp_path / "locks", tmp_path / "a", release, count=None,
                 env={"CUDA_VISIBLE_DEVICES": "MIG-GPU-aaaa/1/0,MIG-GPU-bbbb/2/0"})
    assert task.wait(30) == 0 and (tmp_path / "a").read_text() == "MIG-GPU-aaaa/1/0"
    said = task.stderr.read()
    assert "warning" not in said and "MIG-GPU-aaaa_1_0.lock" in said, said


def _slot_under(tmp_path: Path, path: str, umask: int) -> subprocess.CompletedProcess:
    """gpu_slot.py with no --count and no CUDA_VISIBLE_DEVICES, `path` first on PATH, under `umask`."""
    environment = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environment["PATH"] = f"{path}:{environment['PATH']}"
    return subprocess.run([sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path / "locks"), "--", "sh", "-c",
                           "echo $CUDA_VISIBLE_DEVICES"], capture_output=True, text=True, timeout=60,
                          env=environment, preexec_fn=lambda: os.umask(umask))


def test_nvidia_smi_counts_gpus_not_their_mig_instances_and_slot_files_are_readable_by_all(tmp_path):
    """`nvidia-smi -L` lists a GPU's MIG instances under it: counted as GPUs, a second task would get
    a GPU that does not exist. A slot file made under umask 077 is made readable by every user (their
    tasks open it to lock it)."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A100 (UUID: GPU-x)'\n"
                    "echo '  MIG 3g.20gb     Device  0: (UUID: MIG-y)'\necho '  MIG 3g.20gb     Device  1: (UUID: MIG-z)'\n")
    fake.chmod(0o755)
    done = _slot_under(tmp_path, str(fake.parent), 0o077)
    assert done.returncode == 0 and done.stdout == "0\n" and "1 GPUs" in done.stderr, done.stderr
    assert (machine_slots(tmp_path / "locks") / "gpu0.lock").stat().st_mode & 0o444 == 0o444


@pytest.mark.parametrize("listed", ["", "-1"])
def test_a_variable_that_shows_no_gpu_is_left_as_it_is(tmp_path, listed):
    release = tmp_path / "release"
    release.touch()
    task = start(tmp_path / "locks", tmp_path / "a", release, count=None, env={"CUDA_VISIBLE_DEVICES": listed})
    assert task.wait(30) == 0 and (tmp_path / "a").read_text() == listed
    assert not any((tmp_path / "locks").glob("*.lock"))


def test_a_minus_one_ends_the_list_of_gpus_as_cuda_reads_it(tmp_path):
    """CUDA shows "0,-1,1" as GPU 0 alone: one GPU, used as is; GPU 1, which CUDA hides, is never
    given out (a list read past the -1 would share out 0 and 1)."""
    release = tmp_path / "release"
    release.touch()
    task = start(tmp_path / "locks", tmp_path / "a", release, count=None, env={"CUDA_VISIBLE_DEVICES": "0,-1,1"})
    assert task.wait(30) == 0 and (tmp_path / "a").read_text() == "0,-1,1"
    assert not any((tmp_path / "locks").glob("*.lock"))


def test_without_a_gpu_the_command_runs_unchanged(tmp_path):
    release = tmp_path / "release"
    release.touch()
    task = start(tmp_path / "locks", tmp_path / "a", release, count=0)
    assert task.wait(30) == 0 and (tmp_path / "a").read_text() == "unset"


def test_a_cpu_task_claims_no_gpu_and_says_so(tmp_path):
    release = tmp_path / "release"
    release.touch()
    args = [sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path / "locks"), "--device", "cpu", "--count", "1",
            "--", sys.executable, "-c", HOLD, str(tmp_path / "b"), str(release)]
    cpu = subprocess.run(args, capture_output=True, text=True, timeout=30,
                         env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})
    assert cpu.returncode == 0 and (tmp_path / "b").read_text() == "unset"
    assert "no GPU claimed" in cpu.stderr and not any((tmp_path / "locks").glob("*.lock"))


def test_the_exit_code_of_the_command_is_the_tasks(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path), "--count", "1", "--",
                           sys.executable, "-c", "raise SystemExit(7)"], capture_output=True)
    assert done.returncode == 7


@pytest.mark.parametrize("argv", [[], ["--"]])
def test_no_command_is_a_usage_error(tmp_path, argv):
    done = subprocess.run([sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path), *argv], capture_output=True)
    assert done.returncode == 2


def test_a_slot_file_another_user_made_read_only_is_still_usable(tmp_path):
    """Two users sharing a --checkpoint_dir: the other's slot file (0444 here) is opened read-only,
    which is all flock needs; before, opening it for writing failed with a traceback."""
    import shutil
    as_user = []  # root opens anything for writing: drop that privilege for the command
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: file permissions are not enforced")
        as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    machine_slots(tmp_path).mkdir()
    (machine_slots(tmp_path) / "gpu0.lock").touch()
    (machine_slots(tmp_path) / "gpu0.lock").chmod(0o444)
    done = subprocess.run([*as_user, sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path), "--count", "1", "--",
                           sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                               if k != "CUDA_VISIBLE_DEVICES"})
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr


@pytest.mark.parametrize("command, code", [(["no-such-command-virnucpro"], 127), (["/"], 126)])
def test_a_command_that_cannot_run_is_127_or_126_without_a_traceback(tmp_path, command, code):
    done = subprocess.run([sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path), "--device", "cpu", "--",
                           *command], capture_output=True, text=True)
    assert done.returncode == code and "Traceback" not in done.stderr, done.stderr
    assert command[0] in done.stderr


def test_a_negative_gpu_count_is_a_usage_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path), "--count", "-1", "--", "true"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--count" in done.stderr


def test_a_slot_folder_without_flock_warns_and_leaves_every_gpu_visible(tmp_path, monkeypatch, capsys):
    """Lustre mounted noflock: flock fails with ENOSYS. That was a traceback failing every EMBED task;
    now the task runs with every GPU visible and says why concurrent tasks may share one."""
    import errno
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_slot_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def no_flock(*_args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(module.fcntl, "flock", no_flock)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    module.claim_for(tmp_path / "slots", ["0", "1"])
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    err = capsys.readouterr().err
    assert "cannot lock GPU slots" in err and "no flock" in err and "Traceback" not in err, err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_while_waiting_for_a_slot_is_exit_6_in_one_line_holding_nothing(tmp_path, stop):
    """It was a KeyboardInterrupt traceback and exit 130 (SIGINT), or 143 (SIGTERM): CONTRACTS.md's
    code for a stopped task is 6."""
    locks, release = tmp_path / "locks", tmp_path / "release"
    holder = start(locks, tmp_path / "a", release, count=1)
    assert wait_file(tmp_path / "a", holder) == "0"
    waiting = start(locks, tmp_path / "b", tmp_path / "release_b", count=1)
    assert "waiting for one" in waiting.stderr.readline()
    waiting.send_signal(stop)
    assert waiting.wait(30) == 6
    said = waiting.stderr.read()
    assert said.count("\n") == 1 and signal.Signals(stop).name in said and "Traceback" not in said, said
    assert not (tmp_path / "b").exists() and sorted(path.name for path in machine_slots(locks).iterdir()) == ["gpu0.lock"]
    release.touch()
    assert holder.wait(30) == 0
    after = start(locks, tmp_path / "c", release, count=1)  # the slot is free: the stopped task held none
    assert after.wait(30) == 0 and (tmp_path / "c").read_text() == "0"


def machine_slots(lock_dir: Path) -> Path:
    """This machine's slot folder in `lock_dir` (its kernel's boot id)."""
    return lock_dir / f"machine-{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}"


def test_slot_files_no_one_can_open_are_said_once_and_never_waited_for(tmp_path):
    """A reviewer's case: another user's slot files (0600 under umask 077) counted as taken, and the
    task waited for ever, saying so every 5 s."""
    slots = machine_slots(tmp_path)
    slots.mkdir()
    for gpu in ("0", "1"):
        (slots / f"gpu{gpu}.lock").touch()
        (slots / f"gpu{gpu}.lock").chmod(0o000)
    done = subprocess.run([*unprivileged(), sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path), "--count", "2",
                           "--", "sh", "-c", "echo ran"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})
    assert done.returncode == 0 and done.stdout == "ran\n", done.stderr
    assert done.stderr.count("permission denied") == 3 and "no slot file this user can open" in done.stderr, done.stderr


def test_slots_are_kept_per_machine_and_readable_by_every_user(tmp_path):
    """Machines sharing a checkpoint folder (EFS) all locked one gpu0.lock: one EMBED in the fleet ran."""
    other_machine = tmp_path / "machine-00000000-0000-0000-0000-000000000000"
    other_machine.mkdir()
    with open(other_machine / "gpu0.lock", "w") as held:
        import fcntl
        fcntl.flock(held, fcntl.LOCK_EX)
        done = subprocess.run([sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path), "--count", "1", "--",
                               "sh", "-c", "echo $CUDA_VISIBLE_DEVICES; umask"], capture_output=True, text=True,
                              timeout=60, env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})
    assert done.returncode == 0 and done.stdout.startswith("0\n"), done.stderr
    assert (machine_slots(tmp_path) / "gpu0.lock").stat().st_mode & 0o444 == 0o444
    assert machine_slots(tmp_path).stat().st_mode & 0o1777 == 0o1777


def test_the_command_gets_the_default_sigpipe(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--lock-dir", str(tmp_path), "--device", "cpu", "--",
                           "sh", "-c", "grep SigIgn /proc/self/status"], capture_output=True, text=True, timeout=60)
    ignored = int(done.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1)), done.stdout
