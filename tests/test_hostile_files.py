"""Files from a colleague or a download (a prepare folder, embedding shards, a models folder) are
refused with one clear message and the exit code of README's table (5 damaged stage files, 4
models, 3 bad input), in bounded memory and time: never a hang on a FIFO, a device read whole, an
allocation a few crafted bytes declare, or a write through a link. Every probe that could hang or
allocate runs in a child process under `ulimit -v` and a timeout."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from virnucpro import prepared as fmt

MEMORY_KB = 4_000_000  # ulimit -v for the children: far below what the hostile files used to cost
TIMEOUT = 90

# Runs the statement argv[2] with `folder` = argv[1] and prints the VirnucproError's exit code and
# message as JSON (code 0 when nothing was raised); anything else ends in a traceback.
PROBE = r"""
import json, sys
from pathlib import Path
from virnucpro import h5shard, predict
from virnucpro import prepared as fmt
from virnucpro.errors import VirnucproError
folder = Path(sys.argv[1])
try:
    exec(sys.argv[2])
    print(json.dumps({"code": 0, "message": ""}))
except VirnucproError as exc:
    print(json.dumps({"code": int(exc.code), "message": str(exc)}))
"""


def bounded(*command: str) -> subprocess.CompletedProcess:
    """`command` in a child under `ulimit -v` and a timeout (a hang fails the test, never blocks it)."""
    line = " ".join(shlex.quote(part) for part in command)
    return subprocess.run(["bash", "-c", f"ulimit -v {MEMORY_KB}; exec {line}"], capture_output=True,
                          text=True, timeout=TIMEOUT)


def probe(folder: Path, statement: str) -> dict:
    """The exit code and message of `statement` run in a bounded child (see PROBE)."""
    done = bounded(sys.executable, "-c", PROBE, str(folder), statement)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli(*args: str) -> subprocess.CompletedProcess:
    """`virnucpro ARGS` in a bounded child."""
    return bounded(sys.executable, "-m", "virnucpro", *args)


@pytest.fixture
def prepared_copy(tmp_path, golden_prepared) -> Path:
    """A private copy of the golden prepare folder, to damage."""
    copy = tmp_path / "prepared"
    shutil.copytree(golden_prepared, copy)
    return copy


# --- 1. a prepare folder's files: regular files only, the manifest read bounded ----------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "link"])
def test_a_manifest_that_is_no_regular_file_is_exit_5_at_once(prepared_copy, tmp_path, kind):
    """A FIFO used to hang predict, /dev/zero to exhaust its memory (exit 137, retried by Nextflow with
    more memory); a link prepare never writes is refused too, each naming manifest.json."""
    manifest = prepared_copy / fmt.MANIFEST
    elsewhere = tmp_path / "elsewhere.json"
    shutil.move(manifest, elsewhere)
    if kind == "fifo":
        os.mkfifo(manifest)
    else:
        manifest.symlink_to("/dev/zero" if kind == "dev-zero" else elsewhere)
    done = cli("predict", "--prepared", str(prepared_copy), "--embeddings", str(tmp_path / "none.h5"),
               "--outdir", str(tmp_path / "out"))
    assert done.returncode == 5, done.stderr[-2000:]
    assert str(manifest) in done.stderr and "Traceback" not in done.stderr
    assert ("not a regular file" if kind == "fifo" else "symbolic link") in done.stderr


def test_a_manifest_larger_than_any_prepare_writes_is_exit_5(prepared_copy, monkeypatch):
    from virnucpro.errors import InconsistentInputsError

    monkeypatch.setattr(fmt, "MANIFEST_MAX_BYTES", 100)
    with pytest.raises(InconsistentInputsError, match="manifest.json is malformed: it is larger than 100 bytes"):
        fmt.load_manifest(prepared_copy)


def no_regular_file_at(path: Path, kind: str, elsewhere: Path) -> None:
    """Put a FIFO, a link to /dev/zero, or a link to the file moved to `elsewhere`, at `path`."""
    if kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.unlink()
        path.symlink_to("/dev/zero")
    else:
        shutil.move(path, elsewhere)
        path.symlink_to(elsewhere)


@pytest.mark.parametrize("name", [fmt.SEQUENCES, fmt.CHUNKS])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "link"])
def test_a_table_that_is_no_regular_file_is_exit_5_naming_it(prepared_copy, name, kind):
    """check_tables (predict's first look at the tables) used to hash /dev/zero forever, or wait on a
    FIFO; a link to a copy with the very same bytes (so the same sha256) is refused as well."""
    table = prepared_copy / name
    no_regular_file_at(table, kind, prepared_copy / "moved.tsv")
    result = probe(prepared_copy, "fmt.check_tables(folder, fmt.load_manifest(folder))")
    assert result["code"] == 5 and str(table) in result["message"], result


@pytest.mark.parametrize("kind", ["fifo", "link-outside", "dev-zero"])
def test_a_shard_that_is_no_regular_file_is_exit_5_naming_it(prepared_copy, tmp_path, kind):
    """predict hashes each prepared shard before reading it: a FIFO used to hang it, a link out of the
    folder to be followed."""
    shard = prepared_copy / "shards" / fmt.shard_name(0)
    no_regular_file_at(shard, kind, tmp_path / "outside.tsv")
    statement = "fmt.check_shard_file(folder, fmt.load_manifest(folder)['shards'][0])"
    result = probe(prepared_copy, statement)
    assert result["code"] == 5 and str(shard) in result["message"], result


def test_the_shard_and_table_readers_refuse_a_fifo_in_a_prepare_folder(prepared_copy):
    """The readers predict uses after the checksums refuse a FIFO swapped in meanwhile (exit 5)."""
    shard = prepared_copy / "shards" / fmt.shard_name(1)
    shard.unlink()
    os.mkfifo(shard)
    result = probe(prepared_copy, f"list(fmt.read_shard(folder / 'shards' / '{shard.name}', links=False))")
    assert result["code"] == 5 and "not a regular file" in result["message"], result
    (prepared_copy / fmt.CHUNKS).unlink()
    os.mkfifo(prepared_copy / fmt.CHUNKS)
    result = probe(prepared_copy, f"list(fmt.checked_rows(folder / '{fmt.CHUNKS}', fmt.CHUNKS_HEADER))")
    assert result["code"] == 5 and fmt.CHUNKS in result["message"], result


def test_a_linked_shard_given_to_embed_is_still_read(golden_prepared, tmp_path):
    """Outside a prepare folder links are followed: Nextflow stages each shard embed reads as one."""
    link = tmp_path / "staged.tsv"
    link.symlink_to(golden_prepared / "shards" / fmt.shard_name(0))
    assert fmt.shard_info(link).sha256 == fmt.sha256_of(golden_prepared / "shards" / fmt.shard_name(0))
    assert len(list(fmt.read_shard(link))) == fmt.load_manifest(golden_prepared)["shards"][0]["records"]


# --- 2. embedding shards: only the storage embed writes ---------------------------------------------

IDS = [f"read_{i:03d}_chunk_1F1" for i in range(4)]


def write_crafted(path: Path, ids=None, vectors=None, attrs=None) -> Path:
    """A sealed shard written by hand: `ids`/`vectors` are callables (handle, name) creating the
    dataset (the sound form by default), `attrs` extra attributes (stored densely: any size)."""
    import h5py

    from virnucpro import h5shard

    def sound_ids(handle, name):
        handle.create_dataset(name, data=np.array(IDS, dtype=object), dtype=h5py.string_dtype("utf-8"))

    def sound_vectors(handle, name):
        handle.create_dataset(name, data=np.full((len(IDS), 8), 0.5, "f4"))

    with h5py.File(path, "w", userblock_size=h5shard.SEAL_BYTES, libver="latest") as handle:
        (ids or sound_ids)(handle, "ids")
        for name in ("dnabert_s", "esm2"):
            (vectors if vectors and name == "dnabert_s" else sound_vectors)(handle, name)
        handle.attrs.update({**sound_attributes(), **(attrs or {})})
    h5shard.seal_file(path)
    return path


MODELS = {"dnabert_s": {"name": "tiny", "sha256": "1" * 64}, "esm2": {"name": "tiny", "sha256": "2" * 64}}


def sound_attributes() -> dict:
    """Every attribute as embed writes it (checksums of the sound vectors): a crafted file gets past
    them, as a hostile one would, to the reads of its datasets."""
    from virnucpro import h5shard

    checksums = h5shard.VectorChecksums()
    checksums.add(np.full((len(IDS), 8), 0.5, "f4"), np.full((len(IDS), 8), 0.5, "f4"))
    return {**checksums.attributes(), "format_version": h5shard.FORMAT_VERSION, "virnucpro_version": "0.1.0",
            "shard_index": 0, "shard_of": 1, "shard_sha256": "0" * 64, "chunk_size": 500,
            "models": json.dumps(MODELS), "precision": "fp32", "device": "cpu", "created": "2024-01-01T00:00:00"}


def test_a_crafted_sound_shard_reads(tmp_path):
    """The crafted files below differ from this one in one dataset only."""
    from virnucpro import h5shard

    path = write_crafted(tmp_path / "s.h5")
    assert h5shard.read_info(path).widths == (8, 8) and list(h5shard.iter_ids(path)) == IDS
    assert sum(len(ids) for ids, _ in h5shard.iter_rows(path)) == len(IDS)


def refused_read(path: Path) -> dict:
    """What reading `path` as predict does (its attributes, then every row) ends with, in a bounded child."""
    return probe(path, "h5shard.read_info(folder); list(h5shard.iter_ids(folder)); list(h5shard.iter_rows(folder))")


def test_huge_fixed_length_ids_in_unwritten_chunks_are_refused(tmp_path):
    """/ids of 2^30-byte strings in unwritten chunks (a few kB of file) used to make predict allocate
    tens of GiB (exit 137)."""
    path = write_crafted(tmp_path / "s.h5", ids=lambda h, name: h.create_dataset(
        name, shape=(len(IDS),), dtype=f"S{1 << 30}", chunks=(1,)))
    assert path.stat().st_size < 100_000
    result = refused_read(path)
    assert result["code"] == 5 and str(path) in result["message"] and "/ids" in result["message"], result


def test_vectors_in_external_storage_are_refused_without_reading_it(tmp_path):
    """External raw storage on a FIFO used to hang predict (and could read files anywhere)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = write_crafted(tmp_path / "s.h5", vectors=lambda h, name: h.create_dataset(
        name, shape=(len(IDS), 8), dtype="f4", external=[(str(fifo), 0, len(IDS) * 8 * 4)]))
    result = refused_read(path)
    assert result["code"] == 5 and "/dnabert_s is stored in external raw files" in result["message"], result


def test_embeds_already_embedded_check_goes_through_the_same_checks(tmp_path):
    """embed's check of an existing --out reads it with h5shard.read_info first: the FIFO is never opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = write_crafted(tmp_path / "s.h5", vectors=lambda h, name: h.create_dataset(
        name, shape=(len(IDS), 8), dtype="f4", external=[(str(fifo), 0, len(IDS) * 8 * 4)]))
    statement = ("from types import SimpleNamespace\nfrom virnucpro.embed import already_embedded\n"
                 "meta = SimpleNamespace(sha256='0' * 64, index=0, of=1, chunk_size=500)\n"
                 f"assert not already_embedded(folder, meta, {IDS!r}, {MODELS!r}, 'fp32')")
    assert probe(path, statement)["code"] == 0


@pytest.mark.parametrize("layout, words", [
    ({"chunks": (2, 8)}, "in chunks"),
    ({"chunks": (2, 8), "compression": "gzip"}, "in chunks"),
    ({"data": None}, "declares 4 rows (128 bytes) but stores 0 bytes"),
])
def test_vector_storage_embed_never_writes_is_refused(tmp_path, layout, words):
    """Chunked or compressed vectors, and rows declared but never stored (read as fill values), are
    not what embed writes: exit 5 naming the file and the dataset."""
    options = {key: value for key, value in layout.items() if key != "data"}

    def vectors(handle, name):
        dataset = handle.create_dataset(name, shape=(len(IDS), 8), dtype="f4", **options)
        if "data" not in layout:
            dataset[...] = 0.5

    path = write_crafted(tmp_path / "s.h5", vectors=vectors)
    result = refused_read(path)
    assert result["code"] == 5 and "/dnabert_s" in result["message"] and words in result["message"], result


def test_a_vector_dataset_linked_to_another_file_is_refused(tmp_path):
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.create_dataset("dnabert_s", data=np.full((len(IDS), 8), 0.5, "f4"))
    path = write_crafted(tmp_path / "s.h5", vectors=lambda h, name: h.__setitem__(
        name, h5py.ExternalLink(str(other), "dnabert_s")))
    result = refused_read(path)
    assert result["code"] == 5 and "/dnabert_s is a ExternalLink" in result["message"], result


def test_an_oversized_attribute_is_refused_before_it_is_read(tmp_path):
    path = write_crafted(tmp_path / "s.h5", attrs={"padding": np.bytes_(b"x" * 2_400_000)})
    result = refused_read(path)
    assert result["code"] == 5 and "attribute 'padding' holds 2,400,000 bytes" in result["message"], result


def test_an_array_attribute_is_refused_before_it_is_read(tmp_path):
    """Its variable-length strings were counted 16 bytes each: 3,000 naming one 1 MB string cost 6 GB."""
    path = write_crafted(tmp_path / "s.h5", attrs={"note": ["a", "b"], "sizes": np.zeros(3)})
    result = refused_read(path)
    assert result["code"] == 5 and "is an array of shape" in result["message"], result


def test_variable_length_string_attributes_are_refused_once_together_larger_than_embed_writes(tmp_path):
    """Each counts 16 bytes stored; many naming one long string in the file cost gigabytes once read."""
    path = write_crafted(tmp_path / "s.h5", attrs={f"note{i}": "x" * 400_000 for i in range(3)})
    result = refused_read(path)
    assert result["code"] == 5 and "its attributes hold more than 1,048,576 bytes by attribute 'note2'" in \
        result["message"], result


def _ids_naming_one_string(path: Path, length: int) -> Path:
    """A sealed shard whose /ids rows all name the heap string of its first row, `length` bytes."""
    import h5py

    from virnucpro import h5shard

    write_crafted(path, ids=lambda h, name: h.create_dataset(
        name, data=np.array(["x" * length] + IDS[1:], dtype=object), dtype=h5py.string_dtype("utf-8")))
    with h5py.File(path, "r") as handle:
        offset = handle["ids"].id.get_offset()
    with open(path, "r+b") as raw:
        raw.seek(offset)
        first = raw.read(16)
        raw.seek(offset)
        raw.write(first * len(IDS))
    h5shard.seal_file(path)
    return path


@pytest.mark.parametrize("length, words", [(100_000, "by row 4"), (300_000, "an id of 300,000 bytes")])
def test_ids_longer_than_the_file_could_hold_are_refused_before_they_are_read(tmp_path, length, words):
    """Rows naming one long string made a 2 MB shard cost gigabytes before the ids were compared."""
    path = _ids_naming_one_string(tmp_path / "s.h5", length)
    assert path.stat().st_size < 4 * length
    result = refused_read(path)
    assert result["code"] == 5 and "/ids names strings longer than the file could hold" in result["message"], result
    assert words in result["message"], result


def test_vectors_wider_than_any_model_are_refused(tmp_path):
    path = write_crafted(tmp_path / "s.h5", vectors=lambda h, name: h.create_dataset(
        name, data=np.zeros((len(IDS), 9000), "f4")))
    result = refused_read(path)
    assert result["code"] == 5 and "1 to 8192 columns" in result["message"], result


# --- 3. a models folder marked tiny ------------------------------------------------------------------

def tiny_copy(tiny_models: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(tiny_models, copy)
    return copy


def record_sha256(folder: Path, role: str, rel: str) -> None:
    """Record the file's sha256 in the manifest, as a hostile folder's supplier would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["models"][role]["sha256"][rel] = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_tiny_esm2_file_of_garbage_is_damaged_not_verified(tiny_models, tmp_path):
    """The code scan found no pickle in garbage and `models check` said verified: it is exit 4."""
    folder = tiny_copy(tiny_models, tmp_path)
    (folder / "esm2_tiny.pt").write_bytes(b"\xff\xfe garbage, not a torch checkpoint" * 30)
    record_sha256(folder, "esm2", "esm2_tiny.pt")
    done = cli("models", "check", str(folder))
    assert done.returncode == 4, done.stderr[-2000:]
    assert "esm2_tiny.pt is not a readable torch checkpoint" in done.stderr and "it holds no pickle" in done.stderr


def test_a_data_pkl_above_the_loaders_bound_is_refused_unread(tmp_path, monkeypatch):
    """data.pkl was read whole (a 6 GiB inflation from a few MB killed `models check`); it is read up to
    the classifier loader's bound, and one above it is exit 4."""
    from virnucpro import classifier
    from virnucpro.errors import ModelsError
    from virnucpro.models import store

    path = tmp_path / "esm2_tiny.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("esm2_tiny/data.pkl", b"\x80\x02" + b"N0" * 2000 + b"N.")
    monkeypatch.setattr(classifier, "CLASSIFIER_MAX_BYTES", 1000)
    with pytest.raises(ModelsError, match="pickle part is larger than 1,000 bytes"):
        store.code_in_weights(path)
    monkeypatch.setattr(classifier, "CLASSIFIER_MAX_BYTES", 10_000)
    assert store.code_in_weights(path) == []


@pytest.mark.parametrize("setting, value, what", [
    ("encoder_layers", 10 ** 9, "layers 1000000000"),
    ("encoder_layers", "36", "layers '36'"),
    ("encoder_attention_heads", 10 ** 12, "attention heads 1000000000000"),
    ("encoder_embed_dim", 2 ** 40, "embed dim 1099511627776"),
])
def test_esm2_settings_out_of_any_range_are_exit_4(tiny_models, tmp_path, setting, value, what):
    """encoder_layers=10**9 used to loop over a billion layers (MemoryError, exit 1 with a traceback)."""
    statement = (f"from virnucpro.encoders import esm2\n"
                 f"data = esm2._read_checkpoint(folder / 'esm2_tiny.pt')\n"
                 f"setattr(data['cfg']['model'], {setting!r}, {value!r})\n"
                 f"esm2._checked_mapping(folder / 'esm2_tiny.pt', data)")
    result = probe(tiny_models, statement)
    assert result["code"] == 4 and f"its settings give {what}" in result["message"], result


def test_a_dnabert_config_nested_too_deep_is_exit_4(tiny_models, tmp_path):
    from virnucpro.encoders import dnabert_s
    from virnucpro.errors import ModelsError

    folder = tiny_copy(tiny_models, tmp_path) / "DNABERT-S-tiny"
    (folder / "config.json").write_text("[" * 1_000_000 + "]" * 1_000_000)
    with pytest.raises(ModelsError, match="config.json is not readable JSON \\(nested too deeply\\)"):
        dnabert_s._config(folder)


def test_a_dnabert_config_that_is_a_fifo_is_exit_4_at_once(tiny_models, tmp_path):
    folder = tiny_copy(tiny_models, tmp_path) / "DNABERT-S-tiny"
    (folder / "config.json").unlink()
    (folder / "target").write_text("{}")
    (folder / "config.json").symlink_to("/dev/zero")
    statement = "from virnucpro.encoders import dnabert_s\ndnabert_s._config(folder)"
    result = probe(folder, statement)
    assert result["code"] == 4 and "not a regular file" in result["message"], result


# --- 4. predict's staging folder ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_staging_name_taken_by_a_link_or_file_is_exit_3_and_untouched(
        tmp_path, golden_prepared, golden_embeddings, tiny_models, run_cli, kind):
    """`.predict.partial` as a link used to be exit 1 "unexpected FileExistsError"; it is exit 3 naming
    it, and nothing is written through it or deleted."""
    outdir, victim = tmp_path / "out", tmp_path / "victim"
    args = ("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings, "--outdir", outdir,
            "--models", tiny_models)
    assert run_cli(*args)[0] == 0  # an earlier result: its folder is predict's own (its marker)
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    staging = outdir / ".predict.partial"
    staging.symlink_to(victim) if kind == "link" else staging.write_text("mine")
    code, err = run_cli(*args)
    assert code == 3, err
    assert str(staging) + (" is a symbolic link" if kind == "link" else " is a file") in err
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"
    assert staging.is_symlink() if kind == "link" else staging.read_text() == "mine"


