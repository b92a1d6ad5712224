"""The prepare output directory (CONTRACTS.md): manifest, sequence and chunk tables, ORF shards.

This module is the one place that knows these file formats: `prepare` writes them (and reads its
own tables back), `embed` and `predict` read them, all through the functions here.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from stat import S_ISDIR, S_ISREG
from typing import BinaryIO, Callable, Iterator, Sequence

from virnucpro import __version__
from virnucpro.calls import chunk_id_of, header_line
from virnucpro.outdir import MARKER_NAME
from virnucpro.errors import (BadInputError, InconsistentInputsError, access_hint,
                             denied_folder, folder_refused, naming, open_file_limit, open_output, other_format,
                             path_mode, storage_read_failure, unopenable_file)

FORMAT_VERSION = 2  # 2: the manifest holds the sha256 of sequences.tsv and chunks.tsv
MANIFEST = "manifest.json"
SEQUENCES = "sequences.tsv"
CHUNKS = "chunks.tsv"
TABLES = (SEQUENCES, CHUNKS)  # checksummed in the manifest
SHARD_DIR = "shards"
SEQUENCES_HEADER = ("sequence_id", "length", "n_chunks", "n_orfs", "status", "masked_bases")
CHUNKS_HEADER = ("chunk_id", "sequence_id", "start", "length", "n_orfs")
SHARD_COLUMNS = ("id", "nucleotide", "protein")
SHARD_MAGIC = "# virnucpro-shard"
SEQUENCE_COLUMNS_READ = ("sequence_id", "length", "n_chunks", "n_orfs", "status")  # later columns are optional
COUNT_KEYS = ("sequences", "empty_sequences", "bases", "chunks", "chunks_without_orf", "orfs")
SHA256_TEXT = re.compile(r"[0-9a-f]{64}")
# a rerun into the same folder is refused: the edited files are no longer those prepare wrote
# prepare writes the same shards for the same inputs and options: embeddings made before the damage
# still fit the new folder (predict checks each against its shard), no need to embed again
_REPREPARE = ("rerun `virnucpro prepare` with the same inputs and options into a new folder; the embeddings "
              "you have still fit it (predict checks each)")
REPAIR_HINT = f"the prepare folder was edited or damaged: {_REPREPARE}"
SHARD_REPAIR_HINT = f"the shard is damaged: {_REPREPARE}"
PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM)


SHARD_PATTERN = r"shard_[0-9]+\.tsv"  # a shard's file name, as `shard_name` writes it (regular expression)


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.tsv"


def shard_first_line(chunk_size: int, index: int, of: int) -> str:
    """A shard's first line: what it is, its format version, the chunk size, its place among the shards."""
    return (f"{SHARD_MAGIC} format_version={FORMAT_VERSION} chunk_size={chunk_size} "
            f"index={index} of={of}\n")


# --- writing (prepare) ---------------------------------------------------------------------------
# Rows are positional, their cells in the order of their header tuple (tests/test_prepared_writers.py
# reads them back by it): prepare writes one per ORF and per chunk, so no lookup by column name.

def shard_header(chunk_size: int, index: int, of: int) -> str:
    """The two lines that open a shard: its first line, then its column names."""
    return shard_first_line(chunk_size, index, of) + header_line(SHARD_COLUMNS)


def orf_lines(orf_ids: Sequence[str], nucleotides: Sequence[str], proteins: Sequence[str]) -> list[str]:
    """ORF records of a shard, in SHARD_COLUMNS order (a group of short reads has thousands)."""
    return [f"{orf_id}\t{nucleotide}\t{protein}\n"
            for orf_id, nucleotide, protein in zip(orf_ids, nucleotides, proteins)]


def chunk_rows(chunk_ids: Sequence[str], sequence_ids: Sequence[str], starts: Sequence[int],
               lengths: Sequence[int], n_orfs: Sequence[int]) -> str:
    """Rows of chunks.tsv, in CHUNKS_HEADER order, as one text."""
    return "".join([f"{chunk_id}\t{sequence_id}\t{start}\t{length}\t{n}\n" for chunk_id, sequence_id, start, length, n
                    in zip(chunk_ids, sequence_ids, starts, lengths, n_orfs)])


def sequence_status(length: int, n_orfs: int) -> str:
    """The status column of sequences.tsv: empty (no bases), ok (some ORF) or no_orf."""
    return "empty" if length == 0 else "ok" if n_orfs else "no_orf"


