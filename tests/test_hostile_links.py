"""Found by a hostile-files security review: names virnucpro writes at a fixed place in a folder
that may hold someone else's entries (lock files, temporary files, hidden work folders). Whatever
sits there that virnucpro did not write (a symbolic link, a FIFO, a folder, a user's file) is never
written through, replaced or deleted: the command refuses (exit 3) naming it."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from test_outdir import write_fasta
from virnucpro import outdir as od
from virnucpro.embed import CheckpointStore, _delete_own_files, _live_waiters
from virnucpro.errors import BadInputError
from virnucpro.prepare import STAGING
from virnucpro.run import WORK

PRECIOUS = "PRECIOUS\n"


def victim(tmp_path: Path, name: str = "victim") -> Path:
    path = tmp_path / name
    path.write_text(PRECIOUS)
    return path


def put(kind: str, path: Path, target: Path) -> None:
    """Something that is not a virnucpro file at `path`: a link to `target`, a dangling link, a FIFO
    or a folder."""
    if kind == "link":
        path.symlink_to(target)
    elif kind == "dangling link":
        path.symlink_to(target.with_name("missing"))
    elif kind == "FIFO":
        os.mkfifo(path)
    else:
        path.mkdir()


KINDS = {"link": "a symbolic link", "dangling link": "a symbolic link", "FIFO": "a FIFO", "folder": "a folder"}


def no_flock(_fd, _operation):
    raise OSError(errno.ENOLCK, "No locks available")


# --- 1: lock files -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_prepare_refuses_a_lock_file_that_is_not_one(tmp_path, run_cli, kind):
    """The review's repro: `o/.virnucpro.lock -> victim` had the victim overwritten with holder JSON;
    a FIFO or folder there was a bug report, a dangling link 'in use by another virnucpro command'."""
    target, out = victim(tmp_path), tmp_path / "o"
    out.mkdir()
    put(kind, out / od.LOCK_NAME, target)
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 3, message
    assert f"{out / od.LOCK_NAME} is {KINDS[kind]}, not a virnucpro lock file" in message and "move it" in message
    assert "in use" not in message and target.read_text() == PRECIOUS
    assert os.path.lexists(out / od.LOCK_NAME) and not (out / od.MARKER_NAME).exists()


@pytest.mark.parametrize("command", ["prepare", "run", "embed"])
def test_a_users_file_at_a_lock_files_name_is_refused_and_kept(tmp_path, run_cli, tiny_models, small_sample, command):
    """A user's `.virnucpro.lock` (or `.x.h5.lock` beside embed's --out) holding their own text was
    overwritten with a holder's details, or deleted by embed, even when the command then refused."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    folder = tmp_path / "o"
    folder.mkdir()
    lock = folder / (".x.h5.lock" if command == "embed" else od.LOCK_NAME)
    lock.write_text(PRECIOUS)
    args = {"prepare": ["prepare", fasta, "--outdir", folder],
            "run": ["run", fasta, "--outdir", folder, "--models", tiny_models, "--device", "cpu"],
            "embed": ["embed", next(small_sample[0].glob("shards/*.tsv")), "--models", tiny_models,
                      "--out", folder / "x.h5", "--device", "cpu"]}[command]
    code, message = run_cli(*args)
    assert code == 3 and f"{lock} is a file that holds other data, not a virnucpro lock file" in message, message
    assert lock.read_text() == PRECIOUS and sorted(p.name for p in folder.iterdir()) == [lock.name]


@pytest.mark.parametrize("left", [
    '{"pid": 7, "user": "u"}\n' + 'emporary": ".x.h5.14lec3ko.tmp"}\n',  # stopped between write and cut
    '{"pid": 7, "user": "u"}' + " " * 40 + "\n",  # stopped after a padded write
    "\x00" * 64,  # the size recorded, the data not (a crash)
    ""])
def test_a_lock_file_an_interrupted_holder_left_is_taken_again(tmp_path, run_cli, left):
    """A holder stopped between writing its (shorter) details and cutting the file left JSON then
    the end of the old details: every later run refused its own lock file as 'other data'."""
    out = tmp_path / "o"
    out.mkdir()
    (out / od.LOCK_NAME).write_text(left)
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 0, message
    assert json.loads((out / od.LOCK_NAME).read_text())["pid"] == os.getpid()


