"""Edges of the storage options found by a hostile review: an unusable TORCHINDUCTOR_CACHE_DIR, a
`~user` compile cache, a lock file that cannot be made, the parent folders a failed command made,
and an output folder path that names a device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import outdir as od
from virnucpro import prepared as fmt
from virnucpro.encoders import compiled
from virnucpro.errors import BadInputError, ExitCode, UsageError

NO_SUCH_USER = "~virnucpro-no-such-user-x"


def shard_of(small_sample) -> Path:
    """The one shard of the small sample's prepare folder."""
    return small_sample[0] / "shards" / fmt.shard_name(0)


def virnucpro(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`virnucpro ARGS` in a new process (in-process, the models a fixture loaded are reused, and the
    compile cache is settled only at a model load)."""
    return subprocess.run([sys.executable, "-m", "virnucpro", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400", **env}, timeout=600)


def clean(err: str) -> bool:
    """Whether a failure was said as one message, never a traceback or a bug report."""
    return "Traceback" not in err and "this is a bug" not in err


# --- 1: TORCHINDUCTOR_CACHE_DIR is checked as --compile-cache is ----------------------------------

@pytest.mark.parametrize("value", ["/dev/null", "/proc/virnucpro-nope", "a-file"])
def test_an_unusable_torch_cache_variable_falls_back_with_a_warning(value, small_sample, tmp_path, tiny_models):
    """torch failed with a traceback (exit 1) on a variable naming a device, a file, or a folder that
    cannot be made, even on a CPU: it is now one warning naming the variable and a private fallback."""
    if value == "a-file":
        value = str(tmp_path / "a-file")
        Path(value).write_text("not a folder")
    done = virnucpro("embed", shard_of(small_sample), "--models", tiny_models, "--device", "cpu",
                     "--out", tmp_path / "a.h5", env={compiled.TORCH_CACHE_VARIABLE: value})
    assert done.returncode == 0 and clean(done.stderr), done.stderr
    assert f"cannot write the compile cache {value} (from {compiled.TORCH_CACHE_VARIABLE})" in done.stderr
    assert (tmp_path / "a.h5").is_file()


def test_a_writable_torch_cache_variable_is_still_used_as_it_is(tmp_path, monkeypatch, capsys):
    """The user's own variable is their choice: used, no warning, even when nothing compiles."""
    mine = tmp_path / "mine" / "cache"
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, str(mine))
    assert compiled.use_cache() == mine and mine.is_dir()
    assert compiled.settle_cache(None, compiling=False) == mine
    assert os.environ[compiled.TORCH_CACHE_VARIABLE] == str(mine) and "warning" not in capsys.readouterr().err


def test_an_unusable_torch_cache_variable_is_replaced_in_the_environment(tmp_path, monkeypatch, capsys):
    """torch reads the variable itself: the fallback replaces it there, and the warning says how to fix it."""
    afile = tmp_path / "cache-file"
    afile.write_text("x")
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, str(afile))
    chosen = compiled.use_cache()
    assert chosen != afile and chosen.is_dir() and os.environ[compiled.TORCH_CACHE_VARIABLE] == str(chosen)
    err = capsys.readouterr().err
    assert f"{afile} (from {compiled.TORCH_CACHE_VARIABLE})" in err and f"unset {compiled.TORCH_CACHE_VARIABLE}" in err


# --- 2: --compile-cache ~nosuchuser/x ---------------------------------------------------------------

@pytest.mark.parametrize("variable_set", [True, False])
def test_a_compile_cache_in_an_unknown_users_home_is_a_usage_error(variable_set, small_sample, tmp_path, tiny_models):
    """pathlib's "Could not determine home directory." came out as a traceback (exit 1) when the
    folder was used (on a GPU, or with TORCHINDUCTOR_CACHE_DIR set), and passed unseen otherwise."""
    env = {compiled.TORCH_CACHE_VARIABLE: str(tmp_path / "tc")} if variable_set else {}
    done = virnucpro("embed", shard_of(small_sample), "--models", tiny_models, "--device", "cpu",
                     "--out", tmp_path / "a.h5", "--compile-cache", f"{NO_SUCH_USER}/x", env=env)
    assert done.returncode == ExitCode.USAGE and clean(done.stderr), done.stderr
    assert "--compile-cache" in done.stderr and "home directory" in done.stderr, done.stderr
    assert not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("compiling", [True, False])
def test_settling_a_compile_cache_in_an_unknown_users_home_is_a_usage_error(compiling, monkeypatch):
    """The same from the library (`embed(..., compiling=...)` does not pass through the CLI's parser)."""
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE, raising=False)
    with pytest.raises(UsageError, match=f"--compile-cache '{NO_SUCH_USER}/x': the home directory of "
                                         f"'{NO_SUCH_USER}' cannot be determined"):
        compiled.settle_cache(Path(f"{NO_SUCH_USER}/x"), compiling)


# --- 3: a lock file that cannot be made -------------------------------------------------------------