def sequence_rows(sequence_ids: Sequence[str], lengths: Sequence[int], n_chunks: Sequence[int],
                  n_orfs: Sequence[int], masked_bases: Sequence[int]) -> str:
    """Rows of sequences.tsv, in SEQUENCES_HEADER order (each status derived), as one text."""
    return "".join([f"{sequence_id}\t{length}\t{chunks}\t{orfs}\t{sequence_status(length, orfs)}\t{masked}\n"
                    for sequence_id, length, chunks, orfs, masked
                    in zip(sequence_ids, lengths, n_chunks, n_orfs, masked_bases)])


def sequence_ids(path: Path) -> Iterator[str]:
    """The ids of a sequences.tsv, in its order, reading one line at a time (prepare confirms
    duplicate ids against the table it has just written)."""
    with open(path, encoding="utf-8", newline="\n") as rows:
        next(rows, None)  # the header
        for row in rows:
            yield row.split("\t", 1)[0]


def input_entry(path: str, sha256: str, records: int) -> dict:
    """The manifest's entry for one input: its path as given, its sha256 and its record count."""
    return {"path": path, "sha256": sha256, "records": records}


def shard_entry(index: int, records: int, sha256: str) -> dict:
    """The manifest's entry for shard `index`: its file inside the folder, records and sha256."""
    return {"file": f"{SHARD_DIR}/{shard_name(index)}", "index": index, "records": records, "sha256": sha256}


def manifest(directory: Path, chunk_size: int, inputs: list[dict], shards: list[dict], counts: dict,
             working_directory: str | None) -> dict:
    """The manifest of the prepare folder `directory`, its tables (written already) checksummed;
    `inputs` and `shards` are lists of `input_entry` and `shard_entry`, `counts` has the COUNT_KEYS,
    `working_directory` is the folder relative input paths are relative to (None: not known)."""
    return {
        "format_version": FORMAT_VERSION,
        "virnucpro_version": __version__,
        "chunk_size": chunk_size,
        "working_directory": working_directory,
        "inputs": inputs,
        "shards": shards,
        "tables": {name: sha256_of(Path(directory) / name) for name in TABLES},
        "counts": counts,
    }


@dataclass(frozen=True)
class ShardInfo:
    """What a shard's first line says about it, plus the file's sha256."""

    path: Path
    chunk_size: int
    index: int
    of: int
    sha256: str


MANIFEST_MAX_BYTES = 64 * 1024 * 1024  # a manifest is kB to a few MB (one entry per input and shard)
# the most shards one sample is cut into: the manifest (about 180 bytes per shard) and the output
# folder's marker (about 70, twice while a rerun replaces an earlier output) stay well under the
# limits their readers hold them to, and prepare's memory under 2 kB per shard
MAX_SHARDS = 100_000
NOT_REGULAR = "it is not a regular file (a FIFO, a device or a folder), which prepare never writes"
A_LINK = "it is a symbolic link, which prepare never writes"


