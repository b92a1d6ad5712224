"""Hostile storage around the outputs: no usable /dev/shm for prepare's worker processes, and names
too long for the file system (an --out name near NAME_MAX, an --outdir near PATH_MAX)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from virnucpro.errors import BadInputError, ExitCode, output_errors, storage_error
from virnucpro.prepare import prepare

TABLES = ("sequences.tsv", "chunks.tsv", "shards/shard_00000.tsv", "shards/shard_00003.tsv")


# --- prepare without a usable /dev/shm --------------------------------------------------------

class _NoSemaphores:
    """Stands for `_multiprocessing` where sem_open fails as it does without a usable /dev/shm: an
    OSError carrying no file name."""

    def __init__(self, code: int):
        self.code = code

    def SemLock(self, *args, **kwargs):  # noqa: N802 - the name multiprocessing calls
        raise OSError(self.code, os.strerror(self.code))


def _feed_fifo(source: Path, fifo: Path) -> threading.Thread:
    """Write `source` into the FIFO `fifo` from a thread (prepare reads it once, as a pipe)."""
    def write() -> None:
        with open(fifo, "wb") as out:
            out.write(source.read_bytes())
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_prepare_falls_back_to_this_process_without_semaphores(reference_dir, tmp_path, monkeypatch, capsys,
                                                                code):
    """Worker processes that cannot start (sem_open fails: /dev/shm missing, read-only, root-only or
    full) leave prepare in this process, with one warning naming /dev/shm; the outputs are those of a
    one-thread run, and a pipe read once loses and repeats no record."""
    import multiprocessing.synchronize

    import virnucpro.seqio

    source = reference_dir / "golden/mixed.fa"
    monkeypatch.setattr(virnucpro.seqio, "BLOCK", 8192)  # many record groups: workers would be used
    prepare([source], tmp_path / "t1", chunk_size=300, shard_size=100, threads=1)
    capsys.readouterr()
    monkeypatch.setattr(multiprocessing.synchronize, "_multiprocessing", _NoSemaphores(code))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = _feed_fifo(source, fifo)
    manifest = prepare([fifo], tmp_path / "t3", chunk_size=300, shard_size=100, threads=3)
    writer.join(timeout=10)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "/dev/shm" in err and "slower" in err, err
    one_thread = json.loads((tmp_path / "t1" / "manifest.json").read_text())
    assert manifest["inputs"][0]["records"] == one_thread["inputs"][0]["records"] > 0
    assert manifest["inputs"][0]["sha256"] == one_thread["inputs"][0]["sha256"]
    assert (manifest["counts"], manifest["shards"]) == (one_thread["counts"], one_thread["shards"])
    for name in TABLES:
        assert (tmp_path / "t1" / name).read_bytes() == (tmp_path / "t3" / name).read_bytes(), name


def test_prepare_without_semaphores_by_default_threads_succeeds(reference_dir, tmp_path, monkeypatch, run_cli):
    """The default --threads (every CPU) meets the same missing /dev/shm: exit 0, not exit 1 or 10."""
    import multiprocessing.synchronize

    import virnucpro.prepare
    import virnucpro.seqio

    monkeypatch.setattr(virnucpro.seqio, "BLOCK", 8192)
    monkeypatch.setattr(virnucpro.prepare, "available_cpus", lambda: 4)
    monkeypatch.setattr(multiprocessing.synchronize, "_multiprocessing", _NoSemaphores(errno.ENOENT))
    code, err = run_cli("prepare", reference_dir / "golden/mixed.fa", "--outdir", tmp_path / "p")
    assert code == 0, err
    assert "/dev/shm" in err and "bug" not in err, err


def _can_mount_private_shm() -> bool:
    """Whether this test may mount a tmpfs over /dev/shm in a mount namespace of its own (root, unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro,size=4k tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


def _random_fasta(path: Path, megabytes: float) -> None:
    """A FASTA of random 5 kb records, big enough that prepare hands groups to worker processes."""
    rng = random.Random(7)
    with open(path, "w") as out:
        for number in range(int(megabytes * 1e6 / 5000)):
            out.write(f">r{number}\n{''.join(rng.choices('ACGT', k=5000))}\n")


@pytest.mark.skipif(not _can_mount_private_shm(), reason="needs root and unshare to hide /dev/shm")
def test_prepare_under_a_read_only_dev_shm_succeeds(tmp_path):
    """The reviewer's reproduction, for real: a read-only tmpfs over /dev/shm (docker --ipc=none and
    some sandboxes) made a writable --outdir 'read-only' (exit 10)."""
    source = tmp_path / "big.fa"
    _random_fasta(source, 2.5)
    command = (f"mount -t tmpfs -o ro,size=4k tmpfs /dev/shm && exec {sys.executable} -m virnucpro prepare "
               f"{source} --threads 2 --outdir {tmp_path / 'shm'}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "/dev/shm" in done.stderr and "slower" in done.stderr, done.stderr
    prepare([source], tmp_path / "one", threads=1)
    for name in ("sequences.tsv", "chunks.tsv", "shards/shard_00000.tsv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "shm" / name).read_bytes(), name


# --- names too long for the file system --------------------------------------------------------

def test_storage_error_knows_a_name_too_long():
    """ENAMETOOLONG is the storage's answer to the path chosen, as the OS or HDF5's text gives it."""
    assert "too long" in storage_error(OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "x"))
    hdf5 = OSError(f"Unable to create file (unable to open file: name = 'x', errno = {errno.ENAMETOOLONG}, "
                   f"error message = '{os.strerror(errno.ENAMETOOLONG)}')")
    assert "too long" in storage_error(hdf5)


def test_output_errors_make_a_name_too_long_exit_3_naming_it(tmp_path):
    """A name too long is exit 3 (docs/contracts.md) naming the path, with a fix about the name, not
    about free space."""
    name = str(tmp_path / ("a" * 300))
    with pytest.raises(BadInputError) as raised:
        with output_errors(tmp_path):
            open(name, "w")
    assert raised.value.code == ExitCode.BAD_INPUT
    text = str(raised.value)
    assert name in text and "file name is too long" in text and "300 bytes" in text, text
    assert "shorter" in text and "free space" not in text, text


def test_output_errors_tell_a_path_too_long_from_a_name(tmp_path):
    """A path over PATH_MAX whose names each fit is said to be a path too long (a shallower folder)."""
    deep = str(tmp_path) + "/" + "/".join(["d" * 200] * 21)
    with pytest.raises(BadInputError) as raised:
        with output_errors(tmp_path):
            open(deep, "w")
    assert "path is too long" in str(raised.value) and "shallower" in str(raised.value), str(raised.value)


@pytest.mark.parametrize("length", [242, 246, 250, 255])
def test_embed_out_name_too_long_for_derived_names_is_exit_3_at_once(golden_prepared, tiny_models, tmp_path,
                                                                     run_cli, length):
    """Legal --out names whose derived names (`.NAME.lock`, `.NAME.XXXXXXXX.tmp`, `NAME.ckpt`) pass the
    file system's limit: exit 3 before any embedding (was exit 1, or exit 10 once all was computed),
    and nothing left beside it."""
    out = tmp_path / "out" / ("a" * (length - 3) + ".h5")
    out.parent.mkdir()
    code, err = run_cli("embed", golden_prepared / "shards/shard_00000.tsv", "--models", tiny_models,
                        "--out", out, "--device", "cpu")
    assert code == ExitCode.BAD_INPUT, err
    assert "file name is too long" in err and "free space" not in err and "bug" not in err, err
    assert "computed" not in err, err  # refused before the models ran
    assert list(out.parent.iterdir()) == []


def test_embed_out_name_that_fits_its_derived_names_still_works(golden_prepared, tiny_models, tmp_path, run_cli):
    """The longest name whose temporary name fits (255 - 14 bytes) embeds as before."""
    out = tmp_path / ("a" * 238 + ".h5")
    code, err = run_cli("embed", golden_prepared / "shards/shard_00000.tsv", "--models", tiny_models,
                        "--out", out, "--device", "cpu")
    assert code == 0, err
    assert out.is_file()


def _deep_folder(root: Path, length: int) -> Path:
    """A folder under `root` whose path is `length` bytes long (made of 200-byte names)."""
    folder = root
    while len(os.fsencode(str(folder))) + 201 < length:
        folder = folder / ("d" * 200)
    folder = folder / ("e" * (length - len(os.fsencode(str(folder))) - 1))
    folder.mkdir(parents=True)
    return folder


def test_prepare_outdir_near_path_max_is_exit_3(reference_dir, tmp_path, run_cli):
    """An --outdir that exists but whose staged files pass PATH_MAX: exit 3 naming the path (was exit 1,
    a bug report), and the folder left as it was found."""
    outdir = _deep_folder(tmp_path, 4070)
    code, err = run_cli("prepare", reference_dir / "golden/mixed.fa", "--outdir", outdir, "--threads", "1")
    assert code == ExitCode.BAD_INPUT, err
    assert "path is too long" in err and "bug" not in err and "free space" not in err, err
    assert list(outdir.iterdir()) == []


def test_a_name_too_long_reported_by_text_only_does_not_blame_a_short_path(tmp_path):
    """HDF5 reports ENAMETOOLONG in its text, without a file name: the message stays true of the folder
    it names (no "path too long" for a short path), still exit 3."""
    hdf5 = OSError(f"Unable to create file (errno = {errno.ENAMETOOLONG}, error message = "
                   f"'{os.strerror(errno.ENAMETOOLONG)}')")
    with pytest.raises(BadInputError) as raised:
        with output_errors(tmp_path):
            raise hdf5
    text = str(raised.value)
    assert str(tmp_path) in text and "too long" in text and "bytes" not in text, text  # no limit claimed


def test_embed_checkpoint_dir_near_path_max_is_exit_3(golden_prepared, tiny_models, tmp_path, run_cli):
    """A --checkpoint-dir whose part files pass PATH_MAX: exit 3 naming the path, not exit 10 with
    "free space" (the name, not the disk, is what to change)."""
    checkpoints = _deep_folder(tmp_path, 4000)
    code, err = run_cli("embed", golden_prepared / "shards/shard_00000.tsv", "--models", tiny_models,
                        "--out", tmp_path / "s.h5", "--device", "cpu", "--checkpoint-dir", checkpoints,
                        "--checkpoint-every", "1")
    assert code == ExitCode.BAD_INPUT, err
    assert "too long" in err and "free space" not in err and "bug" not in err, err


@pytest.mark.parametrize("writer", ["h5shard", "download", "cli"])
def test_every_write_error_maps_a_name_too_long_to_exit_3(tmp_path, writer, monkeypatch, run_cli):
    """The writers that build their own storage errors (the HDF5 file, a model download, the CLI's
    last resort) say a name is too long with exit 3, as output_errors does."""
    from virnucpro import h5shard
    from virnucpro.models import download

    failure = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(tmp_path / ("n" * 300)))
    if writer == "cli":
        monkeypatch.setattr("virnucpro.cli.limit_threads", lambda *args, **kwargs: (_ for _ in ()).throw(failure))
        fasta = tmp_path / "a.fa"
        fasta.write_text(">a\nACGT\n")
        code, err = run_cli("prepare", fasta, "--outdir", tmp_path / "out")
        assert code == ExitCode.BAD_INPUT and "too long" in err and "free space" not in err, err
        return
    made = h5shard._write_failed(tmp_path / "x.h5", failure) if writer == "h5shard" else \
        download._write_error(tmp_path / "x.pt", failure)
    assert made.code == ExitCode.BAD_INPUT and "file name is too long" in str(made), str(made)


@pytest.mark.parametrize("forks_allowed", [0, 1])
def test_prepare_falls_back_to_this_process_when_forks_fail(reference_dir, tmp_path, monkeypatch, capsys,
                                                            forks_allowed):
    """A limit on processes (`ulimit -u`, a pids limit) fails a worker's fork with EAGAIN, before any
    worker started or after one did: prepare goes on in this process, one warning, outputs those of a
    one-thread run, no worker left behind (it was exit 1, a bug report)."""
    import multiprocessing

    import virnucpro.seqio

    source = reference_dir / "golden/mixed.fa"
    monkeypatch.setattr(virnucpro.seqio, "BLOCK", 8192)  # many record groups: workers would be used
    prepare([source], tmp_path / "t1", chunk_size=300, shard_size=100, threads=1)
    capsys.readouterr()
    real_fork, forks = os.fork, []

    def limited_fork():
        forks.append(1)
        if len(forks) > forks_allowed:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real_fork()

    earlier = set(multiprocessing.active_children())  # another test's, not this prepare's
    monkeypatch.setattr(os, "fork", limited_fork)
    manifest = prepare([source], tmp_path / "t3", chunk_size=300, shard_size=100, threads=3)
    monkeypatch.setattr(os, "fork", real_fork)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "limit on processes" in err and "slower" in err, err
    assert not set(multiprocessing.active_children()) - earlier
    one_thread = json.loads((tmp_path / "t1" / "manifest.json").read_text())
    assert (manifest["counts"], manifest["shards"]) == (one_thread["counts"], one_thread["shards"])
    for name in TABLES:
        assert (tmp_path / "t1" / name).read_bytes() == (tmp_path / "t3" / name).read_bytes(), name


@pytest.mark.parametrize("command", ["prepare", "run --models", "models check", "offline variable", "predict"])
def test_a_name_too_long_that_is_only_read_is_exit_3_with_the_same_words(tmp_path, run_cli, monkeypatch,
                                                                          golden_prepared, reference_dir, command):
    """An input, a models folder or an embedding file named beyond NAME_MAX: exit 3 "cannot use ...:
    the file name is too long", everywhere (it said "cannot write" of inputs, and was exit 4 "chmod
    u+r" for a models folder)."""
    long = tmp_path / ("a" * 300)
    fasta = reference_dir / "golden" / "mixed.fa"
    args = {"prepare": ["prepare", f"{long}.fa", "--outdir", tmp_path / "out"],
            "run --models": ["run", fasta, "--models", long, "--outdir", tmp_path / "out"],
            "models check": ["models", "check", long],
            "offline variable": ["run", fasta, "--outdir", tmp_path / "out", "--offline"],
            "predict": ["predict", "--prepared", golden_prepared, "--embeddings", f"{long}.h5",
                        "--outdir", tmp_path / "out"]}[command]
    monkeypatch.setenv("VIRNUCPRO_MODELS", str(long))
    code, err = run_cli(*args)
    assert code == ExitCode.BAD_INPUT, err
    assert "cannot use" in err and "file name is too long" in err and "shorter name" in err, err
    assert "cannot write" not in err and "chmod" not in err and "permission" not in err, err
    assert not (tmp_path / "out").exists()
