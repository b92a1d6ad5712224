"""predict checks that the embeddings were made with the models of the models folder it is given.

The identity each shard records (`models`: role -> {name, sha256}) is compared with the identity the
folder's manifest records for the encoders, computed from the recorded sha256 exactly as `embed`
computes it from the files (never by hashing: the pipeline's PREDICT has only the manifest and the
classifier). Real tiny models, real prepared and embedded shards, the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from virnucpro.models import store
from virnucpro.predict import OUTPUTS

OTHER_DIGEST = hashlib.sha256(b"another weights file").hexdigest()  # a valid sha256, of no file here


def _manifest(folder: Path) -> dict:
    return json.loads((folder / store.MANIFEST).read_text())


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / store.MANIFEST).write_text(json.dumps(manifest, indent=2))


def _record(manifest: dict, role: str, name: str, digest: str) -> None:
    """Set the sha256 the manifest records for the file of `role` whose name is `name`."""
    recorded = manifest["models"][role]["sha256"]
    (rel,) = [rel for rel in recorded if Path(rel).name == name]
    recorded[rel] = digest


def _staged(tiny_models: Path, folder: Path) -> Path:
    """What the pipeline's PREDICT gets as `--models`: the 500-bp classifier and the manifest only."""
    folder.mkdir()
    shutil.copy(tiny_models / store.MANIFEST, folder / store.MANIFEST)
    for rel in _manifest(tiny_models)["models"]["classifier_500"]["files"]:
        shutil.copy(tiny_models / rel, folder / rel)
    return folder


@pytest.fixture
def models_copy(tmp_path, tiny_models) -> Path:
    """A private copy of the tiny models folder, free to change."""
    return Path(shutil.copytree(tiny_models, tmp_path / "models"))


@pytest.fixture
def predict_with(tmp_path, run_cli, golden_prepared, golden_embeddings):
    """`virnucpro predict` of the golden sample's real shards with `--models FOLDER`."""
    def run(models: Path) -> tuple[int, str, Path]:
        outdir = tmp_path / "out"
        code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                                "--outdir", outdir, "--models", models)
        return code, message, outdir
    return run


# --- the identity a manifest records -----------------------------------------------------------------

@pytest.mark.parametrize("role", store.ROLES)
def test_recorded_identity_is_the_identity_embed_uses(tiny_models, role):
    """From the manifest alone, the very digest `locate` computes from the files (and embed records)."""
    assert store.recorded_identity(tiny_models, role) == store.locate(tiny_models, roles=(role,)).sha256[role]


def test_recorded_identity_follows_the_records(models_copy):
    """A changed record changes the identity: computed from the manifest, not from the files."""
    before = store.recorded_identity(models_copy, "dnabert_s")
    manifest = _manifest(models_copy)
    _record(manifest, "dnabert_s", "config.json", OTHER_DIGEST)
    _write_manifest(models_copy, manifest)
    assert store.recorded_identity(models_copy, "dnabert_s") not in (None, before)


def test_recorded_identity_cannot_tell(models_copy, tmp_path):
    """No manifest, no entry for the role, or a file of the identity without a record: None."""
    empty = tmp_path / "hand-staged"
    empty.mkdir()
    assert store.recorded_identity(empty, "esm2") is None
    manifest = _manifest(models_copy)
    del manifest["models"]["esm2"]
    del manifest["models"]["dnabert_s"]["sha256"]["DNABERT-S-tiny/model.safetensors"]
    _write_manifest(models_copy, manifest)
    assert store.recorded_identity(models_copy, "esm2") is None
    assert store.recorded_identity(models_copy, "dnabert_s") is None


# --- predict -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("role", "name"), [("dnabert_s", "model.safetensors"), ("dnabert_s", "config.json"),
                                            ("esm2", "esm2_tiny.pt")])
