"""`run` reuses a finished prepare from its work folder only as prepare left it, and the chunk-size
refusal gives advice each command can follow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from virnucpro import prepared as fmt
from virnucpro import run as run_module
from virnucpro.errors import InterruptedByUser
from virnucpro.run import WORK

RESULT = "prediction_results.txt"


def _stopped(*args, **kwargs):
    raise InterruptedByUser("SIGTERM received: stopped")


@pytest.fixture
def stopped_run(tmp_path, reference_dir, tiny_models, run_cli, monkeypatch):
    """A run stopped (exit 6) at `stage` ("_embed_all" or "_predict_and_publish"): its work folder
    kept; returns (the command's arguments, the work folder's prepared folder)."""
    def stop_at(stage: str):
        args = ("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", tmp_path / "r",
                "--models", tiny_models, "--device", "cpu")
        with monkeypatch.context() as patch:
            patch.setattr(run_module, stage, _stopped)
            code, message = run_cli(*args)
        prepared = tmp_path / "r" / WORK / "prepared"
        assert code == 6 and (prepared / fmt.MANIFEST).is_file(), message
        return args, prepared
    return stop_at


def _said(message: str) -> str:
    """A usage error's text without the box it is drawn in, its words on one line."""
    return " ".join(message.replace("│", " ").split())


