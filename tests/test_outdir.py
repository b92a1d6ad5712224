"""Output folders (issue 9, points 1, 5, 6, 8, 11): one command per folder, only our own files
replaced, staging inside the folder, clean stops, storage failures as exit 10.

Concurrency and signal tests start real processes and wait on files or pipes, never on sleeps.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from mount_helpers import remount_read_only, tmpfs as mounted_tmpfs

from virnucpro import outdir as od
from virnucpro import prepared as fmt
from virnucpro.errors import BadInputError

CLI = [sys.executable, "-m", "virnucpro"]
RECORD = ">s{0}\nATGAAACCCGGGTTTATGAAACCCGGGTTTATGAAACCC\n"


def write_fasta(path: Path, n: int, first: int = 0) -> Path:
    path.write_text("".join(RECORD.format(i) for i in range(first, first + n)))
    return path


def sequence_ids(folder: Path) -> list[str]:
    return [row["sequence_id"] for row in fmt.read_table(folder / fmt.SEQUENCES)]


class FifoInput:
    """A named pipe the test feeds by hand: the command reading it waits until the test closes it."""

    def __init__(self, path: Path):
        self.path = path
        os.mkfifo(path)
        self.handle = None

    def open_and_write(self, text: str) -> None:
        self.handle = open(self.path, "w")  # blocks until the command opens the other end
        self.handle.write(text)
        self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll a file-system condition (the 'ready' signal), failing early if the process ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lock_holder(folder: Path) -> dict | None:
    try:
        return json.loads((folder / od.LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def holding(tmp_path: Path, command: str, out: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, FifoInput]]:
    """A command that holds `out` and waits for the rest of its input on a FIFO, for the block.

    On leaving the block the FIFO is closed and a holder still running is killed and reaped: a
    body that fails before opening the FIFO for writing left the command blocked in its open
    forever, outliving the test (and its lock on `out`). A body that succeeds waits for the
    command itself (`communicate`) inside the block.
    """
    fifo = FifoInput(tmp_path / f"{command}.fifo")
    process = subprocess.Popen(CLI + [command, str(fifo.path), "--outdir", str(out), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (lock_holder(out) or {}).get("pid") == process.pid, process, "the lock")
        yield process, fifo
    finally:
        fifo.close()
        if process.poll() is None:
            process.kill()
        process.communicate()  # reaps it and closes its pipes


# --- point 1: one command per output folder --------------------------------------------------

@pytest.mark.parametrize("command", ["prepare", "run"])
def test_second_command_on_a_busy_folder_exits_3_naming_the_holder(tmp_path, tiny_models, command):
    extra = ("--models", str(tiny_models), "--device", "cpu") if command == "run" else ()
    out = tmp_path / "res"
    with holding(tmp_path, command, out, *extra) as (first, fifo):
        second = subprocess.run(CLI + [command, str(write_fasta(tmp_path / "b.fa", 3, first=100)),
                                       "--outdir", str(out), *extra], capture_output=True, text=True, timeout=300)
        assert second.returncode == 3, second.stderr
        assert f"pid {first.pid} of {pwd.getpwuid(os.geteuid()).pw_name} on {socket.gethostname()}" in second.stderr and str(out) in second.stderr
        fifo.open_and_write("".join(RECORD.format(i) for i in range(5)))
        fifo.close()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert sequence_ids(out) == [f"s{i}" for i in range(5)]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "res"
    with holding(tmp_path, "prepare", out) as (first, fifo):
        first.kill()
        first.communicate()
        fifo_path = fifo.path
    assert fifo_path.exists()
    done = subprocess.run(CLI + ["prepare", str(write_fasta(tmp_path / "a.fa", 2)), "--outdir", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sequence_ids(out) == ["s0", "s1"]


def test_fallback_lock_file_for_file_systems_without_flock(tmp_path, monkeypatch):
    """Where flock fails (ENOLCK on some NFS mounts) an O_EXCL lock file with pid and host is used."""
    def no_flock(_fd, _operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(od.fcntl, "flock", no_flock)
    folder = tmp_path / "nfs"
    with od.folder_lock(folder, "--outdir"):
        holder = json.loads((folder / od.FALLBACK_LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(BadInputError, match=f"pid {os.getpid()}"):
            with od.folder_lock(folder, "--outdir"):
                pass
    assert not (folder / od.FALLBACK_LOCK_NAME).exists()


def test_fallback_lock_of_a_dead_process_is_taken_over_a_live_one_is_not(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = folder / od.FALLBACK_LOCK_NAME
    # a holder of this host, boot and PID namespace (see test_lock_namespaces.py for the others)
    lock.write_text(json.dumps({**od._holder(), "pid": dead.pid, "started": "then"}))
    with od.exclusive_file_lock(lock, folder, "--outdir"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        lock.write_text(json.dumps({**od._holder(), "pid": alive.pid, "started": "now"}))
        with pytest.raises(BadInputError, match=f"pid {alive.pid}"):
            with od.exclusive_file_lock(lock, folder, "--outdir"):
                pass
        lock.write_text(json.dumps({"pid": 1, "host": "other-node", "started": "now"}))
        with pytest.raises(BadInputError, match="other-node"):  # fresh: its heartbeat is recent
            with od.exclusive_file_lock(lock, folder, "--outdir"):
                pass
        old = time.time() - od.STALE_SECONDS - 60
        os.utime(lock, (old, old))
        with od.exclusive_file_lock(lock, folder, "--outdir"):  # no heartbeat for too long: taken over
            pass
    finally:
        alive.communicate(b"")


def test_a_lock_file_naming_its_holder_with_line_breaks_is_one_line_in_the_refusal(tmp_path):
    """The details come from a file anyone who can write the folder can forge: control characters
    are shown escaped, so the refusal stays one line and cannot fake a second message."""
    folder = tmp_path / "f"
    folder.mkdir()
    lock = folder / od.FALLBACK_LOCK_NAME
    lock.write_text(json.dumps({"pid": 1, "host": "node\nerror: fake\x1b[2J", "started": "now\r"}))
    with pytest.raises(BadInputError) as refused:
        with od.exclusive_file_lock(lock, folder, "--outdir"):
            pass
    said = refused.value.message + refused.value.hint
    assert "node\\nerror: fake\\x1b[2J" in said and "now\\r" in said, said
    assert not any(c in said for c in "\n\r\x1b"), said
    lock.write_text(json.dumps({"pid": 1, "host": "n" * 5_000_000, "started": "now"}))
    with pytest.raises(BadInputError) as refused:
        with od.exclusive_file_lock(lock, folder, "--outdir"):
            pass
    assert len(str(refused.value)) < 2_000


@pytest.mark.parametrize("marker, said", [
    ({"kind": "run\nerror: all good\x1b[2J", "files": {}}, "'run\\nerror: all good\\x1b[2J'"),
    ({"kind": "prepare", "virnucpro_version": "9\nerror: fake\x1b[31m", "files": {}}, "virnucpro 9\\nerror: fake"),
], ids=["kind", "version"])
def test_a_forged_record_of_an_output_is_quoted_escaped_in_the_refusal(tmp_path, marker, said):
    """The record `.virnucpro.json` is as forgeable as the lock file beside it."""
    out = tmp_path / "o"
    out.mkdir()
    (out / od.MARKER_NAME).write_text(json.dumps(marker))
    (out / "chunks.tsv").write_text("x")
    (out / "odd\nname.tsv").write_text("x")
    done = subprocess.run(CLI + ["prepare", str(write_fasta(tmp_path / "a.fa", 2)), "--outdir", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 3 and said in done.stderr, done.stderr
    assert "\x1b" not in done.stderr and done.stderr.count("\n") == 2, done.stderr  # message and fix lines


# --- point 5: only our own files, only our own kind of output --------------------------------

@pytest.mark.parametrize("name", ["sequences.tsv", "chunks.tsv", "report.html", "run_info.json",
                                  "prediction_results.txt"])
def test_run_never_replaces_a_foreign_file(tmp_path, run_cli, tiny_models, name):
    out = tmp_path / "d"
    out.mkdir()
    (out / name).write_text("MINE\n")
    code, message = run_cli("run", write_fasta(tmp_path / "a.fa", 2), "--outdir", out, "--models", tiny_models,
                            "--device", "cpu")
    assert code == 3 and name in message, message
    assert (out / name).read_text() == "MINE\n"


def test_outputs_of_another_kind_are_never_overwritten(tmp_path, run_cli, tiny_models):
    fasta = write_fasta(tmp_path / "a.fa", 2)
    prep = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", prep)[0] == 0
    # every file but the lock file, where each command that takes the lock notes who holds it
    before = {p.name: p.read_bytes() for p in prep.iterdir() if p.is_file() and p.name != ".virnucpro.lock"}
    code, message = run_cli("run", fasta, "--outdir", prep, "--models", tiny_models, "--device", "cpu")
    assert code == 3 and "'prepare' output" in message, message
    assert {p.name: p.read_bytes() for p in prep.iterdir() if p.is_file() and p.name != ".virnucpro.lock"} == before
    assert (prep / ".virnucpro.lock").is_file(), "the refused command removed a lock file it did not create"


def test_a_folder_of_ours_emptied_by_the_user_is_still_ours(tmp_path, run_cli):
    """Its only shard deleted to save disk, a rerun into the same folder was refused: the empty
    shards folder was "a file virnucpro did not write". With two shards, one deleted, it worked."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    shard = out / fmt.SHARD_DIR / fmt.shard_name(0)
    before = shard.read_bytes()
    shard.unlink()
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 0, message
    assert shard.read_bytes() == before


