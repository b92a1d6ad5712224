"""Edges of the command-line options themselves.

- `embed --checkpoint-dir` (and `--compile-cache`) naming `--out`, a folder inside it, or the lock
  file beside it is refused at start-up (exit 3, both options named): the checkpoint folder was made
  at the embedding file's name, and the finished shard was then refused after all the work, with
  advice ("move it away") that only made the next run do the same. A checkpoint folder that merely
  holds `--out` (`--checkpoint-dir . --out a.h5`) stays fine.
- A leading `~` or `~user` in every path option and argument is expanded as the shell would (as
  --models always was): `--outdir=~/x`, which the shell leaves alone after `=`, made a folder named
  `~` in the current one. A user nobody knows is exit 2 naming the option, never a traceback.
- `--threshold` that is no number between 0 and 1 (nan, inf, 1.5) says so (exit 2).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import pwd
import re
from pathlib import Path

import pytest

BOX = re.compile("[\u2500-\u257f]")  # the frame typer draws around a usage error

from virnucpro import prepared as fmt

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example.fa"


def shard(prepared: Path) -> Path:
    return prepared / "shards" / fmt.shard_name(0)


def embed_args(prepared: Path, models: Path, out, *more) -> tuple:
    return ("embed", shard(prepared), "--models", models, "--out", out, "--device", "cpu", "--threads", "1", *more)


# --- --checkpoint-dir and --out ------------------------------------------------------------------

def _same(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "g" / "a.h5", tmp_path / "g" / "a.h5"


def _inside(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "g" / "a.h5", tmp_path / "g" / "a.h5" / "ck"


def _lock_file(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "g" / "a.h5", tmp_path / "g" / ".a.h5.lock"


def _through_link(tmp_path: Path) -> tuple[Path, Path]:
    """The checkpoint folder's name is a link to where --out goes (nothing there yet)."""
    (tmp_path / "g").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "g" / "a.h5")
    return tmp_path / "g" / "a.h5", tmp_path / "link"


def _out_through_link(tmp_path: Path) -> tuple[Path, Path]:
    """--out names its folder through a link; the checkpoint folder names the real one."""
    (tmp_path / "real").mkdir()
    (tmp_path / "g").symlink_to(tmp_path / "real")
    return tmp_path / "g" / "a.h5", tmp_path / "real" / "a.h5"


@pytest.mark.parametrize("paths", [_same, _inside, _lock_file, _through_link, _out_through_link],
                         ids=["same", "inside", "lock-file", "link", "out-via-link"])
def test_checkpoint_dir_over_out_is_refused_at_start(tmp_path, run_cli, small_sample, tiny_models, paths):
    prepared, _h5 = small_sample
    out, checkpoints = paths(tmp_path)
    code, message = run_cli(*embed_args(prepared, tiny_models, out, "--checkpoint-dir", checkpoints))
    assert code == 3, message
    assert "--checkpoint-dir" in message and "--out" in message and str(out) in message, message
    assert "Traceback" not in message and "move it away" not in message, message
    assert "loading DNABERT-S" not in message, "refused only after the models were loaded"
    assert not os.path.lexists(out) and not os.path.lexists(out.parent / f".{out.name}.lock"), "left something behind"


def test_compile_cache_over_out_is_refused_at_start(tmp_path, run_cli, small_sample, tiny_models):
    prepared, _h5 = small_sample
    out = tmp_path / "g" / "a.h5"
    code, message = run_cli(*embed_args(prepared, tiny_models, out, "--compile-cache", out))
    assert code == 3, message
    assert "--compile-cache" in message and "--out" in message, message
    assert not os.path.lexists(out)


def test_checkpoint_dir_holding_out_still_works(tmp_path, run_cli, small_sample, tiny_models, monkeypatch):
    """`--checkpoint-dir . --out a.h5`: the checkpoint keys are folders of their own beside the file."""
    prepared, _h5 = small_sample
    monkeypatch.chdir(tmp_path)
    code, message = run_cli(*embed_args(prepared, tiny_models, "a.h5", "--checkpoint-dir", "."))
    assert code == 0, message
    assert (tmp_path / "a.h5").is_file()


# --- ~ in path options ---------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home of the test's own, and a current folder that is not it."""
    folder = tmp_path / "home"
    folder.mkdir()
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.chdir(here)
    return folder


def test_tilde_after_equals_is_the_home(home, run_cli):
    code, message = run_cli("prepare", EXAMPLE, "--outdir=~/x")
    assert code == 0, message
    assert (home / "x" / "manifest.json").is_file()
    assert not os.path.lexists(Path.cwd() / "~"), "made a folder named ~ in the current one"