def test_embed_out_where_no_lock_file_can_be_made(small_sample, run_cli, tiny_models):
    """/proc refuses new files with ENOENT, which no mapping knew: a FileNotFoundError traceback."""
    code, err = run_cli("embed", shard_of(small_sample), "--models", tiny_models, "--device", "cpu",
                        "--out", "/proc/virnucpro-x.h5")
    assert code == ExitCode.BAD_INPUT and clean(err), err
    assert "/proc/.virnucpro-x.h5.lock" in err, err


def test_a_file_lock_under_a_file_is_refused_naming_it(tmp_path):
    """A file where the output's folder should be: exit 3 naming the lock file, not an OSError."""
    (tmp_path / "a-file").write_text("x")
    lock = tmp_path / "a-file" / ".x.h5.lock"
    with pytest.raises(BadInputError, match=f"cannot create the lock file {lock}"):
        with od.file_lock(tmp_path / "a-file" / "x.h5", "--out"):
            pass


def test_a_file_lock_whose_folder_was_removed_meanwhile_makes_it_again(tmp_path, monkeypatch):
    """A review's case: a failed command taking back the empty folders it made removed the folder
    embed had just made for --out too (both had asked for it): embed stopped with exit 3, though
    the same command run again worked. The folder is made again, as a folder lock does."""
    folder = tmp_path / "n1" / "n2"
    hold = od._hold
    calls = []

    def removed_first(lock, subject, what):
        calls.append(lock)
        if len(calls) == 1:
            folder.rmdir()
        return hold(lock, subject, what)

    folder.mkdir(parents=True)
    monkeypatch.setattr(od, "_hold", removed_first)
    with od.file_lock(folder / "x.h5", "--out"):
        assert (folder / ".x.h5.lock").is_file()
    assert len(calls) == 2


# --- 4: folders a failed command made are removed ---------------------------------------------------

def test_a_failed_prepare_removes_every_folder_it_made(tmp_path, run_cli):
    (tmp_path / "empty.fa").write_text("")
    code, err = run_cli("prepare", tmp_path / "empty.fa", "-o", tmp_path / "n1" / "n2" / "n3")
    assert code == ExitCode.BAD_INPUT and "empty" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.fa"]


def test_a_failed_command_keeps_folders_it_did_not_make(tmp_path, run_cli):
    """An empty folder that was there, and one another command put something into, stay."""
    (tmp_path / "empty.fa").write_text("")
    (tmp_path / "n1").mkdir()
    code, err = run_cli("prepare", tmp_path / "empty.fa", "-o", tmp_path / "n1" / "n2" / "n3")
    assert code == ExitCode.BAD_INPUT, err
    assert (tmp_path / "n1").is_dir() and not (tmp_path / "n1" / "n2").exists()


def test_a_failed_predict_removes_every_folder_it_made(small_sample, tmp_path, run_cli):
    prepared, h5 = small_sample
    code, err = run_cli("predict", "--prepared", tmp_path / "nope", "--embeddings", h5, "-o",
                        tmp_path / "q1" / "q2" / "q3")
    assert code == ExitCode.BAD_INPUT, err
    assert not (tmp_path / "q1").exists()


def test_a_failed_download_removes_every_folder_it_made(tmp_path, run_cli):
    """A download that cannot reach its mirror (port 9 of this machine refuses) leaves no folder."""
    code, err = run_cli("models", "download", "--dest", tmp_path / "s1" / "s2" / "s3", "--only", "classifier_500",
                        "--mirror", "http://127.0.0.1:9")
    assert code == ExitCode.MODELS and clean(err), err
    assert not (tmp_path / "s1").exists()


def test_folders_made_are_removed_deepest_first_and_only_when_empty(tmp_path):
    """The removal stops at a folder that is not empty (another command's), keeping those above it."""
    made: list[Path] = []
    od.make_folder(tmp_path / "a" / "b" / "c", "--outdir", made)
    assert made == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    (tmp_path / "a" / "b" / "other").write_text("someone else's")
    od.remove_made_folders(made)
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["other"]


# --- 5: an output folder path that names a device ---------------------------------------------------

def test_an_outdir_that_is_a_device_is_said_to_be_one(tmp_path, run_cli, reference_dir):
    code, err = run_cli("prepare", reference_dir / "vanilla" / "test_with_orfs.fa", "--outdir", "/dev/null")
    assert code == ExitCode.BAD_INPUT and clean(err), err
    assert "--outdir /dev/null is a device (a special file), not a folder" in err and "is a file" not in err, err


def test_an_outdir_that_links_to_a_device_is_said_to_be_one(tmp_path, run_cli, reference_dir):
    """A review's case: `-o /dev/stdin`, or a link to /dev/null, was still called "a file"."""
    (tmp_path / "to-null").symlink_to("/dev/null")
    code, err = run_cli("prepare", reference_dir / "vanilla" / "test_with_orfs.fa", "--outdir", tmp_path / "to-null")
    assert code == ExitCode.BAD_INPUT and clean(err), err
    assert f"--outdir {tmp_path / 'to-null'} is a link to /dev/null, a device (a special file), not a folder" in err, err
