"""predict trusts no stage file: ids, counts, HDF5 layout and manifest are checked, each failure exit 5.

Every case damages a private copy of a real prepared sample or of real embedding shards (tiny
models) and runs `virnucpro predict`: exit 5, one message naming the file and what is wrong, no
traceback, and no output table written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from h5_helpers import edited_shard
from virnucpro import h5shard
from virnucpro import prepared as fmt
from virnucpro.embed import embed
from virnucpro.predict import OUTPUTS

TABLE_FILES = (fmt.SEQUENCES, fmt.CHUNKS)


@dataclass
class Sample:
    """A private copy of a prepared folder and its embeddings, free to damage."""

    prepared: Path
    embeddings: list[Path]
    outdir: Path
    models: Path

    def predict(self, run_cli) -> tuple[int, str]:
        return run_cli("predict", "--prepared", self.prepared, "--embeddings", *self.embeddings,
                       "--outdir", self.outdir, "--models", self.models)

    def edit_manifest(self, change: Callable[[dict], object]) -> None:
        manifest = json.loads((self.prepared / fmt.MANIFEST).read_text())
        change(manifest)
        (self.prepared / fmt.MANIFEST).write_text(json.dumps(manifest))

    def edit_lines(self, name: str, change: Callable[[list[str]], object]) -> None:
        path = self.prepared / name
        lines = path.read_text().splitlines(keepends=True)
        change(lines)
        path.write_text("".join(lines))


@pytest.fixture
def sample(tmp_path, golden_prepared, golden_embeddings, tiny_models) -> Sample:
    prepared = tmp_path / "prepared"
    shutil.copytree(golden_prepared, prepared)
    copies = []
    for path in golden_embeddings:
        copies.append(tmp_path / path.name)
        shutil.copy(path, copies[-1])
    return Sample(prepared, copies, tmp_path / "out", tiny_models)


def assert_refused(sample: Sample, code: int, message: str, *names: str) -> None:
    """Exit 5, no traceback or bug report, every name in the message, no output written."""
    assert code == 5, message
    assert "Traceback" not in message and "bug" not in message, message
    for name in names:
        assert name in message, (name, message)
    assert not any((sample.outdir / name).exists() for name in OUTPUTS)


def edit_h5(path: Path, change: Callable) -> None:
    with edited_shard(path) as handle:
        change(handle)


def replace_dataset(handle, name: str, data, **options) -> None:
    del handle[name]
    handle.create_dataset(name, data=data, **options)


# --- point 4: ids of the HDF5 files against the prepared shards ------------------------------------

def test_an_embedding_file_replaced_by_another_sealed_one_after_its_check_is_refused(sample, run_cli, monkeypatch):
    """Predict opens each file three times (attributes, ids, rows): a sound file of another shard
    renamed over one after its attributes were checked is exit 5, never scored."""
    import virnucpro.predict as predict_module

    checked = predict_module.order_shards

    def then_replaced(*args, **kwargs):
        shards = checked(*args, **kwargs)
        shutil.copy(sample.embeddings[1], sample.embeddings[0])
        return shards

    monkeypatch.setattr(predict_module, "order_shards", then_replaced)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, sample.embeddings[0].name, "was replaced by another file")


def test_each_embedding_file_is_hashed_once_while_it_stays_the_same_file(sample, run_cli, monkeypatch):
    """Attributes, ids and rows are three reads of each file; the whole-file hash runs at the first
    only, the later ones see by the file's identity that nothing wrote it since."""
    hashed = []
    seal_block = h5shard._seal_block
    monkeypatch.setattr(h5shard, "_seal_block", lambda handle: hashed.append(handle.name) or seal_block(handle))
    code, message = sample.predict(run_cli)
    assert code == 0, message
    assert len(hashed) == len(sample.embeddings), hashed


def test_an_embedding_file_written_in_place_after_its_check_is_hashed_again_and_refused(sample, run_cli, monkeypatch):
    """A byte changed in place after the attributes were read, its modification time put back: the
    change time still differs, so the next read hashes the file again and refuses it (exit 5)."""
    import os

    import virnucpro.predict as predict_module

    checked, path = predict_module.order_shards, sample.embeddings[0]

    def then_written(*args, **kwargs):
        shards = checked(*args, **kwargs)
        before = os.stat(path)
        with open(path, "r+b") as handle:
            handle.seek(before.st_size - 1)
            last = handle.read(1)
            handle.seek(before.st_size - 1)
            handle.write(bytes([last[0] ^ 1]))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return shards

    monkeypatch.setattr(predict_module, "order_shards", then_written)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, path.name, "changed after embed wrote it")