def _delete_line(path, number: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    del lines[number - 1]
    path.write_text("".join(lines))


def test_a_changed_table_makes_run_redo_its_prepare(stopped_run, run_cli, tmp_path):
    """The reviewer's case: chunks.tsv edited after the stop. The rerun used to reuse the prepare,
    embed everything, and only then be refused at predict, and so on every rerun."""
    args, prepared = stopped_run("_embed_all")
    _delete_line(prepared / fmt.CHUNKS, 3)
    code, message = run_cli(*args)
    assert code == 0, message
    assert "already done" not in message and "redoing it" in message and fmt.CHUNKS in message, message
    assert (tmp_path / "r" / RESULT).is_file() and not (tmp_path / "r" / WORK).exists()


def test_a_changed_shard_makes_run_redo_its_prepare(stopped_run, run_cli, tmp_path):
    args, prepared = stopped_run("_embed_all")
    shard = prepared / fmt.load_manifest(prepared)["shards"][0]["file"]
    _delete_line(shard, 3)  # still a shard, one record fewer
    code, message = run_cli(*args)
    assert code == 0 and "redoing it" in message and shard.name in message, message
    assert (tmp_path / "r" / RESULT).is_file()


def test_a_damaged_manifest_makes_run_redo_its_prepare(stopped_run, run_cli):
    """A manifest that is no longer prepare's: prepare used to refuse to replace it (exit 3)."""
    args, prepared = stopped_run("_embed_all")
    (prepared / fmt.MANIFEST).write_text((prepared / fmt.MANIFEST).read_text()[:40])
    code, message = run_cli(*args)
    assert code == 0 and "redoing it" in message, message


def test_a_prepare_of_other_inputs_is_redone_and_said(stopped_run, run_cli, tmp_path):
    args, _ = stopped_run("_embed_all")
    other = tmp_path / "other.fa"
    other.write_text(">x\n" + "ATGAAACCCGGGTTTTAA" * 30 + "\n")
    code, message = run_cli("run", other, *args[2:])
    assert code == 0 and "redoing it" in message and "other input" in message, message
    assert [row["sequence_id"] for row in fmt.read_table(tmp_path / "r" / fmt.SEQUENCES)] == ["x"]


def test_a_prepare_of_another_chunk_size_is_redone_and_scored_by_that_sizes_classifier(stopped_run, run_cli, tmp_path):
    """Found by mutation: without this check a rerun with another --chunk-size reused the stopped run's
    500-bp chunks and scored them with the 300-bp classifier, exit 0."""
    args, _ = stopped_run("_embed_all")
    code, message = run_cli(*args, "--chunk-size", "300")
    assert code == 0 and "redoing it" in message and "made at chunk size 500" in message, message
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert info["chunk_size"] == 300 and Path(info["classifier"]["path"]).name.startswith("300_"), info
    assert {int(row["length"]) for row in fmt.read_table(tmp_path / "r" / fmt.CHUNKS)} <= set(range(1, 301))


def test_embeddings_are_reused_after_a_redone_prepare_that_wrote_the_same_shard(stopped_run, run_cli):
    """A table edited after embedding: the prepare is redone, its shard is the same file again, so
    the embedding of it (checked against the shard's sha256 by `already_embedded`) is reused."""
    args, prepared = stopped_run("_predict_and_publish")
    _delete_line(prepared / fmt.SEQUENCES, 2)
    code, message = run_cli(*args)
    assert code == 0 and "redoing it" in message and "shard_00000.h5 already done" in message, message


def test_an_embedding_of_a_changed_shard_is_not_reused(stopped_run, tiny_models):
    """The other half: an HDF5 file made from the shard before it changed does not count as done."""
    from virnucpro.embed import ROLES
    from virnucpro.models import download

    args, prepared = stopped_run("_predict_and_publish")
    shard = prepared / fmt.load_manifest(prepared)["shards"][0]["file"]
    h5 = prepared.parent / "embeddings" / "shard_00000.h5"
    identity = download.ensure(tiny_models, roles=list(ROLES), offline=True).identity(ROLES)
    assert run_module._embedded_before(shard, h5, identity, "fp32")
    lines = shard.read_text().splitlines(keepends=True)
    orf_id, nucleotide, protein = lines[2].rstrip("\n").split("\t")
    other = "G" if protein[-1] != "G" else "A"
    lines[2] = f"{orf_id}\t{nucleotide}\t{protein[:-1]}{other}\n"  # another last amino acid: still a shard
    shard.write_text("".join(lines))
    assert not run_module._embedded_before(shard, h5, identity, "fp32")


def test_an_intact_prepare_is_still_reused(stopped_run, run_cli):
    args, _ = stopped_run("_embed_all")
    code, message = run_cli(*args)
    assert code == 0 and "prepare: already done" in message and "redoing" not in message, message


def test_prepare_is_not_told_to_use_an_option_it_lacks(tmp_path, reference_dir, run_cli):
    """`prepare` has no --classifier: its refusal of chunk size 400 must not ask for one, and the
    advice it gives works."""
    fasta = reference_dir / "vanilla/test_with_orfs.fa"
    code, message = run_cli("prepare", fasta, "--outdir", tmp_path / "p", "--chunk-size", "400")
    message = _said(message)
    assert code == 2 and "--allow-any-chunk-size" in message and "--classifier" not in message, message
    assert "predict" in message, message  # where the classifier for that size will be needed
    code, message = run_cli("prepare", fasta, "--outdir", tmp_path / "p", "--chunk-size", "400",
                            "--allow-any-chunk-size")
    assert code == 0, message


def test_run_is_told_to_bring_a_classifier(tmp_path, reference_dir, run_cli):
    fasta = reference_dir / "vanilla/test_with_orfs.fa"
    code, message = run_cli("run", fasta, "--outdir", tmp_path / "r", "--chunk-size", "400")
    message = _said(message)
    assert code == 2 and "--allow-any-chunk-size" in message and "--classifier" in message, message
    assert not (tmp_path / "r").exists()



def test_a_stop_while_the_earlier_prepare_is_checked_keeps_it(stopped_run, run_cli, monkeypatch):
    """A signal during the hashing is no damage: exit 6 with the finished prepare kept (it was taken
    for 'cannot be reused' and deleted)."""
    args, prepared = stopped_run("_embed_all")
    before = sorted(path.relative_to(prepared) for path in prepared.rglob("*"))
    monkeypatch.setattr(fmt, "check_files", _stopped)
    code, message = run_cli(*args)
    assert code == 6 and "redoing it" not in message, message
    assert sorted(path.relative_to(prepared) for path in prepared.rglob("*")) == before


def test_a_reused_prepare_is_reported_under_the_paths_this_run_was_given(tmp_path, reference_dir, tiny_models,
                                                                         run_cli, monkeypatch):
    """The reviewer's case: stopped, the input renamed and another file put at its old name; the
    rerun reuses the prepare (same content) but its run_info and report named the old path."""
    first, renamed = tmp_path / "reads.fa", tmp_path / "sample_a.fa"
    first.write_bytes((reference_dir / "vanilla/test_with_orfs.fa").read_bytes())
    common = ("--outdir", tmp_path / "r", "--models", tiny_models, "--device", "cpu")
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "_embed_all", _stopped)
        assert run_cli("run", first, *common)[0] == 6
    first.rename(renamed)
    first.write_text(">other\nACGT\n")
    code, message = run_cli("run", renamed, *common)
    assert code == 0 and "already done" in message, message
    run_info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert [entry["path"] for entry in run_info["inputs"]] == [str(renamed)], run_info["inputs"]
    report = (tmp_path / "r" / "report.html").read_text()
    assert str(renamed) in report and str(first) + "<" not in report


