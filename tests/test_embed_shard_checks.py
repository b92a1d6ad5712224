"""`embed` takes a shard as prepare wrote it, read once: a shard rewritten between its checksum and its
records, a header or record prepare never writes, is exit 5 before the work; the clean-up after the
shard is written never fails the command nor is cut by a stop; models that differ by their label only
are the same models (reviewers' cases)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from virnucpro import embed as embed_module
from virnucpro import prepared as fmt

@pytest.fixture
def shard(tmp_path, golden_prepared) -> Path:
    """A copy of the golden sample's first shard (60 ORFs), free to change."""
    copy = tmp_path / "shard_00000.tsv"
    shutil.copyfile(golden_prepared / fmt.load_manifest(golden_prepared)["shards"][0]["file"], copy)
    return copy


def _embed(run_cli, shard: Path, models: Path, out: Path, *options: str) -> tuple[int, str]:
    return run_cli("embed", shard, "--models", models, "--out", out, "--device", "cpu", *options)


def _lines(shard: Path) -> list[str]:
    return shard.read_text().splitlines(keepends=True)


def test_a_shard_rewritten_after_its_checksum_was_taken_is_exit_5(shard, tiny_models, run_cli, monkeypatch, tmp_path):
    other = _lines(shard)[:4]  # the same shard cut to two records
    shard_info = fmt.shard_info

    def taken_then_rewritten(path):
        info = shard_info(path)
        Path(path).write_text("".join(other))
        return info
    monkeypatch.setattr(fmt, "shard_info", taken_then_rewritten)
    code, message = _embed(run_cli, shard, tiny_models, tmp_path / "s.h5")
    assert code == 5 and "changed while it was read" in " ".join(message.split()), message
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("fields", ["chunk_size=500 index=-1 of=1", "chunk_size=500 index=0 of=0",
                                    "chunk_size=0 index=0 of=1", "chunk_size=-500 index=0 of=1",
                                    "chunk_size=500 index=5 of=2", "chunk_size=500 index=0 of=1 index=3",
                                    "chunk_size=500 index=0 of=99999999999999999999999"])
def test_a_shard_header_prepare_never_writes_is_exit_5_before_any_work(shard, tiny_models, run_cli, tmp_path, fields):
    lines = _lines(shard)
    shard.write_text(f"# virnucpro-shard format_version=2 {fields}\n" + "".join(lines[1:]))
    code, message = _embed(run_cli, shard, tiny_models, tmp_path / "s.h5")
    assert code == 5 and "malformed shard header" in message, message
    assert "loading DNABERT-S" not in message and not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("record, said", [
    ("x y z_chunk_1F1\t{nuc}\t{prot}\n", "not a chunk id and a frame"),
    ("a_chunk_1F4\t{nuc}\t{prot}\n", "not a chunk id and a frame"),
    ("a_chunk_1F1\t{low}\t{prot}\n", "nucleotide letter"),
    ("a_chunk_1F1\t{nuc}AA\t{prot}\n", "nucleotides for"),
    ("a_chunk_1F1\t{nuc}\t{prot}M\n", "nucleotides for"),
    ("{first}\t{nuc}\t{prot}\n", "a second time"),
])
def test_a_shard_record_prepare_never_writes_is_exit_5_naming_its_line(shard, tiny_models, run_cli, tmp_path,
                                                                         record, said):
    lines = _lines(shard)
    first_id, nuc, prot = lines[2].rstrip("\n").split("\t")
    nuc = nuc[:3 * len(prot)]  # the shortest a frame's ORF is
    lines.append(record.format(nuc=nuc, low=nuc.lower(), prot=prot, first=first_id))
    shard.write_text("".join(lines))
    code, message = _embed(run_cli, shard, tiny_models, tmp_path / "s.h5")
    assert code == 5 and f"line {len(lines)}" in message and said in message, message


def test_the_golden_shards_pass_every_record_check(golden_prepared):
    for entry in fmt.load_manifest(golden_prepared)["shards"]:
        assert len(list(fmt.read_shard(golden_prepared / entry["file"]))) == entry["records"]