def _tampered_bytes(path: Path) -> bytes:
    """The bytes of `path` with its ESM-2 vectors zeroed and their checksum attribute rewritten to
    match, in place (same size, same seal block): an edit only the seal, or the checksums read when
    the seal was checked, can find."""
    import h5py

    data = bytearray(path.read_bytes())
    with h5py.File(path, "r", locking=False) as handle:
        nuc, prot = handle["dnabert_s"][...], handle["esm2"][...]
        offset, old = handle["esm2"].id.get_offset(), handle.attrs["sha256_esm2"]
    zeros = np.zeros_like(prot)
    data[offset:offset + zeros.nbytes] = zeros.tobytes()
    checksums = h5shard.VectorChecksums()
    checksums.add(nuc, zeros)
    old = old.encode() if isinstance(old, str) else bytes(old)
    assert data.count(old) == 1
    start = data.find(old)
    data[start:start + len(old)] = checksums.attributes()["sha256_esm2"].encode()
    return bytes(data)


def test_vectors_changed_through_a_memory_map_after_the_hash_are_refused(sample):
    """Writes through a shared memory map to pages already dirty change neither the modification nor
    the change time: a file changed that way after predict hashed it keeps its identity, and its
    checksum attributes were rewritten too. The vectors read must still be refused (exit 5), checked
    against the checksums the hashed file held."""
    import mmap

    from virnucpro.errors import InconsistentInputsError

    path = sample.embeddings[0]
    tampered = _tampered_bytes(path)
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
        for start in range(0, len(mapped), mmap.PAGESIZE):
            mapped[start] = mapped[start]  # dirty every page first, as a writer with the file mapped would
        info = h5shard.read_info(path)
        mapped[h5shard.SEAL_BYTES:] = tampered[h5shard.SEAL_BYTES:]
        with pytest.raises(InconsistentInputsError, match="esm2 vectors changed after embed wrote them"):
            for _ in h5shard.iter_rows(path, seal=info.seal):
                pass


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_byte_changed_in_an_embedding_file_is_refused_before_hdf5_reads_it(sample, run_cli, where):
    """Any byte of a shard changed after embed sealed it: exit 5 naming the file, nothing written."""
    path = sample.embeddings[2]
    data = bytearray(path.read_bytes())
    data[{"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]] ^= 0x01
    path.write_bytes(bytes(data))
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, path.name, "changed after embed wrote it" if where != "first"
                   else "does not start with the seal")


def test_an_edited_id_is_named_with_its_row_and_both_values(sample, run_cli):
    injected = "read_000_chunk_1F2\tvirus\t0\t1\n"
    with h5shard.open_h5(sample.embeddings[0]) as handle:
        expected = handle["ids"][7].decode()
    edit_h5(sample.embeddings[0], lambda h: h["ids"].__setitem__(7, injected))
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, sample.embeddings[0].name, "shard_00000.tsv", "[7]",
                   repr(expected), repr(injected))


def test_two_swapped_ids_are_refused(sample, run_cli):
    def swap(handle) -> None:
        ids = handle["ids"][:]
        ids[[3, 4]] = ids[[4, 3]]
        handle["ids"][:] = ids

    edit_h5(sample.embeddings[4], swap)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, sample.embeddings[4].name, "[3]")


def test_a_mismatch_past_the_first_block_is_found(sample, run_cli, monkeypatch):
    """The ids are compared block by block; a mismatch deep in a later block is still named."""
    monkeypatch.setattr(h5shard, "ROWS_PER_WRITE", 7)
    edit_h5(sample.embeddings[5], lambda h: h["ids"].__setitem__(50, "elsewhere"))
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, sample.embeddings[5].name, "[50]", "'elsewhere'")


def test_ids_are_read_block_by_block_never_whole(sample, monkeypatch):
    """Memory bounded by the block: every read of /ids is a slice of at most ROWS_PER_WRITE rows."""
    import h5py

    from virnucpro.predict import check_stage_files, order_shards

    sizes: list[int] = []
    read = h5py.Dataset.__getitem__

    def recording(dataset, key):
        if dataset.name == "/ids":
            sizes.append(len(range(*key.indices(dataset.shape[0]))) if isinstance(key, slice) else -1)
        return read(dataset, key)

    manifest = fmt.load_manifest(sample.prepared)
    shards = order_shards(manifest, sample.embeddings)
    monkeypatch.setattr(h5shard, "ROWS_PER_WRITE", 7)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    check_stage_files(sample.prepared, manifest, shards)
    assert sum(sizes) == manifest["counts"]["orfs"] and 0 < max(sizes) <= 7 and min(sizes) > 0


def test_a_prepared_shard_changed_after_embedding_is_refused(sample, run_cli):
    sample.edit_lines("shards/shard_00002.tsv", lambda lines: lines.__setitem__(
        5, lines[5].replace("\t", "x\t", 1)))
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, "shard_00002.tsv")


def test_a_missing_prepared_shard_is_refused(sample, run_cli):
    (sample.prepared / "shards" / fmt.shard_name(3)).unlink()
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, "shard_00003.tsv")


