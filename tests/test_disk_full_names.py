"""A full disk names the file it hit, not only the output folder, with a fix for a full disk; a
predict or prepare that fails so over an earlier complete output says that output is as it was (and
it is, byte for byte). A failed write, flush or close carries no file name of its own: the outputs
are opened through `open_output`, which adds it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mount_helpers import tmpfs
from test_outdir import write_fasta
from virnucpro import prepare as prepare_module
from virnucpro.errors import ExitCode, naming, open_output, storage_failure

CLI = [sys.executable, "-m", "virnucpro"]
DISK_FULL = re.compile(r"cannot write (\S+): the disk is full")


def named_file(stderr: str) -> Path:
    """The file a disk-full error names."""
    found = DISK_FULL.search(stderr)
    assert found, stderr
    return Path(found.group(1))


def digests(folder: Path) -> dict[str, str]:
    """Every file's checksum under `folder`, our lock file aside (it is rewritten by each command)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".virnucpro.lock"}


def leave_free(point: Path, free: int) -> None:
    """Fill the file system at `point` until about `free` bytes are left."""
    available = shutil.disk_usage(point).free
    with open(point / "filler", "wb") as handle:
        try:
            handle.write(b"\0" * max(0, available - free))
            handle.flush()
        except OSError as exc:  # the last page may not fit: full is what was asked for
            if exc.errno != errno.ENOSPC or free:
                raise


@pytest.fixture
def full_disk(tmp_path):
    """A file system with no free space left (a tmpfs, when this machine lets us mount one)."""
    with tmpfs(tmp_path / "mnt", "64k") as disk:
        leave_free(disk, 0)
        yield disk


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_failed_write_names_its_file(full_disk, mode):
    target = full_disk / "table.tsv"
    data = "x" * 100_000 if mode == "w" else b"x" * 100_000
    with pytest.raises(OSError) as failed:
        with open_output(target, mode) as out:
            out.write(data)
            out.flush()
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(target)
    error = storage_failure(failed.value, full_disk)
    assert error.code == ExitCode.OUTPUT_WRITE and f"cannot write {target}: the disk is full" in str(error), error
    assert "df -h" in error.hint and "permissions" not in error.hint, error.hint


def test_a_failed_close_names_its_file(full_disk):
    """A few bytes stay in the buffer until the file is closed: the close is what fails."""
    out = open_output(full_disk / "small.tsv", "w")
    out.write("x")
    with pytest.raises(OSError) as failed:
        out.close()
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(full_disk / "small.tsv")


@pytest.mark.parametrize("lines", [False, True])
def test_the_end_of_a_with_block_closes_and_names_the_file(full_disk, lines):
    """A mutation review's case: a `with` block that did not close left the last buffered rows to
    garbage collection, which drops its error: an empty table and no failure."""
    with pytest.raises(OSError) as failed:
        with open_output(full_disk / "table.tsv", "w") as out:
            out.writelines(["row\n"] * 100) if lines else out.write("row\n" * 100)
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(full_disk / "table.tsv")


@pytest.mark.parametrize("code, hint, not_in", [
    (errno.ENOSPC, "`df -h`", "permissions"), (errno.EDQUOT, "`quota -s`", "df -h"),
    (errno.EROFS, "writable file system", "free space"), (errno.EACCES, "fix the permissions", "free space"),
    (errno.EIO, "`dmesg`", "free space"), (errno.EFBIG, "ulimit -f unlimited", "free space")])
def test_each_storage_failure_has_its_own_fix(code, hint, not_in):
    error = storage_failure(OSError(code, os.strerror(code), "/x/t.tsv"), Path("/x"))
    assert hint in error.hint and not_in not in error.hint, error.hint
    assert error.lack_of_space == (code in (errno.ENOSPC, errno.EDQUOT))


def test_naming_keeps_a_name_the_error_has():
    with pytest.raises(OSError) as failed, naming(Path("/elsewhere")):
        raise OSError(errno.ENOSPC, "No space left on device", "/the/file")
    assert failed.value.filename == "/the/file"


@pytest.mark.parametrize("hashes", [1, 1000])
def test_prepare_names_the_id_bucket_it_could_not_write(full_disk, monkeypatch, hashes):
    """The id registry's spill files were written with numpy's `tofile`: a full disk raised an
    OSError without errno (a crash, not exit 10) or, for a few ids, was not noticed at all, and the
    duplicate check then ran on ids that were never written."""
    registry = prepare_module.IdRegistry(full_disk.parent / "ids")
    monkeypatch.setattr(prepare_module.IdRegistry, "_bucket", lambda self, index: full_disk / f"ids_{index:02d}.bin")
    registry.add_many(prepare_module.array("q", range(hashes)))
    with pytest.raises(OSError) as failed:
        registry._spill()
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(full_disk / "ids_00.bin")


