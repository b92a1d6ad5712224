"""What `models check` says about a models file that is there but is no plain file, and about a
models folder that does not exist.

- a FIFO, a link to a device or a dangling link at a model file's name is not MISSING: it is named
  for what it is, and the hint moves it away first (`models tiny` and `models download` never
  replace what they did not write, so a hint naming them alone would send the user to a refusal);
- a folder that does not exist is named quoted (a stray space shows), with where it came from
  (VIRNUCPRO_MODELS) and any whitespace at the ends of its names pointed out (never stripped: a
  folder name may end in a space).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from virnucpro.errors import ExitCode

CLASSIFIER = "300_model_tiny.pth"


def _put_fifo(path: Path) -> str:
    os.mkfifo(path)
    return "a FIFO"


def _put_device_link(path: Path) -> str:
    path.symlink_to("/dev/zero")
    return "a link to /dev/zero (a device)"


def _put_dangling_link(path: Path) -> str:
    path.symlink_to(path.parent / "gone.pth")
    return f"a link to {path.parent / 'gone.pth'} (a missing path)"


@pytest.mark.parametrize("put", [_put_fifo, _put_device_link, _put_dangling_link])
def test_a_model_file_that_is_no_plain_file_is_named_so_with_a_hint_to_move_it(models, run_cli, put):
    target = models / CLASSIFIER
    target.unlink()
    what = put(target)
    code, err = run_cli("models", "check", models)
    flat = " ".join(err.split())
    assert code == ExitCode.MODELS, err
    assert "MISSING" not in err, err
    assert f"{target} is {what}, not a plain file" in flat, err
    assert f"move {shlex.quote(str(target))} out of the models folder" in flat, err
    assert f"then run `virnucpro models tiny {models}`" in flat, err


def test_after_moving_it_away_the_hinted_command_puts_the_folder_right(models, run_cli):
    target = models / CLASSIFIER
    target.unlink()
    _put_fifo(target)
    assert run_cli("models", "check", models)[0] == ExitCode.MODELS
    target.rename(models.parent / "moved")
    assert run_cli("models", "tiny", models)[0] == 0
    assert run_cli("models", "check", models)[0] == 0


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_a_role_folder_that_is_no_folder_is_named_and_the_hinted_command_then_works(models, run_cli, kind):
    """DNABERT-S-tiny/ replaced by a file or a dangling link was reported as its files missing, with
    `models tiny` as the fix, which refuses the folder as it is."""
    import shutil
    folder = models / "DNABERT-S-tiny"
    shutil.rmtree(folder)
    if kind == "file":
        folder.write_text("x\n")
        what = "a file, not a folder"
    else:
        folder.symlink_to(models.parent / "gone")
        what = f"a link to {models.parent / 'gone'} (a missing path), which virnucpro never writes through"
    code, err = run_cli("models", "check", models)
    flat = " ".join(err.split())
    assert code == ExitCode.MODELS and "MISSING" not in err, err
    assert f"dnabert_s: {folder} is {what}" in flat and flat.count(f"{folder} is ") == 1, err
    assert f"move {shlex.quote(str(folder))} out of the models folder" in flat, err
    folder.rename(models.parent / "moved")
    assert run_cli("models", "tiny", models)[0] == 0
    assert run_cli("models", "check", models)[0] == 0


def test_embed_refuses_such_a_folder_with_the_same_words(models):
    from virnucpro.errors import ModelsError
    from virnucpro.models import store

    (models / CLASSIFIER).unlink()
    _put_fifo(models / CLASSIFIER)
    with pytest.raises(ModelsError) as refused:
        store.locate(models)
    assert "a FIFO, not a plain file" in refused.value.message
    assert "move " in refused.value.hint


def test_a_models_variable_with_a_trailing_space_is_quoted_and_said(tmp_path, run_cli, monkeypatch):
    (tmp_path / "M").mkdir()
    monkeypatch.setenv("VIRNUCPRO_MODELS", f"{tmp_path}/M ")
    code, err = run_cli("models", "check")
    flat = " ".join(err.split())
    assert code == ExitCode.MODELS, err
    assert f"models directory '{tmp_path}/M ' (from VIRNUCPRO_MODELS) does not exist" in flat, err
    assert "the value of VIRNUCPRO_MODELS ends with whitespace" in flat, err


def test_a_models_variable_with_a_leading_space_is_said_too(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIRNUCPRO_MODELS", f" {tmp_path}/M")
    code, err = run_cli("models", "check")
    flat = " ".join(err.split())
    assert code == ExitCode.MODELS, err
    assert f"(VIRNUCPRO_MODELS=' {tmp_path}/M') does not exist" in flat, err
    assert "the value of VIRNUCPRO_MODELS begins with whitespace" in flat, err


def test_a_folder_name_given_with_a_trailing_space_is_pointed_out(tmp_path, run_cli, monkeypatch):
    monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
    code, err = run_cli("models", "check", f"{tmp_path}/M ")
    flat = " ".join(err.split())
    assert code == ExitCode.MODELS, err
    assert f"models directory '{tmp_path}/M ' does not exist; note: the folder name 'M ' ends with whitespace" in flat
    assert "VIRNUCPRO_MODELS" not in flat, err


def test_a_plain_missing_folder_gets_no_whitespace_note(tmp_path, run_cli, monkeypatch):
    monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
    code, err = run_cli("models", "check", tmp_path / "none")
    assert code == ExitCode.MODELS, err
    assert f"models directory {tmp_path / 'none'} does not exist" in err, err
    assert "whitespace" not in err and "VIRNUCPRO_MODELS" not in err, err


def test_download_says_the_same_instead_of_writing_beside_it(models):
    from virnucpro.errors import ModelsError
    from virnucpro.models import download, store

    (models / CLASSIFIER).unlink()
    _put_fifo(models / CLASSIFIER)
    with pytest.raises(ModelsError) as refused:
        download._to_download(models, list(store.ROLES), offline=True)
    assert "a FIFO, not a plain file" in refused.value.message
    assert refused.value.hint.startswith(f"move {models / CLASSIFIER} out of the models folder")


def test_a_missing_default_folder_first_asks_where_the_models_are(tmp_path, run_cli, monkeypatch):
    """No folder named (a container run without --models, say): downloading into the default
    folder is the second advice, after naming the folder the models are in. A folder that was
    named keeps the download command as its hint."""
    monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    code, err = run_cli("models", "check")
    flat = " ".join(err.split())
    assert code == ExitCode.MODELS, err
    assert f"models directory {tmp_path}/data/virnucpro/models does not exist" in flat, err
    assert ("name the folder that holds the models (--models DIR, or VIRNUCPRO_MODELS=DIR; in a container, a "
            f"folder mounted into it), or download them into this default folder: virnucpro models download "
            f"--dest {tmp_path}/data/virnucpro/models") in flat, err
    code, err = run_cli("models", "check", tmp_path / "named")
    assert code == ExitCode.MODELS and "name the folder" not in err, err


def test_a_linked_role_folder_lacking_a_file_names_the_link_and_the_file(models, run_cli, tmp_path):
    """A hand-staged `DNABERT-S-tiny -> elsewhere` is used while whole; lacking a file, the link is
    what to move (virnucpro never writes through it), and the file it lacks is named."""
    elsewhere = tmp_path / "elsewhere"
    (models / "DNABERT-S-tiny").rename(elsewhere)
    (models / "DNABERT-S-tiny").symlink_to(elsewhere)
    assert run_cli("models", "check", models)[0] == 0
    (elsewhere / "tokenizer.json").unlink()
    code, err = run_cli("models", "check", models)
    flat = " ".join(err.split())
    assert code == ExitCode.MODELS, err
    assert f"is a link to {elsewhere} (a folder) without tokenizer.json, which virnucpro never writes through" in flat