def test_tilde_in_input_and_embed_paths(home, run_cli, tiny_models):
    (home / "a.fa").write_bytes(EXAMPLE.read_bytes())
    code, message = run_cli("prepare", "~/a.fa", "-o", "~/p")
    assert code == 0, message
    code, message = run_cli("embed", "~/p/shards/shard_00000.tsv", "--models", tiny_models, "--out=~/e/s.h5",
                            "--checkpoint-dir=~/ck", "--device", "cpu", "--threads", "1")
    assert code == 0, message
    assert (home / "e" / "s.h5").is_file() and (home / "ck").is_dir()
    assert not os.path.lexists(Path.cwd() / "~")


def test_tilde_user_is_that_users_home(home, run_cli):
    user = getpass.getuser()
    code, message = run_cli("predict", f"--prepared=~{user}/virnucpro-no-such-folder", "--embeddings", "x.h5",
                            "-o", "out")
    assert code == 3, message
    assert str(Path(pwd.getpwnam(user).pw_dir) / "virnucpro-no-such-folder") in message, message


def test_unknown_user_is_a_usage_error(home, run_cli):
    code, message = run_cli("prepare", EXAMPLE, "--outdir=~virnucpro-no-such-user/x")
    message = " ".join(BOX.sub(" ", message).split())
    assert code == 2, message
    assert "--outdir" in message and "~virnucpro-no-such-user" in message, message
    assert "Traceback" not in message
    assert not os.listdir(Path.cwd())


def test_an_existing_file_named_tilde_unknown_user_is_read_as_it_is(home, run_cli):
    """A review's case: `prepare '~x.fa'` with that file here was exit 2 (no user `x.fa`); the shell
    leaves `~nosuchuser` as it is, and so does the CLI when the path exists."""
    shutil.copy(EXAMPLE, Path.cwd() / "~x.fa")
    code, message = run_cli("prepare", "~x.fa", "-o", "out")
    assert code == 0, message
    assert (Path.cwd() / "out" / "manifest.json").is_file()


def test_a_path_under_an_existing_folder_named_tilde_unknown_user_is_used_as_it_is(home, run_cli):
    """A second review's case: `-o '~nosuch/x'` with a folder `~nosuch` here was exit 2, and so was
    `models check '~nosuch'` with that folder there; the shell leaves both as they are."""
    (Path.cwd() / "~virnucpro-no-such-user").mkdir()
    code, message = run_cli("prepare", EXAMPLE, "-o", "~virnucpro-no-such-user/x")
    assert code == 0, message
    assert (Path.cwd() / "~virnucpro-no-such-user" / "x" / "manifest.json").is_file()
    code, message = run_cli("models", "tiny", "~virnucpro-no-such-user/m")
    assert code == 0, message
    code, message = run_cli("models", "check", "~virnucpro-no-such-user/m")
    assert code == 0 and "cannot be determined" not in message, message
    assert not os.listdir(home)


def test_relative_path_keeps_a_literal_tilde(home, run_cli):
    """`./~x` is how to name a file called `~x` in the current folder, as in the shell."""
    code, message = run_cli("prepare", EXAMPLE, "--outdir=./~x")
    assert code == 0, message
    assert (Path.cwd() / "~x" / "manifest.json").is_file()


def test_models_folder_given_as_dot_slash_tilde_is_made_here(home, run_cli):
    """`models tiny ./~x` was exit 2 (no user `x`): pathlib shortened the argument to `~x` before the
    store expanded it."""
    code, message = run_cli("models", "tiny", "./~virnucpro-no-such-user")
    assert code == 0, message
    assert (Path.cwd() / "~virnucpro-no-such-user").is_dir()
    assert not os.listdir(home)


def test_dot_slash_tilde_of_a_real_user_is_never_their_home(home, monkeypatch):
    """`--models ./~root` and `--compile-cache ./~root` named root's home, and so did
    `VIRNUCPRO_MODELS=./~root`: each is a folder `~root` in the current one."""
    from virnucpro import cli
    from virnucpro.encoders.compiled import _named
    from virnucpro.models import store

    given = f"./~{getpass.getuser()}"
    here = Path.cwd() / given[2:]
    assert store.models_dir(cli._models_path(given)) == here
    assert _named(cli._path(given)) == here
    monkeypatch.setenv("VIRNUCPRO_MODELS", given)
    assert store.models_dir() == here