def test_the_fix_for_a_damaged_prepare_folder_keeps_the_embeddings_and_works(sample, run_cli, reference_dir,
                                                                             tmp_path):
    """The hint used to say "embed again" (hours on a GPU): a new prepare of the same inputs with the
    same options writes the same shards, so the embeddings made before the damage are accepted."""
    (sample.prepared / "shards" / fmt.shard_name(3)).unlink()
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, "same inputs and options", "embeddings you have still fit")
    assert "embed again" not in message
    sample.prepared = tmp_path / "prepared-again"
    assert run_cli("prepare", reference_dir / "golden" / "mixed.fa", "--outdir", sample.prepared,
                   "--shard-size", "60")[0] == 0
    code, message = sample.predict(run_cli)
    assert code == 0, message


def test_a_manifest_from_another_prepare_blames_the_prepare_folder_not_the_embeddings(sample, run_cli, reference_dir,
                                                                                      tmp_path):
    """A hostile reviewer's case: manifest.json copied in from a prepare of other inputs. The .h5 files
    were blamed ("give the .h5 files made from this folder"), and embedding again would not fix it:
    the folder's own files disagree with that manifest, and the message says so."""
    changed = (reference_dir / "golden" / "mixed.fa").read_text().replace(">read_000 ", ">read_000x ", 1)
    (tmp_path / "changed.fa").write_text(changed)
    other = tmp_path / "other"
    assert run_cli("prepare", tmp_path / "changed.fa", "--outdir", other, "--shard-size", "60")[0] == 0
    shutil.copy(other / fmt.MANIFEST, sample.prepared / fmt.MANIFEST)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, "changed after prepare", str(sample.prepared))
    assert "not part of this prepared sample" not in message and ".h5" not in message, message


# --- point 4: counts from input records to embedding rows reconcile --------------------------------

def _delete_line(name: str, index: int) -> Callable[[Sample], None]:
    return lambda s: s.edit_lines(name, lambda lines: lines.pop(index))


def _set_field(name: str, line: int, column: int, value: str) -> Callable[[Sample], None]:
    def change(lines: list[str]) -> None:
        fields = lines[line].rstrip("\n").split("\t")
        fields[column] = value
        lines[line] = "\t".join(fields) + "\n"
    return lambda s: s.edit_lines(name, change)


def _set_count(key: str, value) -> Callable[[Sample], None]:
    return lambda s: s.edit_manifest(lambda m: m["counts"].__setitem__(key, value))


def _move_orf_between_chunks(s: Sample) -> None:
    """read_000's chunk 1 has 2 ORFs and chunk 3 one: swapped, every sum still adds up."""
    _set_field(fmt.CHUNKS, 1, 4, "1")(s)
    _set_field(fmt.CHUNKS, 3, 4, "2")(s)


def _swap(first: int, second: int) -> Callable[[list[str]], None]:
    def change(lines: list[str]) -> None:
        lines[first], lines[second] = lines[second], lines[first]
    return change


TABLE_DAMAGE = {
    "sequence row with ORFs deleted": (_delete_line(fmt.SEQUENCES, 2), fmt.SEQUENCES),
    "sequence row without ORF deleted": (_delete_line(fmt.SEQUENCES, 6), fmt.SEQUENCES),
    "last sequence row deleted": (_delete_line(fmt.SEQUENCES, -1), fmt.SEQUENCES),
    "chunk row deleted": (_delete_line(fmt.CHUNKS, 2), fmt.CHUNKS),
    "last chunk row deleted": (_delete_line(fmt.CHUNKS, -1), fmt.CHUNKS),
    "chunk of an unknown sequence": (_set_field(fmt.CHUNKS, 12, 1, "ghost"), "'ghost'"),
    "sequence n_orfs that do not add up": (_set_field(fmt.SEQUENCES, 1, 3, "7"), fmt.SEQUENCES),
    "chunk n_orfs that do not match the ORF ids": (_move_orf_between_chunks, "read_000_chunk_"),
    "n_chunks not a number": (_set_field(fmt.SEQUENCES, 3, 2, "three"), "'three'"),
    "unknown status": (_set_field(fmt.SEQUENCES, 3, 4, "maybe"), "'maybe'"),
    "row with a missing field": (_set_field(fmt.CHUNKS, 3, 4, "1\tX"), fmt.CHUNKS),
    "header without a column": (_set_field(fmt.CHUNKS, 0, 4, "orfs"), fmt.CHUNKS),
    "sequences.tsv missing": (lambda s: (s.prepared / fmt.SEQUENCES).unlink(), fmt.SEQUENCES),
    "chunk rows swapped (one without ORF)": (lambda s: s.edit_lines(fmt.CHUNKS, _swap(1, 2)), "'read_000_chunk_1'"),
    "chunk without ORF renamed": (_set_field(fmt.CHUNKS, 2, 0, "read_000_chunk_9"), "'read_000_chunk_9'"),
    "chunk start beyond the sequence": (_set_field(fmt.CHUNKS, 2, 2, "99999"), "'99999'"),
    "chunk start off by one": (_set_field(fmt.CHUNKS, 2, 2, "472"), "'471'"),
    "chunk length changed": (_set_field(fmt.CHUNKS, 2, 3, "499"), "'499'"),
    "chunk start with a leading zero": (_set_field(fmt.CHUNKS, 2, 2, "0471"), "'0471'"),
    "masked_bases negative": (_set_field(fmt.SEQUENCES, 1, 5, "-7"), "'-7'"),
    "masked_bases above the length": (_set_field(fmt.SEQUENCES, 1, 5, "4721"), "masked_bases"),
    "masked_bases not a number": (_set_field(fmt.SEQUENCES, 1, 5, "2.5"), "'2.5'"),
    "manifest chunk count": (_set_count("chunks", 587), "chunks"),
    "manifest chunks without ORF": (_set_count("chunks_without_orf", 305), "chunks_without_orf"),
    "manifest ORF count": (_set_count("orfs", 357), "orfs"),
    "manifest base count": (_set_count("bases", 1), "bases"),
    "manifest empty sequences": (_set_count("empty_sequences", 1), "empty_sequences"),
    "manifest input records": (lambda s: s.edit_manifest(lambda m: m["inputs"][0].__setitem__("records", 299)),
                               "records"),
}