def test_prepare_on_a_full_disk_names_the_file(tmp_path):
    fasta = write_fasta(tmp_path / "big.fa", 20_000)  # ~1 MB of ORF records: more than the 256 KB disk
    with tmpfs(tmp_path / "mnt", "256k") as disk:
        done = subprocess.run(CLI + ["prepare", str(fasta), "--outdir", str(disk / "out"), "--threads", "1"],
                              capture_output=True, text=True)
    assert done.returncode == 10 and "Traceback" not in done.stderr, done.stderr
    hit = named_file(done.stderr)
    assert (disk / "out") in hit.parents and not hit.name.startswith(".virnucpro"), done.stderr  # a file, no folder
    assert "earlier output" not in done.stderr, done.stderr  # there was none


def test_predict_on_a_full_disk_keeps_the_earlier_output_and_says_so(tmp_path, golden_prepared,
                                                                    golden_embeddings, tiny_models):
    command = CLI + ["predict", "--prepared", str(golden_prepared), "--embeddings",
                     *map(str, golden_embeddings), "--models", str(tiny_models)]
    with tmpfs(tmp_path / "mnt", "4m") as disk:
        out = disk / "out"
        first = subprocess.run(command + ["--outdir", str(out)], capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        before = digests(out)
        leave_free(disk, sum(p.stat().st_size for p in out.iterdir()) // 3)
        again = subprocess.run(command + ["--outdir", str(out)], capture_output=True, text=True)
        assert again.returncode == 10 and "Traceback" not in again.stderr, again.stderr
        assert out in named_file(again.stderr).parents and named_file(again.stderr).name != ".predict.partial"
        assert f"the earlier output in {out} is as it was" in again.stderr, again.stderr
        assert digests(out) == before
        os.unlink(disk / "filler")
        rerun = subprocess.run(command + ["--outdir", str(out)], capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr


NO_INODES = "no free inodes are left on the file system"


@pytest.mark.parametrize("inodes", [8, 12, 20])
def test_prepare_out_of_inodes_says_so_though_its_clean_up_freed_them(tmp_path, inodes):
    """A disk-full review's case: the inode check ran after prepare had removed its partial files, which
    freed the inodes again, so a full inode table was called a full disk, with a fix (free space) that
    does not help."""
    fasta = write_fasta(tmp_path / "big.fa", 400)
    with tmpfs(tmp_path / "mnt", "4m", inodes=inodes) as disk:
        done = subprocess.run(CLI + ["prepare", str(fasta), "--outdir", str(disk / "p"), "--shard-size", "20",
                                     "--threads", "1"], capture_output=True, text=True)
    assert done.returncode == 10 and NO_INODES in done.stderr and "disk is full" not in done.stderr, done.stderr
    assert "remove files there" in done.stderr, done.stderr


def test_embed_out_of_inodes_for_a_checkpoint_part_says_so(tmp_path, golden_prepared, tiny_models):
    """The part's temporary file was removed before the inode check."""
    shard = golden_prepared / "shards" / "shard_00000.tsv"
    with tmpfs(tmp_path / "mnt", "4m", inodes=7) as disk:
        done = subprocess.run(CLI + ["embed", str(shard), "--out", str(disk / "e.h5"), "--models", str(tiny_models),
                                     "--device", "cpu", "--threads", "1", "--checkpoint-every", "10"],
                              capture_output=True, text=True)
    assert done.returncode == 10 and NO_INODES in done.stderr and "disk is full" not in done.stderr, done.stderr


@pytest.mark.parametrize("code, promised", [(errno.EROFS, False), (errno.EIO, False), (errno.EFBIG, False),
                                            (errno.EDQUOT, True)])
def test_run_promises_a_resume_only_where_freeing_space_is_the_fix(tmp_path, run_cli, reference_dir, tiny_models,
                                                                   monkeypatch, code, promised):
    """A mutation review's case: any storage failure in predict could have promised the resume that
    only follows freeing space (a read-only file system stays read-only on the rerun)."""
    from virnucpro import predict as predict_module

    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(predict_module, "write_tables", failing)
    code_, message = run_cli("run", reference_dir / "golden/mixed.fa", "--outdir", tmp_path / "r", "--models",
                             tiny_models, "--device", "cpu", "--threads", "1")
    assert code_ == 10 and ("a rerun with the same --outdir then resumes" in " ".join(message.split())) == promised


def test_run_failing_for_space_after_embedding_says_the_rerun_resumes(tmp_path, run_cli, reference_dir, tiny_models,
                                                                      monkeypatch):
    """A disk-full review's case: a run whose predict step found the disk full kept its embeddings for
    the rerun, but its message did not say so."""
    from virnucpro import predict as predict_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    command = ("run", reference_dir / "golden/mixed.fa", "--outdir", tmp_path / "r", "--models", tiny_models,
               "--device", "cpu", "--threads", "1")
    with monkeypatch.context() as patch:
        patch.setattr(predict_module, "write_tables", full)
        code, message = run_cli(*command)
    assert code == 10 and "the disk is full" in message, message
    said = " ".join(message.split())
    assert f"resumes from the embeddings kept in {tmp_path / 'r' / '.virnucpro-work'}\n" in message.replace("\n  ", " ") + "\n"
    code, message = run_cli(*command)
    assert code == 0 and "already done, reusing it" in message, message


def test_run_failing_for_space_before_its_own_embeddings_promises_no_resume(tmp_path, run_cli, reference_dir,
                                                                            tiny_models, monkeypatch):
    """An own-fix review's case: embeddings an earlier run (of other inputs) left in the work folder
    made a later run's failure in prepare say that the rerun resumes from them; it embeds anew."""
    from virnucpro import predict as predict_module
    from virnucpro import prepare as prepare_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    common = ("--outdir", tmp_path / "r", "--models", tiny_models, "--device", "cpu", "--threads", "1")
    with monkeypatch.context() as patch:
        patch.setattr(predict_module, "write_tables", full)
        code, message = run_cli("run", reference_dir / "golden/mixed.fa", *common)
    assert code == 10 and list((tmp_path / "r" / ".virnucpro-work" / "embeddings").glob("*.h5")), message
    other = write_fasta(tmp_path / "other.fa", 30)
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module.SamplePreparer, "finish", full)
        code, message = run_cli("run", other, *common)
    assert code == 10 and "the disk is full" in message and "resumes" not in message, message


@pytest.mark.parametrize("checkpoint_dir", [False, True])
def test_embed_that_cannot_lock_its_checkpoint_folder_leaves_no_folder_it_made(tmp_path, golden_prepared, tiny_models,
                                                                                checkpoint_dir):
    """A disk-full review's case: with one page free, the --out lock took it, the checkpoint folder's
    lock file could not be written, and the checkpoint folders made for it stayed behind, empty; a
    --checkpoint-dir the user made stays."""
    shard = golden_prepared / "shards" / "shard_00000.tsv"
    with tmpfs(tmp_path / "mnt", "64k") as disk:
        (disk / "mine").mkdir()
        leave_free(disk, 4096)
        extra = ["--checkpoint-dir", str(disk / "mine")] if checkpoint_dir else []
        done = subprocess.run(CLI + ["embed", str(shard), "--out", str(disk / "e.h5"), "--models", str(tiny_models),
                                     "--device", "cpu", "--threads", "1", *extra], capture_output=True, text=True)
        assert done.returncode == 10 and "the disk is full" in done.stderr, done.stderr
        assert "/.virnucpro.lock: the disk is full" in done.stderr, done.stderr  # the checkpoint folder's lock
        assert sorted(p.name for p in disk.rglob("*")) == ["filler", "mine"], done.stderr


def test_embed_failing_at_its_first_part_promises_no_parts(tmp_path, run_cli, golden_prepared, tiny_models,
                                                           monkeypatch):
    """An own-fix review's case: the first part's failure said "a rerun resumes from the parts already
    written", with none written (and the checkpoint folder then removed)."""
    import virnucpro.embed

    def full(handle, arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(virnucpro.embed, "_write_npz", full)
    code, message = run_cli("embed", golden_prepared / "shards" / "shard_00000.tsv", "--models", tiny_models,
                            "--out", tmp_path / "s.h5", "--device", "cpu", "--checkpoint-every", 5, "--threads", 1)
    assert code == 10 and ".part_00000.tmp.npz: the disk is full" in message, message
    assert "resumes" not in message and not (tmp_path / "s.h5.ckpt").exists(), message


@pytest.mark.parametrize("earlier", ["a table deleted", "a publish cut short"])
def test_a_full_disk_over_an_incomplete_earlier_output_claims_nothing_of_it(tmp_path, golden_prepared,
                                                                           golden_embeddings, tiny_models, earlier):
    """An own-fix review's case: "the earlier output ... is as it was" was said of a folder whose record
    named a complete set that was no longer there (files deleted, or a publish killed midway)."""
    command = CLI + ["predict", "--prepared", str(golden_prepared), "--embeddings",
                     *map(str, golden_embeddings), "--models", str(tiny_models)]
    with tmpfs(tmp_path / "mnt", "4m") as disk:
        out = disk / "out"
        assert subprocess.run(command + ["--outdir", str(out)], capture_output=True).returncode == 0
        if earlier == "a table deleted":
            (out / "chunks.tsv").unlink()
        else:
            marker = json.loads((out / ".virnucpro.json").read_text())
            marker["publishing"] = {"chunks.tsv": marker["files"]["chunks.tsv"]}
            (out / ".virnucpro.json").write_text(json.dumps(marker))
        leave_free(disk, 4096)
        again = subprocess.run(command + ["--outdir", str(out)], capture_output=True, text=True)
    assert again.returncode == 10 and "the disk is full" in again.stderr, again.stderr
    assert "earlier output" not in again.stderr, again.stderr


PREDICT_FILES = {"prediction_results.txt", "prediction_results_highestscore.csv", "chunks.tsv", "sequences.tsv",
                 "report.html", "run_info.json", ".virnucpro.json", ".virnucpro.json.tmp"}


def test_predict_names_the_file_wherever_the_disk_fills(tmp_path, run_cli, golden_prepared, golden_embeddings,
                                                        tiny_models):
    """A mutation review's case: only the first write was checked; a later one that names no file (the
    report, run_info.json, the highest-score table's runs, the record) fell back to the staging folder.
    The disk fills at each page of predict's outputs in turn: every failure names one of its files."""
    args = ["--prepared", golden_prepared, "--embeddings", *golden_embeddings, "--models", tiny_models]
    with tmpfs(tmp_path / "mnt", "2m") as disk:
        assert run_cli("predict", *args, "--outdir", disk / "first")[0] == 0
        pages = -(-sum(p.stat().st_size for p in (disk / "first").rglob("*") if p.is_file()) // 4096) + 8
        shutil.rmtree(disk / "first")
        named = set()
        for free in range(0, pages):
            leave_free(disk, free * 4096)
            code, message = run_cli("predict", *args, "--outdir", disk / f"o{free}")
            os.unlink(disk / "filler")
            if code == 0:
                break
            assert code == 10, message
            hit = named_file(message)
            assert hit.name in PREDICT_FILES or hit.name.startswith("run_") or hit.name.endswith(".lock"), message
            named.add(hit.name)
    assert code == 0 and len(named) >= 3, named  # the sweep met several files, then had room enough


def _inode_sweep(tmp_path, command) -> int:
    """`command(folder)` on file systems of 2, 3, ... inodes until it succeeds: every failure before
    must say that the inodes, not the space, ran out. Returns how many failed."""
    for inodes in range(2, 60):
        with tmpfs(tmp_path / f"mnt{inodes}", "8m", inodes=inodes) as disk:
            code, message = command(disk)
        if code == 0:
            return inodes - 2
        assert code == 10 and NO_INODES in message and "disk is full" not in message, (inodes, message)
    raise AssertionError("never succeeded")


def test_predict_and_run_out_of_inodes_say_so_wherever_it_happens(tmp_path, run_cli, golden_prepared,
                                                                  golden_embeddings, tiny_models, reference_dir):
    """A mutation review's case: predict's and run's clean-ups freed the inodes before the check, and
    embed's HDF5 file and the folder's record were never checked: "the disk is full" again."""
    predict = ["predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings, "--models", tiny_models]
    assert _inode_sweep(tmp_path / "p", lambda disk: run_cli(*predict, "--outdir", disk / "o")) >= 3
    run = ["run", write_fasta(tmp_path / "in.fa", 30), "--models", tiny_models, "--device", "cpu", "--threads", "1"]
    assert _inode_sweep(tmp_path / "r", lambda disk: run_cli(*run, "--outdir", disk / "o")) >= 3
    shard = golden_prepared / "shards" / "shard_00000.tsv"
    embed = ["embed", shard, "--models", tiny_models, "--device", "cpu", "--threads", "1",
             "--checkpoint-dir", tmp_path / "ckpt"]  # the parts elsewhere: the HDF5 file meets the limit
    assert _inode_sweep(tmp_path / "e", lambda disk: run_cli(*embed, "--out", disk / "e.h5")) >= 1