def open_regular(path: Path, links: bool = True) -> BinaryIO:
    """`path` opened for reading in binary when it is a regular file. A FIFO is never waited on and
    a device never read (OSError saying so); `links=False` (a file of a prepare folder, where prepare
    writes no links) refuses a symbolic link too, so nothing outside the folder is read through one."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not links and exc.errno == errno.ELOOP and os.path.islink(path):
            raise OSError(errno.ELOOP, A_LINK, str(path)) from None
        raise
    if not S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, NOT_REGULAR, str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def sha256_of(path: Path, links: bool = True) -> str:
    """sha256 of a regular file, read 1 MiB at a time (`links`: see `open_regular`)."""
    digest = hashlib.sha256()
    with open_regular(path, links) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_tables(directory: Path, manifest: dict) -> None:
    """sequences.tsv and chunks.tsv are the ones prepare wrote (their sha256 in the manifest), exit 5."""
    for name in TABLES:
        _check_unchanged(directory, Path(directory) / name, manifest["tables"][name])


def check_shard_file(directory: Path, entry: dict) -> None:
    """The shard a manifest `entry` names is the file prepare wrote (its sha256 in the entry) and lies
    inside the prepare folder `directory` (no link on its way), exit 5."""
    path = Path(directory) / entry["file"]
    if not os.path.realpath(path).startswith(os.path.join(os.path.realpath(directory), "")):
        raise InconsistentInputsError(f"{path} lies outside the prepare folder {directory} (a symbolic link on its "
                                      "way), where prepare writes no links", REPAIR_HINT)
    _check_unchanged(directory, path, entry["sha256"])


def check_files(directory: Path, manifest: dict) -> None:
    """Every table and shard of the prepare folder is as prepare wrote it (the sha256 its manifest
    records), exit 5 naming the first that is not: reading them all costs what hashing them costs."""
    check_tables(directory, manifest)
    for entry in manifest["shards"]:
        check_shard_file(directory, entry)


def _check_unchanged(directory: Path, path: Path, sha256: str) -> None:
    """`path` of the prepare folder `directory` has the sha256 its manifest records (no link), exit 5."""
    try:
        unchanged = sha256_of(path, links=False) == sha256
    except OSError as exc:
        raise unreadable(path, exc) from None
    if not unchanged:
        raise InconsistentInputsError(f"{path} changed after prepare: its sha256 is not the one in "
                                      f"{Path(directory) / MANIFEST}", REPAIR_HINT)


def _parse_first_line(path: Path, line: str) -> dict[str, int]:
    """The fields of a shard's first line: not a shard at all is exit 3; a shard whose first line is
    damaged (a field without `=`, a missing or non-numeric one) is exit 5, like other damaged stage files."""
    if not line.startswith(SHARD_MAGIC):
        raise BadInputError(f"{path} is not a virnucpro prepare shard (first line: '{line.strip()[:60]}')",
                            "give a shards/shard_NNNNN.tsv file written by `virnucpro prepare`")
    rest = line[len(SHARD_MAGIC):]
    items = rest.split()
    if rest[:1] not in (" ", "\t") or not all("=" in item for item in items):
        raise _malformed_header(path, line)
    fields = dict(item.split("=", 1) for item in items)
    try:
        values = {key: int(fields[key]) for key in ("format_version", "chunk_size", "index", "of")}
    except (KeyError, ValueError):
        raise _malformed_header(path, line) from None
    if values["format_version"] != FORMAT_VERSION:
        raise other_format(path, "shard ", values["format_version"], FORMAT_VERSION, "rerun `virnucpro prepare`")
    if len(fields) != len(items) or not _header_values_possible(values):
        raise _malformed_header(path, line)  # a key given twice; a value prepare never writes
    return values


def _header_values_possible(values: dict[str, int]) -> bool:
    """Whether a shard header's values are ones prepare writes: a chunk size of at least 1, shard
    `index` of `of` counted from 0; each within the 64-bit integers the HDF5 attributes hold."""
    return 1 <= values["chunk_size"] <= MAX_STORED_INT and 0 <= values["index"] < values["of"] <= MAX_STORED_INT


def _malformed_header(path: Path, line: str) -> InconsistentInputsError:
    return InconsistentInputsError(f"{path}: malformed shard header '{line.strip()[:120]}'", SHARD_REPAIR_HINT)


def shard_info(path: Path) -> ShardInfo:
    """Header fields and checksum of a shard, without reading its records into memory. A shard is
    read more than once (header, checksum, records): a pipe or FIFO, read once, is refused by name."""
    mode = path_mode(path)
    if mode is not None and not S_ISREG(mode):
        raise BadInputError(f"shard {path} is not a regular file (a pipe or a folder): it is read more than once",
                            "give the shards/shard_NNNNN.tsv file written by `virnucpro prepare`")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            values = _parse_first_line(path, handle.readline())
        digest = sha256_of(path)  # only once the first line says it is a shard
    except OSError as exc:
        if open_file_limit(exc):
            raise  # the CLI names the limit (see `open_file_limit`)
        raise unopenable_file(path, exc, "shard") from None
    return ShardInfo(path, values["chunk_size"], values["index"], values["of"], digest)


def check_against_its_manifest(info: ShardInfo) -> None:
    """A shard in its prepare folder (`shards/` beside the manifest) is a file prepare wrote there:
    listed by its manifest, with the sha256 recorded for it (exit 5). A shard cut at a line's end reads
    as a sound, shorter one, and a leftover of an earlier prepare (a copy synced over another without
    deleting) as a sound shard: embed spent the GPU hours on either, and only predict refused the
    result. A shard on its own (as the pipeline stages it), or in a folder no virnucpro command wrote
    (its `.virnucpro.json` missing: a manifest.json there may be anything), is taken; one in a prepare
    folder whose manifest cannot be read is refused with the manifest's own error (another format,
    damaged), as predict would."""
    shard = Path(os.path.abspath(info.path))  # `shard_00001.tsv` given from inside shards/ is checked too
    folder = shard.parent.parent
    try:
        stamp = os.stat(folder / MANIFEST)
    except OSError:
        return
    if shard.parent.name != SHARD_DIR or not S_ISREG(stamp.st_mode) or not os.path.lexists(folder / MARKER_NAME):
        return
    listed = _recorded_shards(str(folder), (stamp.st_ino, stamp.st_size, stamp.st_mtime_ns))
    recorded = listed.get(shard.name)
    if recorded is None:
        raise InconsistentInputsError(
            f"{info.path} is not one of the {len(listed):,} shard(s) {folder / MANIFEST} lists (its first line "
            f"says shard {info.index + 1:,} of {info.of:,}): a leftover of an earlier prepare into that folder, "
            "or a copy synced over another", "embed the shards the manifest lists; delete the others (sync "
            "prepare folders with `rsync --delete`, or into a new folder)")
    if recorded != info.sha256:
        raise InconsistentInputsError(f"{info.path} changed after prepare: its sha256 is not the one {folder / MANIFEST} "
                                      "records for it (cut short, or edited?)", REPAIR_HINT)


@functools.lru_cache(maxsize=4)
def _recorded_shards(folder: str, _stamp: tuple) -> dict[str, str]:
    """Shard file name -> the sha256 the manifest of the prepare folder records; read once per
    manifest as it is (`_stamp`), not once per shard of a `run`."""
    manifest = load_manifest(Path(folder))
    return {Path(entry["file"]).name: entry["sha256"] for entry in manifest["shards"]}


#: What prepare writes as proteins: the 20 amino acids of the standard code (stops end no ORF; a
#: codon with an unknown base is dropped).
PROTEIN_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWY")
#: What prepare writes as an ORF's nucleotides: an input's nucleotide codes (seqio.NUCLEOTIDE_SYMBOLS)
#: upper-cased, or their complements
ORF_NUCLEOTIDES = frozenset("ACGTUNRYSWKMBDHVX-.*")
#: An ORF id as prepare writes it: a chunk id (`calls.chunk_id_of`: a sequence id, a word with no
#: white space) and its frame label (calls.FRAMES)
ORF_ID = re.compile(r"\S+_chunk_[1-9][0-9]*[FR][123]")
#: The largest integer the stage files' HDF5 attributes can hold (int64)
MAX_STORED_INT = 2**63 - 1


def shard_records_as_hashed(path: Path, sha256: str) -> list[tuple[str, str, str]]:
    """Every record of the shard whose checksum was taken as `sha256` (`shard_info`), read in one
    pass that hashes the bytes it parses: a shard replaced or written since (a prepare rerun into
    its folder) is exit 5, never embedded under the other's checksum."""
    digest = hashlib.sha256()
    records = list(read_shard(path, digest=digest))
    if digest.hexdigest() != sha256:
        raise InconsistentInputsError(f"{path} changed while it was read: its sha256 is no longer the one "
                                      "taken when the command started (written or replaced meanwhile)",
                                      "rerun once whatever writes the shard (a prepare into its folder?) is done")
    return records


