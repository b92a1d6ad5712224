"""Writing an embedding shard (HDF5) to storage that fails: exit 10 naming the file, the temporary
file removed, no crash and no h5py traceback (issue 9, point 11).

HDF5 reports a failed write as a RuntimeError or from an object's __del__, and its error paths can
crash the process; these tests fill a real small file system (tmpfs) so that the failure lands in
each phase of the write (creating the file, the ids, the vectors, the attributes and the close),
and run the writer in a child process, so that a crash shows as a crash.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from mount_helpers import tmpfs

from virnucpro import h5shard
from virnucpro import prepared as fmt
from virnucpro.errors import OutputWriteError

CLI = [sys.executable, "-X", "faulthandler", "-m", "virnucpro"]
RECORDS = 2000
WIDTHS = (16, 24)  # 2,000 rows: 320 KB of vectors and about 60 KB of ids
ATTRS = {"shard_index": 0, "shard_of": 1, "shard_sha256": "0" * 64, "chunk_size": 500,
         "models": {"esm2": {"name": "tiny", "sha256": "0" * 64}}, "precision": "fp32", "device": "cpu"}
WRITER = f"""
import sys
from pathlib import Path
import numpy as np
from virnucpro import h5shard
from virnucpro.errors import VirnucproError

ids = [f"read_{{i:05d}}_chunk_1F1" for i in range({RECORDS})]
def rows(start, stop):
    return np.full((stop - start, {WIDTHS[0]}), 0.5, "f4"), np.full((stop - start, {WIDTHS[1]}), 0.25, "f4")
try:
    h5shard.write_shard(Path(sys.argv[1]), ids, rows, {WIDTHS}, {ATTRS!r})
except VirnucproError as exc:
    print("error: " + str(exc), file=sys.stderr)
    sys.exit(int(exc.code))