@pytest.mark.parametrize("damage", TABLE_DAMAGE.values(), ids=TABLE_DAMAGE.keys())
def test_tables_that_do_not_reconcile_exit_5_before_any_output(sample, run_cli, damage):
    """The checks behind the tables' checksums: the manifest is resealed after each edit, as by a
    faulty writer, so only the reconciliation of the tables themselves can catch it."""
    change, named = damage
    change(sample)
    reseal_tables(sample.prepared)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, named)


def reseal_tables(prepared: Path) -> None:
    """Write the current checksums of sequences.tsv and chunks.tsv into the manifest."""
    manifest = json.loads((prepared / fmt.MANIFEST).read_text())
    manifest["tables"].update({name: fmt.sha256_of(prepared / name) for name in fmt.TABLES
                               if (prepared / name).is_file()})
    (prepared / fmt.MANIFEST).write_text(json.dumps(manifest))


def test_consistent_edits_of_both_tables_are_caught_by_their_checksums(sample, run_cli):
    """Renaming a sequence in sequences.tsv and chunks.tsv alike reconciles row by row; the tables'
    checksums in the manifest catch it (exit 5) before any output."""
    for name in fmt.TABLES:
        path = sample.prepared / name
        path.write_text(path.read_text().replace("read_001", "read_000"))
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, fmt.SEQUENCES, "changed after prepare")