class _HashedLines:
    """The lines of a binary file, each added to `digest` as it is read."""

    def __init__(self, handle, digest):
        self.handle, self.digest = handle, digest

    def readline(self) -> bytes:
        line = self.handle.readline()
        self.digest.update(line)
        return line

    def __iter__(self) -> Iterator[bytes]:
        for line in self.handle:
            self.digest.update(line)
            yield line


def read_shard(path: Path, links: bool = True, digest=None) -> Iterator[tuple[str, str, str]]:
    """(id, nucleotide, protein) of every ORF record of a shard, in order; a record prepare could not
    have written (`_shard_record`; an id seen before in the shard) is exit 5 naming its line.
    `links=False` for a shard read inside a prepare folder (see `open_regular`); `digest`: a hashlib
    object that every byte read is added to."""
    try:
        handle = open_regular(path, links)
    except OSError as exc:
        raise unreadable(path, exc) from None
    with handle:
        try:
            yield from _shard_records(path, _HashedLines(handle, digest) if digest is not None else handle)
        except OSError as exc:  # a read that failed part-way: the shard's fault only when its bytes are
            raise unreadable(path, exc) from None


def _shard_records(path: Path, lines) -> Iterator[tuple[str, str, str]]:
    """The checked records of a shard's `lines` (see `read_shard`)."""
    _parse_first_line(path, _text_line(path, 1, lines.readline()))
    header = _text_line(path, 2, lines.readline()).rstrip("\n").split("\t")
    if tuple(header) != SHARD_COLUMNS:
        raise InconsistentInputsError(f"{path}: expected columns {SHARD_COLUMNS}, found {tuple(header)}",
                                      SHARD_REPAIR_HINT)
    seen: set[str] = set()
    for number, line in enumerate(lines, start=3):
        record = _shard_record(path, number, _text_line(path, number, line))
        if record[0] in seen:
            raise _damaged_shard(path, number, f"ORF id {shown(record[0])} a second time")
        seen.add(record[0])
        yield record


