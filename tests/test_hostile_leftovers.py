"""What a second hostile-files review found after the first fixes: a folder at an output's file name,
a user's file in predict's staging folder, stale shards published by `run --keep-embeddings`, FIFOs
read by the pipeline's helper scripts, links in a GPU slot folder or a linked models folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from test_outdir import write_fasta
from test_summary import golden_predicted, predicted, summary  # noqa: F401 (fixtures)
from virnucpro import prepared as fmt

BIN = Path(__file__).resolve().parents[1] / "bin"


def test_an_empty_folder_at_an_output_file_name_is_refused_before_anything_changes(tmp_path, run_cli):
    fasta = write_fasta(tmp_path / "a.fa", 3)
    out = tmp_path / "p"
    assert run_cli("prepare", fasta, "--outdir", out)[0] == 0
    (out / fmt.SEQUENCES).unlink()
    (out / fmt.SEQUENCES).mkdir()  # publishing over it crashed (exit 1) after dropping the manifest
    before = sorted(p.name for p in out.iterdir())
    code, message = run_cli("prepare", fasta, "--outdir", out)
    assert code == 3 and fmt.SEQUENCES in message and "did not write" in message, message
    assert sorted(p.name for p in out.iterdir()) == before and (out / fmt.MANIFEST).is_file()


def test_a_users_file_in_predicts_staging_folder_is_kept(tmp_path, run_cli, golden_prepared, tiny_models):
    from virnucpro.predict import STAGING

    h5s = []
    for shard in sorted((golden_prepared / "shards").glob("shard_*.tsv")):
        h5s.append(tmp_path / "e" / shard.with_suffix(".h5").name)
        assert run_cli("embed", shard, "--models", tiny_models, "--out", h5s[-1])[0] == 0
    args = ["predict", "--prepared", golden_prepared, "--models", tiny_models, "--outdir", tmp_path / "po",
            "--embeddings", *h5s]
    assert run_cli(*args)[0] == 0
    notes = tmp_path / "po" / STAGING / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("precious")  # rmtree deleted it
    code, message = run_cli(*args)
    assert code == 3 and "notes.txt" in message, message
    assert notes.read_text() == "precious"


def test_run_keeps_only_this_runs_shards(tmp_path, run_cli, tiny_models):
    fasta = write_fasta(tmp_path / "a.fa", 3)
    out = tmp_path / "r"
    assert run_cli("run", fasta, "--models", tiny_models, "--outdir", out, "--keep-embeddings")[0] == 0
    stale = out / ".virnucpro-work" / "embeddings" / "shard_00001.h5"  # an earlier attempt's second shard
    stale.parent.mkdir(parents=True)
    stale.write_bytes((out / "embeddings" / "shard_00000.h5").read_bytes())
    assert run_cli("run", fasta, "--models", tiny_models, "--outdir", out, "--keep-embeddings")[0] == 0
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == ["shard_00000.h5"]


def test_run_with_without_and_again_with_keep_embeddings_all_succeed(tmp_path, run_cli, tiny_models):
    """A rerun without --keep-embeddings removes the shards it kept, and the folder it emptied:
    left behind, that folder made the next --keep-embeddings run exit 3 ("holds embeddings, which
    virnucpro did not write")."""
    fasta = write_fasta(tmp_path / "a.fa", 3)
    out = tmp_path / "r"
    for keep in (["--keep-embeddings"], [], ["--keep-embeddings"]):
        code, message = run_cli("run", fasta, "--models", tiny_models, "--outdir", out, *keep)
        assert code == 0, message
        assert (out / "embeddings").exists() == bool(keep)
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == ["shard_00000.h5"]


@pytest.mark.parametrize("name", ["sequences.tsv", "run_info.json"])
def test_the_summary_refuses_a_fifo_or_device_at_once(tmp_path, golden_predicted, name):  # noqa: F811
    import shutil

    folder = Path(shutil.copytree(golden_predicted, tmp_path / "s"))
    (folder / name).unlink()
    os.mkfifo(folder / name)  # read for ever
    result = summary("row", folder, "--sample", "s", "--out", tmp_path / "row.tsv")
    assert result.returncode == 5 and "not a regular file" in result.stderr, result.stderr
    (folder / name).unlink()
    (folder / name).symlink_to("/dev/zero")  # read without end
    result = summary("row", folder, "--sample", "s", "--out", tmp_path / "row.tsv")
    assert result.returncode == 5 and "not a regular file" in result.stderr, result.stderr


def _gpu_slot():
    spec = importlib.util.spec_from_file_location("gpu_slot_hostile", BIN / "gpu_slot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["fifo", "dangling link"])
def test_a_slot_name_that_is_no_slot_file_is_no_hang_and_no_file_elsewhere(tmp_path, kind, monkeypatch, capsys):
    slots = _gpu_slot().machine_slots(tmp_path / "slots")  # this machine's folder in the slot folder
    slots.mkdir(parents=True)
    elsewhere = tmp_path / "created-elsewhere"
    if kind == "fifo":
        os.mkfifo(slots / "gpu0.lock")
    else:
        (slots / "gpu0.lock").symlink_to(elsewhere)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _gpu_slot().claim_for(tmp_path / "slots", ["0"])  # a FIFO blocked the open for ever
    assert "not a slot file" in capsys.readouterr().err and not elsewhere.exists()


def test_an_fp16_copy_keeps_a_linked_models_manifest(tmp_path, tiny_models, golden_prepared, run_cli):
    linked = tmp_path / "linked"
    linked.mkdir()
    for entry in tiny_models.iterdir():
        if not entry.name.startswith("."):
            (linked / entry.name).symlink_to(entry)  # a folder of links into shared storage
    shard = sorted((golden_prepared / "shards").glob("shard_*.tsv"))[0]
    code, message = run_cli("embed", shard, "--models", linked, "--out", tmp_path / "e.h5", "--precision", "fp16")
    assert code == 0, message
    assert (linked / "manifest.json").is_symlink()  # was replaced by a file
    assert json.loads((tiny_models / "manifest.json").read_text()) == json.loads((linked / "manifest.json").read_text())
    with h5py.File(tmp_path / "e.h5", "r"):
        pass
