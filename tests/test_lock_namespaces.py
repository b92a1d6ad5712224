"""The fallback lock (no flock: ENOLCK on some NFS) across PID namespaces on one host.

Containers on one host can share its hostname but not its PID namespace (Apptainer --pid or
--containall, docker --network host). The lock trusted "same hostname => its pid is visible here":
a live holder in another container was judged dead and its folder taken over while it wrote, and a
dead one whose (small) pid exists here was judged alive for ever. The pid is now checked only when
host, boot and PID namespace all match this process's; otherwise the heartbeat's age decides.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import virnucpro.outdir as od
from virnucpro.errors import BadInputError

OTHER_NS = "0:4026599999"  # a PID namespace no process of this test is in


def no_flock(_fd, _operation):
    raise OSError(errno.ENOLCK, "No locks available")


@pytest.fixture
def nfs(tmp_path, monkeypatch) -> Path:
    """A folder on a file system without flock: folder_lock falls back to the O_EXCL lock file."""
    monkeypatch.setattr(od.fcntl, "flock", no_flock)
    folder = tmp_path / "nfs"
    folder.mkdir()
    return folder


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder: Path, age: float = 0.0, **fields) -> Path:
    """A fallback lock file of a holder like this process (fields changed), last touched `age` s ago."""
    lock = folder / od.FALLBACK_LOCK_NAME
    lock.write_text(json.dumps({**od._holder(), **fields}))
    when = time.time() - age
    os.utime(lock, (when, when))
    return lock


def taken(folder: Path) -> bool:
    """Whether this process gets the folder's lock (it then holds it for a moment and releases it)."""
    try:
        with od.folder_lock(folder, "--outdir"):
            assert json.loads((folder / od.FALLBACK_LOCK_NAME).read_text())["pid"] == os.getpid()
    except od.FolderBusy:
        return False
    return True


OLD = od.STALE_SECONDS + 60


