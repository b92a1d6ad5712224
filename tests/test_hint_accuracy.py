"""The fix a storage or models-folder error suggests fits the failure and the command that met it:
a file-size limit (`ulimit -f`, EFBIG) is fixed by raising it, not by free space or another folder
that fails the same way; an option is named only where the command has it (`run` has no
--checkpoint-dir; `models check` takes its folder as a DIR argument, not --models)."""

from __future__ import annotations

import itertools
import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from store_fixtures import FakeHost  # noqa: E402

from virnucpro import prepared as fmt  # noqa: E402
from virnucpro.errors import ExitCode  # noqa: E402
from virnucpro.models import pins  # noqa: E402

# 200 reads of 90 bp without a stop codon: ~440 ORFs, a prepare shard of ~60 KB, a checkpoint part of
# ~140 KB with the tiny models; a limit of 100 KiB stops the part, not prepare
READS = 200
FILE_LIMIT_KIB = 100
RAISE_LIMIT = "ulimit -f unlimited"


def _orf_reads(path: Path) -> Path:
    """A FASTA file of READS open reading frames (fixed seed: the same file every time)."""
    rng = random.Random(7)
    codons = ["".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in ("TAA", "TAG", "TGA")]
    path.write_text("".join(f">r{i}\nATG{''.join(rng.choice(codons) for _ in range(29))}\n" for i in range(READS)))
    return path