def test_embeddings_of_other_models_refused(models_copy, predict_with, golden_embeddings, role, name):
    """A models file changed in place, its new sha256 in the manifest (what -resume then missed): the
    shards made with the old one are exit 5 naming the shard, the role, both digests and the folder."""
    shard_identity = store.recorded_identity(models_copy, role)
    manifest = _manifest(models_copy)
    _record(manifest, role, name, OTHER_DIGEST)
    _write_manifest(models_copy, manifest)
    folder_identity = store.recorded_identity(models_copy, role)
    code, message, outdir = predict_with(models_copy)
    assert code == 5, message
    assert "Traceback" not in message and "bug" not in message, message
    for part in (str(golden_embeddings[0]), role, shard_identity[:12], folder_identity[:12], str(models_copy),
                 "embed", "-resume"):
        assert part in message, (part, message)
    assert not any((outdir / output).exists() for output in OUTPUTS)


def test_staged_manifest_refuses_too(tiny_models, tmp_path, predict_with):
    """As in the pipeline: only the classifier and manifest.json are there, and no model file is read."""
    folder = _staged(tiny_models, tmp_path / "staged")
    manifest = _manifest(folder)
    _record(manifest, "esm2", "esm2_tiny.pt", OTHER_DIGEST)
    _write_manifest(folder, manifest)
    code, message, _outdir = predict_with(folder)
    assert code == 5 and "esm2" in message, message


def test_same_models_pass(tiny_models, tmp_path, predict_with, models_copy):
    """The shards' models are the folder's: predicted, with the whole folder or only its manifest."""
    for folder in (models_copy, _staged(tiny_models, tmp_path / "staged")):
        code, message, outdir = predict_with(folder)
        assert code == 0, message
        assert all((outdir / output).is_file() for output in OUTPUTS)
        run_info = json.loads((outdir / "run_info.json").read_text())
        assert run_info["models"]["dnabert_s"]["sha256"] == store.recorded_identity(folder, "dnabert_s")


def test_manifest_that_cannot_tell_is_not_checked(tiny_models, tmp_path, predict_with):
    """No entry for the encoders (or no record of a file of them) in a staged folder: nothing to compare
    with, and no model file to hash there, so predict goes on."""
    folder = _staged(tiny_models, tmp_path / "staged")
    manifest = _manifest(folder)
    del manifest["models"]["esm2"]
    del manifest["models"]["dnabert_s"]["sha256"]["DNABERT-S-tiny/config.json"]
    _record(manifest, "dnabert_s", "model.safetensors", OTHER_DIGEST)  # would differ, if it could tell
    _write_manifest(folder, manifest)
    code, message, outdir = predict_with(folder)
    assert code == 0, message
    assert (outdir / "run_info.json").is_file()


@pytest.fixture(scope="module")
def other_tiny_models(tmp_path_factory) -> Path:
    """A second tiny model set, of another seed: the same widths, other weights and checksums."""
    from virnucpro.models import tiny

    directory = tmp_path_factory.mktemp("other") / "tiny"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny, "TINY_SEED", tiny.TINY_SEED + 1)
        tiny.make_tiny(directory)
    return directory


@pytest.fixture
def no_default_models(tmp_path, monkeypatch):
    """No models folder but the ones a test names (no VIRNUCPRO_MODELS, an empty data directory)."""
    monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def test_a_given_classifier_of_other_encoders_is_refused(other_tiny_models, tiny_models, tmp_path, run_cli,
                                                          golden_prepared, golden_embeddings, no_default_models):
    """A hostile reviewer's case: the classifier of another model set (its folder's manifest records it)
    fits the widths, and scored the shards with no word; exit 5 naming both sides, with or without --models."""
    assert store.recorded_identity(other_tiny_models, "esm2") != store.recorded_identity(tiny_models, "esm2")
    classifier = other_tiny_models / "500_model_tiny.pth"
    for models in ([], ["--models", tiny_models]):
        outdir = tmp_path / f"out{len(models)}"
        code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                                "--outdir", outdir, "--classifier", classifier, *models)
        assert code == 5, message
        for part in (str(classifier), f"the models folder {other_tiny_models}", str(golden_embeddings[0]),
                     store.recorded_identity(other_tiny_models, "esm2")[:12], "embed them again"):
            assert part in message, (part, message)
        assert not any((outdir / output).exists() for output in OUTPUTS)