def _text_line(path: Path, number: int, raw: bytes) -> str:
    """One line of a shard as text (decoded line by line, so a bad byte is named with its line)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _damaged_shard(path, number, "bytes that are not UTF-8 text") from None


def _shard_record(path: Path, number: int, line: str) -> tuple[str, str, str]:
    """One checked record line of a shard: an ORF id (a chunk id and its frame), the ORF's
    upper-case nucleotide codes and its protein, 3 letters per amino acid, one more where the
    chunk goes on (prepare's `_orf_records`)."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 3:
        raise _damaged_shard(path, number, "expected 3 tab-separated fields")
    orf_id, nucleotide, protein = fields
    if not (orf_id and nucleotide and protein):
        raise _damaged_shard(path, number, "an empty field")
    if not ORF_ID.fullmatch(orf_id):
        raise _damaged_shard(path, number, f"ORF id {shown(orf_id)}, not a chunk id and a frame as prepare writes it")
    for what, letters, sequence in (("protein", PROTEIN_LETTERS, protein), ("nucleotide", ORF_NUCLEOTIDES, nucleotide)):
        if not letters.issuperset(sequence):
            bad = next(c for c in sequence if c not in letters)
            raise _damaged_shard(path, number, f"{what} letter {bad!r}, which prepare never writes")
    if not 3 * len(protein) <= len(nucleotide) <= 3 * len(protein) + 1:
        raise _damaged_shard(path, number, f"{len(nucleotide):,} nucleotides for {len(protein):,} amino acids "
                                           "(prepare writes 3 per amino acid, one more where the chunk goes on)")
    return orf_id, nucleotide, protein


def _damaged_shard(path: Path, number: int, what: str) -> InconsistentInputsError:
    """A shard line prepare could not have written: a damaged stage file, exit 5 as in predict."""
    return InconsistentInputsError(f"{path}, line {number}: {what}", SHARD_REPAIR_HINT)


def unreadable(path: Path, exc: OSError) -> BadInputError | InconsistentInputsError | OSError:
    """A file of the prepare folder that cannot be read: for want of permission, or when the storage
    fails (an I/O error, a mount gone), it is exit 3 (the file may be sound); a limit on open files is
    `exc` itself, for the CLI to name (see `open_file_limit`: "rerun prepare" would only redo sound
    work); any other failure means a damaged folder, exit 5."""
    if open_file_limit(exc):
        return exc
    if exc.errno in PERMISSION_ERRNOS:
        folder = denied_folder(path)
        if folder is not None:
            return folder_refused(path, folder, BadInputError)
        return BadInputError(f"cannot read {path}: permission denied", access_hint(path, "r"))
    if exc.errno == errno.ENOTDIR:  # the folder given is wrong (a file on its way), not damaged
        return BadInputError(f"cannot read {path}: a part of its path is a file, not a folder", "check the path")
    failed = storage_read_failure(path, exc)
    if failed is not None:  # the storage failed, not the folder: redoing prepare would not help
        return failed
    return InconsistentInputsError(f"cannot read {path}: {exc.strerror or exc}", REPAIR_HINT)



def write_json_atomic(path: Path, data: dict) -> None:
    """`data` as indented JSON at `path`, all or nothing: written to `path`.tmp beside it, synced to
    disk, then renamed over `path`, so a crash or a power cut leaves the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open_output(tmp, "w", encoding="utf-8") as handle, naming(tmp):
        handle.write(json.dumps(data, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_manifest(directory: Path) -> dict:
    """The manifest of a prepare directory: every key, type and sum of CONTRACTS.md checked (exit 5)."""
    path = Path(directory) / MANIFEST
    mode = path_mode(directory)
    if mode is not None and not S_ISDIR(mode):
        raise BadInputError(f"{directory} is not a prepare directory: it is a file",
                            "give the --outdir of `virnucpro prepare`")
    try:
        manifest = json.loads(_manifest_bytes(path))
    except FileNotFoundError:
        raise BadInputError(f"{directory} is not a finished prepare directory (no {MANIFEST})",
                            "run `virnucpro prepare` first, or give its --outdir") from None
    except OSError as exc:
        raise unreadable(path, exc) from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise malformed(path, f"it is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise malformed(path, f"it holds {shown(manifest)}, not a JSON object")
    version = manifest.get("format_version")
    if type(version) is not int:
        raise malformed(path, f"format_version is {shown(version)}, not a whole number")
    if version != FORMAT_VERSION:
        raise other_format(path, "", version, FORMAT_VERSION, "rerun `virnucpro prepare`")
    _check_manifest(path, manifest)
    return manifest


def _manifest_bytes(path: Path) -> bytes:
    """The manifest's bytes: a regular file (no link) of at most MANIFEST_MAX_BYTES, else exit 5."""
    with open_regular(path, links=False) as handle:
        data = handle.read(MANIFEST_MAX_BYTES + 1)
    if len(data) > MANIFEST_MAX_BYTES:
        raise malformed(path, f"it is larger than {MANIFEST_MAX_BYTES:,} bytes, far more than prepare writes")
    return data


def malformed(path: Path, what: str) -> InconsistentInputsError:
    """A stage file that is not as its writer leaves it (exit 5), naming the file and the fault."""
    return InconsistentInputsError(f"{path} is malformed: {what}", REPAIR_HINT)


def shown(value: object) -> str:
    """A value as a message shows it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _is_positive(value: object) -> bool:
    return type(value) is int and value > 0


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and SHA256_TEXT.fullmatch(value) is not None


def _is_inner_path(value: object) -> bool:
    """A relative path that stays inside the prepare folder and names something in it (not `.`); no
    NUL, which no path holds (it stopped predict with a traceback)."""
    if not isinstance(value, str) or not value or "\\" in value or "\0" in value:
        return False
    path = PurePosixPath(value)
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


def _field(path: Path, owner: object, key: str, label: str, valid: Callable[[object], bool],
           expected: str) -> object:
    """`owner[key]` when it is valid; otherwise exit 5 naming the manifest, the field and the value."""
    if key not in owner:
        raise malformed(path, f"{label} is missing")
    if not valid(owner[key]):
        raise malformed(path, f"{label} must be {expected}, found {shown(owner[key])}")
    return owner[key]


def _objects(path: Path, manifest: dict, key: str) -> list[dict]:
    """A non-empty list of JSON objects at `manifest[key]`."""
    items = _field(path, manifest, key, key, lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list")
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise malformed(path, f"{key}[{n}] must be an object, found {shown(item)}")
    return items


def _check_manifest(path: Path, manifest: dict) -> None:
    """Keys and types of every field predict and run rely on, and the sums that tie them together."""
    _field(path, manifest, "virnucpro_version", "virnucpro_version", lambda v: isinstance(v, str), "text")
    _field(path, manifest, "chunk_size", "chunk_size", _is_positive, "a whole number > 0")
    if "working_directory" in manifest:  # absent in the manifests of virnucpro 0.2.0dev before it
        _field(path, manifest, "working_directory", "working_directory",
               lambda v: v is None or (isinstance(v, str) and v.startswith("/")), "an absolute path or null")
    for n, entry in enumerate(_objects(path, manifest, "inputs")):
        _field(path, entry, "path", f"inputs[{n}].path", lambda v: isinstance(v, str), "text")
        _field(path, entry, "sha256", f"inputs[{n}].sha256", _is_digest, "64 hexadecimal digits")
        _field(path, entry, "records", f"inputs[{n}].records", _is_count, "a whole number >= 0")
    shards = _objects(path, manifest, "shards")
    for n, entry in enumerate(shards):
        _field(path, entry, "file", f"shards[{n}].file", _is_inner_path, "a relative path inside the folder")
        _field(path, entry, "index", f"shards[{n}].index", _is_count, "a whole number >= 0")
        _field(path, entry, "records", f"shards[{n}].records", _is_count, "a whole number >= 0")
        _field(path, entry, "sha256", f"shards[{n}].sha256", _is_digest, "64 hexadecimal digits")
    indices = sorted(entry["index"] for entry in shards)
    if indices != list(range(len(shards))):
        raise malformed(path, f"shards[].index must number the shards 0 to {len(shards) - 1} once each, "
                              f"found {shown(indices)}")
    counts = _field(path, manifest, "counts", "counts", lambda v: isinstance(v, dict), "an object")
    for key in COUNT_KEYS:
        _field(path, counts, key, f"counts.{key}", _is_count, "a whole number >= 0")
    tables = _field(path, manifest, "tables", "tables", lambda v: isinstance(v, dict), "an object")
    for name in TABLES:
        _field(path, tables, name, f"tables.{name}", _is_digest, "64 hexadecimal digits")
    _check_sums(path, manifest)


def _check_sums(path: Path, manifest: dict) -> None:
    """Input records add up to the sequences, shard records to the ORFs."""
    counts = manifest["counts"]
    for label, total, key in (("inputs[].records", sum(i["records"] for i in manifest["inputs"]), "sequences"),
                              ("shards[].records", sum(s["records"] for s in manifest["shards"]), "orfs")):
        if total != counts[key]:
            raise malformed(path, f"{label} add up to {total:,} but counts.{key} is {counts[key]:,}")
    for part, whole in (("empty_sequences", "sequences"), ("chunks_without_orf", "chunks")):
        if counts[part] > counts[whole]:
            raise malformed(path, f"counts.{part} ({counts[part]:,}) exceeds counts.{whole} ({counts[whole]:,})")


def read_table(path: Path, sha256: str | None = None) -> Iterator[dict[str, str]]:
    """Rows of one of our TSV tables (header line, then tab-separated values) as dicts (a table of a
    prepare folder: a regular file, no link). With `sha256` (the manifest's), the bytes these rows
    came from are checked to be that file once the last row is read (exit 5): a table put in its
    place after the checks that came before is caught, not turned into outputs; one removed, or
    no longer a regular file, is exit 5 as well (see `unreadable`)."""
    digest = hashlib.sha256()
    try:
        with open_regular(path, links=False) as handle:
            lines = _hashed_lines(handle, digest)
            columns = next(lines, "").rstrip("\n").split("\t")
            for line in lines:
                yield dict(zip(columns, line.rstrip("\n").split("\t")))
    except FileNotFoundError:
        raise InconsistentInputsError(f"{path} is missing", REPAIR_HINT) from None
    except OSError as exc:
        raise unreadable(path, exc) from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise InconsistentInputsError(f"{path} changed while it was read: its sha256 is not the one in "
                                      f"{Path(path).parent / MANIFEST}", REPAIR_HINT)


def _hashed_lines(handle: BinaryIO, digest) -> Iterator[str]:
    """The lines of `handle` as UTF-8 text (ending at "\\n"), each added to `digest` as read."""
    for raw in handle:
        digest.update(raw)
        yield raw.decode("utf-8")


def checked_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of one of our tables; a missing column, a short row or an unreadable file is exit 5."""
    try:
        with _text(path) as handle:
            header = handle.readline().rstrip("\n").split("\t")
            missing = [column for column in columns if column not in header]
            if missing:
                raise malformed(path, f"its header lacks the column(s) {', '.join(missing)}")
            for number, line in enumerate(handle, start=2):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != len(header):
                    raise malformed(path, f"line {number} has {len(fields)} fields, its header {len(header)}")
                yield number, dict(zip(header, fields))
    except FileNotFoundError:
        raise InconsistentInputsError(f"{path} is missing", REPAIR_HINT) from None
    except OSError as exc:
        raise unreadable(path, exc) from None
    except UnicodeDecodeError as exc:
        raise InconsistentInputsError(f"cannot read {path}: {exc}", REPAIR_HINT) from None


def _text(path: Path) -> io.TextIOWrapper:
    """A table of a prepare folder opened as UTF-8 text, lines ending at "\\n" (see `open_regular`)."""
    return io.TextIOWrapper(open_regular(path, links=False), encoding="utf-8", newline="\n")


def chunk_spans(length: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, length) of each chunk of a sequence, placed as the original places them: every chunk
    `size` long but the last, the overlap spread over the first ones; one at a time, so a long
    sequence costs no memory."""
    n = -(-length // size)
    if n == 0:
        return
    extra = n * size - length
    low = extra // n
    n_up = extra - low * (n - 1)  # the first n_up chunks overlap by low + 1 bases, the others by low
    for k in range(n):
        start = k * size - k * low - min(k, n_up)
        yield start, min(size, length - start)


def whole_number(path: Path, number: int, row: dict[str, str], column: str) -> int:
    """A non-negative integer cell of a table, or exit 5 naming the file, line and column."""
    value = row[column]
    if not (value.isascii() and value.isdigit()):
        raise malformed(path, f"line {number}: {column} must be a whole number, found {value!r}")
    return int(value)


class TableWalk:
    """sequences.tsv and chunks.tsv read side by side (both are in input order), each checked against
    the other and, at the end, against the manifest's counts; memory does not grow with the sample."""

    def __init__(self, directory: Path, manifest: dict):
        self.sequences_path = Path(directory) / SEQUENCES
        self.chunks_path = Path(directory) / CHUNKS
        self.manifest_path = Path(directory) / MANIFEST
        self.counts = manifest["counts"]
        self.chunk_size = manifest["chunk_size"]
        self.totals = dict.fromkeys(COUNT_KEYS, 0)
        self.chunks = checked_rows(self.chunks_path, CHUNKS_HEADER)

    def orf_chunks(self) -> Iterator[tuple[str, int]]:
        """(chunk id, chunks.tsv line) once per ORF, in shard order; checks run as the walk advances."""
        for number, row in checked_rows(self.sequences_path, SEQUENCE_COLUMNS_READ):
            length, n_orfs = self._sequence(number, row)
            found = 0
            for k, span in enumerate(chunk_spans(length, self.chunk_size), start=1):
                chunk_id, chunk_orfs, line = self._next_chunk(number, row["sequence_id"], k, span)
                found += chunk_orfs
                yield from itertools.repeat((chunk_id, line), chunk_orfs)
            if found != n_orfs:
                raise self._disagree(f"{self.sequences_path} line {number} gives {row['sequence_id']!r} "
                                     f"{n_orfs:,} ORFs, its chunks in {self.chunks_path} {found:,}")
        self._check_no_more_chunks()
        self._check_totals()

    def _sequence(self, number: int, row: dict[str, str]) -> tuple[int, int]:
        """length and n_orfs of one sequence row, its status, chunk count and masked bases checked
        against its length and the chunk size."""
        length, n_chunks, n_orfs = (whole_number(self.sequences_path, number, row, column)
                                    for column in ("length", "n_chunks", "n_orfs"))
        status = sequence_status(length, n_orfs)
        if row["status"] != status:
            raise malformed(self.sequences_path, f"line {number}: status {row['status']!r} with length {length:,} "
                                                 f"and {n_orfs:,} ORFs (expected {status!r})")
        derived = -(-length // self.chunk_size)
        if n_chunks != derived:
            raise malformed(self.sequences_path, f"line {number}: n_chunks {n_chunks:,} for length {length:,} at "
                                                 f"chunk size {self.chunk_size} (expected {derived:,})")
        if "masked_bases" in row and whole_number(self.sequences_path, number, row, "masked_bases") > length:
            raise malformed(self.sequences_path, f"line {number}: masked_bases {row['masked_bases']} exceeds "
                                                 f"the length {length:,}")
        for key, value in (("sequences", 1), ("empty_sequences", length == 0), ("bases", length)):
            self.totals[key] += value
        return length, n_orfs

    def _next_chunk(self, number: int, sequence_id: str, k: int, span: tuple[int, int]) -> tuple[str, int, int]:
        """(chunk id, n_orfs, line) of the next chunk row, which must be chunk `k` of `sequence_id`
        at `span` (start, length)."""
        try:
            line, chunk = next(self.chunks)
        except StopIteration:
            raise self._disagree(f"{self.chunks_path} ends before the chunks of {sequence_id!r} "
                                 f"({self.sequences_path} line {number})") from None
        if chunk["sequence_id"] != sequence_id:
            raise self._disagree(f"{self.chunks_path} line {line}: chunk {chunk['chunk_id']!r} is of sequence "
                                 f"{chunk['sequence_id']!r} where {self.sequences_path} line {number} expects "
                                 f"a chunk of {sequence_id!r}")
        self._check_placement(line, chunk, sequence_id, k, span)
        n_orfs = whole_number(self.chunks_path, line, chunk, "n_orfs")
        self.totals["chunks"] += 1
        self.totals["chunks_without_orf"] += n_orfs == 0
        self.totals["orfs"] += n_orfs
        return chunk["chunk_id"], n_orfs, line

    def _check_placement(self, line: int, chunk: dict[str, str], sequence_id: str, k: int,
                         span: tuple[int, int]) -> None:
        """The chunk row has the id, start and length prepare derives from its sequence's length."""
        expected = {"chunk_id": chunk_id_of(sequence_id, k), "start": str(span[0]), "length": str(span[1])}
        for column, value in expected.items():
            if chunk[column] != value:
                raise malformed(self.chunks_path, f"line {line}: chunk {k} of {sequence_id!r} at chunk size "
                                                  f"{self.chunk_size} has {column} {value!r}, found {chunk[column]!r}")

    def _check_no_more_chunks(self) -> None:
        for line, chunk in self.chunks:
            raise self._disagree(f"{self.chunks_path} line {line}: chunk {chunk['chunk_id']!r} of sequence "
                                 f"{chunk['sequence_id']!r} follows the chunks of the last sequence of "
                                 f"{self.sequences_path}")

    def _check_totals(self) -> None:
        for key in COUNT_KEYS:
            if self.totals[key] != self.counts[key]:
                raise self._disagree(f"{self.sequences_path} and {self.chunks_path} add up to {key} = "
                                     f"{self.totals[key]:,} but {self.manifest_path} has counts.{key} = "
                                     f"{self.counts[key]:,}")

    @staticmethod
    def _disagree(what: str) -> InconsistentInputsError:
        return InconsistentInputsError(f"the prepared tables do not reconcile: {what}", REPAIR_HINT)
