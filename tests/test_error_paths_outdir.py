"""Output folders on the error paths: a stop or a kill while finished files move in, a record this user
cannot read, a stop just after a temporary is made, names a file system refuses, storage that went away,
no free inodes, a disk full while the lock is written, and a permission error on a path that is read.

Each is reproduced for real where this machine allows it: a real signal sent at a real moment (an
audit hook of the command's own process sends it when the command makes the call named), real small
file systems (tmpfs, NTFS and exFAT through FUSE on a loop image), root without its permission
overrides (`setpriv`). Tests skip when the tool or the privilege is missing.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from fault_helpers import ReadsFailPast
from mount_helpers import fuse_file_system
from virnucpro import outdir as od
from virnucpro import prepared as fmt
from virnucpro.errors import ExitCode, OutputWriteError, storage_failure

CLI = [sys.executable, "-m", "virnucpro"]
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]  # root that obeys permissions

# The command line, run in a process whose audit hook sends it SIGTERM itself the first time it makes
# the call `event` on a path matching `pattern` (the call is made, then the signal is handled): a
# real signal at an exact moment. The event "created" is the moment `outdir.new_temporary_file` has
# created its file and returns (the audit event of its `os.open` comes before the file exists): a
# profile function, set from that event, sees the function return. `other_thread`: a thread that does not block
# stop signals exists, so the kernel may hand the signal to it while the main thread holds them back.
STOPPED_AT = r"""
import os, re, runpy, signal, sys, threading
event, pattern, other_thread, nth = sys.argv[1], re.compile(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
fired, seen = [], []

def send():
    fired.append(True)
    sys.stderr.write("TEST: SIGTERM sent\n")
    os.kill(os.getpid(), signal.SIGTERM)

def created(frame, what, _arg):
    if what == "return" and frame.f_code.co_name == "new_temporary_file":
        sys.setprofile(None)
        send()

def hook(name, args):
    if fired or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    if not pattern.search(os.fsdecode(args[0])):
        return
    if name == event:
        seen.append(name)
        if len(seen) == nth:
            send()
    elif event == "created" and name == "open" and len(args) > 2 and args[2] & os.O_EXCL:
        sys.setprofile(created)

sys.addaudithook(hook)
if other_thread:
    threading.Thread(target=threading.Event().wait, daemon=True).start()
sys.argv = ["virnucpro", *sys.argv[5:]]
runpy.run_module("virnucpro", run_name="__main__", alter_sys=True)
"""


def virnucpro(*args: object, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), *CLI, *map(str, args)], capture_output=True, text=True)


def stopped_at(event: str, pattern: str, *args: object, other_thread: bool = False,
               nth: int = 1) -> subprocess.CompletedProcess:
    """`virnucpro ARGS`, sent SIGTERM by its own process at the `nth` call `event` on a path matching `pattern`."""
    done = subprocess.run([sys.executable, "-c", STOPPED_AT, event, pattern, "1" if other_thread else "0", str(nth),
                           *map(str, args)], capture_output=True, text=True)
    assert "TEST: SIGTERM sent" in done.stderr, f"the moment never came: {done.stderr}"
    return done


def sample_fasta(path: Path, n: int = 6) -> Path:
    """`n` random sequences of 900 to 1,400 bp (chunk sizes 300 and 500 cut them differently)."""
    rng = random.Random(7)
    path.write_text("".join(f">q{i}\n{''.join(rng.choice('ACGT') for _ in range(rng.randint(900, 1400)))}\n"
                            for i in range(n)))
    return path


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included), by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_marker_settled(folder: Path) -> dict:
    """The folder's record of its files is final (no publish cut short) and lists what is there."""
    assert not (folder / od.MARKER_TMP_NAME).exists()
    marker = json.loads((folder / od.MARKER_NAME).read_text())
    assert "publishing" not in marker, marker
    for rel, signature in marker["files"].items():
        assert od._signature(folder / rel) == signature, rel
    return marker


# --- 1. a stop while finished files move in -------------------------------------------------------

def leaning_classifier(tiny_models: Path, path: Path) -> Path:
    """The tiny 500 classifier with its virus logit raised: other scores and calls than the tiny one's."""
    import torch

    from virnucpro.classifier import load_classifier, save_original_way
    from virnucpro.models.store import locate

    model = load_classifier(locate(tiny_models).classifier(500))
    with torch.no_grad():
        model.output_layer.bias[1] += 3.0
    save_original_way(model, path)
    return path


@pytest.mark.parametrize("other_thread", [False, True], ids=["one-thread", "another-thread"])
def test_a_stop_while_predict_moves_its_files_in_leaves_the_whole_new_result(tmp_path, small_sample, tiny_models,
                                                                             other_thread):
    from virnucpro.predict import OUTPUTS, RUN_INFO, predict

    prepared, h5 = small_sample
    classifier = leaning_classifier(tiny_models, tmp_path / "leaning.pth")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    predict(prepared, [h5], out, models=tiny_models)
    old = folder_files(out)
    predict(prepared, [h5], fresh, classifier=classifier, models=tiny_models)
    new = folder_files(fresh)
    tables = [name for name in OUTPUTS if name not in (RUN_INFO, "report.html")]
    assert all(old[name] != new[name] for name in tables), "the two classifiers must give other tables"

    done = stopped_at("os.rename", r"/\.predict\.partial/prediction_results\.txt$", "predict", "--prepared", prepared,
                      "--embeddings", h5, "--outdir", out, "--classifier", classifier, "--models", tiny_models,
                      other_thread=other_thread)
    assert done.returncode == ExitCode.INTERRUPTED and "SIGTERM received" in done.stderr, done.stderr
    assert "nothing to rerun: the outputs are complete" in done.stderr, done.stderr
    now = folder_files(out)
    assert all(now[name] == new[name] for name in tables), done.stderr
    assert all(now[name] != old[name] for name in ("report.html", RUN_INFO))  # these name their times
    assert str(classifier) in now[RUN_INFO].decode()
    assert set(assert_marker_settled(out)["files"]) == set(OUTPUTS)
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, od.LOCK_NAME, od.MARKER_NAME])