def test_run_refuses_a_given_classifier_of_other_encoders(other_tiny_models, tiny_models, tmp_path, run_cli,
                                                           no_default_models):
    """`run --models A --classifier B/...`: the shards it embeds with A are not scored by B's classifier."""
    (tmp_path / "a.fa").write_text(">a\n" + "ATGAAACCCGGGTTTTAA" * 40 + "\n")
    code, message = run_cli("run", tmp_path / "a.fa", "--outdir", tmp_path / "out", "--models", tiny_models,
                            "--classifier", other_tiny_models / "500_model_tiny.pth", "--device", "cpu")
    assert code == 5, message
    for part in (f"belongs to the models folder {other_tiny_models}", f"the models folder {tiny_models}, which this run "
                 "embeds with", "leave --classifier out"):
        assert part in message, (part, message)
    assert "embedded" not in message, message  # refused at start-up, before any embedding
    assert not any((tmp_path / "out" / output).exists() for output in OUTPUTS)


def test_a_classifier_reached_through_a_link_is_checked_against_the_folder_it_lies_in(other_tiny_models, tmp_path,
                                                                                       run_cli, golden_prepared,
                                                                                       golden_embeddings,
                                                                                       no_default_models):
    """A review of the fix: a link elsewhere to another set's classifier escaped the check (exit 0)."""
    (tmp_path / "mine").mkdir()
    link = tmp_path / "mine" / "cls.pth"
    link.symlink_to(other_tiny_models / "500_model_tiny.pth")
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "out", "--classifier", link)
    assert code == 5, message
    assert f"belongs to the models folder {other_tiny_models}" in message, message


def test_a_given_classifier_recorded_nowhere_is_taken(tiny_models, models_copy, tmp_path, run_cli, golden_prepared,
                                                      golden_embeddings, no_default_models):
    """The user's own classifier (no manifest records it) tells no encoders: scored, even beside a
    models folder whose encoders differ."""
    from test_error_paths_outdir import leaning_classifier

    manifest = _manifest(models_copy)
    _record(manifest, "esm2", "esm2_tiny.pt", OTHER_DIGEST)
    _write_manifest(models_copy, manifest)
    (tmp_path / "mine").mkdir()
    classifier = leaning_classifier(tiny_models, tmp_path / "mine" / "500_model_tiny.pth")
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "out", "--classifier", classifier, "--models", models_copy)
    assert code == 0, message


def test_a_classifier_one_of_its_sets_matches_is_taken(tiny_models, models_copy, tmp_path, run_cli, golden_prepared,
                                                        golden_embeddings):
    """The same classifier recorded by two folders, one of them with the shards' encoders: scored."""
    manifest = _manifest(models_copy)
    _record(manifest, "esm2", "esm2_tiny.pt", OTHER_DIGEST)
    _write_manifest(models_copy, manifest)
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "out", "--classifier", tiny_models / "500_model_tiny.pth",
                            "--models", models_copy)
    assert code == 0, message


def test_a_published_classifier_belongs_to_the_published_encoders(tiny_models, tmp_path, run_cli, golden_prepared,
                                                                   golden_embeddings, no_default_models, monkeypatch):
    """A classifier whose git blob id is a published one's takes only the published encoders' embeddings
    (pinned here to the tiny classifier's blob: the published file is not at hand)."""
    import dataclasses

    from virnucpro.models import pins

    (tmp_path / "bare").mkdir()
    classifier = Path(shutil.copy(tiny_models / "500_model_tiny.pth", tmp_path / "bare" / "500_model.pth"))
    _, blob = store.sha256_file(classifier, git_sha1=True)
    source = pins.SOURCES["classifier_500"]
    pinned = dataclasses.replace(source, files=(dataclasses.replace(source.files[0], git_sha1=blob),))
    monkeypatch.setitem(pins.SOURCES, "classifier_500", pinned)
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "out", "--classifier", classifier)
    assert code == 5, message
    assert "belongs to the published models" in message and store.published_identity("esm2")[:12] in message, message


def test_published_identity_is_computed_from_the_pins():
    """The published encoders' identities, as `locate` computes them from the files, from the pins alone."""
    from virnucpro.models import pins

    files = {Path(spec.relpath).name: spec.sha256 for spec in pins.SOURCES["dnabert_s"].files}
    assert store.published_identity("esm2") == pins.SOURCES["esm2"].files[0].sha256
    assert store.published_identity("dnabert_s") == store.combined_sha256(
        {name: files[name] for name in ("config.json", "pytorch_model.bin", "tokenizer.json")})