"""


@pytest.fixture
def small_disk(tmp_path):
    """Mount a 512 KB tmpfs and return a function that fills it to leave `free` bytes."""
    with tmpfs(tmp_path / "mnt", "512k") as point:
        def leave_free(free: int) -> Path:
            with open(point / "filler", "wb") as filler:
                filler.write(b"\0" * (512 * 1024 - free))
            return point

        yield leave_free


def write_in_child(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", WRITER, str(out)],
                          capture_output=True, text=True, timeout=60)


def assert_clean_exit_10(done: subprocess.CompletedProcess, out: Path) -> None:
    """Exit 10 naming the file, one message and no traceback, nothing left behind."""
    assert done.returncode == 10, done.stderr
    assert f"cannot write {out}" in done.stderr and "disk is full" in done.stderr, done.stderr
    for noise in ("Traceback", "h5py", "HDF5", "Fatal Python error", "ref count"):
        assert noise not in done.stderr, done.stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*.tmp"))


# free bytes: none at all (creating the file), inside the ids, inside the vectors, near the end
@pytest.mark.parametrize("free_kib", [0, 4, 48, 160, 352])
def test_disk_full_while_writing_a_shard_is_exit_10_in_every_phase(small_disk, free_kib):
    disk = small_disk(free_kib * 1024)
    done = write_in_child(disk / "shard.h5")
    assert_clean_exit_10(done, disk / "shard.h5")


def test_the_same_shard_is_written_when_there_is_room(small_disk):
    disk = small_disk(480 * 1024)
    done = write_in_child(disk / "shard.h5")
    assert done.returncode == 0, done.stderr
    with h5shard.open_h5(disk / "shard.h5") as handle:
        assert handle["ids"].shape == (RECORDS,) and handle["esm2"][-1, 0] == 0.25
    assert not list(disk.glob(".shard.h5.*.tmp"))


@pytest.mark.parametrize("free_kib", [36, 48])
def test_embed_to_a_full_disk_is_exit_10_naming_the_file(small_disk, golden_prepared, tiny_models, free_kib):
    """The reported case through the command (it crashed with these sizes): room for the embed
    checkpoint and part of the HDF5 file."""
    disk = small_disk(free_kib * 1024)
    out = disk / "s.h5"
    done = subprocess.run(CLI + ["embed", str(golden_prepared / "shards" / fmt.shard_name(0)), "--models",
                                 str(tiny_models), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert_clean_exit_10(done, out)


# --- the same mechanism without a mount: a file that fails after a given number of bytes ----------

class FailingFile:
    """An unbuffered file that raises ENOSPC once `room` bytes have been written to it."""

    def __init__(self, raw, room: int):
        self.raw = raw
        self.room = room

    def write(self, data) -> int:
        if self.raw.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)


def fail_after(monkeypatch, room: int) -> None:
    """The temporary HDF5 file fills after `room` bytes."""
    new_temporary = h5shard._new_temporary

    def failing_temporary(path: Path):
        raw, tmp = new_temporary(path)
        return FailingFile(raw, room), tmp

    monkeypatch.setattr(h5shard, "_new_temporary", failing_temporary)


@pytest.mark.parametrize("room", [0, 100, 2048, 30_000, 200_000])
def test_a_write_error_in_any_phase_is_kept_and_reported_after_a_clean_close(tmp_path, monkeypatch, room):
    """HDF5 sees only writes that succeed; the first error is raised as exit 10 after the close."""
    out = tmp_path / "shard.h5"
    fail_after(monkeypatch, room)
    ids = [f"read_{i:05d}_chunk_1F1" for i in range(RECORDS)]

    def rows(start: int, stop: int):
        return np.zeros((stop - start, WIDTHS[0]), "f4"), np.zeros((stop - start, WIDTHS[1]), "f4")

    with pytest.raises(OutputWriteError, match="disk is full") as raised:
        h5shard.write_shard(out, ids, rows, WIDTHS, ATTRS)
    assert str(out) in str(raised.value)
    assert not out.exists() and not list(tmp_path.glob(".shard.h5.*.tmp"))


def test_after_a_failed_write_the_remaining_vectors_are_not_fetched(tmp_path, monkeypatch):
    """The rest of the file would only grow the in-memory copy: the writer stops at the next block."""
    fail_after(monkeypatch, 40_000)
    monkeypatch.setattr(h5shard, "ROWS_PER_WRITE", 100)
    fetched = []

    def rows(start: int, stop: int):
        fetched.append(start)
        return np.zeros((stop - start, WIDTHS[0]), "f4"), np.zeros((stop - start, WIDTHS[1]), "f4")

    with pytest.raises(OutputWriteError):
        h5shard.write_shard(tmp_path / "s.h5", [f"r{i}_chunk_1F1" for i in range(RECORDS)], rows, WIDTHS, ATTRS)
    assert 0 < len(fetched) < RECORDS // 100 // 2


def test_a_file_that_cannot_be_created_is_exit_10(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(args[0]))

    monkeypatch.setattr(h5shard, "new_temporary_file", refuse)
    with pytest.raises(OutputWriteError, match="read-only"):
        h5shard.write_shard(tmp_path / "s.h5", ["a_chunk_1F1"], lambda a, b: (np.zeros((1, 2), "f4"),) * 2,
                            (2, 2), ATTRS)


def test_a_normal_write_reads_back_exactly(tmp_path):
    """The file object path writes the same shard h5py writes to a path."""
    ids = [f"r{i}_chunk_1F1" for i in range(300)]
    vectors = np.random.default_rng(0).random((300, 40), dtype=np.float32)
    h5shard.write_shard(tmp_path / "s.h5", ids, lambda a, b: (vectors[a:b, :16], vectors[a:b, 16:]), (16, 24), ATTRS)
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        assert [v.decode() for v in handle["ids"][:]] == ids
        assert np.array_equal(np.concatenate([handle["dnabert_s"][:], handle["esm2"][:]], axis=1), vectors)
        assert handle.attrs["precision"] == "fp32"


def test_a_link_or_file_named_like_a_temporary_is_never_written_through(tmp_path):
    """The temporary HDF5 file is created exclusively under a new name: a symbolic link or a user's
    file called `OUT.tmp` beside the output is left as it was."""
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    out = tmp_path / "shard.h5"
    (tmp_path / "shard.h5.tmp").symlink_to(victim)
    ids = [f"r{i}" for i in range(RECORDS)]
    h5shard.write_shard(out, ids, lambda a, b: (np.zeros((b - a, WIDTHS[0]), np.float32),
                                                np.zeros((b - a, WIDTHS[1]), np.float32)), WIDTHS, ATTRS)
    assert victim.read_text() == "mine" and (tmp_path / "shard.h5.tmp").is_symlink()
    assert not out.is_symlink()
    with h5shard.open_h5(out) as handle:
        assert handle["ids"].shape == (RECORDS,)
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