def _original_spans(length: int, size: int) -> list[tuple[int, int]]:
    """(start, length) of each chunk as the original places them (SPEC §1 step 1): n chunks of `size`,
    the overlap spread over the first ones (one base more each for the first), the last one short."""
    n = -(-length // size)
    extra = n * size - length
    low = extra // n if n else 0
    n_up = extra - low * (n - 1)
    shifts = [low + 1] * n_up + [low] * (n - 1 - n_up)
    starts = [k * size - sum(shifts[:k]) for k in range(n)]
    return [(start, min(size, length - start)) for start in starts]


def test_chunk_placement_is_derived_as_prepare_places_chunks():
    """The (start, length) of every chunk that prepare writes and predict checks (one function,
    fmt.chunk_spans) are the original's, for short, exact and long sequences."""
    for size in (3, 7, 300, 500):
        for length in [*range(1, 3 * size + 2), 10 * size - 1, 10 * size, 10 * size + 1, 4720]:
            assert list(fmt.chunk_spans(length, size)) == _original_spans(length, size), (length, size)
    assert list(fmt.chunk_spans(0, 500)) == []


def test_chunk_placement_is_computed_one_chunk_at_a_time():
    """Memory does not grow with a sequence's length: a 10^15 bp sequence yields its first chunks at once."""
    spans = fmt.chunk_spans(10**15 + 1, 500)
    assert [next(spans) for _ in range(2)] == [(0, 500), (499, 500)]


def test_the_report_never_says_does_not_reconcile(tmp_path):
    """A report whose counts disagree is refused (exit 5), not written with a warning in it."""
    from virnucpro.errors import InconsistentInputsError
    from virnucpro.report import write_report

    counts = {"sequences": 2, "empty_sequences": 0, "bases": 10, "chunks": 2, "chunks_without_orf": 1, "orfs": 3}
    manifest = {"counts": counts, "chunk_size": 500, "inputs": []}
    calls = {"virus": 1, "others": 0, "no_orf": 1, "empty": 0}
    run_info = {"tiny_models": True, "virnucpro_version": "0", "threshold": 0.5, "precision": ["fp32"],
                "device": ["cpu"], "seconds": {}}
    write_report(tmp_path / "ok.html", manifest=manifest, rows=3, n_chunks_scored=1,
                 summary={"calls": calls, "top": []}, histogram=[0] * 20, run_info=run_info)
    assert "reconciles" in (tmp_path / "ok.html").read_text()
    with pytest.raises(InconsistentInputsError, match="ORF"):
        write_report(tmp_path / "bad.html", manifest=manifest, rows=2, n_chunks_scored=1,
                     summary={"calls": calls, "top": []}, histogram=[0] * 20, run_info=run_info)
    assert not (tmp_path / "bad.html").exists()


def test_empty_and_orf_less_records_over_two_inputs_still_reconcile(tmp_path, run_cli, tiny_models, reference_dir):
    """No false alarm: empty records, sequences without ORF and several inputs pass every check."""
    from virnucpro.prepare import prepare

    extra = tmp_path / "extra.fa"
    extra.write_text(">empty_one\n\n>short\nACG\n>empty_two\n")
    inputs = [reference_dir / "vanilla/test_with_orfs.fa", extra, reference_dir / "vanilla/test_sequences_small.fa"]
    prepare(inputs, tmp_path / "prep", chunk_size=500, shard_size=4)
    embeddings = []
    for shard in fmt.load_manifest(tmp_path / "prep")["shards"]:
        embeddings.append(tmp_path / Path(shard["file"]).with_suffix(".h5").name)
        embed(tmp_path / "prep" / shard["file"], embeddings[-1], models=tiny_models, device="cpu")
    code, message = run_cli("predict", "--prepared", tmp_path / "prep", "--embeddings", *embeddings,
                            "--outdir", tmp_path / "o", "--models", tiny_models)
    assert code == 0, message
    calls = [line.split("\t")[-1] for line in (tmp_path / "o/sequences.tsv").read_text().splitlines()[1:]]
    assert calls.count("empty") == 2 and "no_orf" in calls and len(embeddings) > 1


# --- point 11: malformed embedding shards (HDF5) ---------------------------------------------------

def _string_vectors(handle) -> None:
    rows, width = handle["esm2"].shape
    replace_dataset(handle, "esm2", np.array([["0.5"] * width] * rows, dtype=object),
                    dtype=h5shard._h5py().string_dtype())


def _set_attr(name: str, value) -> Callable:
    return lambda handle: handle.attrs.__setitem__(name, value)


H5_DAMAGE = {
    "vectors stored as strings": (_string_vectors, "esm2"),
    "vectors stored as float64": (lambda h: replace_dataset(h, "dnabert_s", h["dnabert_s"][:].astype("f8")),
                                  "dnabert_s"),
    "vectors one-dimensional": (lambda h: replace_dataset(h, "esm2", h["esm2"][:, 0]), "esm2"),
    "fewer vector rows than ids": (lambda h: replace_dataset(h, "dnabert_s", h["dnabert_s"][:-1]), "dnabert_s"),
    "fewer ids than vector rows": (lambda h: replace_dataset(h, "ids", h["ids"][:-1],
                                                             dtype=h5shard._h5py().string_dtype()), "ids"),
    "an id that is not UTF-8": (lambda h: h["ids"].__setitem__(5, h["ids"][5][:-1] + b"\xff"), "cannot be read"),
    "ids stored as numbers": (lambda h: replace_dataset(h, "ids", np.arange(h["ids"].shape[0])), "ids"),
    "a vector dataset missing": (lambda h: h.__delitem__("esm2"), "esm2"),
    "ids a group": (lambda h: (h.__delitem__("ids"), h.create_group("ids")), "ids"),
    "attribute missing": (lambda h: h.attrs.__delitem__("shard_sha256"), "shard_sha256"),
    "shard_index a string": (_set_attr("shard_index", "zero"), "shard_index"),
    "shard_index negative": (_set_attr("shard_index", -1), "shard_index"),
    "chunk_size a float": (_set_attr("chunk_size", 500.5), "chunk_size"),
    "chunk_size an array": (_set_attr("chunk_size", [500, 300]), "chunk_size"),
    "shard_of below the index": (_set_attr("shard_of", 0), "shard_of"),
    "shard_sha256 a number": (_set_attr("shard_sha256", 7), "shard_sha256"),
    "precision a number": (_set_attr("precision", 16), "precision"),
    "precision unknown": (_set_attr("precision", "fp8"), "'fp8'"),
    "device unknown": (_set_attr("device", "tpu"), "'tpu'"),
    "device as bytes that are not UTF-8": (_set_attr("device", np.bytes_(b"\xff\xfe")), "device"),
    "models not JSON": (_set_attr("models", "{esm2: tiny"), "models"),
    "models JSON but a list": (_set_attr("models", "[1, 2]"), "models"),
    "models JSON nested too deep": (_set_attr("models", "[" * 200_000), "models"),
    "models without sha256": (_set_attr("models", json.dumps({"esm2": {"name": "x"}})), "models"),
    "other format_version": (_set_attr("format_version", 1), "format_version"),
    "vector checksum not hexadecimal": (_set_attr("sha256_esm2", "x" * 64), "sha256_esm2"),
    "vector checksum missing": (lambda h: h.attrs.__delitem__("sha256_dnabert_s"), "sha256_dnabert_s"),
    # passes every structural check: only the stored checksums can tell
    "one vector value changed": (lambda h: h["esm2"].__setitem__((0, 0), h["esm2"][0, 0] + 0.5), "esm2 vectors"),
    "two vector rows swapped": (lambda h: h["dnabert_s"].__setitem__(slice(0, 2), h["dnabert_s"][0:2][::-1]),
                                "dnabert_s vectors"),
}


@pytest.mark.parametrize("damage", H5_DAMAGE.values(), ids=H5_DAMAGE.keys())
def test_malformed_embedding_shard_exit_5(sample, run_cli, damage):
    """Every shard damaged alike, so that no comparison between shards can catch it instead."""
    change, named = damage
    for path in sample.embeddings:
        edit_h5(path, change)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, sample.embeddings[0].name, named)


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_unreadable_embedding_shard_exit_5(sample, run_cli, damage):
    path = sample.embeddings[2]
    if damage == "text":
        path.write_text("id\tvector\n")
    else:
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, path.name)