def test_the_holder_records_its_boot_and_pid_namespace(nfs):
    with od.folder_lock(nfs, "--outdir"):
        holder = json.loads((nfs / od.FALLBACK_LOCK_NAME).read_text())
    here = os.stat("/proc/self/ns/pid")
    assert holder["pid_ns"] == f"{here.st_dev}:{here.st_ino}"
    assert holder["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert holder["host"] == socket.gethostname()


def test_a_live_holder_in_another_namespace_is_not_taken_over_while_fresh(nfs):
    """Its pid does not exist here, yet it runs: only its heartbeat tells, and it is recent."""
    write_lock(nfs, pid=dead_pid(), pid_ns=OTHER_NS)
    assert not taken(nfs)
    write_lock(nfs, age=OLD, pid=dead_pid(), pid_ns=OTHER_NS)
    assert taken(nfs)


def test_a_dead_holder_in_another_namespace_whose_pid_exists_here_is_taken_over_once_old(nfs):
    """Its pid (1 in a container) names a process here: that was "alive" for ever."""
    write_lock(nfs, pid=1, pid_ns=OTHER_NS)
    assert not taken(nfs)
    write_lock(nfs, age=OLD, pid=1, pid_ns=OTHER_NS)
    assert taken(nfs)


def test_a_dead_holder_in_this_namespace_is_still_taken_over_at_once(nfs):
    write_lock(nfs, pid=dead_pid())
    assert taken(nfs)
    write_lock(nfs, age=OLD, pid=os.getppid())  # alive here, in this namespace: never stale
    assert not taken(nfs)


def test_another_boot_is_decided_by_age(nfs):
    """After a reboot the same pid can name another process: the pid proves nothing."""
    write_lock(nfs, pid=os.getppid(), boot_id="another-boot")
    assert not taken(nfs)
    write_lock(nfs, age=OLD, pid=os.getppid(), boot_id="another-boot")
    assert taken(nfs)


@pytest.mark.parametrize("missing", ["pid_ns", "boot_id"])
def test_a_lock_file_of_an_older_virnucpro_is_decided_by_age(nfs, missing):
    """Without the new fields its namespace is unknown: a dead pid is not taken over while fresh."""
    lock = write_lock(nfs, pid=dead_pid())
    holder = json.loads(lock.read_text())
    del holder[missing]
    lock.write_text(json.dumps(holder))
    assert not taken(nfs)
    old = time.time() - OLD
    os.utime(lock, (old, old))
    assert taken(nfs)


def test_an_unreadable_namespace_is_unknown_not_equal(nfs, monkeypatch):
    """Where /proc cannot be read both sides record null: null is no match, so age decides."""
    monkeypatch.setattr(od, "_namespace", lambda: {"boot_id": None, "pid_ns": None})
    write_lock(nfs, pid=dead_pid())
    assert json.loads((nfs / od.FALLBACK_LOCK_NAME).read_text())["pid_ns"] is None
    assert not taken(nfs)


def test_the_refusal_does_not_claim_a_holder_it_cannot_see_has_ended(nfs):
    pid = dead_pid()
    write_lock(nfs, pid=pid, pid_ns=OTHER_NS)
    with pytest.raises(BadInputError) as refused:
        with od.folder_lock(nfs, "--outdir"):
            pass
    message = str(refused.value)
    assert f"pid {pid}" in message and "another PID namespace" in message, message
    assert "still names an earlier holder that has ended" not in message, message


def test_the_refusal_still_says_a_holder_of_this_namespace_has_ended():
    """The flock path: the lock file names an earlier holder this process can check (dead)."""
    text = od._holder_text(json.dumps({**od._holder(), "pid": dead_pid()}))
    assert "still names an earlier holder that has ended" in text, text


HOLD = """
import errno, os, sys, time
import virnucpro.outdir as od
def no_flock(_fd, _operation):
    raise OSError(errno.ENOLCK, "No locks available")
od.fcntl.flock = no_flock
od.HEARTBEAT_SECONDS = 0.2
with od.folder_lock(od.Path(sys.argv[1]), "--outdir"):
    print(os.getpid(), flush=True)
    time.sleep(3600)  # until killed: an end of its input would release the lock cleanly
"""


def kill_hard(holder: subprocess.Popen) -> None:
    """SIGKILL to the holder inside the namespace and to unshare, then wait until both are gone, so
    that neither a clean exit nor a last heartbeat can touch the lock file afterwards."""
    children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children")
    pids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    holder.kill()
    holder.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-Urpf", "--kill-child", "true"], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not unshare_works(), reason="needs unprivileged user and PID namespaces (unshare -Urpf)")
def test_a_real_holder_in_another_pid_namespace(nfs):
    """A real container's holder (pid 1 in its namespace, which names init here): busy while it runs,
    even once its file was made old, as its heartbeat touches it again; taken over once it was
    killed and its file is old (it was "alive" for ever: pid 1 always exists here)."""
    holder = subprocess.Popen(["unshare", "-Urpf", "--kill-child", sys.executable, "-c", HOLD, str(nfs)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lock = nfs / od.FALLBACK_LOCK_NAME
    try:
        assert holder.stdout.readline().strip() == "1"
        assert json.loads(lock.read_text())["pid_ns"] != od._namespace()["pid_ns"]
        old = time.time() - OLD
        os.utime(lock, (old, old))
        time.sleep(1.0)  # its heartbeat touches the file again
        assert not taken(nfs)
    finally:
        kill_hard(holder)  # the lock file stays
    assert lock.exists()
    old = time.time() - OLD
    os.utime(lock, (old, old))
    assert taken(nfs)


# --- refusals that only the lock's age decides (review of c4ea444) ---------------------------------

def refusal(folder: Path) -> od.FolderBusy:
    """The refusal of `folder_lock` on a folder whose fallback lock file is held."""
    with pytest.raises(od.FolderBusy) as refused:
        with od.folder_lock(folder, "--outdir"):
            pass
    return refused.value


def expiry_of(lock: Path) -> str:
    """When a fallback lock not touched since now expires, as the refusal writes it (UTC)."""
    when = datetime.fromtimestamp(lock.lstat().st_mtime + od.STALE_SECONDS, timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def old_format_lock(folder: Path, pid: int, age: float) -> Path:
    """A fallback lock file of a virnucpro before c4ea444: no boot id, no PID namespace."""
    lock = write_lock(folder, age=age, pid=pid)
    holder = json.loads(lock.read_text())
    del holder["boot_id"], holder["pid_ns"]
    lock.write_text(json.dumps(holder))
    when = time.time() - age
    os.utime(lock, (when, when))
    return lock


@pytest.mark.parametrize("case", ["older virnucpro", "no /proc", "unreadable", "another namespace", "another host"])
def test_a_refusal_decided_by_age_says_when_the_lock_expires_and_which_file_to_remove(nfs, monkeypatch, case):
    """A dead holder whose pid cannot be checked blocks for up to STALE_SECONDS: the refusal says
    that its pid cannot be checked, when the lock expires, and names the file to remove."""
    pid = dead_pid()
    if case == "older virnucpro":
        lock = old_format_lock(nfs, pid, age=120)
    elif case == "no /proc":
        monkeypatch.setattr(od, "_namespace", lambda: {"boot_id": None, "pid_ns": None})
        lock = write_lock(nfs, age=120, pid=pid)
    elif case == "unreadable":
        lock = write_lock(nfs, age=120)
        lock.write_text("{\"pid\": ")
        os.utime(lock, (time.time() - 120, time.time() - 120))
    elif case == "another host":
        lock = write_lock(nfs, age=120, pid=pid, host="other-node")
    else:
        lock = write_lock(nfs, age=120, pid=pid, pid_ns=OTHER_NS)
    busy = refusal(nfs)
    assert busy.code == 3 and "cannot be checked" in str(busy), str(busy)
    assert expiry_of(lock) in busy.hint and str(lock) in busy.hint and "remove" in busy.hint, busy.hint
    assert "\n" not in busy.message and "Traceback" not in str(busy)


def test_a_lock_file_this_user_cannot_read_is_said_not_to_expire(nfs, monkeypatch):
    """Another user's 0600 holder file is never stale here (its age cannot be trusted unread): the
    fix must not promise an expiry, and names the owner who can end it."""
    lock = write_lock(nfs, age=1200, pid=dead_pid())
    real_read = od._read_regular

    def unreadable(path):
        if Path(path) == lock:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(od, "_read_regular", unreadable)
    busy = refusal(nfs)
    assert busy.code == 3 and "does not expire by age" in busy.hint and f"uid {os.getuid()}" in busy.hint, busy.hint
    assert "expires at" not in busy.hint and str(lock) in busy.hint


def test_a_refusal_by_a_holder_whose_pid_is_checked_keeps_the_plain_fix(nfs):
    """A live holder of this host, boot and namespace: nothing expires, nothing to remove."""
    lock = write_lock(nfs, pid=os.getppid())
    busy = refusal(nfs)
    assert f"pid {os.getppid()} of {pwd.getpwuid(os.geteuid()).pw_name} on {socket.gethostname()}" in busy.message, busy.message
    assert busy.hint == "wait for it to finish, or choose another folder"
    assert str(lock) not in busy.hint


def test_a_holder_of_another_namespace_whose_pid_exists_here_is_not_called_a_local_process():
    """Pid 1 exists here (init), but the holder's pid 1 is another namespace's: only the record is named."""
    text = od._holder_text(json.dumps({**od._holder(), "pid": 1, "pid_ns": OTHER_NS}))
    assert not text.startswith("pid 1 on"), text
    assert "another PID namespace" in text and "cannot check whether it still runs" in text, text


def test_a_holder_of_another_boot_whose_pid_exists_here_is_not_called_a_local_process():
    text = od._holder_text(json.dumps({**od._holder(), "pid": os.getppid(), "boot_id": "another-boot"}))
    assert not text.startswith(f"pid {os.getppid()} on"), text
    assert "another boot" in text and "cannot check whether it still runs" in text, text


def test_a_checkable_live_holder_is_named_plainly():
    text = od._holder_text(json.dumps({**od._holder(), "pid": os.getppid()}))
    assert text.startswith(f"pid {os.getppid()} of {pwd.getpwuid(os.geteuid()).pw_name} on {socket.gethostname()}, started "), text
