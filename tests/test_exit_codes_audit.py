"""Exit codes an audit of the error paths found misplaced: each failure exits with the code of
CONTRACTS.md's table (and README's), with one message naming the file or option."""

from __future__ import annotations

import errno

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import h5shard
from virnucpro import prepared as fmt
from virnucpro.errors import ExitCode, InconsistentInputsError, OutputWriteError
from permission_helpers import unprivileged

CLI = [sys.executable, "-m", "virnucpro"]


def _run(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`virnucpro ARGS` without the permission bypass of root."""
    return subprocess.run([*unprivileged(), *CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _fasta(path: Path) -> Path:
    path.write_text(">a\n" + "ACGT" * 200 + "\n")
    return path


def _copied_prepare(golden_prepared: Path, tmp_path: Path) -> Path:
    """A copy of the session's prepare folder this test may damage."""
    return Path(shutil.copytree(golden_prepared, tmp_path / "prepared"))


# ------------------------------------------------------------------ 1. out of memory: exit 137


class _DeadWorker:
    def __init__(self, exitcode):
        self.exitcode = exitcode


class _Pool:
    """The part of a ProcessPoolExecutor `_worker_died` looks at: its workers by pid."""

    def __init__(self, *exitcodes):
        self._processes = {n: _DeadWorker(code) for n, code in enumerate(exitcodes)}


def test_a_worker_killed_by_sigkill_is_exit_137_out_of_memory(tmp_path):
    """Nextflow retries PREPARE with more memory on 137, never on 1 (what it was)."""
    from virnucpro.prepare import _worker_died

    error = _worker_died(tmp_path / "big.fa", _Pool(None, -signal.SIGKILL))
    assert error.code == ExitCode.OUT_OF_MEMORY == 137
    assert "out of memory?" in str(error) and "big.fa" in str(error) and "more memory" in str(error)


def test_a_worker_ended_by_another_signal_stays_exit_1_naming_it(tmp_path):
    from virnucpro.prepare import _worker_died

    error = _worker_died(tmp_path / "big.fa", _Pool(None, -signal.SIGSEGV))
    assert error.code == ExitCode.UNEXPECTED and "SIGSEGV" in str(error)
    # the out-of-memory killer sends SIGKILL only: another known signal is a crash, not memory
    message = f"{error} {error.hint}"
    assert "out-of-memory" not in message and "more memory" not in message and "--threads 1" in message, message


def test_a_worker_dead_of_an_unknown_cause_may_be_the_out_of_memory_killer(tmp_path):
    from virnucpro.prepare import _worker_died

    message = str(_worker_died(tmp_path / "big.fa", _Pool(None, 1)))
    assert "out-of-memory killer" in message and "SIG" not in message and "big.fa" in message, message


@pytest.mark.parametrize("raised", [MemoryError(), OSError(errno.ENOMEM, "mmap failed"),
                                    OSError(errno.ENOMEM, "Cannot allocate memory")],
                         ids=["MemoryError", "ENOMEM in a library's own words", "ENOMEM"])
def test_out_of_memory_in_the_main_process_is_exit_137(tmp_path, run_cli, monkeypatch, raised):
    """ENOMEM is out of memory by its number, not only by the C library's text for it (found by mutation)."""
    import virnucpro.prepare

    def out_of_memory(*args, **kwargs):
        raise raised

    monkeypatch.setattr(virnucpro.prepare, "prepare", out_of_memory)
    code, message = run_cli("prepare", _fasta(tmp_path / "a.fa"), "--outdir", tmp_path / "out")
    assert code == 137 and "out of memory" in message and "bug" not in message, message


# ------------------------------------------------------------------ 2. and 4. damaged shards: exit 5


@pytest.mark.parametrize("first", ["# virnucpro-shard format_version=2 chunk_size=500 index=0 of=1 x\n",
                                   "# virnucpro-shardX\n",
                                   "# virnucpro-shard\n",
                                   "# virnucpro-shard format_version=2 chunk_size=five index=0 of=1\n"])
def test_a_malformed_shard_first_line_is_exit_5_in_embed(tmp_path, run_cli, tiny_models, first):
    """A first line with a field without `=` raised ValueError: exit 1 reported as a bug."""
    damaged = tmp_path / "shard_00000.tsv"
    damaged.write_text(first + "id\tnucleotide\tprotein\n")
    code, message = run_cli("embed", damaged, "--models", tiny_models, "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == ExitCode.INCONSISTENT and "malformed shard header" in message and str(damaged) in message, message
    assert "bug" not in message


def test_a_damaged_shard_is_exit_5_in_embed_as_in_predict(tmp_path, golden_prepared, run_cli, tiny_models):
    """A shard line prepare could not have written, and a wrong column header, were exit 3 in embed."""
    source = golden_prepared / "shards" / fmt.shard_name(0)
    lines = source.read_text().splitlines(keepends=True)
    for name, text in (("record.tsv", "".join(lines[:3] + ["x_chunk_1F1\tACGTAC\t\n"] + lines[3:])),
                       ("columns.tsv", "".join(lines[:1] + ["id\tnt\tprotein\n"] + lines[2:]))):
        damaged = tmp_path / name
        damaged.write_text(text)
        code, message = run_cli("embed", damaged, "--models", tiny_models, "--out", tmp_path / "s.h5",
                                "--device", "cpu")
        assert code == ExitCode.INCONSISTENT and str(damaged) in message and "into a new folder" in message, message


def test_a_file_that_is_no_shard_stays_exit_3(tmp_path, run_cli, tiny_models):
    other = tmp_path / "reads.fa"
    other.write_text(">a\nACGT\n")
    code, message = run_cli("embed", other, "--models", tiny_models, "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == ExitCode.BAD_INPUT and "not a virnucpro prepare shard" in message, message


# ------------------------------------------------------------------ 3. unreadable inputs: exit 3, as missing ones


def test_an_unreadable_input_is_exit_3_like_a_missing_one(tmp_path):
    """click's `readable` check made an unreadable INPUT exit 2 ("Invalid value"), a missing one 3."""
    fasta = _fasta(tmp_path / "a.fa")
    fasta.chmod(0)
    done = _run("prepare", fasta, "--outdir", tmp_path / "out")
    assert done.returncode == ExitCode.BAD_INPUT and f"cannot read input file {fasta}" in done.stderr, done.stderr
    missing = _run("prepare", tmp_path / "none.fa", "--outdir", tmp_path / "out")
    assert missing.returncode == ExitCode.BAD_INPUT, missing.stderr


def test_an_unreadable_shard_is_exit_3_naming_it(tmp_path, golden_prepared, tiny_models):
    shard = Path(shutil.copy(golden_prepared / "shards" / fmt.shard_name(0), tmp_path / "s.tsv"))
    shard.chmod(0)
    done = _run("embed", shard, "--models", tiny_models, "--out", tmp_path / "s.h5", "--device", "cpu")
    assert done.returncode == ExitCode.BAD_INPUT and f"cannot read shard {shard}: permission denied" in done.stderr, done.stderr


def test_an_unreadable_embedding_shard_is_exit_3_naming_it(tmp_path, golden_prepared, tiny_models):
    """It was exit 5, "cannot be read as an HDF5 embedding shard", as if the file were damaged."""
    h5 = tmp_path / "e.h5"
    h5.write_bytes(b"\0" * 1024)
    h5.chmod(0)
    done = _run("predict", "--prepared", golden_prepared, "--embeddings", h5, "--outdir", tmp_path / "out",
                "--models", tiny_models)
    assert done.returncode == ExitCode.BAD_INPUT and f"cannot read embedding shard {h5}" in done.stderr, done.stderr


@pytest.mark.parametrize("name", [fmt.MANIFEST, fmt.SEQUENCES, fmt.CHUNKS, "shards/shard_00000.tsv"])
def test_an_unreadable_file_of_a_prepare_folder_is_exit_3_saying_so(tmp_path, small_sample, tiny_models, name):
    """It was exit 5, "the prepare folder was edited or damaged: rerun prepare": the file is sound."""
    prepared = Path(shutil.copytree(small_sample[0], tmp_path / "prepared"))
    (prepared / name).chmod(0)
    done = _run("predict", "--prepared", prepared, "--embeddings", small_sample[1], "--outdir", tmp_path / "out",
                "--models", tiny_models)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert f"cannot read {prepared / name}: permission denied" in done.stderr and "damaged" not in done.stderr


def test_a_prepare_folder_that_cannot_be_searched_names_the_folder(tmp_path, small_sample, tiny_models):
    """The files are sound, the folder's mode is the fault: the fix is u+rx on it, not u+r on a file."""
    prepared = Path(shutil.copytree(small_sample[0], tmp_path / "prepared"))
    prepared.chmod(0)
    try:
        done = _run("predict", "--prepared", prepared, "--embeddings", small_sample[1], "--outdir",
                    tmp_path / "out", "--models", tiny_models)
    finally:
        prepared.chmod(0o755)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert f"permission denied on its folder {prepared}" in done.stderr and "chmod u+rx" in done.stderr, done.stderr


@pytest.mark.parametrize("which", ["DNABERT-S", "models"])
def test_an_unreadable_models_folder_is_named_not_a_file_in_it(tmp_path, tiny_models, which):
    """The DNABERT-S folder was reported as its pytorch_model.bin, which the manifest does not list,
    the models folder as the checksum cache virnucpro keeps in it."""
    models = Path(shutil.copytree(tiny_models, tmp_path / "models"))
    folder = models if which == "models" else next(path for path in models.iterdir()
                                                   if path.is_dir() and path.name.startswith(which))
    folder.chmod(0)
    try:
        done = _run("models", "check", models)
    finally:
        folder.chmod(0o755)
    assert done.returncode == ExitCode.MODELS, done.stderr
    assert f"cannot read the folder {folder}: permission denied" in done.stderr, done.stderr
    assert "pytorch_model.bin" not in done.stderr and "sha256-cache" not in done.stderr


# ------------------------------------------------------------------ 5. a write that does not read back: exit 10


def _written(path: Path) -> list[str]:
    import numpy as np

    def rows(start: int, stop: int):
        return np.ones((stop - start, 4), "float32"), np.ones((stop - start, 6), "float32")

    ids = ["a_chunk_1F1", "a_chunk_1F2"]
    h5shard.write_shard(path, ids, rows, (4, 6), {"shard_index": 0})
    return ids


def test_ids_that_do_not_read_back_are_exit_10_naming_the_file(tmp_path):
    path = tmp_path / "s.h5"
    ids = _written(path)
    with pytest.raises(OutputWriteError, match=f"cannot write {path}: ids read back differ") as caught:
        h5shard.verify_shard(path, ids[::-1])
    assert caught.value.code == ExitCode.OUTPUT_WRITE


def test_vectors_that_do_not_read_back_are_exit_10_naming_the_output(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    ids = _written(path)
    monkeypatch.setattr(h5shard, "_row_bytes", lambda block: b"not what was written")
    final = tmp_path / "final.h5"
    with pytest.raises(OutputWriteError, match=f"cannot write {final}: dnabert_s vectors read back differ"):
        h5shard.verify_shard(path, ids, written=final)


# ------------------------------------------------------------------ 6. messages that send users the wrong way


def test_a_changed_table_says_to_prepare_into_a_new_folder(tmp_path, golden_prepared):
    """A rerun into the same folder is refused (it holds files virnucpro did not write)."""
    prepared = _copied_prepare(golden_prepared, tmp_path)
    with open(prepared / fmt.SEQUENCES, "a") as handle:
        handle.write("\n")
    with pytest.raises(InconsistentInputsError, match="changed after prepare") as caught:
        fmt.check_tables(prepared, fmt.load_manifest(prepared))
    assert "rerun `virnucpro prepare` with the same inputs and options into a new folder" in str(caught.value)


def test_a_file_given_as_the_prepare_folder_is_exit_3_not_a_prepare_directory(tmp_path, run_cli):
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n")
    code, message = run_cli("predict", "--prepared", readme, "--embeddings", tmp_path / "e.h5",
                            "--outdir", tmp_path / "out")
    assert code == ExitCode.BAD_INPUT and f"{readme} is not a prepare directory" in message, message


def test_an_outdir_that_is_a_dangling_symlink_is_named_so(tmp_path, run_cli):
    """It said "is a file"."""
    link = tmp_path / "results"
    link.symlink_to(tmp_path / "gone" / "results")
    code, message = run_cli("prepare", _fasta(tmp_path / "a.fa"), "--outdir", link)
    assert code == ExitCode.BAD_INPUT and "is a symbolic link to a missing path" in message, message
    assert "is a file" not in message


# ------------------------------------------------------------------ 7. an empty path is a usage error


@pytest.mark.parametrize("args, option", [
    (["prepare", "{fa}", "--outdir", ""], "--outdir"),
    (["prepare", "", "--outdir", "{out}"], "INPUT"),
    (["embed", "{fa}", "--models", "", "--out", "{out}/s.h5"], "--models"),
    (["embed", "{fa}", "--out", ""], "--out"),
    (["embed", "{fa}", "--out", "{out}/s.h5", "--checkpoint-dir", ""], "--checkpoint-dir"),
    (["models", "download", "--dest", ""], "--dest"),
    (["predict", "--prepared", "", "--embeddings", "{fa}", "--outdir", "{out}"], "--prepared"),
    (["run", "{fa}", "--outdir", "{out}", "--classifier", ""], "--classifier"),
])
def test_an_empty_path_is_a_usage_error_naming_the_option(tmp_path, run_cli, monkeypatch, args, option):
    """`Path("")` is the current directory: `prepare --outdir ""` wrote into it."""
    fasta = _fasta(tmp_path / "a.fa")
    here = tmp_path / "cwd"  # where a regression would write
    here.mkdir()
    monkeypatch.chdir(here)
    code, message = run_cli(*(a.format(fa=fasta, out=tmp_path / "out") for a in args))
    assert code == ExitCode.USAGE and option in message and "an empty path" in message, message
    assert not os.listdir(here)


def test_no_home_directory_is_a_clear_error_not_a_bug(tmp_path, run_cli, monkeypatch):
    """No $HOME and a uid without a password entry: Path.home() raised RuntimeError, exit 1."""
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    code, message = run_cli("models", "check")
    assert code == ExitCode.USAGE and "VIRNUCPRO_MODELS" in message and "models check DIR" in message, message
    assert "bug" not in message



@pytest.mark.parametrize("command", [["prepare"], ["embed"], ["predict"], ["run"], ["models", "download"]])
def test_path_options_say_dir_or_file_in_help(command):
    """The custom path parser made typer print the Python type (`<Path>`) for every path option."""
    done = subprocess.run([*CLI, *command, "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0 and "DIR" in done.stdout, done.stdout
    options = [line for line in done.stdout.splitlines() if line.lstrip("│ *").startswith("--")]
    assert not [line for line in options if "<Path>" in line or "<list[Path]>" in line], options


@pytest.mark.parametrize("command, placeholder", [(["prepare"], "INPUT"), (["run"], "INPUT"), (["embed"], "SHARD"),
                                                  (["predict"], "MORE.h5"), (["models", "tiny"], "DIR")])
def test_usage_lines_name_arguments_as_placeholders(command, placeholder):
    """The usage line showed the Python parameter name (`{inputs}...`) where users expect INPUT."""
    done = subprocess.run([*CLI, *command, "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    usage = next(line for line in done.stdout.splitlines() if "Usage:" in line)
    assert placeholder in usage and not any(name in usage for name in ("inputs", "shard", "directory")), usage


def test_a_manifest_only_unreadable_names_its_owner_not_damage(models):
    """A shared store's manifest of mode 0600 owned by another user was "unreadable or not JSON", with
    the advice to move it out of a folder this user cannot even write."""
    manifest = models / "manifest.json"
    os.chown(manifest, 4321, 4321)
    manifest.chmod(0o600)
    done = _run("models", "check", models)
    assert done.returncode == ExitCode.MODELS, done.stderr
    assert f"cannot read {manifest}: Permission denied" in done.stderr, done.stderr
    assert "belongs to uid 4321" in done.stderr and "not JSON" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_manifest_the_storage_fails_to_read_is_not_told_to_chmod(models, run_cli, monkeypatch):
    """An I/O error reading a readable manifest was given the fix "make it readable (chmod u+r ...)"."""
    import errno

    from virnucpro.models import store

    def failing(path, limit):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(store, "read_small_file", failing)
    code, message = run_cli("models", "check", models)
    assert code == ExitCode.MODELS, message
    assert f"cannot read {models / 'manifest.json'}: Input/output error" in message, message
    assert "chmod" not in message and "dmesg" in message, message