def test_malformed_shard_via_the_installed_command_prints_no_traceback(sample):
    edit_h5(sample.embeddings[0], _string_vectors)
    result = subprocess.run([sys.executable, "-m", "virnucpro", "predict", "--prepared", str(sample.prepared),
                             "--embeddings", *map(str, sample.embeddings), "--outdir", str(sample.outdir),
                             "--models", str(sample.models)], capture_output=True, text=True)
    assert_refused(sample, result.returncode, result.stderr + result.stdout, "shard_00000.h5", "esm2")


# --- point 11: malformed prepared manifest ---------------------------------------------------------

def _manifest(change: Callable[[dict], object]) -> Callable[[Sample], None]:
    return lambda s: s.edit_manifest(change)


def _shard_entry(key: str, value) -> Callable[[Sample], None]:
    return _manifest(lambda m: m["shards"][1].__setitem__(key, value))


MANIFEST_DAMAGE = {
    "not JSON": (lambda s: (s.prepared / fmt.MANIFEST).write_text('{"format_version": 1,'), fmt.MANIFEST),
    "a list": (lambda s: (s.prepared / fmt.MANIFEST).write_text("[1]"), fmt.MANIFEST),
    "counts missing": (_manifest(lambda m: m.pop("counts")), "counts"),
    "shards missing": (_manifest(lambda m: m.pop("shards")), "shards"),
    "a count missing": (_manifest(lambda m: m["counts"].pop("orfs")), "orfs"),
    "a count that is a list": (_manifest(lambda m: m["counts"].__setitem__("orfs", [356])), "orfs"),
    "chunk_size a string": (_manifest(lambda m: m.__setitem__("chunk_size", "500")), "chunk_size"),
    "chunk_size true": (_manifest(lambda m: m.__setitem__("chunk_size", True)), "chunk_size"),
    "inputs not a list": (_manifest(lambda m: m.__setitem__("inputs", {"path": "x"})), "inputs"),
    "input records a string": (_manifest(lambda m: m["inputs"][0].__setitem__("records", "300")), "records"),
    "shards empty": (_manifest(lambda m: m.__setitem__("shards", [])), "shards"),
    "shard entry not an object": (_manifest(lambda m: m["shards"].__setitem__(1, "shard_00001.tsv")), "shards"),
    "shard sha256 missing": (_manifest(lambda m: m["shards"][1].pop("sha256")), "sha256"),
    "shard index a string": (_shard_entry("index", "1"), "index"),
    "shard index repeated": (_shard_entry("index", 0), "index"),
    "shard records negative": (_shard_entry("records", -60), "records"),
    "shard records that do not add up": (_shard_entry("records", 61), "orfs"),
    "shard file outside the folder": (_shard_entry("file", "../elsewhere.tsv"), "elsewhere.tsv"),
    "shard file absolute": (_shard_entry("file", "/etc/hostname"), "/etc/hostname"),
    "shard file a number": (_shard_entry("file", 1), "file"),
    "shard file holding NUL": (_shard_entry("file", "shards/a\u0000b"), "shards[1].file"),
    "shard file the folder itself": (_shard_entry("file", "."), "shards[1].file"),
    "working_directory relative": (_manifest(lambda m: m.__setitem__("working_directory", "not/absolute")),
                                   "working_directory must be an absolute path or null"),
    "working_directory a number": (_manifest(lambda m: m.__setitem__("working_directory", 1)), "working_directory"),
}


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE.values(), ids=MANIFEST_DAMAGE.keys())
def test_malformed_prepared_manifest_exit_5(sample, run_cli, damage):
    change, named = damage
    change(sample)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, fmt.MANIFEST, named)


