"""One place knows the prepare folder's formats (virnucpro/prepared.py): prepare writes its shard lines,
table rows, headers and manifest through the functions there, and reads its own tables back through
them; its warnings about worker processes use errors.py's words for process limits."""

from __future__ import annotations

import ast
import errno
import json
import os
from pathlib import Path

import pytest

from virnucpro import errors
from virnucpro import prepared as fmt

ROOT = Path(__file__).resolve().parent.parent


# --- prepare spells out no format itself -------------------------------------------------------------

def _tab_texts(tree: ast.AST) -> list[str]:
    """f-strings holding a tab, `"\\t".join(...)` and `.split("\\t", ...)`: rows built or read by hand."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.Constant) and "\t" in str(v.value)
                                                   for v in node.values):
            found.append(ast.unparse(node))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("join", "split")
                and any(isinstance(c, ast.Constant) and "\t" in str(c.value) for c in ast.walk(node))):
            found.append(ast.unparse(node))
    return found


def _manifest_dicts(tree: ast.AST) -> list[str]:
    """Dict literals with a key of the manifest or of its shard entries: a manifest built by hand."""
    keys = {"format_version", "virnucpro_version", "inputs", "shards", "tables", "file", "sha256"}
    return [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Dict)
            and any(isinstance(k, ast.Constant) and k.value in keys for k in node.keys)]


def test_prepare_builds_no_row_header_or_manifest_itself():
    tree = ast.parse((ROOT / "virnucpro/prepare.py").read_text())
    found = _tab_texts(tree) + _manifest_dicts(tree)
    assert not found, f"prepare.py spells out the prepare formats itself: {found}"


# --- each writer agrees with its reader --------------------------------------------------------------

def test_table_rows_follow_their_headers(tmp_path):
    (tmp_path / fmt.SEQUENCES).write_text(fmt.header_line(fmt.SEQUENCES_HEADER)
                                          + fmt.sequence_rows(["s", "e"], [1000, 0], [2, 0], [1, 0], [7, 0]))
    (tmp_path / fmt.CHUNKS).write_text(fmt.header_line(fmt.CHUNKS_HEADER)
                                       + fmt.chunk_rows(["s_chunk_1"], ["s"], [0], [500], [1]))
    assert list(fmt.read_table(tmp_path / fmt.SEQUENCES)) == [
        {"sequence_id": "s", "length": "1000", "n_chunks": "2", "n_orfs": "1", "status": "ok", "masked_bases": "7"},
        {"sequence_id": "e", "length": "0", "n_chunks": "0", "n_orfs": "0", "status": "empty", "masked_bases": "0"}]
    assert list(fmt.read_table(tmp_path / fmt.CHUNKS)) == [
        {"chunk_id": "s_chunk_1", "sequence_id": "s", "start": "0", "length": "500", "n_orfs": "1"}]
    assert list(fmt.sequence_ids(tmp_path / fmt.SEQUENCES)) == ["s", "e"]


@pytest.mark.parametrize("length, n_orfs, status", [(0, 0, "empty"), (10, 0, "no_orf"), (10, 3, "ok")])
def test_sequence_status(length, n_orfs, status):
    assert fmt.sequence_status(length, n_orfs) == status


def test_a_shard_written_by_its_header_and_lines_reads_back(tmp_path):
    shard = tmp_path / fmt.shard_name(0)
    shard.write_text(fmt.shard_header(500, 0, 1) + "".join(fmt.orf_lines(["s_chunk_1F1"], ["ATGAAA"], ["MK"])), newline="\n")
    assert list(fmt.read_shard(shard)) == [("s_chunk_1F1", "ATGAAA", "MK")]
    info = fmt.shard_info(shard)
    assert (info.chunk_size, info.index, info.of, info.sha256) == (500, 0, 1, fmt.sha256_of(shard))


def test_a_shard_read_as_docs_output_says_keeps_ids_that_hold_a_hash(tmp_path):
    """docs/output.md: skip the format line, then plain tab-separated text with a header; `comment="#"`
    would drop `#h_chunk_1F1` and cut `m#h_chunk_1F1`."""
    import csv

    ids = ["#h_chunk_1F1", "m#h_chunk_1F1"]
    shard = tmp_path / fmt.shard_name(0)
    shard.write_text(fmt.shard_header(500, 0, 1) + "".join(fmt.orf_lines(ids, ["ATG", "ATG"], ["M", "M"])), newline="\n")
    with shard.open(newline="") as handle:
        assert handle.readline().startswith(fmt.SHARD_MAGIC)
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert [row["id"] for row in rows] == ids
    assert "skiprows=1" in (ROOT / "docs" / "output.md").read_text("utf-8")


def test_a_manifest_built_here_passes_its_own_checks(tmp_path):
    for name in fmt.TABLES:
        (tmp_path / name).write_text(name)
    counts = {"sequences": 2, "empty_sequences": 0, "bases": 9, "chunks": 2, "chunks_without_orf": 1, "orfs": 3}
    manifest = fmt.manifest(tmp_path, 500, [fmt.input_entry("a.fa", "0" * 64, 2)],
                            [fmt.shard_entry(0, 3, "1" * 64)], counts, "/data/reads")
    assert list(manifest) == ["format_version", "virnucpro_version", "chunk_size", "working_directory", "inputs",
                              "shards", "tables", "counts"]
    assert manifest["shards"] == [{"file": f"{fmt.SHARD_DIR}/{fmt.shard_name(0)}", "index": 0, "records": 3,
                                   "sha256": "1" * 64}]
    fmt.write_json_atomic(tmp_path / fmt.MANIFEST, manifest)
    assert fmt.load_manifest(tmp_path) == manifest
    fmt.check_tables(tmp_path, manifest)


# --- write_json_atomic ---------------------------------------------------------------------------------

def test_write_json_atomic_syncs_the_file_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    path.write_text("old\n")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    fmt.write_json_atomic(path, {"a": 1})
    assert events[:2] == ["fsync", "replace"]
    assert path.read_text() == json.dumps({"a": 1}, indent=2) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# --- worker processes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("code, words", [(errno.EMFILE, errors.OPEN_FILE_LIMITS[errno.EMFILE][0]),
                                         (errno.ENFILE, errors.OPEN_FILE_LIMITS[errno.ENFILE][0]),
                                         (errno.EAGAIN, errors.THREAD_LIMIT)])
def test_workers_that_cannot_start_say_what_errors_says_of_the_limit(code, words):
    from virnucpro.prepare import _why_no_workers

    assert _why_no_workers(OSError(code, os.strerror(code))) == f"{os.strerror(code)}: {words}"


def test_the_migration_guides_awk_gives_the_originals_orf_fasta(tmp_path, reference_dir):
    """docs/migrating.md turns prepare's shards into the original's *_identified_*.fa files: the same
    ids and sequences, in the same order, as the original wrote for the vanilla reference input."""
    import re
    import subprocess

    from virnucpro.prepare import prepare

    guide = (ROOT / "docs" / "migrating.md").read_text("utf-8")
    commands = re.findall(r"^awk .*?> (identified_\w+\.fa\w?)$", guide, flags=re.M)
    assert sorted(commands) == ["identified_nucleotide.fa", "identified_protein.faa"], commands
    prepare([reference_dir / "vanilla" / "test_with_orfs.fa"], tmp_path / "prepared", chunk_size=500, shard_size=2)
    for line in re.findall(r"^awk .*$", guide, flags=re.M):
        subprocess.run(line, shell=True, cwd=tmp_path, check=True)
    for name in commands:
        original = reference_dir / "vanilla" / f"test_with_orfs_{name}"
        assert fasta_records(tmp_path / name) == fasta_records(original), name


def fasta_records(path: Path) -> list[tuple[str, str]]:
    """(id, sequence) of each FASTA record, lines joined."""
    records = []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            records.append((line[1:].split()[0], ""))
        elif line:
            records[-1] = (records[-1][0], records[-1][1] + line.strip())
    return records