def test_a_stop_while_prepare_moves_its_files_in_leaves_the_whole_new_result(tmp_path):
    from virnucpro.prepare import prepare

    fasta = sample_fasta(tmp_path / "in.fa")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    prepare([fasta], out, chunk_size=500, shard_size=4)
    prepare([fasta], fresh, chunk_size=300, shard_size=4)
    new = {rel: data for rel, data in folder_files(fresh).items() if not rel.startswith(".virnucpro")}
    assert folder_files(out)[fmt.SEQUENCES] != new[fmt.SEQUENCES]

    done = stopped_at("os.rename", r"/\.virnucpro-partial/sequences\.tsv$", "prepare", fasta, "--outdir", out,
                      "--chunk-size", "300", "--shard-size", "4", "--threads", "1")
    assert done.returncode == ExitCode.INTERRUPTED and "SIGTERM received" in done.stderr, done.stderr
    assert f"in place in {out}" in done.stderr and "nothing to rerun" in done.stderr, done.stderr
    now = {rel: data for rel, data in folder_files(out).items() if not rel.startswith(".virnucpro")}
    assert now == new, done.stderr  # every table, every shard and the manifest: none of the chunk-500 output
    assert_marker_settled(out)
    again = virnucpro("prepare", fasta, "--outdir", out, "--chunk-size", "300", "--shard-size", "4")
    assert again.returncode == 0, again.stderr


# --- 2. a record this user cannot read --------------------------------------------------------------

