"""Found by a hostile crash-consistency review: a marker torn by a power loss, a full disk during
predict, an embedding file truncated to nothing. Each fix keeps the user's work and says so plainly."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoint_helpers import wait_for_parts
from test_outdir import write_fasta
from virnucpro import outdir as od
from virnucpro import prepared as fmt

CLI = [sys.executable, "-m", "virnucpro"]
FIX_COMMAND = re.compile(r"echo '[^']*' > \S+")


def fix_command(message: str) -> str:
    """The shell command a refusal's fix gives to restore a lost or damaged marker."""
    found = FIX_COMMAND.search(message)
    assert found, f"no restoring command in the fix: {message}"
    return found.group(0)


def damage(marker: Path, how: str) -> None:
    """Leave the marker as a power loss (empty, cut short) or a user (removed) might."""
    if how == "removed":
        marker.unlink()
    else:
        marker.write_bytes(marker.read_bytes()[:{"empty": 0, "cut short": 9}[how]])


# --- 1: the marker -------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["empty", "cut short", "removed"])
def test_a_marker_torn_after_a_kill_is_refused_with_a_fix_that_keeps_the_checkpoints(tmp_path, reference_dir,
                                                                                     tiny_models, how):
    """The review's repro: run killed mid-embed, its marker torn. The refusal names the marker (never a
    '?' output), and its fix command makes the rerun resume from the checkpoints."""
    out = tmp_path / "run"
    command = CLI + ["run", str(reference_dir / "golden/mixed.fa"), "--outdir", str(out), "--models",
                     str(tiny_models), "--device", "cpu", "--threads", "1", "--checkpoint-every", "10"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    wait_for_parts(out / ".virnucpro-work/checkpoints", 2, process)
    process.kill()
    process.communicate()
    damage(out / od.MARKER_NAME, how)
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 3 and "'?'" not in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert (f"{out / od.MARKER_NAME}, virnucpro's record" in refused.stderr if how != "removed"
            else ".virnucpro-work/" in refused.stderr), refused.stderr
    subprocess.run(fix_command(refused.stderr), shell=True, check=True)
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "prepare: already done" in rerun.stderr and "resuming from checkpoint at record " in rerun.stderr
    assert list(fmt.read_table(out / fmt.SEQUENCES))


@pytest.mark.parametrize("content", ["", '{"kind": "prep', '{"files": {}}', '{"kind": 3, "files": {}}', "[]"])
def test_a_damaged_marker_is_named_never_a_question_mark_output(tmp_path, run_cli, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / od.MARKER_NAME).write_text(content)
    fasta = write_fasta(tmp_path / "a.fa", 2)
    for target in (out, out / "inside"):
        code, message = run_cli("prepare", fasta, "--outdir", target)
        assert code == 3 and "damaged" in message and "'?'" not in message and "Traceback" not in message, message
    assert sorted(p.name for p in out.iterdir()) == [od.MARKER_NAME]


def test_the_restored_marker_adopts_no_file(tmp_path, run_cli):
    """The fix's record claims no file: an output file found at a name the command writes (ours or
    the user's: nobody can tell now) is refused, never replaced, and the rerun names it."""
    fasta = write_fasta(tmp_path / "a.fa", 2)
    out = tmp_path / "prep"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    before = (out / fmt.SEQUENCES).read_bytes()
    damage(out / od.MARKER_NAME, "empty")
    code, message = run_cli("prepare", write_fasta(tmp_path / "b.fa", 1, first=7), "--outdir", out)
    assert code == 3 and "damaged" in message, message
    subprocess.run(fix_command(message), shell=True, check=True)
    code, message = run_cli("prepare", write_fasta(tmp_path / "b.fa", 1, first=7), "--outdir", out)
    assert code == 3 and "did not write" in message, message
    assert (out / fmt.SEQUENCES).read_bytes() == before
    # every such file named at once (one rerun per file was needed), with a plural fix
    assert all(name in message for name in (fmt.SEQUENCES, fmt.CHUNKS, "manifest.json", "shards/shard_00000.tsv"))
    assert "move those files" in message


def test_a_refusal_does_not_name_an_ended_holder_as_the_holder(tmp_path):
    """A holder that may only read the lock file (another user's) cannot write its details: the
    file still names an earlier, ended holder, which a user would take for a stale lock."""
    import json
    import socket

    ended = subprocess.Popen(["true"])
    ended.wait()
    folder = tmp_path / "f"
    folder.mkdir()
    lock = folder / od.LOCK_NAME
    lock.write_text(json.dumps({"pid": ended.pid, "host": socket.gethostname(), "started": "earlier"}))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(od.FolderBusy, match="earlier holder that has ended"):
            with od.folder_lock(folder, "--outdir"):
                pass
    finally:
        holder.communicate("", timeout=30)


def test_the_marker_is_on_disk_before_its_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    """fsync of the temporary marker while it still has its temporary name, then of the folder."""
    synced = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, (tmp_path / "out" / od.MARKER_TMP_NAME).exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with od.claim(tmp_path / "out", "prepare", ("sequences.tsv",)):
        pass
    assert synced == [("file", True), ("folder", False)], synced


def test_a_folder_that_cannot_be_synced_still_gets_its_marker(tmp_path, monkeypatch):
    """Some file systems refuse fsync on a folder (EINVAL): the marker is written all the same."""
    real_fsync = os.fsync

    def no_folder_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    with od.claim(tmp_path / "out", "prepare", ("sequences.tsv",)):
        assert (tmp_path / "out" / od.MARKER_NAME).is_file()


# --- 2: predict with the disk full ----------------------------------------------------------------

class _CloseFails:
    """A file whose close fails as a full disk makes a buffered write fail at close."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.handle.close()
        raise OSError(errno.ENOSPC, "No space left on device", self.handle.name)


def test_a_full_disk_during_predict_prints_no_traceback_at_collection(tmp_path, run_cli, monkeypatch,
                                                                     golden_prepared, tiny_models):
    """Another output fails first; the results file, still open in `score_orfs`, is closed then (its
    close failing too), never at garbage collection ("Exception ignored in ..."); the first failure is
    the one reported."""
    import virnucpro.predict as predict_module

    embeddings = _embedded(tmp_path, golden_prepared, tiny_models)
    real_open = predict_module.open_output
    opened = []

    def failing_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if Path(path).name == "prediction_results.txt":
            opened.append(handle)
            return _CloseFails(handle)
        return handle

    def disk_full(prepared, tables, scores, outdir, threshold):
        next(iter(scores))
        raise OSError(errno.ENOSPC, "No space left on device", str(outdir / "chunks.tsv"))

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(predict_module, "open_output", failing_open)
    monkeypatch.setattr(predict_module, "write_tables", disk_full)
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *embeddings,
                            "--outdir", tmp_path / "out", "--models", tiny_models)
    assert code == 10 and "chunks.tsv" in message and "the disk is full" in message, message
    assert opened and all(handle.closed for handle in opened)
    assert not unraisable, [u.exc_value for u in unraisable]


def _embedded(tmp_path: Path, prepared: Path, models: Path) -> list[Path]:
    """Every shard of `prepared` embedded with the tiny models."""
    from virnucpro.embed import embed

    paths = []
    for shard in fmt.load_manifest(prepared)["shards"]:
        out = tmp_path / "h5" / Path(shard["file"]).with_suffix(".h5").name
        embed(prepared / shard["file"], out, models=models, device="cpu")
        paths.append(out)
    return paths


# --- 3: an embedding file truncated to nothing ----------------------------------------------------

def test_an_empty_embedding_file_has_a_fix_that_embed_then_follows(tmp_path, run_cli, golden_prepared, tiny_models):
    """predict's fix for an empty (unsealed) file says to delete it first, as embed requires; doing
    what it says makes embed and then predict succeed."""
    embeddings = _embedded(tmp_path, golden_prepared, tiny_models)
    embeddings[0].write_bytes(b"")
    predict_args = ("predict", "--prepared", golden_prepared, "--embeddings", *embeddings, "--outdir",
                    tmp_path / "out", "--models", tiny_models)
    code, message = run_cli(*predict_args)
    assert code == 5 and "it is empty" in message and "delete it, then rerun `virnucpro embed`" in message, message
    embed_args = ("embed", golden_prepared / "shards/shard_00000.tsv", "--models", tiny_models, "--out",
                  embeddings[0], "--device", "cpu")
    code, message = run_cli(*embed_args)
    assert code == 3 and "delete it" in message, message  # the file is refused as predict's fix says
    embeddings[0].unlink()
    assert run_cli(*embed_args)[0] == 0
    assert run_cli(*predict_args)[0] == 0



# --- 3: a kill while results move in -------------------------------------------------------------

KILLED_AFTER_MOVES = """import os, sys
from pathlib import Path
from virnucpro import outdir
from virnucpro.cli import main
moved, take, replace = [0], outdir._take_new_name, os.replace
def counted(move):  # counts the results moved into the output folder (--outdir, argv[5])
    def moving(source, target):
        move(source, target)
        target = Path(target)
        moved[0] += target.parent.name == os.path.basename(sys.argv[5]) and not target.name.startswith(".")
        if moved[0] == int(sys.argv[1]):
            os._exit(137)  # as a kill: no cleanup runs
    return moving
outdir._take_new_name, os.replace = counted(take), counted(replace)
main(sys.argv[2:])
"""


def test_a_kill_while_results_move_in_leaves_no_table_of_the_earlier_run(tmp_path, run_cli, tiny_models):
    """A reviewer's case: a run killed after two of its files had moved in left its two tables beside
    the earlier run's other tables and report (of other inputs), with nothing to tell them apart but
    the missing run_info.json. The earlier set is gone before the first file moves; the rerun ends well."""
    out, models = tmp_path / "out", ["--models", str(tiny_models), "--device", "cpu", "--threads", "1"]
    earlier = write_fasta(tmp_path / "earlier.fa", 6, first=100)
    assert run_cli("run", earlier, "--outdir", out, *models)[0] == 0
    later = write_fasta(tmp_path / "later.fa", 4)
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_MOVES, "2", "run", str(later), "--outdir", str(out),
                             *models], capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    left = sorted(path.name for path in out.iterdir() if not path.name.startswith("."))
    assert len(left) == 2 and "run_info.json" not in left, left
    assert not any("s100" in (out / name).read_text() for name in left), left
    code, message = run_cli("run", later, "--outdir", out, *models)
    assert code == 0, message
    assert [row["sequence_id"] for row in fmt.read_table(out / fmt.SEQUENCES)] == [f"s{i}" for i in range(4)]