def test_a_checkpoint_part_that_cannot_be_deleted_is_a_warning_once_the_shard_is_written(shard, tiny_models, run_cli,
                                                                                           monkeypatch, tmp_path):
    unlink = Path.unlink

    def refused_for_parts(path, missing_ok=False):
        if embed_module.PART_NAME.fullmatch(path.name):
            raise PermissionError(1, "Operation not permitted", str(path))
        return unlink(path, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", refused_for_parts)
    code, message = _embed(run_cli, shard, tiny_models, tmp_path / "s.h5", "--checkpoint-every", "20")
    said = " ".join(message.split())
    assert code == 0 and "could not delete" in said and "part_" in said and "Operation not permitted" in said, message
    assert (tmp_path / "s.h5").is_file()


def test_a_stop_during_the_clean_up_after_the_shard_is_written_says_it_is_complete(shard, tiny_models, run_cli,
                                                                                    monkeypatch, tmp_path):
    remove = embed_module.CheckpointStore.remove

    def stopped_meanwhile(store):
        os.kill(os.getpid(), signal.SIGTERM)
        remove(store)
    monkeypatch.setattr(embed_module.CheckpointStore, "remove", stopped_meanwhile)
    code, message = _embed(run_cli, shard, tiny_models, tmp_path / "s.h5", "--checkpoint-every", "20")
    said = " ".join(message.split())
    assert code == 6 and "it is complete" in said and "nothing to rerun" in said and "resume" not in said, message
    assert (tmp_path / "s.h5").is_file() and not (tmp_path / "s.h5.ckpt").exists()


def test_models_that_differ_by_their_label_only_are_the_same_models(golden_prepared, models, run_cli, tmp_path):
    relabelled = tmp_path / "relabelled"
    shutil.copytree(models, relabelled)
    manifest = json.loads((relabelled / "manifest.json").read_text())
    manifest["models"]["dnabert_s"]["name"] = "DNABERT-S"
    (relabelled / "manifest.json").write_text(json.dumps(manifest))
    shards = [golden_prepared / entry["file"] for entry in fmt.load_manifest(golden_prepared)["shards"]]
    outs = [tmp_path / "h5" / f"{index}.h5" for index in range(len(shards))]
    for index, (shard, out) in enumerate(zip(shards, outs)):
        code, message = _embed(run_cli, shard, relabelled if index % 2 else models, out)
        assert code == 0, message
    code, message = _embed(run_cli, shards[0], relabelled, outs[0])
    assert code == 0 and "already holds these" in message and "replacing" not in message, message
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *outs, "--outdir",
                            tmp_path / "out", "--models", models)
    assert code == 0, message


def test_a_shard_cut_at_a_line_end_in_its_prepare_folder_is_exit_5_before_any_work(golden_prepared, tiny_models,
                                                                                    run_cli, tmp_path):
    """A hostile reviewer's case: a shard cut short at a line's end reads as a sound, shorter one; embed
    wrote its rows (GPU hours on real data) and only predict refused them. Beside its manifest, the
    shard's sha256 is checked first; the same cut shard on its own (as the pipeline stages it) is taken."""
    prepared = Path(shutil.copytree(golden_prepared, tmp_path / "prepared"))
    shard = prepared / fmt.load_manifest(prepared)["shards"][0]["file"]
    shard.write_text("".join(_lines(shard)[:30]))
    code, message = _embed(run_cli, shard, tiny_models, tmp_path / "s.h5")
    assert code == 5, message
    assert f"{shard} changed after prepare" in message and str(prepared / fmt.MANIFEST) in message, message
    assert "loading DNABERT-S" not in message and not (tmp_path / "s.h5").exists()
    alone = Path(shutil.copyfile(shard, tmp_path / "shard_00000.tsv"))
    assert _embed(run_cli, alone, tiny_models, tmp_path / "alone.h5")[0] == 0


