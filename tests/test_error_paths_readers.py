"""Error paths of the readers: an input inside a folder this user cannot enter is a read that failed
(exit 3, or 4 for a models file), named with the folder to open, never the exit 10 of an output not
written (Python 3.11's `Path.exists`/`is_file`/`is_dir` raise PermissionError there); and a stop
signal as a models file's temporary is made leaves nothing in the models folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import prepared as fmt
from virnucpro.errors import ExitCode
from permission_helpers import unprivileged

CLI = [sys.executable, "-m", "virnucpro"]
FOLDER_FIX = "chmod u+rx"


def _run_shut_out(folder: Path, *args) -> subprocess.CompletedProcess:
    """`virnucpro ARGS` without the permission bypass of root, while `folder` cannot be entered."""
    prefix = unprivileged()
    folder.chmod(0)
    try:
        return subprocess.run([*prefix, *CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    finally:
        folder.chmod(0o755)


def _assert_read_refused(done: subprocess.CompletedProcess, code: ExitCode, path: Path, folder: Path) -> None:
    """Exit `code`, naming the file that could not be read and the folder to open; not a failed write."""
    assert done.returncode == code, done.stderr
    assert f"cannot read {path}: permission denied on its folder {folder}" in done.stderr, done.stderr
    assert FOLDER_FIX in done.stderr and "cannot write" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def shut_classifier(tmp_path, tiny_models) -> tuple[Path, Path]:
    """(a copy of the tiny 500-bp classifier, the folder that holds it, which tests shut)."""
    folder = tmp_path / "classifier"
    folder.mkdir()
    return Path(shutil.copy(tiny_models / "500_model_tiny.pth", folder)), folder


def test_a_shard_in_a_folder_that_cannot_be_entered_is_exit_3(tmp_path, small_sample, tiny_models):
    """The reviewer's case: `embed sh000/shard_00000.tsv` with sh000 at mode 000 said "cannot write
    sh000/shard_00000.tsv ... free space", exit 10."""
    folder = tmp_path / "sh000"
    folder.mkdir()
    shard = Path(shutil.copy(small_sample[0] / fmt.SHARD_DIR / fmt.shard_name(0), folder))
    done = _run_shut_out(folder, "embed", shard, "--models", tiny_models, "--out", tmp_path / "e" / "x.h5",
                         "--device", "cpu")
    _assert_read_refused(done, ExitCode.BAD_INPUT, shard, folder)


def test_a_prepare_folder_inside_a_folder_that_cannot_be_entered_is_exit_3(tmp_path, small_sample, tiny_models):
    """`load_manifest` asked `exists()` of the prepare folder before its guarded read."""
    outer = tmp_path / "outer"
    prepared = Path(shutil.copytree(small_sample[0], outer / "prepared"))
    done = _run_shut_out(outer, "predict", "--prepared", prepared, "--embeddings", small_sample[1],
                         "--outdir", tmp_path / "out", "--models", tiny_models)
    _assert_read_refused(done, ExitCode.BAD_INPUT, prepared, outer)


def test_a_classifier_in_a_folder_that_cannot_be_entered_is_exit_4_in_predict(tmp_path, small_sample, tiny_models,
                                                                               shut_classifier):
    classifier, folder = shut_classifier
    done = _run_shut_out(folder, "predict", "--prepared", small_sample[0], "--embeddings", small_sample[1],
                         "--outdir", tmp_path / "out", "--models", tiny_models, "--classifier", classifier)
    _assert_read_refused(done, ExitCode.MODELS, classifier, folder)


@pytest.mark.parametrize("chunk_size", [["--chunk-size", "500"], ["--chunk-size", "400", "--allow-any-chunk-size"]],
                         ids=["published chunk size", "own chunk size"])
def test_a_classifier_in_a_folder_that_cannot_be_entered_is_exit_4_in_run(tmp_path, small_sample, tiny_models,
                                                                           shut_classifier, chunk_size):
    """At a chunk size of its own the classifier went straight to the loader, which asked `exists()`."""
    classifier, folder = shut_classifier
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\n" + "ATGAAACCCGGGTTTTAA" * 40 + "\n")
    done = _run_shut_out(folder, "run", fasta, "--outdir", tmp_path / "out", "--models", tiny_models,
                         "--classifier", classifier, "--device", "cpu", *chunk_size)
    _assert_read_refused(done, ExitCode.MODELS, classifier, folder)


def test_a_models_folder_inside_a_folder_that_cannot_be_entered_names_that_folder(tmp_path, small_sample,
                                                                                  tiny_models):
    """It was exit 4 telling to make the models folder readable (chmod u+r), which it already was."""
    outer = tmp_path / "outer"
    models = Path(shutil.copytree(tiny_models, outer / "models"))
    done = _run_shut_out(outer, "embed", small_sample[0] / fmt.SHARD_DIR / fmt.shard_name(0), "--models", models,
                         "--out", tmp_path / "x.h5", "--device", "cpu")
    _assert_read_refused(done, ExitCode.MODELS, models, outer)