@pytest.mark.parametrize("folder", [None, "/data/\udcff/reads"], ids=["older prepare", "not UTF-8"])
def test_the_folder_of_the_inputs_reaches_run_info_as_text(sample, run_cli, folder):
    """A prepare of an older virnucpro has no working_directory: null. A file name's byte that is not
    UTF-8 (a lone surrogate in the manifest) is written as \\xff text: run_info.json stays valid UTF-8."""
    def edit(manifest: dict) -> None:
        manifest.pop("working_directory")
        if folder:
            manifest["working_directory"], manifest["inputs"][0]["path"] = folder, "\udcffx.fa"
    sample.edit_manifest(edit)
    code, message = sample.predict(run_cli)
    assert code == 0, message
    text = (sample.outdir / "run_info.json").read_bytes().decode("utf-8")
    info = json.loads(text)
    assert "\\ud" not in text and info["inputs_working_directory"] == (folder and "/data/\\xff/reads"), text
    if folder:
        assert info["inputs"][0]["path"] == "\\xffx.fa", text


def _in_a_folder(sample: Sample, folder: Path) -> Path:
    """The sample's embedding files moved into `folder`, beside a hidden .h5 and a file of another kind."""
    folder.mkdir()
    for index, path in enumerate(sample.embeddings):
        sample.embeddings[index] = path.rename(folder / path.name)
    sample.embeddings[-1] = sample.embeddings[-1].rename(sample.embeddings[-1].with_suffix(".H5"))  # any case
    (folder / ".shard_x.h5.partial.h5").write_bytes(b"not hdf5")  # as a temporary file of embed's might be
    (folder / "notes.txt").write_text("not a shard")
    (folder / "old.h5").mkdir()  # a folder is not looked into, as with a glob
    return folder


def test_a_folder_of_embedding_shards_stands_for_its_h5_files(sample, run_cli):
    """A sample of more shards than a command line holds (about 50,000 names) is given as their folder."""
    code, message = sample.predict(run_cli)
    assert code == 0, message
    by_files = {name: (sample.outdir / name).read_bytes() for name in ("prediction_results.txt", "chunks.tsv")}
    folder = _in_a_folder(sample, sample.outdir.parent / "emb")
    code, message = run_cli("predict", "--prepared", sample.prepared, "--embeddings", folder,
                            "--outdir", sample.outdir.parent / "by_folder", "--models", sample.models)
    assert code == 0, message
    assert {name: (sample.outdir.parent / "by_folder" / name).read_bytes() for name in by_files} == by_files


def test_a_folder_and_a_file_in_it_repeat_the_shard(sample, run_cli):
    folder = _in_a_folder(sample, sample.outdir.parent / "emb")
    code, message = run_cli("predict", "--prepared", sample.prepared, "--embeddings", folder, sample.embeddings[0],
                            "--outdir", sample.outdir, "--models", sample.models)
    assert code == 5 and "repeats shard" in message, message


def test_a_folder_without_embedding_shards_is_exit_3_naming_it(sample, run_cli):
    empty = sample.outdir.parent / "empty"
    empty.mkdir()
    (empty / "shard.h5.ckpt").mkdir()  # a checkpoint folder is no shard
    code, message = run_cli("predict", "--prepared", sample.prepared, "--embeddings", empty,
                            "--outdir", sample.outdir, "--models", sample.models)
    assert code == 3 and f"embedding folder {empty} holds no .h5 file" in message, message
    assert not sample.outdir.exists()


def test_predict_itself_checks_the_reconciliation_not_the_report(sample, run_cli, monkeypatch):
    """The final check that ORFs, chunks and calls add up to what prepare counted ran only inside the
    HTML report's rendering: a report changed or dropped would have taken it along. predict makes it
    itself: here a scoring step that loses count of one ORF (the tables are intact) is exit 5."""
    import virnucpro.report
    from virnucpro import predict

    monkeypatch.setattr(virnucpro.report, "write_report", lambda path, **_: Path(path).write_text("stub"))
    add = predict.ScoreHistogram.add
    monkeypatch.setattr(predict.ScoreHistogram, "add", lambda self, scores: add(self, scores[1:]))
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, "ORF")


