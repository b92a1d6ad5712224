"""The pipeline's Groovy cannot import Python, so a few of virnucpro's formats are written out again
in it: the stubs' placeholder files, the embedding shard's seal, the shard's header lines. Each copy
is compared here with the Python that owns the format, so that a change on one side fails a test
rather than drifting (a reviewer changed FORMAT_VERSION and a table's columns: nothing failed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from virnucpro import calls, h5shard
from virnucpro import prepared as fmt

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "modules" / "local" / "virnucpro"
HELPERS = ROOT / "subworkflows" / "local" / "utils_virnucpro_pipeline" / "main.nf"
PRINTF = re.compile(r"printf '((?:[^'\\]|\\.)*)' > (\S+)")


def stub_files(process: str) -> dict[str, str]:
    """{file name: text} that a process's stub writes with printf (Groovy's \\\\ then printf's escapes)."""
    text = (MODULES / process / "main.nf").read_text()
    stub = text[text.index("    stub:"):]
    files = {}
    for literal, target in PRINTF.findall(stub):
        shell = literal.replace("\\\\", "\\")  # what Groovy's string hands the shell
        files[Path(target.replace("${prefix}/", "")).name] = shell.encode().decode("unicode_escape")
    return files


def test_prepare_stub_tables_and_shard_are_the_formats_prepare_writes():
    files = stub_files("prepare")
    assert files["sequences.tsv"] == calls.header_line(fmt.SEQUENCES_HEADER)
    assert files["chunks.tsv"] == calls.header_line(fmt.CHUNKS_HEADER)
    assert files["shard_00000.tsv"] == fmt.shard_header(500, 0, 1)


def test_prepare_stub_manifest_has_prepare_s_format_version():
    text = (MODULES / "prepare" / "main.nf").read_text()
    manifest = re.search(r"echo '(\{[^']*\})' > prepared/manifest\.json", text)
    assert manifest and json.loads(manifest.group(1))["format_version"] == fmt.FORMAT_VERSION


def test_predict_stub_tables_are_the_formats_predict_writes():
    files = stub_files("predict")
    assert files["prediction_results.txt"] == calls.header_line(calls.RESULT_COLUMNS)
    assert files["prediction_results_highestscore.csv"] == calls.header_line(calls.HIGHEST_COLUMNS)
    assert files["chunks.tsv"] == calls.header_line(calls.CHUNK_COLUMNS)
    assert files["sequences.tsv"] == calls.header_line(calls.SEQUENCE_COLUMNS)


def test_the_pipeline_s_seal_is_the_one_embed_writes():
    seal = re.search(r"def isSealedShard\(path\) \{\s+def magic = '([^']*)'", HELPERS.read_text())
    assert seal and seal.group(1).replace("\\n", "\n").encode("ascii") == h5shard.SEAL_MAGIC


@pytest.mark.parametrize("of", [1, 12])
def test_a_shard_without_records_is_its_two_header_lines_as_the_pipeline_reads_it(of):
    """shardHasNoRecords reads three lines: a shard of no record has two (its first line, its columns)."""
    assert "reader.readLine(); reader.readLine(); reader.readLine() == null" in HELPERS.read_text()
    assert fmt.shard_header(500, 0, of).count("\n") == 2 and fmt.shard_header(500, 0, of).endswith("\n")
