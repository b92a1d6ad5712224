"""Fourth review of the model store: files the encoders read whatever the manifest lists, folders
that are not models folders given to the commands that write models, roles of another version.

Transfers go to a local HTTP server on 127.0.0.1 (`store_fixtures.FakeHost`, through `test_download`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_download import (fake_sources, fast_retries, host, local_host_without_proxy,  # noqa: E402,F401
                           payloads, serve_all)
from test_models_review3 import served  # noqa: E402,F401

from virnucpro.errors import ExitCode  # noqa: E402
from virnucpro.models import store  # noqa: E402

TOKENIZER = "DNABERT-S-tiny/tokenizer.json"


def _unlist(folder: Path, role: str, rel: str) -> None:
    """Take `rel` out of the manifest's files and checksums of `role`, as a hand edit would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["models"][role]
    entry["files"].remove(rel)
    entry["sha256"].pop(rel, None)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _respaced(path: Path) -> None:
    """The same JSON in other bytes (another tokenizer file, as far as any checksum can tell)."""
    path.write_text(json.dumps(json.loads(path.read_text()), indent=1))


@pytest.mark.parametrize("changed", [False, True], ids=["same bytes", "other bytes"])
def test_a_tokenizer_the_manifest_does_not_list_is_checked_not_read_unverified(tiny_models, tmp_path, run_cli,
                                                                               changed):
    """A review's case: DNABERT-S reads tokenizer.json whether the manifest lists it or not, and an
    unlisted one was neither checked nor part of the identity: `models check` said verified, and
    two tokenizers gave embeddings of one identity. Unrecorded in a tiny folder, it cannot be
    verified: refused like an unlisted weights file."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_models, folder)
    _unlist(folder, "dnabert_s", TOKENIZER)
    if changed:
        _respaced(folder / TOKENIZER)
    code, err = run_cli("models", "check", folder)
    assert code == ExitCode.MODELS and "tokenizer.json" in err, err
    with pytest.raises(store.ModelsError):
        store.locate(folder, roles=["dnabert_s"])
    assert store.recorded_identity(folder, "dnabert_s") is None  # the manifest cannot tell it: nothing pinned


def test_a_missing_tokenizer_the_manifest_does_not_list_is_missing(tiny_models, tmp_path, run_cli):
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_models, folder)
    _unlist(folder, "dnabert_s", TOKENIZER)
    (folder / TOKENIZER).unlink()
    code, err = run_cli("models", "check", folder)
    assert code == ExitCode.MODELS and TOKENIZER in err, err


def test_a_published_tokenizer_the_manifest_does_not_list_is_checked_against_its_pin(served, tmp_path, run_cli):
    dest = tmp_path / "m"
    assert run_cli("models", "download", "--dest", dest, "--mirror", served.url)[0] == 0
    _unlist(dest, "dnabert_s", "DNABERT-S/tokenizer.json")
    assert run_cli("models", "check", dest)[0] == 0  # the published bytes: verified by their pin
    (dest / "DNABERT-S" / "tokenizer.json").write_bytes(b'{"another": "tokenizer"}')
    code, err = run_cli("models", "check", dest)
    assert code == ExitCode.MODELS and "tokenizer.json" in err, err


@pytest.mark.parametrize("command", ["tiny", "download"])
def test_a_folder_with_another_programs_manifest_is_refused_as_an_output_folder(tmp_path, run_cli, command):
    """A review's case: documented as exit 3 (the folder is not virnucpro's to write models into),
    it was exit 4 with a hint naming --models to `models download --dest`."""
    folder = tmp_path / "webapp"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"name": "webapp", "version": 3}')
    args = ["models", "tiny", folder] if command == "tiny" else \
        ["models", "download", "--dest", folder, "--only", "classifier_300", "--mirror", "http://127.0.0.1:9"]
    code, err = run_cli(*args)
    assert code == ExitCode.BAD_INPUT and "is not a models folder" in err, err
    assert ("models tiny NEW_FOLDER" if command == "tiny" else "--dest NEW_FOLDER") in err and "--models" not in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


def test_a_role_of_another_version_does_not_make_a_tiny_folder_take_published_models(tiny_models, tmp_path,
                                                                                     run_cli):
    """A review's case: one extra role marked not tiny made a tiny folder take the published
    classifier beside its random models."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_models, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["models"]["extra"] = {"files": ["extra.bin"], "sha256": {}, "tiny": False}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert store.is_tiny_folder(folder)
    code, err = run_cli("models", "download", "--dest", folder, "--only", "classifier_300",
                        "--mirror", "http://127.0.0.1:9")
    assert code == ExitCode.USAGE and "tiny test models" in err, err
    assert not (folder / "300_model.pth").exists()