def _edited(text: str, how: str) -> bytes:
    """A table's text edited as another writer might: a cell (the columns kept), a byte that is no
    UTF-8, or every line ending in CRLF (the header's last column then names no column of ours)."""
    lines = text.splitlines(keepends=True)
    if how == "cell":
        cells = lines[1].split("\t")
        cells[-1] = cells[-1].replace("\n", " \n")
        return (lines[0] + "\t".join(cells) + "".join(lines[2:])).encode()
    if how == "not utf-8":
        return "".join(lines[:-1]).encode() + b"\xff" + lines[-1].encode()
    return text.replace("\n", "\r\n").encode()


@pytest.mark.parametrize("how", ["cell", "not utf-8", "crlf"])
@pytest.mark.parametrize("name", TABLE_FILES)
def test_a_table_replaced_after_the_checks_is_caught_at_its_final_read(sample, run_cli, monkeypatch, name, how):
    """The tables were checked against the manifest, then opened again by name to write the outputs:
    an edited copy renamed into place between the two (a sequence's length changed) was published,
    exit 0. The final read now checks the bytes it used against the manifest; one it cannot even
    parse is that same change (exit 5), not "a bug" (exit 1)."""
    from virnucpro import predict

    table = sample.prepared / name
    edited = sample.prepared.parent / "edited.tsv"
    edited.write_bytes(_edited(table.read_text(), how))
    checked = predict.check_stage_files

    def then_replaced(*args, **kwargs):
        checked(*args, **kwargs)
        edited.rename(table)  # what `mv` of another file over it does

    monkeypatch.setattr(predict, "check_stage_files", then_replaced)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, str(table), "changed")


def _put_in_place(table: Path, what: str) -> None:
    """`table` removed, or replaced by a link to a copy, a folder or a FIFO (what a user's cleanup or
    a tool writing in the wrong folder leaves)."""
    copy = table.with_name("copy.tsv")
    copy.write_bytes(table.read_bytes())
    table.unlink()
    if what == "link":
        table.symlink_to(copy)
    elif what == "folder":
        table.mkdir()
    elif what == "fifo":
        os.mkfifo(table)


@pytest.mark.parametrize("what", ["removed", "link", "folder", "fifo"])
@pytest.mark.parametrize("name", TABLE_FILES)
def test_a_table_gone_or_no_file_after_the_checks_is_exit_5_at_its_final_read(sample, run_cli, monkeypatch,
                                                                               name, what):
    """A table removed, or replaced by a link, a folder or a FIFO between the checks and the final read
    was a traceback asking for a bug report (exit 1): it is the prepare folder changing, exit 5."""
    from virnucpro import predict

    table = sample.prepared / name
    checked = predict.check_stage_files

    def then_changed(*args, **kwargs):
        checked(*args, **kwargs)
        _put_in_place(table, what)

    monkeypatch.setattr(predict, "check_stage_files", then_changed)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, str(table))


def test_a_manifest_record_count_edited_names_the_manifest_not_the_embeddings(sample, run_cli):
    """`shards[0].records` and `counts.orfs` lowered by one: the .h5 (rows = the shard file's records)
    was blamed, with 'rerun embed', which cannot help; the manifest is named, with its repair."""
    def lower(manifest):
        manifest["shards"][0]["records"] -= 1
        manifest["counts"]["orfs"] -= 1
    sample.edit_manifest(lower)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, str(sample.prepared / fmt.MANIFEST), "prepare")
    assert "rerun embed" not in message, message


def test_an_embedding_file_short_of_a_row_names_both_counts(sample, run_cli):
    """An .h5 with fewer rows than its prepared shard has records: exit 5 naming the file and both
    counts (no test reached this refusal; the later walk would blame the prepare folder)."""
    def drop_last_row(handle):
        for name in ("ids", "dnabert_s", "esm2"):
            replace_dataset(handle, name, handle[name][:-1])

    edit_h5(sample.embeddings[1], drop_last_row)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, f"{sample.embeddings[1]} has 59 rows, its shard has 60", "rerun embed")


def test_a_manifest_that_miscounts_a_shard_blames_the_prepare_folder(sample, run_cli):
    """The manifest says a shard holds more records than it and its .h5 do (its total edited to match):
    the manifest is named, not the embeddings."""
    def miscount(manifest):
        manifest["shards"][1]["records"] += 1
        manifest["counts"]["orfs"] += 1

    sample.edit_manifest(miscount)
    code, message = sample.predict(run_cli)
    assert_refused(sample, code, message, "says shards/shard_00001.tsv holds 61 records, but it holds 60",
                   f"{sample.embeddings[1]} has 60 rows")


def test_an_id_a_message_names_is_cut_short():
    """A crafted shard's 1 MB id was printed whole in the exit-5 message."""
    from virnucpro import predict

    shown = predict._id_text("x" * 1_000_000)
    assert len(shown) <= 60 and shown.startswith("'xxx"), shown