def _format_version_naming_one_string(path: Path, rows: int, length: int) -> Path:
    """An unsealed HDF5 file whose `format_version` attribute is `rows` strings, all naming its first
    one, `length` bytes: found by scanning for the first two stored rows (16 bytes each)."""
    import struct

    import h5py

    with h5py.File(path, "w") as handle:
        handle.attrs.create("format_version", np.array(["B" * length] + [f"c{i:04d}" for i in range(rows - 1)],
                                                       dtype=object), dtype=h5py.string_dtype("utf-8"))
    data = bytearray(path.read_bytes())
    start = next(offset for offset in range(len(data) - 32)
                 if struct.unpack_from("<II", data, offset)[0] == length and struct.unpack_from("<I", data, offset + 16)[0] == 5)
    data[start + 16:start + 16 * rows] = bytes(data[start:start + 16]) * (rows - 1)
    path.write_bytes(bytes(data))
    return path


def test_an_older_format_check_reads_no_attribute_that_is_no_whole_number(tmp_path):
    """The check for an older virnucpro's unsealed file read `format_version` whole: 1,500 strings
    naming one 1 MB string made a 1 MB file cost 3.4 GB before exit 5."""
    from memory_helpers import traced_peak

    from virnucpro import h5shard

    path = _format_version_naming_one_string(tmp_path / "older.h5", 40, 1 << 20)
    assert path.stat().st_size < 2 << 20
    _, peak = traced_peak(lambda: h5shard._refuse_other_format(path, path.read_bytes()[:8]))
    assert peak < 8 << 20, peak
    result = refused_read(path)
    assert result["code"] == 5 and "seal" in result["message"], result