@pytest.mark.parametrize("manifest_text, said", [
    ('{"format_version": %d}' % (fmt.FORMAT_VERSION + 1), "a newer virnucpro wrote it"),
    ("{not json", "manifest.json"),
])
def test_a_shard_beside_a_manifest_that_cannot_be_read_is_exit_5_before_any_work(golden_prepared, tiny_models,
                                                                                  run_cli, tmp_path, manifest_text,
                                                                                  said):
    """A version-skew review's case: beside a manifest of another format (or a damaged one) the shard
    was taken unchecked, an edited shard embedded (GPU hours), and only predict refused the folder."""
    prepared = Path(shutil.copytree(golden_prepared, tmp_path / "prepared"))
    shard = prepared / fmt.load_manifest(prepared)["shards"][0]["file"]
    (prepared / fmt.MANIFEST).write_text(manifest_text)
    code, message = _embed(run_cli, shard, tiny_models, tmp_path / "s.h5")
    assert code == 5 and said in message and str(prepared / fmt.MANIFEST) in message, message
    assert "loading DNABERT-S" not in message and not (tmp_path / "s.h5").exists()

def test_a_shard_beside_a_manifest_of_a_folder_no_virnucpro_command_wrote_is_taken(golden_prepared, tiny_models,
                                                                                   run_cli, tmp_path):
    """A review of the fix above: a shard copied into a project's shards/ folder, beside that project's
    own manifest.json, was refused as a damaged prepare folder (exit 5, "rerun prepare")."""
    project = tmp_path / "project"
    (project / "shards").mkdir(parents=True)
    shard = Path(shutil.copy(golden_prepared / fmt.load_manifest(golden_prepared)["shards"][0]["file"],
                             project / "shards"))
    (project / fmt.MANIFEST).write_text('{"project": "delivery-2026", "files": ["reads.fa"]}')
    code, message = _embed(run_cli, shard, tiny_models, tmp_path / "s.h5")
    assert code == 0, message

def test_a_leftover_shard_its_manifest_does_not_list_is_exit_5_before_any_work(tmp_path, tiny_models, run_cli,
                                                                               monkeypatch):
    """A reviewer's case: an earlier prepare's folder synced over by a later one (`rsync -a` without
    --delete) keeps the earlier shards the later one did not write; embed spent the work on them and
    only predict refused the result. The manifest's list is checked first."""
    reads = tmp_path / "r.fa"
    reads.write_text("".join(f">r{i}\n{'ATGAAACCCGGGTTTAAA' * 8}\n" for i in range(12)))
    assert run_cli("prepare", reads, "--outdir", tmp_path / "many", "--shard-size", "7")[0] == 0
    assert run_cli("prepare", reads, "--outdir", tmp_path / "few", "--shard-size", "100000")[0] == 0
    synced = Path(shutil.copytree(tmp_path / "many", tmp_path / "synced"))
    shutil.copytree(tmp_path / "few", synced, dirs_exist_ok=True)
    leftover = sorted((synced / "shards").glob("*.tsv"))[-1]
    code, message = _embed(run_cli, leftover, tiny_models, tmp_path / "s.h5")
    assert code == 5, message
    assert f"{leftover} is not one of the 1 shard(s) {synced / fmt.MANIFEST} lists" in message, message
    assert "rsync --delete" in message and "loading DNABERT-S" not in message and not (tmp_path / "s.h5").exists()
    assert _embed(run_cli, synced / "shards" / "shard_00000.tsv", tiny_models, tmp_path / "listed.h5")[0] == 0
    monkeypatch.chdir(synced / "shards")  # a review's case: named from inside shards/, it skipped the check
    code, message = _embed(run_cli, Path(leftover.name), tiny_models, tmp_path / "inside.h5")
    assert code == 5 and "is not one of the 1 shard(s)" in message, message


def test_the_manifest_of_a_prepare_folder_is_read_once_for_all_its_shards(golden_prepared, monkeypatch):
    """`run` embeds every shard of its prepare folder: the manifest (which lists them all) is read once."""
    reads = []
    real = fmt.load_manifest
    monkeypatch.setattr(fmt, "load_manifest", lambda folder: reads.append(folder) or real(folder))
    fmt._recorded_shards.cache_clear()
    for entry in real(golden_prepared)["shards"]:
        fmt.check_against_its_manifest(fmt.shard_info(golden_prepared / entry["file"]))
    assert len(reads) == 1
