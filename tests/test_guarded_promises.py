"""Promises the code keeps but no other test held it to (a mutation review found each one could
break unnoticed): a prepared shard edited or moved after embedding, --threshold and its tie, the
models check that ignores the hash cache, the publish that hides an old completion file first, the
bounded id registry, the first best ORF of a chunk, and holder processes that never outlive a test.

Each test runs the real command on real files; the mutation each one kills is named in its docstring.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from test_outdir import holding, write_fasta
from virnucpro import prepared as fmt
from virnucpro.calls import HIGHEST, RUN_INFO, SEQUENCES, ChunkScore
from virnucpro.models.store import locate

VIRUS_LEAN = 0.6  # added to the virus logit of the tiny classifier: about half the chunks become virus


def predict_args(prepared: Path, embeddings: list[Path], out: Path, models: Path, *extra) -> list:
    """The `virnucpro predict` command line of a test."""
    return ["predict", "--prepared", prepared, "--embeddings", *embeddings, "--outdir", out, "--models", models,
            *extra]


def copied_prepared(source: Path, tmp_path: Path) -> Path:
    """A private copy of a prepared folder, to damage."""
    return Path(shutil.copytree(source, tmp_path / "prepared"))


# --- a prepared shard that is not the one embedded (prepared.check_shard_file) -------------------

def test_a_prepared_shard_edited_after_embedding_exits_5(tmp_path, run_cli, golden_prepared, golden_embeddings,
                                                        tiny_models):
    """One amino acid of an ORF changed, the ids kept: the embeddings no longer describe the shard.
    Kills `if not unchanged:` -> `if False:`."""
    prepared = copied_prepared(golden_prepared, tmp_path)
    shard = prepared / "shards" / fmt.shard_name(2)
    lines = shard.read_text().splitlines(keepends=True)
    orf_id, nucleotide, protein = lines[2].rstrip("\n").split("\t")  # the first record, after two header lines
    edited = protein[:-1] + ("G" if protein[-1] != "G" else "A")
    lines[2] = f"{orf_id}\t{nucleotide}\t{edited}\n"
    shard.write_text("".join(lines))
    code, message = run_cli(*predict_args(prepared, golden_embeddings, tmp_path / "out", tiny_models))
    assert code == 5 and "changed after prepare" in message and fmt.shard_name(2) in message, message
    assert not (tmp_path / "out" / RUN_INFO).exists()


def test_shards_linked_from_outside_the_prepare_folder_exit_5(tmp_path, run_cli, golden_prepared, golden_embeddings,
                                                             tiny_models):
    """shards/ a symbolic link to a folder elsewhere (identical files): prepare writes no links.
    Kills the realpath test of `prepared.check_shard_file` -> `if False:`."""
    prepared = copied_prepared(golden_prepared, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (prepared / "shards").rename(elsewhere)
    (prepared / "shards").symlink_to(elsewhere, target_is_directory=True)
    before = {path.name: path.read_bytes() for path in elsewhere.iterdir()}
    code, message = run_cli(*predict_args(prepared, golden_embeddings, tmp_path / "out", tiny_models))
    assert code == 5 and "lies outside the prepare folder" in message, message
    assert {path.name: path.read_bytes() for path in elsewhere.iterdir()} == before
    assert not (tmp_path / "out" / RUN_INFO).exists()


# --- --threshold: virus when the fraction of virus chunks is >= the threshold --------------------

def leaning_classifier(tiny_models: Path, path: Path) -> Path:
    """The tiny 500 classifier with its virus logit raised, so that sequences mix virus and others
    chunks and their fractions fall between 0 and 1 (the tiny one calls nearly every chunk others)."""
    from virnucpro.classifier import load_classifier, save_original_way

    model = load_classifier(locate(tiny_models).classifier(500))
    with torch.no_grad():
        model.output_layer.bias[1] += VIRUS_LEAN
    save_original_way(model, path)
    return path


def fractions(folder: Path) -> dict[str, tuple[float, str]]:
    """sequence id -> (virus chunks / chunks with ORFs, call) of every scored row of sequences.tsv,
    the fraction recomputed from the counts (the written column is rounded to 6 digits)."""
    rows = fmt.read_table(folder / SEQUENCES)
    return {row["sequence_id"]: (int(row["n_chunks_virus"]) / scored, row["call"]) for row in rows
            if (scored := int(row["n_chunks"]) - int(row["n_chunks_no_orf"]))}


def assert_calls_follow(folder: Path, threshold: float) -> None:
    """Every scored sequence is virus exactly when its fraction is >= threshold, and the sample holds
    the tie (fraction == threshold); unless threshold is the default, also a fraction the default 0.5
    calls otherwise (0.5 itself, a tie there)."""
    found = fractions(folder)
    wrong = {sid: (fraction, call) for sid, (fraction, call) in found.items()
             if call != ("virus" if fraction >= threshold else "others")}
    assert not wrong, f"calls against --threshold {threshold!r}: {wrong}"
    assert any(fraction == threshold for fraction, _ in found.values()), "the sample lost its tie"
    assert threshold == 0.5 or any(0.5 <= fraction < threshold for fraction, _ in found.values()), \
        "nothing tells the default 0.5 apart"


@pytest.fixture(scope="module")
def leaning(tmp_path_factory, golden_prepared, golden_embeddings, tiny_models) -> tuple[Path, Path]:
    """(classifier, predict output at the default threshold) of the golden sample."""
    from virnucpro.predict import predict

    folder = tmp_path_factory.mktemp("leaning")
    classifier = leaning_classifier(tiny_models, folder / "leaning.pth")
    predict(golden_prepared, golden_embeddings, folder / "out", classifier=classifier, models=tiny_models)
    return classifier, folder / "out"


def tie_threshold(folder: Path) -> float:
    """The smallest fraction above 0.5 in the sample: as --threshold it is a tie for its sequences,
    and the sequences at exactly 0.5 are virus by default but others under it."""
    return min(fraction for fraction, _ in fractions(folder).values() if fraction > 0.5)


def test_predict_calls_by_the_threshold_given_and_a_tie_is_virus(tmp_path, run_cli, leaning, golden_prepared,
                                                                 golden_embeddings, tiny_models):
    """Kills `>= threshold` -> `> threshold` in calls.SequenceTally.call."""
    classifier, default = leaning
    assert_calls_follow(default, 0.5)
    threshold = tie_threshold(default)
    out = tmp_path / "out"
    code, message = run_cli(*predict_args(golden_prepared, golden_embeddings, out, tiny_models,
                                          "--classifier", classifier, "--threshold", repr(threshold)))
    assert code == 0, message
    assert_calls_follow(out, threshold)


def fasta_of(source: Path, ids: set[str], path: Path) -> Path:
    """The records of `source` whose ids are in `ids`, written to `path`."""
    records = source.read_text().split(">")[1:]
    path.write_text("".join(">" + record for record in records if record.split(None, 1)[0] in ids))
    return path


def test_run_passes_its_threshold_to_predict(tmp_path, run_cli, leaning, reference_dir, tiny_models):
    """`run --threshold`, on the sequences of the golden sample that decide it. Kills run.py passing
    threshold=0.5 to predict whatever --threshold says."""
    classifier, default = leaning
    threshold = tie_threshold(default)
    found = sorted(fractions(default).items())
    deciding = {sid for sid, (fraction, _) in found if 0.5 <= fraction <= threshold}
    plain = [sid for sid, (fraction, _) in found if fraction == 0.0][:3] + \
        [sid for sid, (fraction, _) in found if fraction == 1.0][:3]
    fasta = fasta_of(reference_dir / "golden" / "mixed.fa", deciding | set(plain), tmp_path / "some.fa")
    out = tmp_path / "out"
    code, message = run_cli("run", fasta, "--outdir", out, "--models", tiny_models, "--device", "cpu",
                            "--classifier", classifier, "--threshold", repr(threshold))
    assert code == 0, message
    ran, earlier = fractions(out), fractions(default)
    assert set(ran) == deciding | set(plain), "every chosen sequence scored, as in the golden sample"
    assert {sid: value[0] for sid, value in ran.items()} == {sid: earlier[sid][0] for sid in ran}
    assert_calls_follow(out, threshold)


# --- models check always hashes again (store.HashCache._cached) ---------------------------------

def test_models_check_rehashes_a_file_the_hash_cache_calls_good(tmp_path, run_cli, monkeypatch, tiny_models):
    """A damaged file whose cache entry claims the good sha256 for its current stamp: an ordinary
    scan believes the cache, `models check` hashes again and exits 4. Kills dropping `self.use`."""
    from virnucpro.models import store

    models = Path(shutil.copytree(tiny_models, tmp_path / "models"))
    monkeypatch.setattr(store, "_CACHE_MIN_BYTES", 1)  # the tiny files are far under 64 MB
    code, message = run_cli("models", "check", models)
    assert code == 0, message
    cache = json.loads((models / store.HASH_CACHE).read_text())
    rel = "DNABERT-S-tiny/model.safetensors"
    assert rel in cache, sorted(cache)
    weights = bytearray((models / rel).read_bytes())
    weights[-1] ^= 0xFF  # one byte of the last tensor
    (models / rel).write_bytes(bytes(weights))
    cache[rel].update(store._stamp((models / rel).stat()))  # forged: the damaged file, the good hash
    (models / store.HASH_CACHE).write_text(json.dumps(cache))
    assert all(status.ok for status in store.scan(models, ["dnabert_s"])[1]), "the forged entry is not used"
    code, message = run_cli("models", "check", models)
    assert code == 4 and "checksum mismatch" in message and rel in message, message


def test_a_cache_entry_for_a_file_smaller_than_the_cache_is_for_is_not_believed(tmp_path, tiny_models):
    """A trust review's case: a models folder came with a hash cache whose entries, stamped for its
    files, vouched for a classifier that was never hashed (pinned hashes of other weights). Files
    under 64 MB are never cached, so an entry for one is ignored and the file hashed."""
    from virnucpro.models import store

    models = Path(shutil.copytree(tiny_models, tmp_path / "models"))
    rel = "300_model_tiny.pth"
    path = models / rel
    assert path.stat().st_size < store._CACHE_MIN_BYTES
    forged = {rel: {**store._stamp(path.stat()), "sha256": "0" * 64, "git_sha1": "0" * 40}}
    (models / store.HASH_CACHE).write_text(json.dumps(forged))
    store.remembered_hashes.clear()
    assert store.HashCache(models).sha256(models, rel) == hashlib.sha256(path.read_bytes()).hexdigest()

# --- a publish over an earlier output hides its completion file first (outdir.publish) ---------

def test_a_publish_failing_midway_never_leaves_the_old_run_info(tmp_path, run_cli, monkeypatch, golden_prepared,
                                                                golden_embeddings, tiny_models):
    """An earlier complete output, then a publish whose second file cannot be moved in: the folder
    must not look complete (old run_info.json beside half-new tables); the rerun completes it.
    Kills `if (self.folder / names[-1]).is_file():` -> `if False:`."""
    from virnucpro import outdir

    out = tmp_path / "out"
    args = predict_args(golden_prepared, golden_embeddings, out, tiny_models)
    assert run_cli(*args)[0] == 0 and (out / RUN_INFO).is_file()
    replace = os.replace

    def second_fails(source, target):
        if Path(target) == out / HIGHEST:
            raise OSError(errno.EIO, "Input/output error", str(target))
        replace(source, target)

    monkeypatch.setattr(outdir.os, "replace", second_fails)
    code, message = run_cli(*args)
    monkeypatch.undo()
    assert code == 10 and HIGHEST in message, message
    assert not (out / RUN_INFO).exists(), "a half-published folder looks complete"
    code, message = run_cli(*args)
    assert code == 0 and (out / RUN_INFO).is_file(), message


# --- the duplicate-id registry holds at most BUFFER hashes (prepare.IdRegistry) ----------------

def test_the_id_registry_buffer_stays_under_its_bound(tmp_path, monkeypatch):
    """Thousands of ids in batches of 1 to 7 against a buffer of 8: never 8 or more held after a
    batch, and the repeats planted across spills are all found. Kills the spill `if False:`."""
    from array import array

    from virnucpro.prepare import IdRegistry

    monkeypatch.setattr(IdRegistry, "BUFFER", 8)
    registry = IdRegistry(tmp_path / "ids")
    values = list(range(-1500, 1500)) + [-1500, 7, 1499]  # three repeats, far apart
    held, start = [], 0
    for size in range(len(values)):
        batch = values[start:start + size % 7 + 1]
        if not batch:
            break
        registry.add_many(array("q", batch))
        held.append(len(registry.buffer))
        start += len(batch)
    assert start == len(values) and max(held) < IdRegistry.BUFFER, max(held)
    assert set().union(*registry.repeated_hash_batches()) == {-1500, 7, 1499}


# --- ties for the best ORF keep the first (calls.ChunkScore.add) --------------------------------

def test_the_first_orf_with_the_highest_virus_score_stays_the_best():
    """Kills `virus > self.max_virus` -> `>=`."""
    score = ChunkScore("c_chunk_1", "c_chunk_1F1", 0.75, 0.25)
    score.add("c_chunk_1F2", 0.75, 0.5)
    assert (score.best_orf, score.max_virus, score.max_others) == ("c_chunk_1F1", 0.75, 0.5)
    score.add("c_chunk_1R1", 0.875, 0.125)
    score.add("c_chunk_1R2", 0.875, 0.0)
    assert (score.best_orf, score.max_virus, score.max_others) == ("c_chunk_1R1", 0.875, 0.5)


# --- a test that fails while a command holds its folder leaves no process behind ---------------

def test_a_failing_test_body_kills_and_reaps_the_holder(tmp_path):
    """The holder waits on a FIFO nobody opened for writing: only a kill ends it. Kills a `holding`
    whose exit only closes the FIFO (what the callers of test_outdir's start_holding did)."""
    with pytest.raises(AssertionError, match="the test failed here"):
        with holding(tmp_path, "prepare", tmp_path / "res") as (holder, _fifo):
            assert False, "the test failed here"
    assert holder.returncode is not None, "the holder outlived the test"
    with pytest.raises(ProcessLookupError):
        os.kill(holder.pid, 0)  # reaped: not even a zombie is left


def test_a_test_body_that_finishes_its_input_lets_the_holder_end(tmp_path):
    """On success the holder ends on its own: its exit status is the command's."""
    with holding(tmp_path, "prepare", tmp_path / "res") as (holder, fifo):
        fifo.open_and_write(write_fasta(tmp_path / "a.fa", 2).read_text())
        fifo.close()
        _, err = holder.communicate(timeout=120)
    assert holder.returncode == 0, err