def test_holder_details_are_written_over_longer_ones_padded(tmp_path, monkeypatch):
    """Stopped just before the cut, the file still reads as one holder's details."""
    lock = tmp_path / "lock"
    lock.write_text(json.dumps({"pid": 1, "temporary": "x" * 300}) + "\n")
    fd = os.open(lock, os.O_RDWR)
    try:
        monkeypatch.setattr(od.os, "ftruncate", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            od._write_holder(fd)
    finally:
        os.close(fd)
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_lock_file_with_another_name_is_locked_but_never_written(tmp_path, run_cli):
    """A `cp -al` backup of a folder holding a lock file (a holder's details from an earlier run): the
    new holder's details were written into the backup's file too; the lock works, the file is unchanged."""
    out, earlier = tmp_path / "o", '{"pid": 1, "user": "someone", "host": "elsewhere"}\n'
    target = tmp_path / "backup.lock"
    target.write_text(earlier)
    out.mkdir()
    os.link(target, out / od.LOCK_NAME)
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 0, message
    assert target.read_text() == earlier
    with od.file_lock(tmp_path / "shard.h5", "--out"):
        pass
    os.link(target, tmp_path / ".other.h5.lock")
    with od.file_lock(tmp_path / "other.h5", "--out"):
        assert target.read_text() == earlier


@pytest.mark.parametrize("kind", ["link", "FIFO"])
def test_every_lock_refuses_a_link_or_fifo(tmp_path, kind):
    """The same mechanism for embed's `.OUT.lock`, the checkpoint folder's and the models folder's lock."""
    target = victim(tmp_path)
    out = tmp_path / "shard.h5"
    put(kind, tmp_path / f".{out.name}.lock", target)
    with pytest.raises(BadInputError, match="not a virnucpro lock file"):
        with od.file_lock(out, "--out"):
            pass
    models = tmp_path / "models"
    models.mkdir()
    put(kind, models / od.LOCK_NAME, target)
    with pytest.raises(BadInputError, match="not a virnucpro lock file"):
        with od.folder_lock(models, "the models folder"):
            pass
    key = tmp_path / "ckpt" / "key"
    key.mkdir(parents=True)
    put(kind, key / od.LOCK_NAME, target)
    with pytest.raises(BadInputError, match="not a virnucpro lock file"):
        CheckpointStore(key, wait=False)
    assert target.read_text() == PRECIOUS


def test_the_fallback_lock_refuses_a_link(tmp_path, monkeypatch):
    """Without flock: a link at `.virnucpro.lock.pid` (dangling, so 'stale') was renamed and deleted."""
    monkeypatch.setattr(od.fcntl, "flock", no_flock)
    target, folder = victim(tmp_path), tmp_path / "nfs"
    folder.mkdir()
    for link_to in (target, target.with_name("missing")):
        (folder / od.FALLBACK_LOCK_NAME).symlink_to(link_to)
        with pytest.raises(BadInputError, match="is a symbolic link, not a virnucpro lock file"):
            with od.folder_lock(folder, "--outdir"):
                pass
        assert (folder / od.FALLBACK_LOCK_NAME).is_symlink() and target.read_text() == PRECIOUS
        (folder / od.FALLBACK_LOCK_NAME).unlink()


def test_a_fallback_lock_replaced_meanwhile_is_not_removed(tmp_path, monkeypatch):
    """The fallback lock is removed at the end only while it is still the file this command created."""
    monkeypatch.setattr(od.fcntl, "flock", no_flock)
    folder = tmp_path / "nfs"
    with od.folder_lock(folder, "--outdir"):
        (folder / od.FALLBACK_LOCK_NAME).unlink()
        (folder / od.FALLBACK_LOCK_NAME).write_text("another holder's\n")
    assert (folder / od.FALLBACK_LOCK_NAME).read_text() == "another holder's\n"


def test_a_leftover_temporary_named_by_a_lock_file_is_removed_only_when_a_regular_file(tmp_path):
    """The lock file names the temporary its killed holder wrote; a link at that name is not ours."""
    target, out = victim(tmp_path), tmp_path / "shard.h5"
    link = tmp_path / ".shard.h5.abc.tmp"
    link.symlink_to(target)
    (tmp_path / ".shard.h5.lock").write_text(json.dumps({"pid": 1, "temporary": link.name}))
    with od.file_lock(out, "--out"):
        pass
    assert link.is_symlink() and target.read_text() == PRECIOUS


# --- 2: temporary files --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_the_marker_temporary_is_never_written_through(tmp_path, run_cli, kind):
    target, out = victim(tmp_path), tmp_path / "o"
    out.mkdir()
    put(kind, out / od.MARKER_TMP_NAME, target)
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 3, message
    assert f"{out / od.MARKER_TMP_NAME} is {KINDS[kind]}" in message and target.read_text() == PRECIOUS
    assert os.path.lexists(out / od.MARKER_TMP_NAME)


@pytest.mark.parametrize("kind", ["link", "FIFO"])
def test_a_marker_that_is_not_a_file_is_refused_not_read_or_replaced(tmp_path, run_cli, kind):
    """A FIFO at `.virnucpro.json` hung the command reading it; a link was read and then replaced."""
    target, out = victim(tmp_path), tmp_path / "o"
    out.mkdir()
    put(kind, out / od.MARKER_NAME, target)
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 3 and f"{out / od.MARKER_NAME} is {KINDS[kind]}" in message, message
    assert os.path.lexists(out / od.MARKER_NAME) and target.read_text() == PRECIOUS


def one_part(store: CheckpointStore) -> None:
    store.save({role: ([0], [np.full((1, 3), 0.5, np.float32)]) for role in ("dnabert_s", "esm2")})
    store.flush()


def test_a_checkpoint_part_temporary_is_never_written_through(tmp_path):
    target, key = victim(tmp_path), tmp_path / "ckpt" / "key"
    key.mkdir(parents=True)
    (key / ".part_00000.tmp.npz").symlink_to(target)
    store = CheckpointStore(key, wait=False)
    try:
        with pytest.raises(BadInputError, match=r"\.part_00000\.tmp\.npz is a symbolic link"):
            one_part(store)
    finally:
        store.close()
    assert target.read_text() == PRECIOUS and (key / ".part_00000.tmp.npz").is_symlink()


def test_a_stale_part_temporary_of_ours_is_replaced(tmp_path):
    """A regular file at the temporary name is a part write a kill interrupted: ours to replace."""
    key = tmp_path / "ckpt" / "key"
    key.mkdir(parents=True)
    (key / ".part_00000.tmp.npz").write_bytes(b"cut short")
    store = CheckpointStore(key, wait=False)
    one_part(store)
    store.close()
    assert [p.name.split(".")[0] for p in key.glob("part_*.npz")] == ["part_00000"]
    assert not (key / ".part_00000.tmp.npz").exists()


def test_finishing_a_shard_deletes_no_link_or_fifo_in_its_checkpoint_folder(tmp_path):
    """Links at part names are not our parts; a FIFO at a waiting note's name hung the finish."""
    target, key = victim(tmp_path), tmp_path / "key"
    key.mkdir()
    for name in ("part_00007." + "0" * 64 + ".npz", ".part_00008.tmp.npz"):
        (key / name).symlink_to(target)
    os.mkfifo(key / ".waiting.123.abcd")
    assert not _live_waiters(key)
    _delete_own_files(key)
    assert sorted(p.name for p in key.iterdir()) == [".part_00008.tmp.npz", ".waiting.123.abcd",
                                                     "part_00007." + "0" * 64 + ".npz"]
    assert target.read_text() == PRECIOUS


def test_a_linked_checkpoint_key_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "key").symlink_to(elsewhere)
    with pytest.raises(BadInputError, match="is a symbolic link"):
        CheckpointStore(tmp_path / "ckpt" / "key", wait=False)
    assert list(elsewhere.iterdir()) == []


