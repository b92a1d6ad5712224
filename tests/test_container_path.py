"""Commands in a container without a writable temporary folder (`docker run --read-only`, no tmpfs):
torch needs one for its cache folder, which `run` found out only once prepare was done (all of it
thrown away, exit 10), and with the current folder writable (`-w /data`) Python's last resort put
torch's scratch folder into the user's data. Both are one clear exit 10 before any work now."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from virnucpro.encoders import compiled

SYSTEM_TEMPORARY = ("/tmp", "/var/tmp", "/usr/tmp")  # tempfile's candidates after the environment's


@pytest.fixture
def no_temporary_folder(tmp_path, monkeypatch):
    """Make tempfile find no temporary folder it can write to: TMPDIR and the system's folders are a
    file (unwritable as a folder, even for root), as a read-only container's are; tempfile's own
    search runs, its last resort the current folder included. Returns a function that takes the
    current folder: writable (a user's data folder, `-w /data`) or not (the same file)."""
    blocked = tmp_path / "read-only"
    blocked.write_text("not a folder\n")
    search = tempfile._candidate_tempdir_list

    def candidates(current_writable: bool):
        found = [str(blocked) if folder in SYSTEM_TEMPORARY else folder for folder in search()]
        return found if current_writable else [*found[:-1], str(blocked)]

    def set_up(current: Path | None) -> None:
        for name in ("TMPDIR", "TEMP", "TMP"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("TMPDIR", str(blocked))
        monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE, raising=False)
        monkeypatch.setattr(tempfile, "tempdir", None)  # searched again, as in a new process
        monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: candidates(current is not None))
        if current is not None:
            monkeypatch.chdir(current)
        compiled._scratch.cache_clear()
        compiled._one_off.cache_clear()

    yield set_up
    compiled._scratch.cache_clear()
    compiled._one_off.cache_clear()


def _said_no_temporary_folder(code: int, message: str) -> None:
    assert code == 10, message
    assert "no writable temporary folder" in message and "--tmpfs /tmp" in message, message
    assert "Traceback" not in message, message


@pytest.mark.parametrize("data_writable", [False, True])
def test_run_without_a_temporary_folder_stops_before_prepare(no_temporary_folder, tiny_models, reference_dir,
                                                             tmp_path, run_cli, data_writable):
    """The reviewer's `docker run --read-only` case: exit 10 after prepare had read every record. Now
    before it reads one; with the current folder writable, nothing of torch's is put there."""
    data = tmp_path / "data"
    data.mkdir()
    no_temporary_folder(data if data_writable else None)
    code, message = run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", tmp_path / "out",
                            "--models", tiny_models, "--device", "cpu")
    _said_no_temporary_folder(code, message)
    assert "prepared " not in message and "loading DNABERT-S" not in message, message
    assert not (tmp_path / "out").exists()
    assert list(data.iterdir()) == [], "nothing is put in the current folder (the user's data)"


def test_embed_without_a_temporary_folder_stops_before_its_checkpoints(no_temporary_folder, tiny_models,
                                                                       golden_prepared, tmp_path, run_cli):
    """`embed` alone, the current folder writable: torch's scratch folder went there and stayed after a kill."""
    data = tmp_path / "data"
    data.mkdir()
    no_temporary_folder(data)
    code, message = run_cli("embed", golden_prepared / "shards" / "shard_00000.tsv", "--models", tiny_models,
                            "--out", tmp_path / "e" / "e.h5", "--device", "cpu")
    _said_no_temporary_folder(code, message)
    assert "loading DNABERT-S" not in message, message
    assert not (tmp_path / "e").exists() and list(data.iterdir()) == []


def test_a_temporary_folder_the_user_names_may_be_the_current_folder(tmp_path, monkeypatch):
    """Only tempfile's silent last resort is refused: TMPDIR=. (or the data folder by name) is the
    user's choice, and the scratch folder goes there, removed at exit."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert compiled.temporary_folder() == tmp_path
    monkeypatch.setenv("TMPDIR", ".")
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert compiled.temporary_folder() == tmp_path


@pytest.mark.parametrize("command", ["models tiny", "run"])
@pytest.mark.parametrize("problem", ["missing", "a file"])
def test_a_tmpdir_that_cannot_be_used_is_exit_10_not_a_silent_tmp(tiny_models, reference_dir, tmp_path, monkeypatch,
                                                                  run_cli, command, problem):
    """A review's case: a TMPDIR named for a job's scratch (where /tmp is small) but full, read-only
    or missing was passed over by tempfile for /tmp, without a word. Now exit 10 naming it."""
    named = tmp_path / "scratch"
    if problem == "a file":
        named.write_text("not a folder\n")
    for name in ("TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(named))
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)  # searched again, as in a new process
    compiled._scratch.cache_clear()
    if command == "run":
        code, message = run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", tmp_path / "out",
                                "--models", tiny_models, "--device", "cpu")
    else:
        code, message = run_cli("models", "tiny", tmp_path / "models")
    compiled._scratch.cache_clear()
    assert code == 10 and f"TMPDIR={named} cannot be used" in message and "Traceback" not in message, message
