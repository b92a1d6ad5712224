"""Output folders and files on file systems unlike ext4: a case-insensitive exFAT mounted through FUSE
(each spelling of a name its own inode, so flocks through two spellings miss each other), and a
read-only models folder. Real mounts; skipped where this machine cannot make them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mount_helpers import fuse_file_system, remount_read_only, tmpfs
from virnucpro import prepared as fmt
from virnucpro.errors import ExitCode
from virnucpro.outdir import file_lock, folder_lock, on_disk_spelling

EXAMPLE = Path(__file__).parents[1] / "examples" / "example.fa"


def virnucpro(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "virnucpro", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def case_insensitive(tmp_path) -> Path:
    """A folder on an exFAT file system mounted through FUSE."""
    with fuse_file_system("exfat", tmp_path) as point:
        yield point


def test_on_a_case_sensitive_file_system_every_spelling_is_its_own(tmp_path):
    (tmp_path / "Out").mkdir()
    (tmp_path / "oUT").mkdir()
    assert on_disk_spelling(tmp_path / "Out" / "x") == tmp_path / "Out" / "x"
    assert on_disk_spelling(tmp_path / "out") == tmp_path / "out"


def test_the_spelling_a_case_insensitive_file_system_lists_is_the_one_locked(case_insensitive):
    (case_insensitive / "Sample").mkdir()
    assert on_disk_spelling(case_insensitive / "sAMPLE" / ".lock") == case_insensitive / "Sample" / ".lock"


@pytest.mark.parametrize("output", ["outdir", "embed_out"])
def test_two_spellings_of_one_output_are_one_a_second_command_is_refused(case_insensitive, small_sample, tiny_models,
                                                                          output):
    """An output folder held as `Out` (a file as `S.h5`), a second command given `out` (`s.h5`)."""
    shard = small_sample[0] / "shards" / fmt.shard_name(0)
    held, command = {
        "outdir": (lambda: folder_lock(case_insensitive / "Out", "--outdir"),
                   ["prepare", EXAMPLE, "--outdir", case_insensitive / "out"]),
        "embed_out": (lambda: file_lock(case_insensitive / "S.h5", "--out"),
                      ["embed", shard, "--out", case_insensitive / "s.h5", "--models", tiny_models, "--device", "cpu",
                       "--threads", "1"]),
    }[output]
    with held():
        second = virnucpro(*command)
    assert second.returncode == ExitCode.BAD_INPUT, second.stderr
    assert "is in use by another virnucpro command" in second.stderr, second.stderr


def test_embed_out_that_finds_a_file_spelled_otherwise_is_refused_not_replaced(case_insensitive, small_sample,
                                                                              tiny_models):
    prepared, _ = small_sample
    shard = prepared / "shards" / fmt.shard_name(0)
    common = ["--models", tiny_models, "--device", "cpu", "--threads", "1"]
    assert virnucpro("embed", shard, "--out", case_insensitive / "S.h5", *common).returncode == 0
    before = (case_insensitive / "S.h5").read_bytes()
    second = virnucpro("embed", shard, "--out", case_insensitive / "s.h5", *common)
    assert second.returncode == ExitCode.BAD_INPUT, second.stderr
    assert "finds the file S.h5" in second.stderr and "--out" in second.stderr, second.stderr
    assert os.listdir(case_insensitive) == ["S.h5"] and (case_insensitive / "S.h5").read_bytes() == before


def test_run_with_models_to_download_into_a_read_only_folder_is_exit_4_before_preparing(tmp_path):
    with tmpfs(tmp_path / "models", "1m") as models:
        remount_read_only(models)
        done = virnucpro("run", EXAMPLE, "--outdir", tmp_path / "out", "--device", "cpu",
                         env={"VIRNUCPRO_MODELS": str(models), "HF_HUB_OFFLINE": ""})
    assert done.returncode == ExitCode.MODELS, done.stderr
    assert "cannot be downloaded into it" in done.stderr and "--dest DIR" in done.stderr, done.stderr
    assert "prepare" not in done.stderr and not (tmp_path / "out").exists(), done.stderr