# --- 3: hidden work folders ----------------------------------------------------------------------

def earlier_output(folder: Path, kind: str) -> Path:
    """An output folder of ours from before (its marker claims no file)."""
    folder.mkdir()
    (folder / od.MARKER_NAME).write_text(json.dumps({"kind": kind, "files": {}}))
    return folder


def test_run_refuses_a_linked_work_folder(tmp_path, run_cli, tiny_models):
    out, elsewhere = earlier_output(tmp_path / "r1", "run"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / WORK).symlink_to(elsewhere)
    code, message = run_cli("run", write_fasta(tmp_path / "a.fa", 2), "--outdir", out, "--models", tiny_models,
                            "--device", "cpu")
    assert code == 3 and f"{out / WORK} is a symbolic link" in message, message
    assert list(elsewhere.iterdir()) == [] and (out / WORK).is_symlink()


@pytest.mark.parametrize("where", ["notes.txt", "embeddings/notes.txt", "checkpoints/notes.txt"])
def test_run_refuses_a_work_folder_holding_a_users_file(tmp_path, run_cli, tiny_models, where):
    out = earlier_output(tmp_path / "r1", "run")
    mine = out / WORK / where
    mine.parent.mkdir(parents=True)
    mine.write_text(PRECIOUS)
    code, message = run_cli("run", write_fasta(tmp_path / "a.fa", 2), "--outdir", out, "--models", tiny_models,
                            "--device", "cpu")
    assert code == 3 and where in message and "move it" in message, message
    assert mine.read_text() == PRECIOUS


