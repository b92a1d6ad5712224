"""The fix hints of models messages: each names a command that works on the folder at hand and never
suggests deleting a file virnucpro did not write as a models manifest.

- a `virnucpro prepare` output given as the models folder says what it is (its own manifest.json is
  not a models manifest);
- a folder of tiny test models is put right with `models tiny DIR`, never by downloading the
  published models (other widths, gigabytes) beside the tiny ones;
- a bad `--mirror` is a usage error, and a models path names where it came from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from store_fixtures import closed_port_url  # noqa: E402

from virnucpro.errors import ExitCode, ModelsError  # noqa: E402
from virnucpro.models import download, store  # noqa: E402

NO_USER = "~no_such_user_virnucpro/m"


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (relative name -> digest), dot files included."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".virnucpro.lock")}


@pytest.fixture
def prepared(tmp_path, golden_prepared) -> Path:
    """A copy of a `virnucpro prepare` output (its manifest.json and `.virnucpro.json` marker)."""
    copy = tmp_path / "P"
    shutil.copytree(golden_prepared, copy)
    assert (copy / ".virnucpro.json").is_file() and "models" not in json.loads((copy / "manifest.json").read_text())
    return copy


# ------------------------------------------------------------------ a command's output given as models

@pytest.mark.parametrize("command", ["embed", "check"])
def test_a_prepare_output_given_as_models_says_what_it_is_and_leaves_it_alone(prepared, tmp_path, run_cli,
                                                                              command):
    before = _snapshot(prepared)
    args = (["embed", prepared / "shards" / "shard_00000.tsv", "--models", prepared, "--out", tmp_path / "z.h5"]
            if command == "embed" else ["models", "check", prepared])
    code, err = run_cli(*args)
    assert code == ExitCode.MODELS, err
    assert f"{prepared} is the output of `virnucpro prepare`, not a models folder" in err, err
    assert "delete" not in err and f"--dest {prepared}" not in err, err
    assert "--dest NEW_FOLDER" in err, err
    assert ("`virnucpro models check DIR`" if command == "check" else "--models") in err, err
    assert _snapshot(prepared) == before


def test_a_prepare_manifest_without_its_marker_is_not_taken_for_a_models_manifest(prepared, run_cli):
    (prepared / ".virnucpro.json").unlink()  # copied with `cp P/* Q/`, say
    code, err = run_cli("models", "check", prepared)
    assert code == ExitCode.MODELS, err
    assert f"{prepared} is not a models folder" in err and "virnucpro prepare" in err, err
    assert "format_version" not in err and "delete" not in err and f"--dest {prepared}" not in err, err


def test_tiny_models_are_never_written_into_a_prepare_output(prepared, run_cli):
    before = _snapshot(prepared)
    code, err = run_cli("models", "tiny", prepared)
    assert code == ExitCode.BAD_INPUT and "'prepare' output" in err and "delete" not in err, err
    assert _snapshot(prepared) == before


@pytest.mark.parametrize("text", ["not json", '{"format_version": 2, "models": {}}',
                                  '{"models": {"esm2": {"files": []}}}'])
def test_a_bad_models_manifest_hint_never_says_delete_nor_a_command_that_refuses_it(tmp_path, run_cli, text):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "manifest.json").write_text(text)
    code, err = run_cli("models", "check", folder)
    assert code == ExitCode.MODELS and "delete" not in err and "NEW_FOLDER" in err, err
    assert f"--dest {folder}" not in err, err
    code, err = run_cli("models", "tiny", folder)
    assert code == ExitCode.MODELS and "delete" not in err and "new or empty folder" in err, err
    # what the old hint suggested is refused indeed, before any transfer
    code, err = run_cli("models", "download", "--dest", folder, "--mirror", closed_port_url())
    assert code == ExitCode.MODELS and "manifest.json" in err, err
    assert (folder / "manifest.json").read_text() == text


# ------------------------------------------------------------------ tiny folders

def _tiny_hint_only(text: str, folder: Path) -> None:
    assert f"virnucpro models tiny {folder}" in text, text
    assert "models download" not in text, text


def test_a_tiny_folder_missing_a_file_is_fixed_by_models_tiny_in_every_hint(models, run_cli, monkeypatch):
    (models / "500_model_tiny.pth").unlink()
    code, err = run_cli("models", "check", models)
    assert code == ExitCode.MODELS
    _tiny_hint_only(err, models)
    with pytest.raises(ModelsError) as info:  # what predict calls
        store.locate(models, roles=("classifier_500",))
    _tiny_hint_only(str(info.value), models)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelsError) as info:  # run --offline: no download either way
        download.ensure(models, offline=True)
    _tiny_hint_only(str(info.value), models)
    assert run_cli("models", "tiny", models)[0] == 0  # the hint works
    assert run_cli("models", "check", models)[0] == 0


def test_a_tiny_folder_with_a_changed_file_is_fixed_by_models_tiny(models, run_cli):
    config = models / "DNABERT-S-tiny" / "config.json"
    config.write_text(config.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    code, err = run_cli("models", "check", models)
    assert code == ExitCode.MODELS and "checksum mismatch for dnabert_s" in err
    _tiny_hint_only(err, models)
    assert run_cli("models", "tiny", models)[0] == 0
    assert run_cli("models", "check", models)[0] == 0


def test_the_published_models_are_never_downloaded_into_a_tiny_folder(models, run_cli, tmp_path):
    before = _snapshot(models)
    code, err = run_cli("models", "download", "--dest", models, "--only", "classifier_500",
                        "--mirror", closed_port_url())
    assert code == ExitCode.USAGE and "holds tiny test models" in err, err
    assert "--dest NEW_FOLDER" in err and "cannot reach" not in err, err  # refused before any transfer
    assert _snapshot(models) == before


def test_a_folder_of_published_models_still_gets_the_download_command(tmp_path):
    folder = tmp_path / "staged"
    folder.mkdir()
    with pytest.raises(ModelsError) as info:
        store.locate(folder, roles=("classifier_500",))
    assert f"virnucpro models download --dest {folder} --only classifier_500" in str(info.value)
    assert not store.is_tiny_folder(folder)


# ------------------------------------------------------------------ usage errors

def test_a_mirror_that_is_not_http_is_a_usage_error(tmp_path, run_cli):
    code, err = run_cli("models", "download", "--dest", tmp_path / "d", "--mirror", "ftp://x")
    assert code == ExitCode.USAGE and "--mirror must be an http(s) URL" in err, err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, where", [
    (["models", "check", NO_USER], "the DIR argument of `models check`"),
    (["models", "tiny", NO_USER], "the DIR argument of `models tiny`"),
    (["models", "download", "--dest", NO_USER], "--dest"),
])
def test_a_models_path_names_where_it_came_from(run_cli, monkeypatch, args, where):
    monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
    code, err = run_cli(*args)
    assert code == ExitCode.USAGE and f"(from {where})" in err and "bug" not in err, err


def test_a_models_path_from_models_or_the_environment_says_so(monkeypatch):
    with pytest.raises(store.ModelsPathError, match=r"\(from --models\)"):
        store.locate(Path(NO_USER))
    monkeypatch.setenv("VIRNUCPRO_MODELS", NO_USER)
    with pytest.raises(store.ModelsPathError, match=r"\(from VIRNUCPRO_MODELS\)"):
        store.locate(None)


# ------------------------------------------------------------------ encoder-level hints

def test_a_damaged_encoder_file_outside_a_tiny_folder_names_download_into_its_models_folder(tmp_path):
    """The encoders' own checks (reached when a file is damaged in a way the store does not see)
    name the models folder that holds the file, so the command fixes that folder, not the default."""
    from virnucpro.encoders.dnabert_s import DnabertSEncoder
    from virnucpro.encoders.esm2 import Esm2Encoder

    (tmp_path / "DNABERT-S").mkdir()
    with pytest.raises(ModelsError) as info:
        DnabertSEncoder(tmp_path / "DNABERT-S", "cpu")
    assert f"virnucpro models download --dest {tmp_path} --only dnabert_s" in str(info.value), str(info.value)
    (tmp_path / "esm2_t36_3B_UR50D.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelsError) as info:
        Esm2Encoder(tmp_path / "esm2_t36_3B_UR50D.pt", "cpu")
    assert f"virnucpro models download --dest {tmp_path} --only esm2" in str(info.value), str(info.value)


def test_a_failed_models_command_leaves_a_users_folder_as_it_found_it(tmp_path, run_cli, monkeypatch):
    """A download that fails (nothing served) into a folder holding the user's notes, and `models
    tiny` refused by a stray model file: each left its `.virnucpro.lock` behind."""
    monkeypatch.setattr(download, "BACKOFF_SECONDS", 0.0)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    code, err = run_cli("models", "download", "--dest", folder, "--only", "classifier_300", "--mirror",
                        closed_port_url())
    assert code == ExitCode.MODELS, err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    (folder / "esm2_tiny.pt").write_bytes(b"not written by virnucpro")
    code, err = run_cli("models", "tiny", folder)
    assert code == ExitCode.BAD_INPUT, err
    assert sorted(p.name for p in folder.iterdir()) == ["esm2_tiny.pt", "notes.txt"]


def test_an_own_classifier_under_the_published_name_is_pointed_to_classifier_option(tmp_path):
    """The original's README has users train their own model.pth and pass it in place of 500_model.pth:
    dropped into the models folder under that name, the fix said only to move it and download."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "500_model.pth").write_bytes(b"my own trained classifier")
    with pytest.raises(ModelsError) as refused:
        store.locate(folder, ["classifier_500"])
    assert "is not the published model" in str(refused.value), refused.value
    assert "give it with --classifier FILE" in refused.value.hint, refused.value.hint