def require_root_without_overrides(probe: Path) -> None:
    """Skip unless root can drop its permission overrides here (`setpriv`) and then cannot read `probe`."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to run a process that obeys file permissions")
    if subprocess.run([*NO_DAC, "cat", str(probe)], capture_output=True).returncode == 0:
        pytest.skip("setpriv cannot take root's permission overrides away here")


@pytest.fixture
def unreadable_record(tmp_path) -> tuple[Path, Path]:
    """(a prepare output whose record of its files this user cannot read, an input)."""
    from virnucpro.prepare import prepare

    fasta = sample_fasta(tmp_path / "in.fa", 2)
    out = tmp_path / "out"
    prepare([fasta], out)
    os.chmod(out / od.MARKER_NAME, 0)
    require_root_without_overrides(out / od.MARKER_NAME)
    return out, fasta


def test_a_record_without_read_permission_is_named_as_such_never_as_damaged(unreadable_record):
    out, fasta = unreadable_record
    marker = out / od.MARKER_NAME
    before = marker.read_bytes()
    done = virnucpro("prepare", fasta, "--outdir", out, prefix=NO_DAC)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert f"cannot read {marker}: permission denied" in done.stderr, done.stderr
    assert "damaged" not in done.stderr and "echo" not in done.stderr, done.stderr
    assert marker.read_bytes() == before


def test_an_output_inside_a_folder_whose_record_cannot_be_read_is_refused_saying_why(unreadable_record):
    out, fasta = unreadable_record
    done = virnucpro("prepare", fasta, "--outdir", out / "inner", prefix=NO_DAC)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert "cannot be read: permission denied" in done.stderr and "damaged" not in done.stderr, done.stderr
    assert not (out / "inner").exists()


# --- 3. a stop just after a temporary file is made --------------------------------------------------

def test_a_stop_just_after_a_temporary_is_made_leaves_no_temporary(tmp_path):
    """`models tiny` writes each model file through `outdir.write_atomically`."""
    target = tmp_path / "tiny"
    done = stopped_at("created", rf"^{tmp_path}/tiny/\.500_model_tiny\.pth\.[^/]*\.tmp$", "models", "tiny",
                      target)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert not [p for p in target.rglob("*.tmp")], sorted(map(str, target.rglob("*")))


# --- 4. names the file system refuses ---------------------------------------------------------------

@pytest.mark.parametrize("kind, char", [("ntfs", ":"), ("ntfs", "?"), ("ntfs", "*"), ("exfat", ":")])
def test_embed_out_with_a_character_the_file_system_refuses_is_exit_3(tmp_path, small_sample, tiny_models, kind,
                                                                       char):
    prepared, _ = small_sample
    with fuse_file_system(kind, tmp_path) as disk:
        out = disk / f"a{char}b.h5"
        done = virnucpro("embed", prepared / "shards" / fmt.shard_name(0), "--models", tiny_models, "--out", out,
                         "--device", "cpu")
        assert done.returncode == ExitCode.BAD_INPUT, done.stderr
        assert f"does not allow {char!r} in names" in done.stderr and str(disk) in done.stderr, done.stderr
        assert "bug" not in done.stderr and not list(disk.iterdir()), done.stderr


@pytest.mark.parametrize("kind", ["ntfs", "exfat"])
def test_an_outdir_with_a_character_the_file_system_refuses_is_exit_3_saying_so(tmp_path, kind):
    fasta = sample_fasta(tmp_path / "in.fa", 1)
    with fuse_file_system(kind, tmp_path) as disk:
        done = virnucpro("prepare", fasta, "--outdir", disk / "a:b")
        assert done.returncode == ExitCode.BAD_INPUT, done.stderr
        assert "does not allow ':' in names" in done.stderr and "bug" not in done.stderr, done.stderr
        assert not list(disk.iterdir())


# --- 5. storage that went away ----------------------------------------------------------------------

@contextmanager
def dropped_mount(tmp_path: Path) -> Iterator[Path]:
    """A FUSE mount (NTFS by ntfs-3g) whose daemon was killed: every access is ENOTCONN ("Transport
    endpoint is not connected"), as on an sshfs or gcsfuse mount that dropped."""
    if os.geteuid() != 0 or not Path("/dev/fuse").exists() or not (shutil.which("mkntfs") and shutil.which("ntfs-3g")):
        pytest.skip("needs root, /dev/fuse, mkntfs and ntfs-3g")
    image, point = tmp_path / "ntfs.img", tmp_path / "gone"
    point.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(32 * 2**20)
    subprocess.run(["mkntfs", "-q", "-F", "-f", str(image)], check=True, capture_output=True)
    daemon = subprocess.Popen(["ntfs-3g", "-o", "no_detach", str(image), str(point)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(point):
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.skip("cannot mount NTFS through FUSE here")
            time.sleep(0.02)
        daemon.kill()
        daemon.wait()
        with pytest.raises(OSError) as gone:
            os.stat(point / "x")
        assert gone.value.errno == errno.ENOTCONN
        yield point
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_an_outdir_on_a_mount_that_dropped_is_exit_10_saying_the_storage_went_away(tmp_path):
    fasta = sample_fasta(tmp_path / "in.fa", 1)
    with dropped_mount(tmp_path) as gone:
        done = virnucpro("prepare", fasta, "--outdir", gone / "out")
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr
    assert str(gone / "out") in done.stderr and "went away" in done.stderr and "rerun" in done.stderr, done.stderr
    assert "bug" not in done.stderr


@pytest.mark.parametrize("code", [errno.ENOTCONN, errno.ESTALE])
def test_storage_that_went_away_is_exit_10_naming_the_path(tmp_path, code):
    """ESTALE (an NFS file handle gone stale) cannot be made here without an NFS server: the error
    the kernel gives is mapped as it is raised."""
    path = tmp_path / "out" / "table.tsv"
    failure = storage_failure(OSError(code, os.strerror(code), str(path)), tmp_path / "out")
    assert isinstance(failure, OutputWriteError) and failure.code == ExitCode.OUTPUT_WRITE
    assert str(path) in str(failure) and "went away" in str(failure) and "rerun" in str(failure)


# --- 6. no free inodes ------------------------------------------------------------------------------

@contextmanager
def tmpfs_with(point: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `point` with `options` while the block runs (root only; skipped elsewhere)."""
    point.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True)


def test_no_free_inodes_is_said_so_not_a_full_disk(tmp_path):
    fasta = sample_fasta(tmp_path / "in.fa", 1)
    with tmpfs_with(tmp_path / "mnt", "size=4m,nr_inodes=8") as disk:
        for i in range(100):
            try:
                (disk / f"f{i}").touch()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        assert os.statvfs(disk).f_bfree > 0 and os.statvfs(disk).f_favail == 0
        done = virnucpro("prepare", fasta, "--outdir", disk / "out")
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr
    assert "no free inodes" in done.stderr and "df -i" in done.stderr and str(disk / "out") in done.stderr, done.stderr
    assert "disk is full" not in done.stderr


# --- 7. a full disk while the lock or the record is written -----------------------------------------

@pytest.mark.parametrize("pages_free, named", [(0, od.LOCK_NAME), (1, od.MARKER_NAME)],
                         ids=["lock-file", "record"])
def test_a_full_disk_before_anything_is_published_leaves_no_folder(tmp_path, pages_free, named):
    """With no page free the lock file's details cannot be written; with one, they can but the
    record (`.virnucpro.json`) cannot: either way exit 10 naming that file, and the folder the
    command made is gone with everything it put there."""
    fasta = sample_fasta(tmp_path / "in.fa", 1)
    with tmpfs_with(tmp_path / "mnt", "size=1m") as disk:
        (disk / "t1").mkdir()
        (disk / "spare").write_bytes(b"\0" * 4096 * pages_free)
        with open(disk / "fill", "wb", buffering=0) as handle, pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 4096)
        (disk / "spare").unlink()
        done = virnucpro("prepare", fasta, "--outdir", disk / "t1" / "newdir")
        assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr
        assert f"{disk / 't1' / 'newdir' / named}: the disk is full" in done.stderr, done.stderr
        assert not (disk / "t1" / "newdir").exists(), sorted(map(str, (disk / "t1").rglob("*")))


def test_a_full_disk_when_a_rerun_publishes_leaves_the_earlier_set_whole(tmp_path):
    """A rerun whose results are staged when the disk fills up: the record of the files about to move
    in cannot be written, so exit 10, and the earlier complete set is still there, unchanged, as the
    record says (it was dropped before that record was written). With space again, the rerun publishes."""
    tables = ("table.tsv", "run_info.json")

    def staged(out: Path, tag: str) -> Path:
        staging = out / ".staged"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in tables:
            (staging / name).write_text(f"{tag} {name}\n")
        return staging

    with tmpfs_with(tmp_path / "mnt", "size=1m") as disk:
        out = disk / "out"
        with od.claim(out, "predict", tables) as output:
            output.publish(staged(out, "old"), tables)
        with od.claim(out, "predict", tables) as output, pytest.raises(OutputWriteError) as full:
            staging = staged(out, "new")
            with open(disk / "fill", "wb", buffering=0) as handle, pytest.raises(OSError):
                while True:
                    handle.write(b"\0" * 4096)
            output.publish(staging, tables)
        assert full.value.code == ExitCode.OUTPUT_WRITE and "disk is full" in str(full.value), full.value
        assert {name: (out / name).read_text() for name in tables} == {name: f"old {name}\n" for name in tables}
        assert_marker_settled(out)
        (disk / "fill").unlink()
        with od.claim(out, "predict", tables) as output:
            output.publish(staged(out, "new"), tables)
        assert {name: (out / name).read_text() for name in tables} == {name: f"new {name}\n" for name in tables}


# --- 8. a permission error on a path that is only read ----------------------------------------------

@pytest.fixture
def unenterable(tmp_path, small_sample) -> Path:
    """A folder root without its permission overrides cannot enter, holding an embedding shard."""
    folder = tmp_path / "closed"
    folder.mkdir()
    shutil.copy(small_sample[1], folder / "s.h5")
    os.chmod(folder, 0)
    try:
        require_root_without_overrides(folder / "s.h5")
        yield folder
    finally:
        os.chmod(folder, 0o755)


def test_an_input_that_cannot_be_reached_is_not_called_an_output_it_cannot_write(tmp_path, unenterable, small_sample,
                                                                                  tiny_models):
    """The embedding shard's reader lets the PermissionError through to the command line."""
    done = virnucpro("predict", "--prepared", small_sample[0], "--embeddings", unenterable / "s.h5", "--outdir",
                     tmp_path / "out", "--models", tiny_models, prefix=NO_DAC)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert str(unenterable / "s.h5") in done.stderr and "permission denied" in done.stderr.lower(), done.stderr
    assert "cannot write" not in done.stderr and "bug" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_an_outdir_that_cannot_be_reached_is_still_a_write_that_failed(tmp_path, unenterable):
    done = virnucpro("prepare", sample_fasta(tmp_path / "in.fa", 1), "--outdir", unenterable / "out", prefix=NO_DAC)
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr
    assert f"cannot write {unenterable / 'out'}: permission denied" in done.stderr, done.stderr


@pytest.fixture
def command_writes(tmp_path):
    """The command line's note of the outputs of the command running: `embed --out emb/s.h5` and its
    checkpoint folder, put back empty after the test."""
    from virnucpro import cli

    cli._writes(tmp_path / "ckpt", file=tmp_path / "emb" / "s.h5")
    yield cli
    cli._written.clear()


@pytest.mark.parametrize("code, rel, exit_code, said", [
    (errno.EACCES, "closed/in.tsv", ExitCode.BAD_INPUT, "cannot access {path}: permission denied"),
    (errno.EPERM, "closed", ExitCode.BAD_INPUT, "cannot access {path}: permission denied"),
    (errno.EIO, "closed/in.tsv", ExitCode.OUTPUT_WRITE, "cannot access {path}: an I/O error occurred"),
    (errno.EACCES, "emb/s.h5", ExitCode.OUTPUT_WRITE, "cannot write {path}: permission denied"),
    (errno.EACCES, "emb/.s.h5.lock", ExitCode.OUTPUT_WRITE, "cannot write {path}: permission denied"),
    (errno.EACCES, "emb/s.h5.ckpt/key", ExitCode.OUTPUT_WRITE, "cannot write {path}: permission denied"),
    (errno.EACCES, "ckpt/key/part", ExitCode.OUTPUT_WRITE, "cannot write {path}: permission denied"),
    (errno.EACCES, "emb/s.h5x", ExitCode.BAD_INPUT, "cannot access {path}: permission denied"),
    (errno.ENOSPC, "closed/any", ExitCode.OUTPUT_WRITE, "cannot write {path}: the disk is full"),
])
def test_a_storage_failure_no_command_named_says_write_only_of_a_write(tmp_path, command_writes, code, rel,
                                                                       exit_code, said):
    """What reaches the command line unnamed, as the kernel reports it (errno, its text, the path): a
    permission error is a failed write only on a path the command writes; elsewhere it is a path this
    user cannot reach, exit 3 like a missing one."""
    path = tmp_path / rel
    failure = command_writes._unnamed_storage_failure(OSError(code, os.strerror(code), str(path)))
    assert failure.code == exit_code and said.format(path=path) in str(failure), str(failure)


def test_clean_up_after_a_stop_is_not_stopped_again_but_a_new_stop_in_a_block_is_raised():
    """A reviewer's case: after Ctrl-C, `HashCache.save` in a `finally` wrote its file through a
    deferred block, which raised the stop already being handled, so the cache was never saved."""
    from virnucpro.errors import InterruptedByUser, stop_signals_deferred, stop_signals_exit_interrupted

    saved = []
    with pytest.raises(InterruptedByUser):
        with stop_signals_exit_interrupted():
            try:
                signal.raise_signal(signal.SIGTERM)
            finally:
                with stop_signals_deferred():
                    written = "cache"
                saved.append(written)  # the save goes on past its deferred block
    assert saved == ["cache"]
    with pytest.raises(InterruptedByUser):
        with stop_signals_exit_interrupted():
            with stop_signals_deferred():
                signal.raise_signal(signal.SIGTERM)
                saved.append("whole block")
    assert saved == ["cache", "whole block"]


def test_a_stop_inside_a_swallowing_callback_prints_no_traceback_and_still_stops():
    """A chaos review's case: SIGHUP landing in an import-lock callback printed "Exception ignored
    in ..." and a traceback before the stop's one message. The interpreter swallows what a __del__
    raises; the stop stays recorded and ends the command (exit 6) at the next check; other
    exceptions a __del__ raises are still reported. (In a process of its own: pytest replaces the
    interpreter's hook for such exceptions.)"""
    script = (
        "import signal\n"
        "from virnucpro.errors import InterruptedByUser, stop_signals_exit_interrupted\n"
        "class StoppedWhileCollected:\n"
        "    def __del__(self):\n"
        "        signal.raise_signal(signal.SIGTERM)\n"
        "class FailsWhileCollected:\n"
        "    def __del__(self):\n"
        "        raise ValueError('a bug of its own')\n"
        "try:\n"
        "    with stop_signals_exit_interrupted():\n"
        "        FailsWhileCollected()\n"
        "        StoppedWhileCollected()\n"
        "        print('went on')\n"
        "except InterruptedByUser:\n"
        "    print('stopped')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["went", "on", "stopped"], (done.stdout, done.stderr)
    assert "InterruptedByUser" not in done.stderr and "SIGTERM" not in done.stderr, done.stderr
    assert "a bug of its own" in done.stderr, done.stderr


def coding_reads(path: Path, n: int) -> Path:
    """`n` coding-like reads c0, c1, ... (each with ORFs, so each run embeds something)."""
    path.write_text("".join(f">c{i}\n{'GCTGCAAAA' * (60 + i)}\n" for i in range(n)))
    return path


def test_a_stop_while_run_moves_its_files_in_leaves_its_tables_with_its_own_embeddings(tmp_path, tiny_models):
    """A reviewer's case: `run --keep-embeddings` published predict's files, then embeddings/ in a
    second move; a stop between left this run's tables beside the earlier run's embeddings."""
    import h5py

    out = tmp_path / "out"
    common = ["--models", tiny_models, "--device", "cpu", "--threads", "1", "--keep-embeddings", "--outdir", out]
    assert virnucpro("run", coding_reads(tmp_path / "six.fa", 6), *common).returncode == 0
    done = stopped_at("os.rename", r"prediction_results\.txt$", "run", coding_reads(tmp_path / "two.fa", 2), *common)
    assert done.returncode == ExitCode.INTERRUPTED and "SIGTERM received" in done.stderr, done.stderr
    assert "two.fa" in (out / "run_info.json").read_text()
    shards = sorted((out / "embeddings").glob("*.h5"))
    with h5py.File(shards[0], "r") as shard:
        records = {orf.decode().split("_")[0] for orf in shard["ids"][:]}
    assert len(shards) == 1 and records == {"c0", "c1"}, records  # the two records' ORFs, not the six's
    assert_marker_settled(out)
    # the set was whole when the stop was acted on: it says so, and the work folder went as after a success
    assert "nothing to rerun: the outputs are complete" in done.stderr, done.stderr
    assert not (out / ".virnucpro-work").exists()


@pytest.mark.parametrize("event, pattern", [
    ("os.remove", r"virnucpro-work/embeddings/shard_00000\.h5$"),  # run removing its work folder
    ("os.rmdir", r"/\.predict\.partial$"),  # predict's staging folder going
    ("os.rmdir", r"/\.virnucpro-work$"),  # the last removal of all
], ids=["work-embeddings", "predict-staging", "work-folder"])
def test_a_stop_after_run_published_says_complete_and_the_clean_up_finishes(event, pattern, tmp_path, tiny_models):
    """A reviewer's case: a stop during the clean-up after the outputs were in place asked for a rerun, and
    left the work folder (or predict's staging folder) behind."""
    out = tmp_path / "out"
    done = stopped_at(event, pattern, "run", coding_reads(tmp_path / "two.fa", 2), "--models", tiny_models,
                      "--device", "cpu", "--threads", "1", "--outdir", out)
    assert done.returncode == ExitCode.INTERRUPTED and "nothing to rerun: the outputs are complete" in done.stderr, \
        done.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == sorted([od.LOCK_NAME, od.MARKER_NAME])
    assert "two.fa" in (out / "run_info.json").read_text()
    assert_marker_settled(out)


def test_a_stop_while_runs_prepare_moves_in_is_a_stop_of_the_run_which_its_rerun_resumes(tmp_path, tiny_models):
    """The prepare inside `run` is whole when a stop arrives as its files move into the work folder, but
    the run is not: the stop says to rerun, and the rerun reuses that prepare."""
    out, reads = tmp_path / "out", coding_reads(tmp_path / "two.fa", 2)
    common = ["--models", tiny_models, "--device", "cpu", "--threads", "1", "--outdir", out]
    # the second write of the work folder's record: the one listing the files about to move in
    done = stopped_at("os.rename", r"virnucpro-work/prepared/\.virnucpro\.json\.tmp$", "run", reads, *common, nth=2)
    assert done.returncode == ExitCode.INTERRUPTED and "rerun the same command to resume" in done.stderr, done.stderr
    assert "outputs are complete" not in done.stderr and not (out / "prediction_results.txt").exists()
    again = virnucpro("run", reads, *common)
    assert again.returncode == 0 and "prepare: already done for these inputs" in again.stderr, again.stderr


# --- a kill while run moves its files in -----------------------------------------------------------------

# Code that SIGKILLs its own process just before its `kill_at`-th step (a rename, link or removal of a name,
# each a moment another state is on disk): steps are counted from `arm()`, or from the first step after a
# rename or link that lands a name matching `after`. A rename into a new name calls libc's renameat2, which
# no audit event shows: it is counted through the one module global that names it, then made as it is.
KILLER = r"""
import os, re, signal, sys
from virnucpro import outdir as _od

_state = {"armed": False, "steps": 0, "kill_at": 0, "after": None}
_STEPS = {"os.rename", "os.remove", "os.rmdir", "os.link"}

def arm(kill_at, after=None):
    _state.update(armed=after is None, kill_at=kill_at, after=after and re.compile(after))

def _step(landed=None):
    if _state["armed"]:
        _state["steps"] += 1
        if _state["steps"] == _state["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
    elif landed is not None and _state["after"] is not None and _state["after"].search(landed):
        _state["armed"] = True

def _hook(event, args):
    if event in _STEPS:
        _step(os.fsdecode(args[1]) if event in ("os.rename", "os.link") else None)

_renameat2 = _od._renameat2
if _renameat2 is not None:
    def _counted(olddirfd, old, newdirfd, new, flags):
        _step(os.fsdecode(new))
        return _renameat2(olddirfd, old, newdirfd, new, flags)
    _od._renameat2 = _counted
sys.addaudithook(_hook)
"""

# `virnucpro ARGS`, SIGKILLed at the first step after the one that moved `after` in (see KILLER).
KILLED_AFTER = KILLER + r"""
import runpy
arm(1, sys.argv[1])
sys.argv = ["virnucpro", *sys.argv[2:]]
runpy.run_module("virnucpro", run_name="__main__", alter_sys=True)
"""

# What `run` publishes, written as run writes it (predict's files staged, the embeddings in the work folder),
# then moved in by the real `OutputFolder` under a real claim: argv OUT TAG SHARDS KEEP KILL_AT. Every file
# holds TAG, so the files of two runs tell apart; KILL_AT 0 never kills.
TABLES = ("prediction_results.txt", "chunks.tsv", "run_info.json")
PUBLISHED = KILLER + r"""
import shutil
from pathlib import Path
out, tag, shards, keep = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4] == "keep"
kill_at, tables = int(sys.argv[5]), sys.argv[6].split(",")
with _od.claim(out, "run", ("embeddings", *tables)) as output:
    staging, work = out / ".staged", out / ".work"
    for folder in (staging, work):
        shutil.rmtree(folder, ignore_errors=True)
    staging.mkdir()
    (work / "embeddings").mkdir(parents=True)
    for name in tables:
        (staging / name).write_text(tag)
    for shard in shards:
        (work / "embeddings" / shard).write_text(tag)
    output.with_next_publish(work if keep else None, ["embeddings"])
    arm(kill_at)
    output.publish(staging, tables)
print("steps", _state["steps"])
"""


def published(out: Path, tag: str, shards: list[str], keep: bool, kill_at: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PUBLISHED, out, tag, ",".join(shards), "keep" if keep else "drop",
                           str(kill_at), ",".join(TABLES)], capture_output=True, text=True)


def assert_a_complete_set_is_one_runs(out: Path, shards: dict[str, list[str]], keeps: dict[str, bool]) -> None:
    """Where run_info.json is, every table and every embedding beside it is that run's (`shards`, `keeps`: by tag)."""
    if not (out / "run_info.json").exists():
        return
    tag = (out / "run_info.json").read_text()
    assert {name: (out / name).read_text() for name in TABLES} == dict.fromkeys(TABLES, tag)
    kept = out / "embeddings"
    embeddings = {p.name: p.read_text() for p in kept.iterdir()} if kept.exists() else {}
    assert embeddings == (dict.fromkeys(shards[tag], tag) if keeps[tag] else {}), (tag, embeddings)


@pytest.mark.parametrize("keep", [True, False], ids=["embeddings kept", "embeddings removed"])
def test_a_kill_at_any_step_of_a_publish_never_leaves_run_info_beside_another_runs_embeddings(tmp_path, keep):
    """A reviewer's case (a SIGKILL, which nothing defers): run_info.json, the mark of a complete set, landed
    before the embeddings moved in (or the earlier ones were removed), so a kill between left this run's
    tables beside the earlier run's embeddings. Killed before each step in turn: whenever run_info.json is
    there, all beside it is its run's, and the rerun (its record kept sound at every step) completes."""
    shards, keeps = {"old": ["s0.h5", "s1.h5"], "new": ["s0.h5", "s2.h5"]}, {"old": True, "new": keep}
    base = tmp_path / "base"
    assert published(base, "old", shards["old"], True).returncode == 0
    kill_at = 0
    while True:
        kill_at += 1
        out = tmp_path / f"k{kill_at}"
        shutil.copytree(base, out)  # times kept: the record still proves each file ours
        done = published(out, "new", shards["new"], keep, kill_at)
        if done.returncode == 0:
            break
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert_a_complete_set_is_one_runs(out, shards, keeps)
        again = published(out, "new", shards["new"], keep)
        assert again.returncode == 0, (kill_at, again.stderr)
        assert (out / "run_info.json").read_text() == "new"
        assert_a_complete_set_is_one_runs(out, shards, keeps)
        assert_marker_settled(out)
    assert done.stdout.split() == ["steps", str(kill_at - 1)], done.stdout  # killed once before each step
    assert_a_complete_set_is_one_runs(out, shards, keeps)


def test_a_kill_just_after_run_moved_run_info_in_leaves_its_own_embeddings_beside_it(tmp_path, tiny_models):
    """The same with a real `run --keep-embeddings`, killed at the first step after run_info.json landed."""
    import h5py

    out = tmp_path / "out"
    common = ["--models", tiny_models, "--device", "cpu", "--threads", "1", "--keep-embeddings", "--outdir", out]
    assert virnucpro("run", coding_reads(tmp_path / "six.fa", 6), *common).returncode == 0
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER, r"/run_info\.json$", "run",
                             *map(str, [coding_reads(tmp_path / "two.fa", 2), *common])], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "two.fa" in (out / "run_info.json").read_text()
    shards = sorted((out / "embeddings").glob("*.h5"))
    with h5py.File(shards[0], "r") as shard:
        records = {orf.decode().split("_")[0] for orf in shard["ids"][:]}
    assert len(shards) == 1 and records == {"c0", "c1"}, records  # the two records' ORFs, not the six's
    rerun = virnucpro("run", tmp_path / "two.fa", *common)
    assert rerun.returncode == 0, rerun.stderr
    assert_marker_settled(out)


MARKER_OF_ANOTHER = """
import sys
from pathlib import Path
from virnucpro import outdir as od
try:
    od.OutputFolder(Path(sys.argv[1]), "run", [])._write_marker()
except od.OutputWriteError as exc:
    print(f"exit {int(exc.code)}: {exc}")
"""


def test_a_marker_that_cannot_be_replaced_leaves_no_temporary_behind(tmp_path):
    """In a sticky folder, another user's marker cannot be renamed over: the temporary stayed, named in
    the error, and blocked its owner's next run for good (which may not remove it either)."""
    from tests.permission_helpers import unprivileged
    prefix = unprivileged()
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    os.chown(folder, 5432, 5432)  # neither the folder nor the marker is ours: the sticky bit applies
    (folder / od.MARKER_NAME).write_text('{"kind": "run", "files": {}}\n')
    os.chown(folder / od.MARKER_NAME, 4321, 4321)
    done = subprocess.run([*prefix, sys.executable, "-c", MARKER_OF_ANOTHER, str(folder)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert done.stdout.startswith(f"exit {int(ExitCode.OUTPUT_WRITE)}: cannot write {folder / od.MARKER_NAME}:"), \
        done.stdout + done.stderr
    assert sorted(p.name for p in folder.iterdir()) == [od.MARKER_NAME]


@pytest.mark.parametrize("blocker", ["file", "dangling link"])
def test_an_output_path_through_a_file_or_a_dangling_link_names_that_part(tmp_path, run_cli, golden_prepared,
                                                                          tiny_models, blocker):
    """A reviewer's cases: "cannot create --outdir x/sub: Not a directory, fix: choose a writable
    location" (the same for --checkpoint-dir) sent users looking for a permission."""
    part = tmp_path / "part"
    if blocker == "file":
        part.write_text("x")
        said, fix = f"{part} on its way is a file, not a folder", "choose another path"
    else:
        part.symlink_to(tmp_path / "gone")
        said, fix = f"{part} on its way is a symbolic link to a missing path ({tmp_path / 'gone'})", "create the folder"
    reads = tmp_path / "r.fa"
    reads.write_text(">a\nATGAAACCCGGGTTTAAA\n")
    code, message = run_cli("prepare", reads, "--outdir", part / "sub")
    assert code == 3 and f"cannot create --outdir {part / 'sub'}: {said}" in message and fix in message, message
    shard = golden_prepared / "shards" / "shard_00000.tsv"
    code, message = run_cli("embed", shard, "--models", tiny_models, "--out", tmp_path / "s.h5", "--device", "cpu",
                            "--checkpoint-dir", part / "ck")
    assert code == 3 and said in message and "writable" not in message, message


@pytest.mark.parametrize("earlier, listed", [
    (False, "out/shards"),  # listing what was published, to record it: the record left the shard out
    (True, "out/.virnucpro-partial/shards"),  # merging into an earlier output: the new shard was removed unmoved
])
def test_a_folder_that_cannot_be_listed_while_prepare_publishes_is_a_failed_write(tmp_path, run_cli, monkeypatch,
                                                                                  earlier, listed):
    """os.walk skips a folder it cannot list: prepare said it succeeded over a folder whose manifest named
    a shard it did not hold, or whose record left its shard out (its rerun refused the folder). Exit 10
    naming the folder; the rerun then publishes a whole result."""
    out = tmp_path / "out"
    if earlier:
        assert run_cli("prepare", write_reads(tmp_path / "first.fa", 6), "--outdir", out)[0] == 0
    real = os.scandir

    def failing(path="."):
        if str(path) == str(tmp_path / listed):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(path)

    reads = write_reads(tmp_path / "second.fa", 3)
    monkeypatch.setattr(os, "scandir", failing)
    code, message = run_cli("prepare", reads, "--outdir", out)
    monkeypatch.undo()
    assert code == ExitCode.OUTPUT_WRITE and f"{tmp_path / listed}: an I/O error occurred" in message, message
    code, message = run_cli("prepare", reads, "--outdir", out)
    assert code == 0, message
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["sequences"] == 3, manifest
    fmt.check_files(out, manifest)


def write_reads(path: Path, count: int) -> Path:
    """`count` coding reads."""
    path.write_text("".join(f">r{i}\n{'ATGAAACCCGGGTTT' * (20 + i)}TAA\n" for i in range(count)))
    return path


@pytest.mark.parametrize("code, words", [(errno.EIO, "an I/O error occurred"),
                                         (errno.ESTALE, "the storage went away under this command")])
def test_a_storage_failure_reading_a_prepare_folder_is_said_so_not_called_damage(tmp_path, run_cli, monkeypatch,
                                                                                 small_sample, tiny_models, code,
                                                                                 words):
    """An I/O error is no damaged folder: "rerun prepare into a new folder" (exit 5) was the wrong fix."""
    prepared, shard = small_sample
    real = os.open

    def failing(path, *args, **kwargs):
        if str(path).endswith(fmt.SEQUENCES):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing)
    code_seen, message = run_cli("predict", "--prepared", prepared, "--embeddings", shard, "--outdir", tmp_path / "o",
                                 "--models", tiny_models)
    monkeypatch.undo()
    assert code_seen == ExitCode.BAD_INPUT and f"{fmt.SEQUENCES}: {words}" in message, message
    assert "rerun `virnucpro prepare`" not in message, message


def test_a_folder_in_the_way_that_this_user_cannot_list_is_named_not_a_failed_write(tmp_path, run_cli, monkeypatch):
    """Naming a stranger's files in an --outdir (a mount's lost+found, another user's private folder): an
    unlistable folder among them made the refusal exit 10, "fix the permissions" of a folder never
    written to. Exit 3 naming what is in the way."""
    out = tmp_path / "out"
    (out / "locked").mkdir(parents=True)
    (out / "note.txt").write_text("mine")
    real = os.scandir

    def denied(path="."):
        if str(path) == str(out / "locked"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    code, message = run_cli("prepare", write_reads(tmp_path / "r.fa", 2), "--outdir", out)
    assert code == ExitCode.BAD_INPUT and "which virnucpro did not write" in message, message
    assert "note.txt" in message and "permission denied" not in message, message


@pytest.mark.parametrize("good", [600, 4000, 20_000])
def test_an_embedding_shard_the_storage_fails_to_read_is_said_so_not_called_damaged(tmp_path, run_cli, monkeypatch,
                                                                                   small_sample, tiny_models, good):
    """Its seal, attributes or rows: an I/O error was "not a valid virnucpro embedding shard" or "cannot be
    read to the end ... rerun `virnucpro embed`" (exit 5): hours of GPU work redone for a flaky disk."""
    from virnucpro import h5shard

    prepared, shard = small_sample
    real = h5shard.open_regular
    monkeypatch.setattr(h5shard, "open_regular", lambda path, *args: ReadsFailPast(real(path, *args), good))
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", shard, "--outdir", tmp_path / "o",
                            "--models", tiny_models)
    assert code == ExitCode.BAD_INPUT and f"cannot read {shard}: an I/O error occurred" in message, message
    assert "rerun `virnucpro embed`" not in message and "damaged" not in message, message


@pytest.mark.parametrize("failing_open", [1, 2])  # its hash, then its records
def test_a_prepare_shard_the_storage_fails_to_read_part_way_is_an_input_not_read(tmp_path, run_cli, monkeypatch,
                                                                                 small_sample, tiny_models,
                                                                                 failing_open):
    """Past its first lines, a failed read was "cannot write ... choose another output location" (exit 10),
    or, for EAGAIN, a crash report. Each of embed's reads of the shard fails in turn."""
    from virnucpro import prepared as prepared_module

    prepared, _ = small_sample
    shard = prepared / "shards" / fmt.shard_name(0)
    real, opens = prepared_module.open_regular, []
    good = shard.stat().st_size - 20  # the last record's line

    def opened(path, *args):
        opens.append(path)
        handle = real(path, *args)
        return ReadsFailPast(handle, good) if len(opens) == failing_open else handle

    monkeypatch.setattr(prepared_module, "open_regular", opened)
    code, message = run_cli("embed", shard, "--out", tmp_path / "e.h5", "--models", tiny_models, "--device", "cpu")
    assert code == ExitCode.BAD_INPUT and f"cannot read {shard}: an I/O error occurred" in message, message
    assert "cannot write" not in message, message


def test_a_storage_failure_no_table_names_is_not_sent_to_fix_permissions():
    """EAGAIN while sealing an output said "fix the permissions"."""
    from virnucpro.errors import storage_hint

    assert "permissions" not in storage_hint(OSError(errno.EAGAIN, "Resource temporarily unavailable"))
    assert "permissions" in storage_hint(OSError(errno.EACCES, "Permission denied"))