def test_a_failed_run_deletes_only_what_it_wrote_in_its_work_folder(tmp_path, run_cli, tiny_models, monkeypatch):
    """A user's file put into the work folder while the run works stays when the run cleans up."""
    from virnucpro import run as run_module

    out = tmp_path / "r1"
    real = run_module._prepare_once

    def prepare_then_fail(inputs, prepared, chunk_size, outdir):
        real(inputs, prepared, chunk_size, outdir)
        (outdir / WORK / "notes.txt").write_text(PRECIOUS)
        raise BadInputError("failing on purpose")

    monkeypatch.setattr(run_module, "_prepare_once", prepare_then_fail)
    code, message = run_cli("run", write_fasta(tmp_path / "a.fa", 2), "--outdir", out, "--models", tiny_models,
                            "--device", "cpu")
    assert code == 3 and "failing on purpose" in message, message
    assert [p.name for p in (out / WORK).iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("kind", ["link", "file"])
def test_prepare_refuses_a_staging_name_that_is_not_its_folder(tmp_path, run_cli, kind):
    out, elsewhere = earlier_output(tmp_path / "p", "prepare"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "link":
        (out / STAGING).symlink_to(elsewhere)
    else:
        (out / STAGING).write_text(PRECIOUS)
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 3 and f"{out / STAGING} is a" in message, message
    assert list(elsewhere.iterdir()) == [] and os.path.lexists(out / STAGING)


def test_prepare_keeps_a_users_file_in_its_staging_folder_and_clears_its_own(tmp_path, run_cli):
    out = earlier_output(tmp_path / "p", "prepare")
    (out / STAGING / "shards").mkdir(parents=True)
    (out / STAGING / "shards" / "shard_00000.tsv.body").write_text("left by a kill\n")
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 0 and not (out / STAGING).exists(), message
    (out / STAGING).mkdir()
    (out / STAGING / "notes.txt").write_text(PRECIOUS)
    code, message = run_cli("prepare", write_fasta(tmp_path / "a.fa", 2), "--outdir", out)
    assert code == 3 and "notes.txt" in message, message
    assert (out / STAGING / "notes.txt").read_text() == PRECIOUS


# --- a loop of symbolic links where a path is given -------------------------------------------------

def _loop(tmp_path: Path) -> Path:
    """`l1 -> l2 -> l1`: following it never ends (Python 3.11's `resolve` raised RuntimeError)."""
    (tmp_path / "l1").symlink_to("l2")
    (tmp_path / "l2").symlink_to("l1")
    return tmp_path / "l1"


LOOPED = {  # command (with L for the loop; S: the small sample's shard, P: its prepare folder, M: models) -> option named
    "prepare --outdir L": (["prepare", "IN", "--outdir", "L"], "--outdir"),
    "prepare --outdir L/sub": (["prepare", "IN", "--outdir", "L/sub"], "--outdir"),
    "run --outdir L": (["run", "IN", "--outdir", "L", "--models", "M", "--device", "cpu"], "--outdir"),
    "embed --out L": (["embed", "S", "--models", "M", "--out", "L", "--device", "cpu"], "--out"),
    "embed --out L/e.h5": (["embed", "S", "--models", "M", "--out", "L/e.h5", "--device", "cpu"], "--out"),
    "embed --checkpoint-dir L": (["embed", "S", "--models", "M", "--out", "OUT/e.h5", "--checkpoint-dir", "L",
                                  "--device", "cpu"], "--checkpoint-dir"),
    "embed --compile-cache L": (["embed", "S", "--models", "M", "--out", "OUT/e.h5", "--compile-cache", "L",
                                 "--device", "cpu"], "--compile-cache"),
    "predict --prepared L": (["predict", "--prepared", "L", "--embeddings", "H", "--outdir", "OUT/p"], "--prepared"),
    "predict --outdir L": (["predict", "--prepared", "P", "--embeddings", "H", "--outdir", "L", "--models", "M"],
                           "--outdir"),
    "models tiny L": (["models", "tiny", "L"], "tiny models folder"),
    "models download --dest L": (["models", "download", "--dest", "L", "--mirror", "http://127.0.0.1:9/"],
                                 "models directory"),
}


@pytest.mark.parametrize("case", list(LOOPED))
def test_a_loop_of_links_given_as_a_path_is_exit_3_naming_it(tmp_path, run_cli, tiny_models, small_sample, case):
    """A hostile reviewer's case: a crash report (exit 1) from every command; one message now."""
    loop = _loop(tmp_path)
    fasta = write_fasta(tmp_path / "in.fa", 2)
    prepared, h5 = small_sample
    names = {"IN": fasta, "S": prepared / "shards" / "shard_00000.tsv", "P": prepared, "H": h5, "M": tiny_models,
             "OUT": tmp_path / "out"}
    args, option = LOOPED[case]
    def path_of(word: str) -> str:  # L, L/sub, OUT/e.h5: a path under this test's own folders
        head, slash, rest = word.partition("/")
        return str(loop if head == "L" else names[head]) + slash + rest if head in ("L", "OUT") else word

    words = [str(names[word]) if word in names else path_of(word) for word in args]
    code, message = run_cli(*words)
    assert code == 3, message
    assert "loop of symbolic links" in message and option in message and str(loop) in message, message
    assert "Traceback" not in message and "bug" not in message, message


@pytest.mark.parametrize("option", ["--models", "--classifier"])
def test_a_loop_of_links_as_models_is_named_a_loop_not_a_missing_path(tmp_path, run_cli, small_sample, option):
    """--models and --classifier at a loop: exit 4 saying it is a loop (they said: a missing path)."""
    loop = _loop(tmp_path)
    prepared, h5 = small_sample
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", h5, "--outdir", tmp_path / "out",
                            option, loop)
    assert code == 4, message
    assert "loop of symbolic links" in message and str(loop) in message, message
    assert "missing" not in message and "does not exist" not in message, message


@pytest.mark.parametrize("where", ["L", "L/x"])
def test_a_loop_of_links_as_an_input_or_embedding_file_is_exit_3_naming_it(tmp_path, run_cli, small_sample, tiny_models,
                                                                           where):
    """A review of the fix: an input said "check the file permissions", an embedding shard was exit 5
    ("give the .h5 files written by embed")."""
    loop = _loop(tmp_path)
    path = where.replace("L", str(loop))
    prepared, _h5 = small_sample
    for args, what in ((["prepare", path, "--outdir", tmp_path / "out"], "input file"),
                       (["predict", "--prepared", prepared, "--embeddings", path, "--outdir", tmp_path / "p",
                         "--models", tiny_models], "embedding shard")):
        code, message = run_cli(*args)
        assert code == 3, message
        assert f"{what} {path} goes through a loop of symbolic links" in message, message


def test_a_models_folder_below_a_loop_is_named_a_loop_not_missing(tmp_path, run_cli):
    """A review of the fix: "does not exist", with a download command into it, which was then refused."""
    loop = _loop(tmp_path)
    code, message = run_cli("models", "check", loop / "sub")
    assert code == 4, message
    assert "loop of symbolic links" in message and "download" not in message, message


def test_a_loop_is_named_where_resolve_returns_a_path_as_python_3_13_does(tmp_path, monkeypatch):
    """Python 3.13's non-strict resolve returns a path through a loop as if it were a missing folder
    (3.11 raised): the output folders' checks then said "cannot create" or let it through."""
    from virnucpro.errors import BadInputError, resolved

    loop = _loop(tmp_path)
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.abspath(self)))
    for path in (loop, loop / "sub"):
        with pytest.raises(BadInputError, match="loop of symbolic links"):
            resolved(path, "--outdir")
    assert resolved(tmp_path / "missing" / "x", "--outdir") == tmp_path / "missing" / "x"


@pytest.mark.parametrize("blocker", ["file", "dangling link"])
def test_a_models_folder_below_a_file_or_a_dangling_link_says_so_not_download(tmp_path, run_cli, blocker):
    """A reviewer's case: "does not exist, fix: virnucpro models download --dest ..." into a path where
    a download fails too ("cannot create ...: Not a directory")."""
    part = tmp_path / "part"
    if blocker == "file":
        part.write_text("x")
    else:
        part.symlink_to(tmp_path / "gone")
    code, message = run_cli("models", "check", part / "models")
    assert code == 4, message
    assert f"{part} on its way is a" in message and "download" not in message, message