# a stop signal arriving the moment the temporary file exists (as if between its creation and the
# line that keeps its name): the models manifest is written under the package's stop handling
STOP_AS_MADE = """
import os, signal, sys
from pathlib import Path
from virnucpro.errors import InterruptedByUser, stop_signals_exit_interrupted
from virnucpro.models import store

made = store.new_temporary_file
def made_then_stopped(*args, **kwargs):
    created = made(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return created
store.new_temporary_file = made_then_stopped
try:
    with stop_signals_exit_interrupted():
        store.write_manifest(Path(sys.argv[1]), {"models": {}})
except InterruptedByUser:
    sys.exit(6)
"""


def test_a_stop_as_the_temporary_is_made_leaves_nothing_in_the_models_folder(tmp_path):
    """`replaced_like` made its temporary before its guarded block: a stop signal right after left
    `.manifest.json.XXXX.tmp` in the models folder."""
    folder = tmp_path / "models"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", STOP_AS_MADE, str(folder)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 6, done.stderr
    assert sorted(path.name for path in folder.iterdir()) == [], done.stderr


def test_load_classifier_names_a_folder_that_cannot_be_entered(shut_classifier):
    """`load_classifier` itself (models download and the models folder's checks call it too) asked
    `exists()` first: a folder that cannot be entered was a PermissionError, not a models error."""
    classifier, folder = shut_classifier
    load = ("import sys\nfrom virnucpro.classifier import load_classifier\nfrom virnucpro.errors import ModelsError\n"
            "try:\n    load_classifier(sys.argv[1])\nexcept ModelsError as exc:\n    print(exc)\n    sys.exit(4)\n")
    prefix = unprivileged()
    folder.chmod(0)
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", load, str(classifier)], capture_output=True, text=True,
                              timeout=300)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 4 and f"permission denied on its folder {folder}" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("mode", [0o704, 0o701])
def test_an_embeddings_folder_that_cannot_be_listed_and_entered_asks_for_both(tmp_path, small_sample, tiny_models,
                                                                             mode):
    """A reviewer's case: a folder others may list but not enter (o+r, no x) was "cannot read embedding
    shard FOLDER", fix `chmod o+r FOLDER`, which brought the same error back."""
    prepared, h5 = small_sample
    folder = tmp_path / "emb"
    folder.mkdir()
    shutil.copy(h5, folder)
    shutil.chown(folder, 65534, 65534)
    folder.chmod(mode)
    done = subprocess.run([*unprivileged(), *CLI, "predict", "--prepared", str(prepared), "--embeddings", str(folder),
                           "--outdir", str(tmp_path / "out"), "--models", str(tiny_models)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert f"cannot read embedding folder {folder}: permission denied" in done.stderr, done.stderr
    assert "o+rx" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_stage_path_through_a_file_is_a_wrong_path_exit_3_not_a_damaged_folder(tmp_path, small_sample, tiny_models,
                                                                                 run_cli):
    """A reviewer's cases: `--prepared a.fa/x` was "the prepare folder was edited or damaged" and
    `--embeddings a.fa/x` "cannot be read as an HDF5 embedding shard", both exit 5."""
    prepared, h5 = small_sample
    plain = tmp_path / "a.fa"
    plain.write_text(">a\nACGT\n")
    code, message = run_cli("predict", "--prepared", plain / "x", "--embeddings", h5, "--outdir", tmp_path / "o1",
                            "--models", tiny_models)
    assert code == ExitCode.BAD_INPUT and "a part of its path is a file, not a folder" in message, message
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", plain / "x", "--outdir", tmp_path / "o2",
                            "--models", tiny_models)
    assert code == ExitCode.BAD_INPUT and f"embedding shard {plain / 'x'} cannot be reached" in message, message


def test_an_input_linked_into_a_folder_that_cannot_be_entered_names_that_folder(tmp_path):
    """A review of the fix: `pub/link.fa -> ../secret/x.fa` named `pub` (open to all) as the folder to
    open; the folder at fault is `secret`, on the way to where the link leads."""
    secret, pub = tmp_path / "secret", tmp_path / "pub"
    secret.mkdir()
    pub.mkdir()
    (secret / "x.fa").write_text(">a\nATGAAACCCGGGTTTAAA\n")
    (pub / "link.fa").symlink_to("../secret/x.fa")
    shutil.chown(secret, 65534, 65534)
    secret.chmod(0o700)
    done = subprocess.run([*unprivileged(), *CLI, "prepare", str(pub / "link.fa"), "--outdir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert f"permission denied on its folder {secret}" in done.stderr and f"folder {pub}" not in done.stderr, done.stderr