# --- --threshold -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1.5", "-0.1", "abc", "1e400"])
def test_threshold_not_between_0_and_1(tmp_path, run_cli, value):
    code, message = run_cli("predict", "--prepared", tmp_path, "--embeddings", tmp_path / "x.h5",
                            "-o", tmp_path / "out", f"--threshold={value}")
    message = " ".join(BOX.sub(" ", message).split())
    assert code == 2, message
    assert "--threshold" in message and "a number between 0 and 1" in message, message
    assert "Input should be" not in message


@pytest.mark.parametrize("value", ["0", "1", "0.25", "-0"])
def test_threshold_in_range_is_taken(tmp_path, run_cli, small_sample, tiny_models, value):
    prepared, h5 = small_sample
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", h5, "-o", tmp_path / "out",
                            "--models", tiny_models, "--threshold", value)
    assert code == 0, message
    assert json.loads((tmp_path / "out" / "run_info.json").read_text())["threshold"] == float(value), message


@pytest.mark.parametrize("value", ["nan", "0.5", "-1", "abc"])
def test_checkpoint_seconds_not_a_number_of_seconds(tmp_path, run_cli, value):
    code, message = run_cli("embed", tmp_path / "s.tsv", "--out", tmp_path / "s.h5", f"--checkpoint-seconds={value}")
    message = " ".join(BOX.sub(" ", message).split())
    assert code == 2, message
    assert "--checkpoint-seconds" in message and "not a number of seconds of at least 1" in message, message


@pytest.mark.parametrize("cache", ["r", "r/cache"])
def test_run_compile_cache_in_outdir_is_refused_at_start(tmp_path, run_cli, tiny_models, cache):
    """The cache outlives the run; on a GPU it was refused only once the models loaded, after prepare."""
    code, message = run_cli("run", EXAMPLE, "-o", tmp_path / "r", "--compile-cache", tmp_path / cache,
                            "--models", tiny_models, "--device", "cpu", "--offline", "--threads", "1")
    assert code == 3, message
    assert "--compile-cache" in message and "--outdir" in message and "Traceback" not in message, message
    assert not os.path.lexists(tmp_path / "r"), "the run started"


@pytest.mark.parametrize("option", ["--outdir", "--out", "--checkpoint-dir", "--compile-cache"])
def test_dash_as_an_output_is_a_usage_error(tmp_path, run_cli, small_sample, tiny_models, option, monkeypatch):
    """`-` reads as standard output: `--out -` wrote an HDF5 file named `-`, `--outdir -` a folder."""
    monkeypatch.chdir(tmp_path)
    prepared, _ = small_sample
    if option == "--outdir":
        args = ("prepare", EXAMPLE, "--outdir", "-")
    else:
        defaults = {"--out": tmp_path / "a.h5", "--checkpoint-dir": tmp_path / "c", "--compile-cache": tmp_path / "k"}
        defaults[option] = "-"
        args = ("embed", shard(prepared), "--models", tiny_models, "--device", "cpu",
                *(part for pair in defaults.items() for part in pair))
    code, message = run_cli(*args)
    assert code == 2 and option in message and "would be standard output" in " ".join(message.split()), message
    assert not (tmp_path / "-").exists() and not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("command", ["embed", "predict"])
def test_dash_as_a_shard_is_a_usage_error(tmp_path, run_cli, small_sample, command):
    prepared, embedded = small_sample
    args = (("embed", "-", "--out", tmp_path / "a.h5", "--device", "cpu") if command == "embed" else
            ("predict", "--prepared", prepared, "--embeddings", "-", "--outdir", tmp_path / "p"))
    code, message = run_cli(*args)
    flat = " ".join(message.split())
    assert code == 2 and "stands for standard input" in flat and "not found" not in flat, message


@pytest.mark.parametrize("args", [("models", "tiny", "-"), ("models", "download", "--dest", "-"),
                                  ("models", "check", "-")])
def test_dash_as_a_models_folder_is_a_usage_error(tmp_path, run_cli, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    code, message = run_cli(*args)
    assert code == 2 and "'-' is no models folder" in " ".join(message.split()), message
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("option", ["--prepared", "--classifier"])
def test_dash_as_a_stage_file_is_a_usage_error(tmp_path, run_cli, small_sample, option):
    prepared, embedded = small_sample
    values = {"--prepared": prepared, "--classifier": None}
    values[option] = "-"
    args = ["predict", "--embeddings", embedded, "--outdir", tmp_path / "p"]
    args += [part for name, value in values.items() if value is not None for part in (name, value)]
    code, message = run_cli(*args)
    assert code == 2 and option in message and "stands for standard input" in " ".join(message.split()), message