def test_an_earlier_prepare_of_piped_input_is_not_said_to_be_of_other_files(tmp_path, reference_dir):
    """A rerun of `cat reads | virnucpro run -` said the earlier prepare "was made from other input
    files": a pipe cannot be compared with what was read before, which is what it now says."""
    from virnucpro.prepare import prepare

    reads = reference_dir / "golden" / "mixed.fa"
    prepare([reads], tmp_path / "p", chunk_size=500)
    assert run_module._earlier_prepare(tmp_path / "p", [reads], 500)[1] == ""
    os.mkfifo(tmp_path / "fifo")
    manifest, fault = run_module._earlier_prepare(tmp_path / "p", [tmp_path / "fifo"], 500)
    assert manifest is None and "not a file (a pipe is read once)" in fault, fault


def test_an_embedding_written_by_another_virnucpro_is_not_reused(stopped_run, run_cli):
    """Another version's checkpoints are never resumed, yet its finished HDF5 file was reused as done
    (run's resume, embed's "kept"): the run's outputs then mixed versions without a word."""
    from h5_helpers import edited_shard

    args, prepared = stopped_run("_predict_and_publish")
    h5 = prepared.parent / "embeddings" / "shard_00000.h5"
    with edited_shard(h5) as handle:
        handle.attrs["virnucpro_version"] = "0.1.0"
    code, message = run_cli(*args)
    assert code == 0 and "shard_00000.h5 already done" not in message, message
    assert "written by virnucpro 0.1.0" in _said(message), message  # why it is embedded again


@pytest.mark.parametrize("damage", ["last byte", "first byte", "emptied"])
def test_a_damaged_embedding_in_the_work_folder_is_computed_again(stopped_run, run_cli, damage):
    """Not as embed sealed it: embed refuses to replace such a file (a user's additions may be in it),
    but the run's own work folder is nobody else's: the rerun computes it again, said so."""
    args, prepared = stopped_run("_predict_and_publish")
    h5 = prepared.parent / "embeddings" / "shard_00000.h5"
    data = bytearray(h5.read_bytes())
    data[{"last byte": -1, "first byte": 0}.get(damage, 0)] ^= 0xFF
    h5.write_bytes(b"" if damage == "emptied" else bytes(data))
    code, message = run_cli(*args)
    assert code == 0 and "shard_00000.h5 changed since embed wrote it (damaged): computing it again" in _said(message), message


def test_a_prepare_made_by_another_virnucpro_is_done_again(stopped_run, run_cli):
    """Another version's finished prepare was reused while its embeddings were computed again: the
    chunks and ORFs of one version, the vectors and calls of another, and nothing said so."""
    args, prepared = stopped_run("_embed_all")
    manifest = json.loads((prepared / fmt.MANIFEST).read_text())
    manifest["virnucpro_version"] = "0.1.0"
    (prepared / fmt.MANIFEST).write_text(json.dumps(manifest))
    code, message = run_cli(*args)
    assert code == 0 and "reusing it" not in message, message
    assert "prepare: redoing it" in message and "virnucpro 0.1.0" in _said(message), message


def test_a_stop_a_library_turns_into_its_own_error_keeps_the_finished_prepare(tmp_path, reference_dir, tiny_models,
                                                                               run_cli, monkeypatch):
    """A review's case: a SIGTERM landing inside torch.load while ESM-2 loaded came back as a
    'cannot read checkpoint' error: run took it for a failure, removed its finished prepare and its
    output folder, and then said 'finished work kept' (exit 6). The stop is the answer whatever
    error the code it landed in raised: the prepare is kept, and a rerun resumes from it."""
    import signal
    import time

    import torch

    import virnucpro.embed

    original = torch.load

    def load_that_wraps_the_stop(name, *args, **kwargs):
        if str(name).endswith("esm2_tiny.pt"):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            except InterruptedByUser as stop:
                raise RuntimeError("a library's own error") from stop
        return original(name, *args, **kwargs)

    virnucpro.embed._load_encoders_cached.cache_clear()
    monkeypatch.setattr(torch, "load", load_that_wraps_the_stop)
    args = ("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", tmp_path / "r", "--models", tiny_models,
            "--device", "cpu")
    try:
        code, message = run_cli(*args)
    finally:
        virnucpro.embed._load_encoders_cached.cache_clear()
    assert code == 6 and "finished work and checkpoints kept" in message, message
    assert (tmp_path / "r" / WORK / "prepared" / fmt.MANIFEST).is_file(), message
    monkeypatch.setattr(torch, "load", original)
    code, message = run_cli(*args)
    assert code == 0 and "prepare: already done for these inputs" in message and (tmp_path / "r" / RESULT).is_file(), message