def test_embeddings_of_tiny_models_without_models_point_to_their_folder(tmp_path, run_cli, golden_prepared,
                                                                         golden_embeddings, monkeypatch):
    """A docs reviewer's case: --models forgotten for embeddings made with tiny test models; the hint
    said to download the published classifier, whose width those embeddings never fit (exit 5 next)."""
    monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # no models in the default place
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "out")
    assert code == 4, message
    assert "made with tiny test models" in message and "--models" in message.split("fix:")[-1], message
    assert "models download" not in message, message


@pytest.mark.parametrize("command", ["predict", "run"])
def test_a_given_classifier_its_folder_records_otherwise_is_exit_4(models_copy, tmp_path, run_cli, golden_prepared,
                                                                   golden_embeddings, no_default_models, command):
    """A damaged classifier in a models folder is exit 4 through --models; named with --classifier it
    was taken (exit 0) and its sha256 recorded in run_info.json as if all were well."""
    classifier = models_copy / "500_model_tiny.pth"
    with open(classifier, "ab") as handle:
        handle.write(b"x")
    (tmp_path / "a.fa").write_text(">a\n" + "ATGAAACCCGGGTTTTAA" * 40 + "\n")
    inputs = (["predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings] if command == "predict"
              else ["run", tmp_path / "a.fa", "--models", models_copy, "--device", "cpu"])
    code, message = run_cli(*inputs, "--outdir", tmp_path / "out", "--classifier", classifier)
    assert code == 4, message
    assert f"classifier {classifier} has sha256 {store.sha256_file(classifier)}" in message, message
    assert f"the manifest of {models_copy} records" in message and "a corrupt or replaced file" in message, message
    assert f"virnucpro models tiny {models_copy}" in message, message
    assert not any((tmp_path / "out" / output).exists() for output in OUTPUTS)


def test_a_classifier_recorded_in_a_subfolder_of_models_is_checked_too(models_copy, tmp_path, run_cli, golden_prepared,
                                                                       golden_embeddings, no_default_models):
    """A manifest may record the classifier under a path with a folder (`models check` verifies it):
    damaged there, it was refused through --models and taken with --classifier."""
    manifest = _manifest(models_copy)
    (models_copy / "cls").mkdir()
    (models_copy / "500_model_tiny.pth").rename(models_copy / "cls" / "500_model_tiny.pth")
    entry = manifest["models"]["classifier_500"]
    entry["files"] = ["cls/500_model_tiny.pth"]
    entry["sha256"] = {"cls/500_model_tiny.pth": entry["sha256"].pop("500_model_tiny.pth")}
    _write_manifest(models_copy, manifest)
    classifier = models_copy / "cls" / "500_model_tiny.pth"
    with open(classifier, "ab") as handle:
        handle.write(b"x")
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "out", "--classifier", classifier, "--models", models_copy)
    assert code == 4 and f"the manifest of {models_copy} records" in message, message
    assert "for cls/500_model_tiny.pth (a corrupt or replaced file)" in message, message


def test_a_classifier_beside_a_manifest_it_cannot_read_is_exit_4_naming_the_owner(models_copy, tmp_path,
                                                                                   golden_prepared, golden_embeddings):
    """The manifest that may record the classifier could not be read: the check was skipped, and a
    damaged classifier scored (exit 0) for a user other than the manifest's owner."""
    import os
    import subprocess
    import sys

    from permission_helpers import unprivileged

    os.chown(models_copy / "manifest.json", 4321, 4321)
    (models_copy / "manifest.json").chmod(0o600)
    done = subprocess.run([*unprivileged(), sys.executable, "-m", "virnucpro", "predict", "--prepared",
                           str(golden_prepared), "--embeddings", *map(str, golden_embeddings), "--outdir",
                           str(tmp_path / "out"), "--classifier", str(models_copy / "500_model_tiny.pth")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 4, done.stderr
    assert f"cannot read {models_copy / 'manifest.json'}: Permission denied" in done.stderr, done.stderr
    assert "belongs to uid 4321" in done.stderr and "Traceback" not in done.stderr, done.stderr