def _limited(limit_kib: int, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`virnucpro ARGS` (this venv's) in a shell whose file-size limit is `limit_kib` KiB."""
    command = ["bash", "-c", f'ulimit -f {limit_kib}; exec "$@"', "bash", sys.executable, "-m", "virnucpro",
               *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _fix(stderr: str) -> str:
    """The `fix:` line of an error."""
    assert "Traceback" not in stderr, stderr
    return next(line for line in stderr.splitlines() if line.strip().startswith("fix:"))


# ---------------------------------------------------------------- embed: checkpoint parts


def test_run_checkpoint_part_over_the_file_size_limit_says_raise_it_and_names_no_checkpoint_dir(
        tmp_path, tiny_models):
    """The hint was "free space or choose another --checkpoint-dir": `run` has no such option, and
    free space does not lift a file-size limit."""
    done = _limited(FILE_LIMIT_KIB, "run", _orf_reads(tmp_path / "a.fa"), "--outdir", tmp_path / "out",
                    "--models", tiny_models, "--device", "cpu", "--checkpoint-every", 1000)
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr
    assert "cannot write checkpoint part" in done.stderr, done.stderr
    fix = _fix(done.stderr)
    assert RAISE_LIMIT in fix and "--checkpoint-dir" not in fix, fix
    assert "resumes" not in fix, fix  # the first part failed: there are no parts to resume from


def test_embed_checkpoint_part_over_the_file_size_limit_says_raise_it(tmp_path, tiny_models):
    """The same hint for `embed`, whose checkpoints are elsewhere (--checkpoint-dir): the limit first."""
    from virnucpro.prepare import prepare

    prepare([_orf_reads(tmp_path / "a.fa")], tmp_path / "prepared", chunk_size=500)
    shard = tmp_path / "prepared" / "shards" / fmt.shard_name(0)
    done = _limited(FILE_LIMIT_KIB, "embed", shard, "--out", tmp_path / "s.h5", "--models", tiny_models,
                    "--device", "cpu", "--checkpoint-every", 1000)
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr
    assert "cannot write checkpoint part" in done.stderr, done.stderr
    fix = _fix(done.stderr)
    assert RAISE_LIMIT in fix and "resumes" not in fix, fix  # the first part failed: none to resume from
    assert not (tmp_path / "s.h5").exists()


# ---------------------------------------------------------------- models download


def test_download_over_the_file_size_limit_says_raise_it_not_another_dest(tmp_path):
    """The hint was "free space, or download into another --dest", which fails the same way."""
    spec = pins.SOURCES["classifier_300"].files[0]
    host = FakeHost()
    try:
        host.files[f"/{spec.path}"] = os.urandom(8192)
        env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
        done = _limited(2, "models", "download", "--dest", tmp_path / "m", "--only", "classifier_300",
                        "--mirror", host.url, env=env)
    finally:
        host.close()
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr
    fix = _fix(done.stderr)
    assert RAISE_LIMIT in fix and "--dest" not in fix and "free space" not in fix, fix


@pytest.mark.parametrize("code", [28, 13])  # ENOSPC, EACCES: another --dest does help
def test_download_disk_full_or_refused_still_names_another_dest(tmp_path, code):
    from virnucpro.models import download as dl

    error = dl._write_error(tmp_path / "x.part", OSError(code, os.strerror(code), str(tmp_path / "x.part")))
    assert error.code == ExitCode.OUTPUT_WRITE and "another --dest" in error.hint, error.hint
    assert "ulimit" not in error.hint, error.hint


# ---------------------------------------------------------------- models check: DIR, not --models


@pytest.fixture
def no_models_setting(monkeypatch):
    for name in ("VIRNUCPRO_MODELS", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)


def test_models_check_without_a_home_names_its_dir_argument(run_cli, monkeypatch, tmp_path, no_models_setting):
    """`HOME=relhome virnucpro models check` said "give --models DIR", an option `models check` lacks."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "relhome")
    code, err = run_cli("models", "check")
    assert code == ExitCode.USAGE, err
    fix = _fix(err)
    assert "virnucpro models check DIR" in fix and "--models" not in fix, fix


def test_embed_without_a_home_still_names_models_option(monkeypatch, tmp_path, no_models_setting):
    from virnucpro.errors import VirnucproError
    from virnucpro.models import store

    monkeypatch.setenv("HOME", "relhome")
    with pytest.raises(VirnucproError) as caught:
        store.models_dir(None)
    assert "--models DIR" in caught.value.hint and "models check" not in caught.value.hint


@pytest.fixture
def prepare_output(tmp_path) -> Path:
    """A `virnucpro prepare` output folder (its marker says so)."""
    from virnucpro.prepare import prepare

    prepare([_orf_reads(tmp_path / "a.fa")], tmp_path / "prepared", chunk_size=500)
    return tmp_path / "prepared"


def test_models_check_of_a_command_output_names_its_dir_argument(run_cli, prepare_output, no_models_setting):
    """`virnucpro models check PREPARE_OUTPUT` said "(--models DIR or VIRNUCPRO_MODELS=DIR)"."""
    code, err = run_cli("models", "check", prepare_output)
    assert code == ExitCode.MODELS and "is the output of `virnucpro prepare`" in err, err
    fix = _fix(err)
    assert "virnucpro models check DIR" in fix and "--models" not in fix, fix


def test_models_check_of_a_prepare_manifest_names_its_dir_argument(run_cli, prepare_output, tmp_path,
                                                                    no_models_setting):
    """A prepare output copied without its marker: its manifest is not a models manifest."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "manifest.json").write_bytes((prepare_output / "manifest.json").read_bytes())
    code, err = run_cli("models", "check", copy)
    assert code == ExitCode.MODELS and "not a models folder" in err, err
    fix = _fix(err)
    assert "virnucpro models check DIR" in fix and "--models" not in fix, fix


def test_embed_of_a_command_output_as_models_still_names_models_option(prepare_output, no_models_setting):
    """embed, run and predict take the folder as --models: their hint keeps naming it."""
    from virnucpro.errors import ModelsError
    from virnucpro.models import store

    with pytest.raises(ModelsError) as caught:
        store.locate(prepare_output)
    assert "--models DIR" in caught.value.hint and "models check" not in caught.value.hint


@pytest.mark.parametrize("code, says", [(errno.ESTALE, "mount the storage again"), (errno.ENOTCONN, "mount the storage again"),
                                        (errno.EFBIG, RAISE_LIMIT), (errno.ENOSPC, "another --dest")])
def test_a_download_failure_gets_the_fix_another_dest_gives_only_where_it_helps(code, says, tmp_path):
    """A mutation review's case: storage that went away would have been told to free space or take
    another --dest (the mount is what to fix), as a file-size limit once was."""
    from virnucpro.models.download import _write_error

    error = _write_error(tmp_path / "x.part", OSError(code, os.strerror(code)))
    assert error.code == ExitCode.OUTPUT_WRITE and says in error.hint, error.hint
