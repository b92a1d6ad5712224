"""The prepare output directory (CONTRACTS.md): manifest, sequence and chunk tables, ORF shards.

This module is the one place that knows these file formats; `prepare` writes them, `embed` and
`predict` read them through the functions here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from virnucpro.errors import BadInputError, InconsistentInputsError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SEQUENCES = "sequences.tsv"
CHUNKS = "chunks.tsv"
SHARD_DIR = "shards"
SEQUENCES_HEADER = ("sequence_id", "length", "n_chunks", "n_orfs", "status")
CHUNKS_HEADER = ("chunk_id", "sequence_id", "start", "length", "n_orfs")
SHARD_COLUMNS = ("id", "nucleotide", "protein")
SHARD_MAGIC = "# virnucpro-shard"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.tsv"


def shard_first_line(chunk_size: int, index: int, of: int) -> str:
    return (f"{SHARD_MAGIC} format_version={FORMAT_VERSION} chunk_size={chunk_size} "
            f"index={index} of={of}\n")


@dataclass(frozen=True)
class ShardInfo:
    """What a shard's first line says about it, plus the file's sha256."""

    path: Path
    chunk_size: int
    index: int
    of: int
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_first_line(path: Path, line: str) -> dict[str, int]:
    if not line.startswith(SHARD_MAGIC):
        raise BadInputError(f"{path} is not a virnucpro prepare shard (first line: '{line.strip()[:60]}')",
                            "give a shards/shard_NNNNN.tsv file written by `virnucpro prepare`")
    fields = dict(item.split("=", 1) for item in line[len(SHARD_MAGIC):].split())
    try:
        values = {key: int(fields[key]) for key in ("format_version", "chunk_size", "index", "of")}
    except (KeyError, ValueError):
        raise BadInputError(f"{path}: malformed shard header '{line.strip()}'",
                            "rerun `virnucpro prepare`") from None
    if values["format_version"] != FORMAT_VERSION:
        raise InconsistentInputsError(f"{path} has shard format_version {values['format_version']}, "
                                      f"this virnucpro reads {FORMAT_VERSION}",
                                      "rerun `virnucpro prepare` with this version")
    return values


def shard_info(path: Path) -> ShardInfo:
    """Header fields and checksum of a shard, without reading its records into memory."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline()
    except OSError as exc:
        raise BadInputError(f"cannot read shard {path}: {exc.strerror}", "check the path") from None
    values = _parse_first_line(path, first)
    return ShardInfo(path, values["chunk_size"], values["index"], values["of"], sha256_of(path))


def read_shard(path: Path) -> Iterator[tuple[str, str, str]]:
    """(id, nucleotide, protein) of every ORF record of a shard, in order."""
    with open(path, encoding="utf-8") as handle:
        _parse_first_line(path, handle.readline())
        header = handle.readline().rstrip("\n").split("\t")
        if tuple(header) != SHARD_COLUMNS:
            raise BadInputError(f"{path}: expected columns {SHARD_COLUMNS}, found {tuple(header)}",
                                "rerun `virnucpro prepare`")
        for number, line in enumerate(handle, start=3):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise BadInputError(f"{path}, line {number}: expected 3 tab-separated fields",
                                    "the shard is damaged; rerun `virnucpro prepare`")
            yield fields[0], fields[1], fields[2]


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load_manifest(directory: Path) -> dict:
    """The manifest of a prepare directory, checked for presence and format version."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"{directory} is not a finished prepare directory (no {MANIFEST})",
                            "run `virnucpro prepare` first, or give its --outdir") from None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read {path}: {exc}", "rerun `virnucpro prepare`") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InconsistentInputsError(f"{path} has format_version {manifest.get('format_version')}, "
                                      f"this virnucpro reads {FORMAT_VERSION}",
                                      "rerun `virnucpro prepare` with this version")
    return manifest


def read_table(path: Path) -> Iterator[dict[str, str]]:
    """Rows of one of our TSV tables (header line, then tab-separated values) as dicts."""
    with open(path, encoding="utf-8") as handle:
        columns = handle.readline().rstrip("\n").split("\t")
        for line in handle:
            yield dict(zip(columns, line.rstrip("\n").split("\t")))