def test_a_link_where_a_folder_of_ours_was_is_refused_before_any_work(tmp_path, run_cli):
    """The review of the emptied-folder change: a link to the user's folder at `shards` passed the
    start-up check (it leads to a folder), and prepare half-published before refusing it."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    shutil.rmtree(out / fmt.SHARD_DIR)
    (tmp_path / "precious").mkdir()
    (out / fmt.SHARD_DIR).symlink_to(tmp_path / "precious")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".virnucpro")}
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and "did not write" in message and "appeared" not in message, message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".virnucpro")} == before


def test_an_empty_folder_where_a_file_of_ours_was_is_still_refused(tmp_path, run_cli):
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    (out / fmt.CHUNKS).unlink()
    (out / fmt.CHUNKS).mkdir()
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and fmt.CHUNKS in message, message


def test_a_folder_copied_without_its_times_is_refused_saying_so(tmp_path, run_cli):
    """A finished output copied with `cp -r` cannot be proven ours (its files' times changed): the
    refusal used to say only "did not write (or changed since)"."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    assert run_cli("prepare", fasta, "--outdir", tmp_path / "prep")[0] == 0
    shutil.copytree(tmp_path / "prep", tmp_path / "copy", copy_function=shutil.copyfile)  # no times kept
    code, message = run_cli("prepare", fasta, "--outdir", tmp_path / "copy")
    assert code == 3 and "`cp -a` keeps them" in " ".join(message.split()), message
    (tmp_path / "copy" / fmt.CHUNKS).write_text("edited\n")
    code, message = run_cli("prepare", fasta, "--outdir", tmp_path / "copy")
    assert code == 3 and "cp -a" not in message, message


@pytest.mark.parametrize("step_ns", [2_000_000_000, 10_000_000, 100], ids=["FAT 2 s", "exFAT 10 ms", "NTFS 100 ns"])
def test_a_copy_onto_a_disk_with_coarser_times_is_still_ours(tmp_path, run_cli, step_ns):
    """A reviewer's case: `cp -a` (or mv, rsync -a) of results onto a FAT, exFAT or NTFS disk keeps each
    time only to the disk's step, and the rerun was refused saying `cp -a` keeps times."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    assert run_cli("prepare", fasta, "--outdir", tmp_path / "prep")[0] == 0
    shutil.copytree(tmp_path / "prep", tmp_path / "copy")
    for path in (tmp_path / "copy").rglob("*"):
        if path.is_file() and not path.name.startswith(".virnucpro"):
            exact = path.stat().st_mtime_ns | 1  # never already on the step
            os.utime(path, ns=(exact, exact - exact % step_ns))  # the disk cuts the time to its step
    assert run_cli("prepare", fasta, "--outdir", tmp_path / "copy")[0] == 0
    chunks = tmp_path / "copy" / fmt.CHUNKS
    later = (chunks.stat().st_mtime_ns + step_ns) | 1  # odd: on no step
    os.utime(chunks, ns=(later, later))  # a step apart is another time, on any disk
    code, message = run_cli("prepare", fasta, "--outdir", tmp_path / "copy")
    assert code == 3 and fmt.CHUNKS in message, message


def test_a_file_newer_than_its_record_is_never_ours_even_on_a_whole_step(tmp_path, run_cli):
    """A reviewer's case: an edit that kept the size, its time then on the next whole 2 s, passed as
    a coarse copy of the recorded time; a copy only ever cuts a time down."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    chunks = out / fmt.CHUNKS
    recorded = chunks.stat().st_mtime_ns
    newer = recorded - recorded % 2_000_000_000 + 2_000_000_000
    os.utime(chunks, ns=(newer, newer))
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and fmt.CHUNKS in message, message


def test_a_changed_file_in_our_own_output_is_not_replaced(tmp_path, run_cli):
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    (out / fmt.CHUNKS).write_text("edited by hand\n")
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and fmt.CHUNKS in message, message
    assert (out / fmt.CHUNKS).read_text() == "edited by hand\n"


def test_rerun_replaces_own_output_and_drops_its_stale_shards(tmp_path, run_cli):
    out = tmp_path / "prep"
    assert run_cli("prepare", write_fasta(tmp_path / "a.fa", 40), "--outdir", out, "--shard-size", "50")[0] == 0
    assert len(list((out / fmt.SHARD_DIR).iterdir())) > 1
    (out / "notes.txt").write_text("mine")  # not a name prepare writes: left alone
    assert run_cli("prepare", write_fasta(tmp_path / "b.fa", 1), "--outdir", out)[0] == 0
    assert [p.name for p in (out / fmt.SHARD_DIR).iterdir()] == ["shard_00000.tsv"]
    assert sequence_ids(out) == ["s0"] and (out / "notes.txt").read_text() == "mine"


# --- point 6: the folder itself is never renamed or removed ------------------------------------

def test_prepare_into_the_current_folder_twice(tmp_path):
    work = tmp_path / "here"
    work.mkdir()
    for n in (3, 2):
        done = subprocess.run(CLI + ["prepare", str(write_fasta(tmp_path / "a.fa", n)), "--outdir", "."],
                              cwd=work, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert sequence_ids(work) == [f"s{i}" for i in range(n)]
    assert not (work / ".virnucpro-partial").exists()


def test_prepare_into_a_symlinked_folder_keeps_the_link(tmp_path, run_cli):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    for _ in range(2):
        code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", link)
        assert code == 0, message
    assert link.is_symlink() and sequence_ids(real) == ["s0", "s1"]


@pytest.fixture
def tmpfs(tmp_path):
    """A real small file system of its own (a mount point), when this machine lets us mount one."""
    with mounted_tmpfs(tmp_path / "mnt", "256k") as point:
        yield point


def test_prepare_into_a_mount_point_twice(tmp_path, run_cli, tmpfs):
    for n in (2, 3):
        code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", n), "--outdir", tmpfs)
        assert code == 0, message
    assert sequence_ids(tmpfs) == ["s0", "s1", "s2"]


# --- point 11: storage failures are exit 10, partial output removed ---------------------------

def test_disk_full_is_exit_10_naming_the_path(tmp_path, tmpfs):
    fasta = write_fasta(tmp_path / "big.fa", 20_000)  # ~1 MB of ORF records: more than the 256 KB disk
    done = subprocess.run(CLI + ["prepare", str(fasta), "--outdir", str(tmpfs / "out"), "--threads", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 10, done.stderr
    assert "the disk is full" in done.stderr and str(tmpfs) in done.stderr and "Traceback" not in done.stderr
    assert not (tmpfs / "out" / ".virnucpro-partial").exists()


def test_read_only_file_system_is_exit_10(tmp_path, tmpfs):
    remount_read_only(tmpfs)
    done = subprocess.run(CLI + ["prepare", str(write_fasta(tmp_path / "a.fa", 2)), "--outdir", str(tmpfs)],
                          capture_output=True, text=True)
    assert done.returncode == 10 and "read-only" in done.stderr, done.stderr


def test_file_size_limit_is_exit_10_without_root(tmp_path):
    """RLIMIT_FSIZE makes writes fail with EFBIG, a storage failure any user can provoke."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    fasta = write_fasta(tmp_path / "big.fa", 5_000)  # written before the limit applies
    done = subprocess.run(CLI + ["prepare", str(fasta), "--outdir", str(tmp_path / "out"), "--threads", "1"],
                          capture_output=True, text=True, preexec_fn=limit)
    assert done.returncode == 10, done.stderr
    assert "Traceback" not in done.stderr and str(tmp_path / "out") in done.stderr
    assert not (tmp_path / "out" / ".virnucpro-partial").exists()


# --- point 8: signals end every process, remove partial output, exit 6 ------------------------

def children_of(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
        found.update(int(child) for child in text)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def leftover_workers() -> Iterator[set[int]]:
    """The worker pids a test saw: any still running a virnucpro at its end is killed (they ignore stop
    signals, and a failing test left them running for ever)."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        try:
            if alive(pid) and b"virnucpro" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


@pytest.fixture(scope="module")
def large_fasta(tmp_path_factory) -> Path:
    """About 60 MB: prepare with workers runs several seconds on it."""
    path = tmp_path_factory.mktemp("large") / "large.fa"
    record = "ATGAAACCCGGGTTTATG" * 50  # no stop codon: ORFs in every frame
    with open(path, "w") as handle:
        for i in range(60_000):
            handle.write(f">r{i}\n{record}\n")
    return path


def hup_as_in_a_terminal() -> None:
    """SIGHUP at its default, as a terminal session starts it: the suite may run under nohup."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGHUP])
def test_stop_signal_ends_prepare_and_its_workers(tmp_path, large_fasta, signum):
    out = tmp_path / "out"
    process = subprocess.Popen(CLI + ["prepare", str(large_fasta), "--outdir", str(out), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=hup_as_in_a_terminal)
    wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers")
    workers = children_of(process.pid)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)  # returns only when nobody holds the pipes any more
    assert process.returncode == 6, err
    assert f"{signal.Signals(signum).name} received" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3, err  # the message and its fix (and progress lines)
    assert not any(alive(pid) for pid in workers)
    assert not (out / ".virnucpro-partial").exists()
    assert not (out / fmt.MANIFEST).exists()


def prepare_after(tmp_path: Path, prelude: str, **options) -> tuple[subprocess.CompletedProcess, Path]:
    """`virnucpro prepare` on two records through the console entry, after Python lines `prelude`
    (which may signal the process); the finished process and the output folder."""
    fasta, out = write_fasta(tmp_path / "a.fa", 2), tmp_path / "out"
    script = f"import atexit, os, signal, time\nimport virnucpro.entry\n{prelude}\nvirnucpro.entry.main()\n"
    done = subprocess.run([sys.executable, "-c", script, "prepare", str(fasta), "--outdir", str(out)],
                          capture_output=True, text=True, timeout=120, **options)
    return done, out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_the_command_line_loads_is_exit_6(tmp_path, signum):
    """The signal arrives after the console script's first line, before the command's handlers
    exist (the imports take a few tenths of a second): it is held back, then handled (exit 6)."""
    done, out = prepare_after(tmp_path, f"os.kill(os.getpid(), {int(signum)})\ntime.sleep(0.2)")
    assert done.returncode == 6, (done.returncode, done.stderr)
    assert f"{signal.Signals(signum).name} received" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def ignored_signals(pid: int) -> set[int]:
    """The signals process `pid` ignores (SigIgn of /proc/PID/status)."""
    mask = next(int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("SigIgn:"))
    return {bit + 1 for bit in range(64) if mask >> bit & 1}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_to_the_whole_tree_ends_prepare_with_exit_6(tmp_path, large_fasta, signum):
    """Nextflow, SLURM and `timeout` signal every process of the task: a worker killed while it sent
    its result left the main process waiting for the rest of the message for ever. Workers ignore
    every stop signal; the main process ends them."""
    out = tmp_path / "out"
    process = subprocess.Popen(CLI + ["prepare", str(large_fasta), "--outdir", str(out), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=hup_as_in_a_terminal)
    wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers")
    workers = children_of(process.pid)
    stops = {signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP}  # held back until set ignored
    wait_for(lambda: all(stops <= ignored_signals(worker) for worker in workers), process, "workers ignoring stops")
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 6, err
    assert not any(alive(pid) for pid in workers)
    assert not (out / ".virnucpro-partial").exists()


def test_sighup_is_left_ignored_under_nohup(tmp_path):
    """`nohup virnucpro ...`: SIGHUP inherited as ignored stays ignored (the command goes on)."""
    done, out = prepare_after(tmp_path, "os.kill(os.getpid(), signal.SIGHUP)",
                              preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert done.returncode == 0, done.stderr
    assert (out / fmt.MANIFEST).is_file()


def test_a_stop_signal_after_the_command_finished_keeps_its_exit_code(tmp_path):
    """A stop that arrives during the interpreter's shutdown (outputs complete) was exit 143."""
    stop_at_exit = "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.2)))"
    done, out = prepare_after(tmp_path, stop_at_exit)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert (out / fmt.MANIFEST).is_file()


def test_a_killed_worker_is_said_plainly_not_reported_as_a_bug(tmp_path, large_fasta):
    """The out-of-memory killer ends a worker with SIGKILL: exit 137 (what the kernel gives a process
    it kills, which Nextflow retries with more memory), naming the cause and the fix."""
    out = tmp_path / "out"
    process = subprocess.Popen(CLI + ["prepare", str(large_fasta), "--outdir", str(out), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers")
    os.kill(min(children_of(process.pid)), signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 137, err
    assert "worker process died" in err and "SIGKILL (out of memory?" in err and "bug" not in err, err
    assert not (out / ".virnucpro-partial").exists()


def _ignore_sigterm_and_wait(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a prepare worker does (_worker_setup)
    ready.set()
    time.sleep(120)


def test_the_pool_s_terminate_kills_a_worker_that_ignores_sigterm():
    """Python 3.12 and later: a pool whose worker was killed terminates the others, then waits on its
    queue; they ignore SIGTERM by design, and prepare hung for ever. Its workers' terminate kills them
    (this holds on every Python, where the hang itself shows on 3.12+ only)."""
    from virnucpro.prepare import _WorkerContext

    context = _WorkerContext()
    ready = context.Event()
    worker = context.Process(target=_ignore_sigterm_and_wait, args=(ready,))
    worker.start()
    try:
        assert ready.wait(30)
        worker.terminate()
        worker.join(10)
        assert worker.exitcode == -signal.SIGKILL
    finally:
        worker.kill()  # no-op once it is gone; a failed check leaves no sleeper behind
        worker.join()


def test_prepare_s_pool_makes_workers_that_terminate_kills(tmp_path, run_cli, monkeypatch):
    import virnucpro.prepare as prepare

    contexts = []

    def recording(*args, **kwargs):
        contexts.append(kwargs.get("mp_context"))
        return real(*args, **kwargs)

    real = prepare.ProcessPoolExecutor
    monkeypatch.setattr(prepare, "ProcessPoolExecutor", recording)
    reads = write_fasta(tmp_path / "reads.fa", 40_000)  # three groups of records: a pool of two workers
    code, message = run_cli("prepare", reads, "--outdir", tmp_path / "out", "--threads", "2")
    assert code == 0, message
    assert contexts and all(isinstance(context, prepare._WorkerContext) for context in contexts), contexts


@pytest.mark.parametrize("attempt", range(3))
def test_a_worker_killed_while_prepare_stops_cannot_hang_it(tmp_path, large_fasta, attempt, leftover_workers):
    """A stop, then a worker's death (the out-of-memory killer, a kill -9) while prepare waits for the
    groups in flight: the worker may die sending its result, wedging the pool's threads on half a
    message; prepare hung for ever. It ends (exit 6: the stop came first) with every worker gone."""
    out = tmp_path / "out"
    process = subprocess.Popen(CLI + ["prepare", str(large_fasta), "--outdir", str(out), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers")
    time.sleep(0.1 * attempt)
    workers = children_of(process.pid)
    leftover_workers.update(workers)
    process.send_signal(signal.SIGTERM)
    os.kill(min(workers), signal.SIGKILL)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("prepare hung after a worker died during its stop")
    assert process.returncode in (6, 137) and "Traceback" not in err, err
    assert not any(alive(pid) for pid in workers)


def test_a_stop_with_a_worker_stopped_by_sigstop_ends_all_the_same(tmp_path, large_fasta, leftover_workers):
    """A worker frozen by hand (SIGSTOP, Ctrl-Z) never finishes its group: a stop then waited for ever.
    The wait is shortened here (POOL_ABORT_SECONDS) for the test's sake."""
    (tmp_path / "sitecustomize.py").write_text("import virnucpro.prepare\nvirnucpro.prepare.POOL_ABORT_SECONDS = 2.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(CLI + ["prepare", str(large_fasta), "--outdir", str(tmp_path / "out"), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers")
    workers = children_of(process.pid)
    leftover_workers.update(workers)
    os.kill(min(workers), signal.SIGSTOP)
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("prepare waited for ever for a stopped worker")
    assert process.returncode == 6 and "Traceback" not in err, err
    assert not any(alive(pid) for pid in workers)


STOPPED_BEFORE_CLOSE = """import os, signal
import virnucpro.prepare as prepare
prepare.POOL_ABORT_SECONDS = 2.0
real = prepare.SamplePreparer.finish
def finish(self):
    while self.in_flight:
        self._apply(*self.in_flight.popleft())
    workers = sorted(getattr(self.executor, "_processes", None) or {})
    if workers:
        os.kill(workers[0], signal.SIGSTOP)
        with open(os.environ["STOPPED_WORKER_FILE"], "w") as note:
            note.write(str(workers[0]))
    return real(self)
prepare.SamplePreparer.finish = finish
"""


def test_prepare_finishes_with_every_result_in_though_a_worker_was_then_stopped_by_sigstop(tmp_path, leftover_workers):
    """A worker frozen by hand once every group was done: closing the pool waited for ever for it to
    exit. Every result is in, so it is not waited for (POOL_ABORT_SECONDS, shortened here)."""
    (tmp_path / "sitecustomize.py").write_text(STOPPED_BEFORE_CLOSE)
    stopped = tmp_path / "stopped_worker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "STOPPED_WORKER_FILE": str(stopped)}
    reads = write_fasta(tmp_path / "reads.fa", 40_000)  # three groups of records: a pool of two workers
    process = subprocess.Popen(CLI + ["prepare", str(reads), "--outdir", str(tmp_path / "out"), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("prepare waited for ever for a worker stopped after every group was done")
    finally:
        leftover_workers.update([int(stopped.read_text())] if stopped.exists() else [])
    assert stopped.exists() and process.returncode == 0, err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["sequences"] == 40_000
    assert not any(alive(pid) for pid in leftover_workers)


NO_PRCTL = """import ctypes
class _NoPrctl(ctypes.CDLL):
    def __getattr__(self, name):
        if name == "prctl":
            raise AttributeError(name)
        return super().__getattr__(name)
ctypes.CDLL = _NoPrctl
"""


@pytest.mark.parametrize("prctl", [True, False], ids=["linux", "no-prctl"])
def test_workers_die_with_a_killed_prepare(tmp_path, large_fasta, prctl, leftover_workers):
    """Where no parent-death signal exists (macOS), each worker watches for its parent's end: they
    outlived a SIGKILLed prepare there, holding the output folder's lock."""
    out, env = tmp_path / "out", dict(os.environ)
    if not prctl:
        (tmp_path / "sitecustomize.py").write_text(NO_PRCTL)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(CLI + ["prepare", str(large_fasta), "--outdir", str(out), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    wait_for(lambda: len(children_of(process.pid)) >= 2, process, "the workers")
    workers = children_of(process.pid)
    leftover_workers.update(workers)
    process.kill()
    process.communicate(timeout=60)  # the workers held the pipes too: this returns once they are gone
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)
    done = subprocess.run(CLI + ["prepare", str(large_fasta), "--outdir", str(out), "--threads", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the folder's lock went with them


def _worker_sending(pid: int) -> int | None:
    """A child of `pid` blocked writing to a pipe (sending its result), if one is."""
    for child in children_of(pid):
        try:
            if "pipe_write" in Path(f"/proc/{child}/wchan").read_text():
                return child
        except OSError:
            continue
    return None


def test_a_worker_killed_while_it_sends_its_result_is_exit_137_not_a_hang(tmp_path, large_fasta, leftover_workers):
    """Half a result in the pipe: the pool's reader waited for the rest for ever, and so did prepare."""
    process = subprocess.Popen(CLI + ["prepare", str(large_fasta), "--outdir", str(tmp_path / "out"), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, victim = time.monotonic() + 60, None
    while victim is None and process.poll() is None and time.monotonic() < deadline:
        victim = _worker_sending(process.pid)
    assert victim is not None, "no worker was seen sending a result"
    leftover_workers.update(children_of(process.pid))
    os.kill(victim, signal.SIGKILL)
    try:
        _, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("prepare hung after a worker died sending its result")
    assert process.returncode == 137 and "killed by SIGKILL" in err and "Traceback" not in err, err


def test_stop_signal_during_run_prepare_is_exit_6_and_resumable(tmp_path, tiny_models):
    out = tmp_path / "res"
    with holding(tmp_path, "run", out, "--models", str(tiny_models), "--device", "cpu") as (process, fifo):
        fifo.open_and_write(RECORD.format(0))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 6 and "SIGTERM received" in err, err
    done = subprocess.run(CLI + ["run", str(write_fasta(tmp_path / "a.fa", 2)), "--outdir", str(out),
                                 "--models", str(tiny_models), "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sequence_ids(out) == ["s0", "s1"]


# --- found by a hostile review: markers, nesting, inputs given twice, leftovers ---------------

def test_a_forged_marker_never_reaches_outside_the_folder(tmp_path, run_cli):
    victim = tmp_path / "victim.txt"
    victim.write_text("PRECIOUS")
    out = tmp_path / "prep"
    fasta = write_fasta(tmp_path / "a.fa", 2)
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    marker = json.loads((out / od.MARKER_NAME).read_text())
    for forged in ("shards/../../victim.txt", "/etc/passwd", "sequences.tsv/../../victim.txt"):
        changed = {**marker, "files": {**marker["files"], forged: [1, 1]}}
        (out / od.MARKER_NAME).write_text(json.dumps(changed))
        code, message = run_cli("prepare", fasta, "--outdir", out)
        assert code == 3 and "damaged" in message, message
    assert victim.read_text() == "PRECIOUS"


def test_an_output_inside_a_busy_run_is_refused(tmp_path, tiny_models):
    out = tmp_path / "res"
    with holding(tmp_path, "run", out, "--models", str(tiny_models), "--device", "cpu") as (first, fifo):
        nested = subprocess.run(CLI + ["prepare", str(write_fasta(tmp_path / "b.fa", 1)), "--outdir",
                                       str(out / ".virnucpro-work" / "prepared")], capture_output=True, text=True)
        assert nested.returncode == 3 and "inside" in nested.stderr, nested.stderr
        fifo.open_and_write("".join(RECORD.format(i) for i in range(3)))
        fifo.close()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert sequence_ids(out) == ["s0", "s1", "s2"]


def test_embed_out_inside_a_prepare_folder_or_onto_a_link_is_refused(tmp_path, run_cli, tiny_models):
    prep = tmp_path / "prep"
    assert run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", prep)[0] == 0
    shard = prep / "shards" / "shard_00000.tsv"
    code, message = run_cli("embed", shard, "--models", tiny_models, "--out", prep / "shards" / "new.h5")
    assert code == 3 and "inside" in message, message
    assert sorted(p.name for p in (prep / "shards").iterdir()) == ["shard_00000.tsv"]
    for checkpoints in (prep, prep / "shards"):  # its checkpoint folder too, like --out
        code, message = run_cli("embed", shard, "--models", tiny_models, "--out", tmp_path / "e.h5",
                                "--checkpoint-dir", checkpoints)
        assert code == 3 and "--checkpoint-dir" in message and str(prep) in message, message
    assert sorted(p.name for p in (prep / "shards").iterdir()) == ["shard_00000.tsv"]
    assert not (tmp_path / "e.h5").exists()
    # a review's case: the default checkpoint folder, <out>.ckpt, is checked as --checkpoint-dir is
    assert run_cli("prepare", write_fasta(tmp_path / "b.fa", 2), "--outdir", tmp_path / "z.h5.ckpt")[0] == 0
    before = sorted(path.name for path in (tmp_path / "z.h5.ckpt").rglob("*"))
    code, message = run_cli("embed", shard, "--models", tiny_models, "--out", tmp_path / "z.h5")
    said = " ".join(message.split())
    assert code == 3 and f"the checkpoint folder of --out {tmp_path / 'z.h5'}: {tmp_path / 'z.h5.ckpt'} is a virnucpro" \
        in said and "give --checkpoint-dir a folder outside it, or choose another --out" in said, message
    assert sorted(path.name for path in (tmp_path / "z.h5.ckpt").rglob("*")) == before
    assert not (tmp_path / "z.h5").exists()
    link = tmp_path / "dangling.h5"
    link.symlink_to(tmp_path / "nowhere.h5")
    code, message = run_cli("embed", shard, "--models", tiny_models, "--out", link)
    assert code == 3 and "symbolic link" in message, message
    assert link.is_symlink()


@pytest.mark.parametrize("twice", ["same path", "hard link", "stdin"])
def test_an_input_given_twice_is_refused_at_once(tmp_path, twice):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    if twice == "same path":
        args, stdin = [str(fifo), str(fifo)], None
    elif twice == "hard link":
        os.link(fifo, tmp_path / "other.fifo")
        args, stdin = [str(fifo), str(tmp_path / "other.fifo")], None
    else:
        args, stdin = ["-", "-"], RECORD.format(0)
    done = subprocess.run(CLI + ["run", *args, "--outdir", str(tmp_path / "out")], input=stdin,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "given twice" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_closed_standard_input_is_exit_3(tmp_path):
    done = subprocess.run(CLI + ["prepare", "-", "--outdir", str(tmp_path / "out")], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, preexec_fn=lambda: os.close(0))
    assert done.returncode == 3 and "standard input" in done.stderr, done.stderr


def test_a_failed_run_leaves_no_folder_it_created(tmp_path, tiny_models):
    protein = tmp_path / "protein.fa"
    protein.write_text(">p\nMEEPQSDPSVEPPLSQETFSDLWKLLPEN\n")
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    process = subprocess.Popen(CLI + ["run", str(fifo), "--outdir", str(tmp_path / "out"), "--models",
                                      str(tiny_models), "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    with open(fifo, "w") as handle:  # a stream: refused only when prepare reads it, after the claim
        handle.write(protein.read_text())
    _, err = process.communicate(timeout=300)
    assert process.returncode == 3 and "protein" in err, err
    assert not (tmp_path / "out").exists()


# --- found by a hostile review: a refused command leaves no lock file behind -------------------

def entries(folder: Path) -> dict[str, int]:
    """Name -> inode of everything in a folder (a lock file replaced by another shows)."""
    return {p.name: p.lstat().st_ino for p in folder.iterdir()}


@pytest.fixture
def prepared(tmp_path, run_cli) -> Path:
    out = tmp_path / "prep"
    assert run_cli("prepare", write_fasta(tmp_path / "p.fa", 2), "--outdir", out)[0] == 0
    return out


def fill(out: Path, before: str, run_cli, tmp_path: Path) -> None:
    """Put what a folder held before the command into it."""
    if before == "a prepare output":
        assert run_cli("prepare", write_fasta(tmp_path / "q.fa", 1), "--outdir", out)[0] == 0
        return
    out.mkdir()
    if before != "nothing":
        (out / "keep.txt").write_text("x\n")
    if before == "a file and a lock file from before":
        (out / od.LOCK_NAME).write_text("")


@pytest.mark.parametrize("before, why", [("a file", "keep.txt"), ("a file and a lock file from before", "keep.txt"),
                                         ("a prepare output", "'prepare' output"), ("nothing", "none.h5")])
def test_a_refused_or_failed_predict_leaves_an_existing_folder_as_it_was(tmp_path, run_cli, prepared, before, why):
    out = tmp_path / "mine"
    fill(out, before, run_cli, tmp_path)
    was = entries(out)
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", tmp_path / "none.h5",
                            "--outdir", out)
    assert code == 3 and why in message, message
    assert entries(out) == was  # our lock file gone again; one there before kept, the same file


def test_without_flock_a_refused_command_leaves_no_lock_files(tmp_path, run_cli, prepared, monkeypatch):
    def no_flock(_fd, _operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(od.fcntl, "flock", no_flock)
    out = tmp_path / "mine"
    fill(out, "a file", run_cli, tmp_path)
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", tmp_path / "none.h5",
                            "--outdir", out)
    assert code == 3 and "keep.txt" in message, message
    assert sorted(entries(out)) == ["keep.txt"]
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", tmp_path / "none.h5",
                            "--outdir", tmp_path / "new")
    assert code == 3 and "none.h5" in message, message
    assert not (tmp_path / "new").exists()  # a folder it created goes again once released


def test_a_lock_file_its_creator_removed_is_never_held_by_a_late_comer(tmp_path, monkeypatch):
    """The race of removing a lock file: a command opens it, its creator fails, removes it and
    exits, then the command's flock succeeds on the removed file. It must lock the path's file."""
    out = tmp_path / "res"
    out.mkdir()
    with holding(tmp_path, "prepare", out) as (first, fifo):
        late_open = os.open(out / od.LOCK_NAME, os.O_RDWR)  # the late comer's open, before the removal
        fifo.open_and_write(">p\nMEEPQSDPSVEPPLSQETFSDLWKLLPEN\n")  # protein: prepare fails, writes nothing
        fifo.close()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 3 and "protein" in err, err
    assert entries(out) == {}
    opens = iter([(late_open, False)])
    real_open = od._open_lock_file
    monkeypatch.setattr(od, "_open_lock_file", lambda lock: next(opens, None) or real_open(lock))
    with od.folder_lock(out, "--outdir") as held:
        assert os.path.samestat(os.stat(out / od.LOCK_NAME), os.fstat(held.fd))
        third = subprocess.run(CLI + ["prepare", str(write_fasta(tmp_path / "b.fa", 1)), "--outdir", str(out)],
                               capture_output=True, text=True, timeout=120)
        assert third.returncode == 3 and f"pid {os.getpid()}" in third.stderr, third.stderr


def test_a_marker_cut_short_by_a_kill_does_not_block_the_rerun(tmp_path, run_cli):
    """A kill between writing the marker's temporary file and renaming it (seen as a flaky
    test_a_killed_holder_leaves_no_stale_lock) leaves `.virnucpro.json.tmp`: ours, not foreign."""
    out = tmp_path / "res"
    out.mkdir()
    (out / (od.MARKER_NAME + ".tmp")).write_text('{"kind": "prep')
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 0, message
    assert sequence_ids(out) == ["s0", "s1"]


@pytest.mark.parametrize("raised", [MemoryError("Unable to allocate 64.0 GiB for an array"),
                                    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                                 "not enough memory: you tried to allocate 68719476736 bytes."),
                                    ImportError("libtorch_cpu.so: failed to map segment from shared object"),
                                    ImportError("\n\nIMPORTANT: PLEASE READ THIS FOR ADVICE\n\n"
                                                "Cannot allocate memory")],
                         ids=["numpy", "torch", "library under ulimit -v", "numpy's advice on many lines"])
def test_host_memory_running_out_is_said_plainly_not_reported_as_a_bug(tmp_path, run_cli, monkeypatch, raised):
    import virnucpro.prepare

    def out_of_memory(*args, **kwargs):
        raise raised

    monkeypatch.setattr(virnucpro.prepare, "prepare", out_of_memory)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nACGT\n")
    code, message = run_cli("prepare", fasta, "--outdir", tmp_path / "out")
    assert code == 137 and "out of memory: this machine's RAM, or the memory limit" in message and "bug" not in message, message
    assert "--token-budget" in message and len(message.strip().splitlines()) == 2
    assert "longest sequence needs alone" in message, "a budget cannot shrink one sequence's need"
    assert "prepare holds one record of its input at a time" in message, message


def test_fallback_lock_whose_writer_died_before_writing_it_is_taken_over_once_old(tmp_path):
    """Killed between O_EXCL and writing its holder: an empty lock file, busy while fresh, then stale."""
    folder = tmp_path / "f"
    folder.mkdir()
    lock = folder / od.FALLBACK_LOCK_NAME
    lock.write_text("")
    with pytest.raises(BadInputError, match="details are unreadable"):
        with od.exclusive_file_lock(lock, folder, "--outdir"):
            pass
    old = time.time() - od.STALE_SECONDS - 60
    os.utime(lock, (old, old))
    with od.exclusive_file_lock(lock, folder, "--outdir"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


NESTED_TOO_DEEP = "[" * 200_000


@pytest.mark.parametrize("where", ["the output folder", "a folder above it"])
def test_a_marker_nested_too_deep_is_refused_in_one_message(tmp_path, run_cli, where):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / od.MARKER_NAME).write_text(NESTED_TOO_DEEP)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nACGT\n")
    outdir = folder if where == "the output folder" else folder / "inside"
    code, message = run_cli("prepare", fasta, "--outdir", outdir)
    assert code == 3 and "Traceback" not in message and "bug" not in message, message


def test_a_prepare_manifest_nested_too_deep_is_exit_5(tmp_path):
    from virnucpro.errors import InconsistentInputsError

    (tmp_path / fmt.MANIFEST).write_text(NESTED_TOO_DEEP)
    with pytest.raises(InconsistentInputsError, match="not JSON"):
        fmt.load_manifest(tmp_path)


def test_a_message_to_a_terminal_that_is_gone_is_dropped_not_raised(monkeypatch):
    """After SIGHUP the terminal is gone: writing the exit-6 message fails with EIO, which must not
    turn the stop into a crash."""
    from virnucpro import console

    def gone(*_args, **_kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(console.err, "print", gone)
    console.error("SIGHUP received: stopped")
    console.info("progress")


HOLD_LATE = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(0.3)
os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": "h", "started": "s"}).encode(), 0)
sys.stdin.read()
"""


def test_a_refusal_while_the_holder_writes_its_details_still_names_it(tmp_path):
    """The holder writes its details just after taking the lock: a refusal in that instant said
    "its details are unreadable" (1 in 4 of racing starts in a review)."""
    folder = tmp_path / "f"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LATE, str(folder / od.LOCK_NAME)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(BadInputError, match=f"pid {holder.pid} on h"):
            with od.folder_lock(folder, "--outdir"):
                pass
    finally:
        holder.communicate("", timeout=30)


def test_lock_files_follow_the_umask_and_another_users_one_still_locks(tmp_path):
    """A group-shared models folder: the first user's lock file was 0644, so nobody else could open
    it for writing, and every later `models tiny`/`download` or fp16 copy by another user failed."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root (a file owned by another user) and setpriv")
    shared = tmp_path / "shared"
    shared.mkdir()
    old = os.umask(0o002)
    try:
        with od.folder_lock(shared, "--dest") as held:
            assert held.path.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    shared.chmod(0o777)
    lock = shared / od.LOCK_NAME
    lock.write_text("")
    lock.chmod(0o644)
    os.chown(lock, 12345, 12345)  # another user's, which we may only read
    caps = "-dac_override,-dac_read_search,-fowner"
    code = ("import sys; from pathlib import Path; from virnucpro import outdir as od\n"
            "with od.folder_lock(Path(sys.argv[1]), '--dest'): print('held')")
    done = subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-c", code,
                           str(shared)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "held\n", done.stderr


# --- found by a review of rerun sequences: a lost or damaged record, and what the refusal names ---------

RECORD_FIX = re.compile(r"echo '[^']*' > \S+")
PREPARED = [fmt.SEQUENCES, fmt.CHUNKS, f"{fmt.SHARD_DIR}/{fmt.shard_name(0)}", fmt.MANIFEST]  # a prepare's files


def test_a_finished_output_whose_record_was_lost_is_refused_naming_everything_at_once(tmp_path, run_cli):
    """A finished folder that lost `.virnucpro.json` was refused naming one file, so the user needed one
    rerun per file. Its lock file is no unfinished work: a record claiming no file would keep nothing,
    so no record fix is offered (nor to a models folder, whose manifest.json is at a name prepare writes)."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    (out / od.MARKER_NAME).unlink()
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and "neither empty nor a virnucpro output" in message, message
    assert all(name in message for name in PREPARED), message  # every file at once, and the folder they are in
    assert f"move those files, and the folder {fmt.SHARD_DIR}/ with them," in " ".join(message.split()), message
    assert not RECORD_FIX.search(message) and "was lost" not in message, message
    models = tmp_path / "models"
    assert run_cli("models", "tiny", models)[0] == 0
    code, message = run_cli("prepare", fasta, "--outdir", models)
    assert code == 3 and fmt.MANIFEST in message and not RECORD_FIX.search(message), message


def test_unfinished_work_whose_record_was_lost_is_named_last_and_offered_the_record_fix(tmp_path, run_cli):
    """A folder holding a work folder of ours (as a killed `run` leaves `.virnucpro-work`) but no record:
    the refusal names the outputs first and the work folder whole, says virnucpro cannot prove it wrote
    them (not that it did not), and offers the record fix that keeps the work."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    (out / od.MARKER_NAME).unlink()
    work = out / ".virnucpro-work" / "prepared"
    work.mkdir(parents=True)
    for i in range(12):
        (work / f"part_{i}").write_text("work\n")
    code, message = run_cli("prepare", fasta, "--outdir", out)
    flat = " ".join(message.split())
    assert code == 3 and "cannot prove it wrote" in flat and "did not write" not in flat.split(";")[0], message
    assert all(name in message for name in PREPARED), message
    assert f"{fmt.MANIFEST}, .virnucpro-work/, which" in flat and "part_" not in flat, message
    assert RECORD_FIX.search(message) and '"kind": "prepare"' in message, message
    subprocess.run(RECORD_FIX.search(message).group(0), shell=True, check=True)
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and "did not write" in message and ".virnucpro-work" not in message, message


def test_a_folder_holding_only_an_earlier_lock_and_a_users_files_is_offered_no_record_fix(tmp_path, run_cli):
    """A command killed before it wrote anything leaves its lock file in a new folder: the user's files put
    there later (even at a name prepare writes) are no virnucpro work whose record was lost."""
    out = tmp_path / "mine"
    with od.folder_lock(out, "--outdir"):
        pass  # the lock file stays, as after a kill
    names = [f"notes_{i:02}.txt" for i in range(12)]
    for name in names:
        (out / name).write_text("mine\n")
    (out / fmt.CHUNKS).write_text("mine too\n")
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 3 and all(name in message for name in names[:10]) and "and 3 more" in message, message
    assert "move those files," in message and not RECORD_FIX.search(message) and "was lost" not in message, message


def test_a_huge_folder_without_a_record_is_refused_without_walking_all_of_it(tmp_path, run_cli):
    """Every file is named (the count after the first ten), but `--outdir ~` by mistake is walked only so far."""
    out = tmp_path / "home"
    (out / "photos").mkdir(parents=True)
    for i in range(od.WALKED_MAX + 5):
        (out / "photos" / f"{i:05}.jpg").write_bytes(b"")
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 3 and f"and at least {od.WALKED_MAX - 10:,} more" in message, message
    assert "move those files, and the folder photos/ with them," in " ".join(message.split()), message


@pytest.fixture
def restored_record(tmp_path, run_cli) -> tuple[Path, Path, str]:
    """(prepare folder, its input, the refusal after the damaged record's fix was followed): the hint flow."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    (out / od.MARKER_NAME).write_text('{"kind": "prep')  # cut short by a crash
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and "damaged" in message, message
    subprocess.run(RECORD_FIX.search(message).group(0), shell=True, check=True)
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and "did not write" in message, message
    return out, fasta, message


def test_moving_what_the_refusal_after_the_record_fix_names_lets_the_rerun_work(tmp_path, run_cli, restored_record):
    """The review's sequence: damaged record, its fix, the files it named moved away; the rerun was refused
    again for the emptied shards folder, called "that file". The refusal now names the folder too."""
    out, fasta, message = restored_record
    text = " ".join(message.split())
    assert f"{fmt.SHARD_DIR}/{fmt.shard_name(0)}" in text, text
    assert f"move those files, and the folder {fmt.SHARD_DIR}/ with them," in text, text
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in (fmt.SEQUENCES, fmt.CHUNKS, fmt.MANIFEST, fmt.SHARD_DIR):
        (out / name).rename(aside / name)
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 0, message
    assert sequence_ids(out) == ["s0", "s1"]


def test_a_folder_left_empty_by_moving_its_files_is_called_a_folder(tmp_path, run_cli, restored_record):
    """Only the files moved away (not their folder): the empty folder the record does not name is refused
    as a folder, never as "that file"."""
    out, fasta, _message = restored_record
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in (fmt.SEQUENCES, fmt.CHUNKS, fmt.MANIFEST, f"{fmt.SHARD_DIR}/{fmt.shard_name(0)}"):
        (out / name).rename(aside / Path(name).name)
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and f"{fmt.SHARD_DIR}/" in message, message
    assert "move that folder" in message and "that file" not in message, message
    (out / fmt.SHARD_DIR).rmdir()
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0


HOLD_POSIX_LOCK = """import fcntl, sys, time
handle = open(sys.argv[1], "r+")
fcntl.lockf(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


@contextmanager
def pipeline_running(outdir: Path, own: list[Path]) -> Iterator[None]:
    """`outdir` as a pipeline run holds it: pipeline_info/.virnucpro-run.lock, naming the run's own folders
    there, under a POSIX lock (what Java's FileChannel.tryLock takes) of another process."""
    lock = outdir / "pipeline_info" / ".virnucpro-run.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"own_folders": [str(path) for path in own]}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_POSIX_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_command_into_a_sample_folder_of_a_running_pipeline_is_refused(tmp_path):
    """The pipeline's start-up check had passed: its publishing then replaced the command's tables (and a
    whole prepare folder) without a word. Its own tasks, in its work folder there, still write."""
    results = tmp_path / "results"
    reads = write_fasta(tmp_path / "reads.fa", 3)
    with pipeline_running(results, [results / "work"]):
        refused = subprocess.run(CLI + ["prepare", str(reads), "--outdir", str(results / "sample_a" / "prepared")],
                                 capture_output=True, text=True)
        task = subprocess.run(CLI + ["prepare", str(reads), "--outdir", str(results / "work" / "ab" / "prepared")],
                              capture_output=True, text=True)
    assert refused.returncode == 3 and "the --outdir of a run of the pipeline still going" in refused.stderr, \
        refused.stderr
    assert not (results / "sample_a").exists()
    assert task.returncode == 0, task.stderr
    after = subprocess.run(CLI + ["prepare", str(reads), "--outdir", str(results / "sample_a" / "prepared")],
                           capture_output=True, text=True)
    assert after.returncode == 0, after.stderr  # the run has ended: its folder is no longer held


def test_a_run_whose_checkpoint_folder_is_its_outdir_exempts_only_where_its_tasks_write(tmp_path):
    """`--checkpoint_dir` may be --outdir itself: the lock named it as the run's own, and a command into a
    sample's folder went ahead, its tables then replaced by the run's."""
    results = tmp_path / "results"
    reads = write_fasta(tmp_path / "reads.fa", 3)
    with pipeline_running(results, [results / "samples", results / "compile-cache", results]):
        refused = subprocess.run(CLI + ["prepare", str(reads), "--outdir", str(results / "sample_a")],
                                 capture_output=True, text=True)
        task = subprocess.run(CLI + ["prepare", str(reads), "--outdir", str(results / "samples" / "a" / "p")],
                              capture_output=True, text=True)
    assert refused.returncode == 3 and "still going" in refused.stderr, refused.stderr
    assert task.returncode == 0, task.stderr
