#!/usr/bin/env python3
"""One run-level table from the per-sample results of `virnucpro predict`, and its MultiQC twin.

    virnucpro_summary.py row RESULT_DIR --sample ID --out ID.summary.tsv      (in each PREDICT task)
    virnucpro_summary.py merge ROWS... [--samples-from IDS.txt] --out virnucpro_summary.tsv --mqc virnucpro_summary_mqc.tsv

`row` reads one sample's predict folder and checks that nothing was lost or invented: sequences.tsv
and chunks.tsv are walked side by side (both in input order, as predict writes them), each chunk's
ORFs are taken from prediction_results.txt in the same order, and the chunks with ORFs must be
exactly the rows of prediction_results_highestscore.csv. Ids are unique, calls are allowed values,
and every per-chunk and per-sequence count and call is derived again from the rows it stands for;
the totals must equal the counts prepare recorded (run_info.json). A damaged or missing table, or a
sample that does not reconcile, fails the step (exit 5): a result that does not add up is an error,
not a warning. `merge` joins the rows of every sample, adding up each row again; a sample of the
run (--samples-from, one id per line) without a row, whose task failed and was ignored (errorStrategy
'ignore'), is listed as having no results, never left out. ROWS are row files or folders of them, and
the ids come from a file, so a run of any number of samples fits on the command line.

The tables are plain tab-separated text without quoting (an id may hold any character but a tab or
a line break, `"` included; a sample id may not start with `#`, which starts MultiQC's header) and
are read and written as such. Everything is streamed: ids are checked unique through hashes
spilled to a temporary folder (TMPDIR), so memory stays flat however many sequences a sample has. Standard library only, plus two modules of the package that are standard
library only themselves (found in the project beside bin/ when the package is not installed):
virnucpro/calls.py, the tables' names, columns and call rules predict writes them with, so the two
never drift apart, and virnucpro/errors.py, the exit codes and stop signals of CONTRACTS.md.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import itertools
import json
import os
import signal
import stat
import sys
import tempfile
from array import array
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

try:  # the package's standard-library modules: installed, else the project beside bin/
    import virnucpro.calls  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from virnucpro.calls import (CHUNK_CALLS, CHUNK_COLUMNS, CHUNKS, FRAMES, HIGHEST, HIGHEST_COLUMNS, RESULT_COLUMNS,
                             RESULTS, RUN_INFO, SEQUENCE_CALLS, SEQUENCE_COLUMNS, SEQUENCES, ChunkScore,
                             SequenceTally, chunk_cells, chunk_id_of, orf_chunk_id, orf_label)
from virnucpro.errors import STOP_SIGNALS, ExitCode


class Stopped(Exception):
    """A stop signal arrived: unwinding runs every cleanup (the id check's temporary folder)."""


class SpillFailed(Exception):
    """The id check could not write its temporary file (TMPDIR full or not writable)."""


REPAIR_HINT = "run `virnucpro predict` for this sample again, into an empty folder"
# a line of the MultiQC table that starts with '#' is read as its YAML header (a crash, or a setting)
HASH_FIRST = "MultiQC would read its line as the table's settings"
ROW_FILE_HINT = "rerun the PREDICT task that wrote it"
SAMPLES_HINT = "give --samples-from the file of the run's sample ids, one per line"
PERMISSION_HINT = "let this user read it (chmod u+r; a folder on its way: chmod u+rx), then rerun"

COUNT_KEYS = ("sequences", "empty_sequences", "bases", "chunks", "chunks_without_orf", "orfs")

COLUMNS = [
    "sample", "input_records", "sequences", "chunks", "orfs",
    "sequences_virus", "sequences_others", "sequences_no_orf", "sequences_empty",
    "chunks_virus", "chunks_others", "chunks_no_orf", "reconciled",
]
COUNT_COLUMNS = COLUMNS[1:-1]

MQC_HEADER = """# id: 'virnucpro-virnucpro-summary'
# section_name: 'virnucpro: calls per sample'
# description: 'Input records, chunks and ORFs of each sample, its sequence and chunk calls, and whether the counts reconcile from input to tables.'
# plot_type: 'table'
"""


class Inconsistent(Exception):
    """A table or row that is missing, damaged or disagrees with another: one message, exit 5."""

    def __init__(self, message: str, hint: str = REPAIR_HINT):
        super().__init__(f"{message}\n  fix: {hint}")


# --- plain tab-separated tables ---------------------------------------------------------------------

RUN_INFO_MAX_CHARS = 64 * 1024 * 1024  # run_info.json is a few kB; more is no predict output


@contextmanager
def reading(path: Path, hint: str = REPAIR_HINT) -> Iterator[None]:
    """Inside the block, an input that cannot be read (missing, no permission, not UTF-8) is exit 5
    naming it, `hint` the fix: `main` takes any other OSError for an --out or --mqc not written."""
    try:
        yield
    except FileNotFoundError:
        raise Inconsistent(f"{path} is missing", hint) from None
    except PermissionError as exc:
        raise Inconsistent(f"cannot read {path}: {exc.strerror}", PERMISSION_HINT) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Inconsistent(f"cannot read {path}: {exc}", hint) from None


def open_regular(path: Path, hint: str = REPAIR_HINT):
    """`path` opened as UTF-8 text when it is a regular file (through links: Nextflow stages inputs as
    links); a folder, a FIFO or a device is exit 5 with `hint`, never a wait for ever or an endless read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Inconsistent(f"{path} is not a regular file (a folder, a FIFO or a device)", hint)
    return open(fd, encoding="utf-8", newline="\n")


def read_table(path: Path, columns: Sequence[str],
               hint: str = REPAIR_HINT) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a tab-separated table whose header is exactly `columns`; no quoting, so a
    `"` in an id is just a character. A missing file, a bad header, a short/long row or a last line
    without its line break (a file cut short) is exit 5 with `hint`."""
    with reading(path, hint), open_regular(path, hint) as handle:
        _check_header(path, handle.readline(), columns, hint)
        for number, line in enumerate(handle, start=2):
            if not line.endswith("\n"):
                raise Inconsistent(f"{path} line {number} has no line break: the file is cut short", hint)
            fields = line[:-1].split("\t")
            if len(fields) != len(columns):
                raise Inconsistent(f"{path} line {number} has {len(fields)} tab-separated fields, its header "
                                   f"{len(columns)}", hint)
            yield number, dict(zip(columns, fields))


def _check_header(path: Path, line: str, columns: Sequence[str], hint: str) -> None:
    """The header line is exactly `columns`, line break included; otherwise what is wrong is named."""
    if not line:
        raise Inconsistent(f"{path} is empty (not even a header line)", hint)
    if not line.endswith("\n"):
        raise Inconsistent(f"{path} holds only a header line without its line break: the file is cut short",
                           hint)
    found = line[:-1].split("\t")
    if found == list(columns):
        return
    missing = [column for column in columns if column not in found]
    extra = [column for column in found if column not in columns]
    parts = ([f"lacks the column(s) {', '.join(missing)}"] if missing else []) + \
            ([f"has unexpected column(s) {', '.join(map(repr, extra))}"] if extra else [])
    detail = " and ".join(parts) or "has its columns in another order"
    raise Inconsistent(f"{path}: its header {detail} (expected: {' '.join(columns)})", hint)


def whole_number(path: Path, number: int, row: dict[str, str], column: str) -> int:
    """A non-negative integer cell, or exit 5 naming the file, line and column."""
    value = row[column]
    if not (value.isascii() and value.isdigit()):
        raise Inconsistent(f"{path} line {number}: {column} must be a whole number, found {value!r}")
    return int(value)


def probability(path: Path, number: int, row: dict[str, str], column: str) -> float:
    """A score cell between 0 and 1 (NaN is not), or exit 5 naming the file, line and column."""
    try:
        value = float(row[column])
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise Inconsistent(f"{path} line {number}: {column} must be a score between 0 and 1, found {row[column]!r}")
    return value


def _cell(value: object) -> str:
    """A value as one cell of a plain tab-separated table (a tab or line break would split it)."""
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_table(rows: list[dict], path: Path, header: str = "") -> None:
    """The rows as a plain tab-separated table (no quoting), preceded by `header` (MultiQC's comments).
    A failed write (a full disk, found at the last flush for a small table) names the file, and
    leaves no part of it behind when this call created it (anything there before is not ours)."""
    created = not os.path.lexists(path)
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(header + "\t".join(COLUMNS) + "\n")
            handle.writelines("\t".join(_cell(row[column]) for column in COLUMNS) + "\n" for row in rows)
    except BaseException as exc:
        if created and os.path.lexists(path):
            path.unlink()
        if isinstance(exc, OSError):
            exc.filename = exc.filename or str(path)  # a write or close says no file name
        raise


# --- run_info.json ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recorded:
    """What prepare counted and predict was run with, from run_info.json."""

    input_records: int
    counts: dict
    chunk_size: int
    threshold: float


def load_run_info(path: Path) -> Recorded:
    """The counts and settings of run_info.json, each checked to be a number (exit 5 otherwise)."""
    try:
        with open_regular(path) as handle:
            info = json.loads(handle.read(RUN_INFO_MAX_CHARS))
    except FileNotFoundError:
        raise Inconsistent(f"{path} is missing (predict writes it last: the folder is not a finished "
                           "predict output)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Inconsistent(f"cannot read {path}: {exc}") from None
    inputs = info.get("inputs") if isinstance(info, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise Inconsistent(f"{path}: 'inputs' must be the list of input files with their records")
    records = sum(_recorded(path, entry, f"inputs[{i}]", "records") for i, entry in enumerate(inputs))
    counts = {key: _recorded(path, info.get("counts"), "counts", key) for key in COUNT_KEYS}
    threshold = _recorded(path, info, "", "threshold", kind=float)
    return Recorded(records, counts, _recorded(path, info, "", "chunk_size", least=1), threshold)


def _recorded(path: Path, owner: object, where: str, key: str, kind: type = int, least: int = 0):
    """owner[key] as a whole number of at least `least` (or any number, `kind` float), else exit 5
    (a chunk size, which sequences are divided by, is at least 1)."""
    value = owner.get(key) if isinstance(owner, dict) else None
    valid = isinstance(value, int) and value >= least if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not valid:
        name = f"{where}.{key}" if where else key
        expected = "a number" if kind is not int else "a whole number" + (f" >= {least}" if least else "")
        raise Inconsistent(f"{path}: {name} must be {expected}, found {value!r}")
    return value


# --- one sample: every row derived again from the rows below it --------------------------------------

class ChunkDigest:
    """An order-free digest of (chunk id, is virus) pairs, so chunks.tsv and the highest-score table
    (sorted differently) are compared without holding either in memory."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.sum = 0

    def add(self, chunk_id: str, is_virus: bool) -> None:
        digest = hashlib.sha256(f"{chunk_id}\t{is_virus}".encode("utf-8")).digest()
        self.sum = (self.sum + int.from_bytes(digest[:16], "big")) % (1 << 128)
        self.calls[is_virus] += 1


def mismatch(where: str, what: str, row: dict[str, str], expected: dict[str, str], source: str) -> None:
    """Exit 5 naming the first cell of `row` that is not what `source` gives."""
    for column, value in expected.items():
        if row[column] != value:
            raise Inconsistent(f"{where}: {column} of {what} is {row[column]!r}, expected {value!r} from {source}")


@dataclass
class Totals:
    """Counts of one sample's tables, every row already checked against the rows it stands for."""

    sequence_calls: Counter = field(default_factory=Counter)
    chunk_calls: Counter = field(default_factory=Counter)
    orfs: int = 0
    bases: int = 0
    scored_chunks: ChunkDigest = field(default_factory=ChunkDigest)


class IdCheck:
    """Whether a stream of ids repeats, in bounded memory: 64-bit hashes of the ids (Python's string
    hash: one process hashes and confirms) are buffered, spilled to BUCKETS files by their top bits,
    and each bucket sorted on its own at the end; ids whose hash repeats are then confirmed by reading
    the ids again (two ids sharing a hash are no duplicate). A set of every id cost ~110 bytes per id
    (4M sequences: 465 MB); this holds one buffer, then 1/BUCKETS of the hashes. A sample under
    BUFFER ids never touches the disk."""

    BUFFER = 1 << 16
    BUCKETS = 256
    CONFIRM_BATCH = 1 << 12  # repeated hashes confirmed per read of the ids
    MASK = (1 << 64) - 1

    def __init__(self) -> None:
        self.buffer = array("Q")
        self._folder: tempfile.TemporaryDirectory | None = None

    def add(self, identifier: str) -> None:
        self.buffer.append(hash(identifier) & self.MASK)
        if len(self.buffer) >= self.BUFFER:
            self._spill()

    def _bucket(self, index: int) -> Path:
        return Path(self._folder.name) / f"ids_{index:03d}.bin"

    def _spill(self) -> None:
        """Append the buffered hashes to their bucket files (the folder made at the first spill)."""
        parts = [array("Q") for _ in range(self.BUCKETS)]
        for value in self.buffer:
            parts[value >> 56].append(value)
        try:
            if self._folder is None:
                self._folder = tempfile.TemporaryDirectory(prefix="virnucpro_summary-")
            for index, part in enumerate(parts):
                if part:
                    with open(self._bucket(index), "ab") as handle:
                        part.tofile(handle)
        except OSError as exc:
            where = self._folder.name if self._folder else tempfile.gettempdir()
            raise SpillFailed(f"cannot write the id check's temporary files in {where}: "
                              f"{exc.strerror or exc}") from None
        self.buffer = array("Q")

    def _sorted_buckets(self) -> Iterator[list[int]]:
        """Every hash added, one sorted bucket at a time (the buffer alone when nothing was spilled)."""
        if self._folder is None:
            yield sorted(self.buffer)
            return
        self._spill()
        for index in range(self.BUCKETS):
            values = array("Q")
            if self._bucket(index).exists():
                values.frombytes(self._bucket(index).read_bytes())
            yield sorted(values)

    def repeated_hash_batches(self) -> Iterator[set[int]]:
        """The hashes added more than once, in sets of at most CONFIRM_BATCH (memory bounded however
        many repeat); when few repeat, one set holds them all."""
        batch: set[int] = set()
        for ordered in self._sorted_buckets():
            for previous, value in zip(ordered, itertools.islice(ordered, 1, None)):
                if value == previous:
                    batch.add(value)
                if len(batch) == self.CONFIRM_BATCH:
                    yield batch
                    batch = set()
        if batch:
            yield batch

    def close(self) -> None:
        """Remove the temporary folder (it holds only the bucket files written here)."""
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


class SampleWalk:
    """sequences.tsv and chunks.tsv side by side, each chunk's ORFs from prediction_results.txt."""

    def __init__(self, folder: Path, recorded: Recorded):
        self.sequences_path, self.chunks_path = folder / SEQUENCES, folder / CHUNKS
        self.results_path, self.highest_path = folder / RESULTS, folder / HIGHEST
        self.recorded = recorded
        self.chunks = read_table(self.chunks_path, CHUNK_COLUMNS)
        self.orfs = read_table(self.results_path, RESULT_COLUMNS)
        self.ids = IdCheck()
        self.line = 1  # the sequences.tsv line read last
        self.totals = Totals()

    def run(self) -> Totals:
        """Every table read once, start to end; exit 5 at the first row that does not fit."""
        try:
            self._walk()
        finally:
            self.ids.close()
        check_highest(self.highest_path, self.totals.scored_chunks, self.chunks_path)
        return self.totals

    def _walk(self) -> None:
        """sequences.tsv row by row with its chunks and ORFs, then the ids checked unique. A sequence id
        listed twice among the rows read is named before any other problem those rows have, as when
        each id was looked up in a set of the ids before it."""
        try:
            for self.line, row in read_table(self.sequences_path, SEQUENCE_COLUMNS):
                self._sequence(self.line, row)
            self._check_no_more_rows()
        except Inconsistent:
            self._check_unique_ids()
            raise
        self._check_unique_ids()

    def _sequence_ids(self) -> Iterator[tuple[int, str]]:
        """(line, id) of the sequences.tsv rows read so far, read again; never a line past them (one
        that did not read may follow)."""
        if self.line < 2:  # only the header was read
            return
        for number, row in read_table(self.sequences_path, SEQUENCE_COLUMNS):
            yield number, row["sequence_id"]
            if number == self.line:
                return

    def _check_unique_ids(self) -> None:
        """Exit 5 naming a sequence listed a second time (the first such row among those whose hash
        repeats): the ids whose hashes repeat are held, and only while confirmed, a batch at a time."""
        for repeated in self.ids.repeated_hash_batches():
            first: dict[str, int] = {}
            for number, sequence_id in self._sequence_ids():
                if hash(sequence_id) & IdCheck.MASK not in repeated:
                    continue
                if sequence_id in first:
                    raise Inconsistent(f"{self.sequences_path} line {number}: sequence {sequence_id!r} is listed "
                                       f"a second time (first on line {first[sequence_id]})")
                first[sequence_id] = number

    def _listed(self, sequence_id: str) -> bool:
        """Whether sequences.tsv lists `sequence_id` up to the line read last: read again, for a message."""
        return any(listed == sequence_id for _, listed in self._sequence_ids())

    def _sequence(self, number: int, row: dict[str, str]) -> None:
        """One sequence row: a new id, an allowed call, its chunks and every count derived from them."""
        sequence_id, where = row["sequence_id"], f"{self.sequences_path} line {number}"
        self.ids.add(sequence_id)  # checked unique when the walk ends (or stops at a problem)
        if row["call"] not in SEQUENCE_CALLS:
            raise Inconsistent(f"{where}: call {row['call']!r} is none of {', '.join(SEQUENCE_CALLS)}")
        length, n_chunks = (whole_number(self.sequences_path, number, row, c) for c in ("length", "n_chunks"))
        expected = -(-length // self.recorded.chunk_size)
        if n_chunks != expected:
            raise Inconsistent(f"{where}: n_chunks {n_chunks} of {sequence_id!r} for length {length} at chunk "
                               f"size {self.recorded.chunk_size} (expected {expected})")
        tally = SequenceTally()
        for k in range(1, n_chunks + 1):
            tally.add(self._chunk(where, sequence_id, k))
        expected = {**tally.cells(), "call": tally.call(self.recorded.threshold, length == 0)}
        mismatch(where, repr(sequence_id), row, expected,
                 f"its chunks in {self.chunks_path} (threshold {self.recorded.threshold})")
        self.totals.sequence_calls[row["call"]] += 1
        self.totals.bases += length

    def _chunk(self, sequence_where: str, sequence_id: str, k: int) -> ChunkScore | None:
        """Chunk `k` of `sequence_id`: the next chunks.tsv row, whose id must be `<sequence id>_chunk_<k>`
        (so chunk ids are as unique as sequence ids), its call and best ORF derived from its ORFs."""
        number, row = next(self.chunks, (None, None))
        if row is None:
            raise Inconsistent(f"{self.chunks_path} ends before chunk {k} of {sequence_id!r} ({sequence_where})")
        where, chunk_id = f"{self.chunks_path} line {number}", chunk_id_of(sequence_id, k)
        if row["sequence_id"] != sequence_id or row["chunk_id"] != chunk_id:
            listed = "" if self._listed(row["sequence_id"]) else ", a sequence not listed before it"
            raise Inconsistent(f"{where}: chunk {row['chunk_id']!r} of sequence {row['sequence_id']!r}{listed}, "
                               f"where {sequence_where} expects chunk {k} of {sequence_id!r} ({chunk_id!r})")
        if row["call"] not in CHUNK_CALLS:
            raise Inconsistent(f"{where}: call {row['call']!r} is none of {', '.join(CHUNK_CALLS)}")
        n_orfs = whole_number(self.chunks_path, number, row, "n_orfs")
        best = self._orfs(where, chunk_id, n_orfs)
        mismatch(where, repr(chunk_id), row, chunk_cells(best), f"its {n_orfs} ORF row(s) in {self.results_path}")
        self.totals.chunk_calls[row["call"]] += 1
        self.totals.orfs += n_orfs
        if best is not None:
            self.totals.scored_chunks.add(chunk_id, best.is_virus)
        return best

    def _orfs(self, chunk_where: str, chunk_id: str, n_orfs: int) -> ChunkScore | None:
        """The chunk's next `n_orfs` rows of prediction_results.txt: its id + a frame, frames in order."""
        if n_orfs > len(FRAMES):
            raise Inconsistent(f"{chunk_where}: n_orfs {n_orfs} of {chunk_id!r} (a chunk has at most 6 ORFs)")
        best, after = None, 0
        for _ in range(n_orfs):
            number, row = next(self.orfs, (None, None))
            if row is None:
                raise Inconsistent(f"{self.results_path} ends before the ORFs of {chunk_id!r} ({chunk_where})")
            orf_id = row["Sequence_ID"]
            frame = orf_id[len(chunk_id):] if orf_chunk_id(orf_id) == chunk_id else None
            if frame not in FRAMES[after:]:
                raise Inconsistent(f"{self.results_path} line {number}: ORF {orf_id!r} where {chunk_where} expects "
                                   f"an ORF of chunk {chunk_id!r} (its id and a frame {'/'.join(FRAMES[after:])})")
            after = FRAMES.index(frame) + 1
            virus, others = orf_scores(self.results_path, number, row)
            if best is None:
                best = ChunkScore(chunk_id, orf_id, virus, others)
            else:
                best.add(orf_id, virus, others)
        return best

    def _check_no_more_rows(self) -> None:
        """No chunk follows the last sequence's chunks and no ORF the last chunk's ORFs."""
        for number, row in self.chunks:
            listed = "after the chunks of" if self._listed(row["sequence_id"]) else "which is none of"
            raise Inconsistent(f"{self.chunks_path} line {number}: chunk {row['chunk_id']!r} of sequence "
                               f"{row['sequence_id']!r} comes {listed} the sequences of {self.sequences_path}")
        for number, row in self.orfs:
            raise Inconsistent(f"{self.results_path} line {number}: ORF {row['Sequence_ID']!r} comes after the "
                               f"ORFs of every chunk of {self.chunks_path} (their n_orfs add up to fewer rows)")


def orf_scores(path: Path, number: int, row: dict[str, str]) -> tuple[float, float]:
    """(virus, others) scores of one prediction_results.txt row, its Prediction checked against them."""
    others, virus = (probability(path, number, row, column) for column in ("score1", "score2"))
    label = orf_label(virus, others)
    if row["Prediction"] != label:
        raise Inconsistent(f"{path} line {number}: Prediction {row['Prediction']!r} with score1 {row['score1']} "
                           f"and score2 {row['score2']} (expected {label!r})")
    return virus, others


def check_highest(path: Path, expected: ChunkDigest, chunks_path: Path) -> None:
    """The highest-score table holds each chunk with ORFs once, sorted by id, with its chunks.tsv call."""
    found, previous = ChunkDigest(), None
    for number, row in read_table(path, HIGHEST_COLUMNS):
        chunk_id, flag = row["Modified_ID"], row["Is_Virus"]
        if flag not in ("True", "False"):
            raise Inconsistent(f"{path} line {number}: Is_Virus must be True or False, found {flag!r}")
        if previous is not None and chunk_id <= previous:
            raise Inconsistent(f"{path} line {number}: {chunk_id!r} follows {previous!r} (the table lists each "
                               "chunk once, sorted by id)")
        previous = chunk_id
        found.add(chunk_id, flag == "True")
    for label, ours, theirs in (("virus", expected.calls[True], found.calls[True]),
                                ("others", expected.calls[False], found.calls[False])):
        if ours != theirs:
            raise Inconsistent(f"{path} lists {theirs} chunk(s) with Is_Virus {label == 'virus'} where {chunks_path} "
                               f"has {ours} chunk(s) with ORFs called {label}")
    if found.sum != expected.sum:
        raise Inconsistent(f"{path}: its chunk ids (or their Is_Virus) are not those of the chunks with ORFs "
                           f"in {chunks_path}")


# --- row ----------------------------------------------------------------------------------------------

def reconcile(recorded: Recorded, totals: Totals) -> list[str]:
    """The table totals that differ from the counts prepare recorded."""
    counts, sequences = recorded.counts, sum(totals.sequence_calls.values())
    checks = [
        ("input records", recorded.input_records, "sequences.tsv rows", sequences),
        ("prepared sequences", counts["sequences"], "sequences.tsv rows", sequences),
        ("prepared empty sequences", counts["empty_sequences"], "sequences called empty",
         totals.sequence_calls["empty"]),
        ("prepared bases", counts["bases"], "sequences.tsv lengths", totals.bases),
        ("prepared chunks", counts["chunks"], "chunks.tsv rows", sum(totals.chunk_calls.values())),
        ("prepared chunks without ORF", counts["chunks_without_orf"], "chunks called no_orf",
         totals.chunk_calls["no_orf"]),
        ("prepared ORFs", counts["orfs"], "prediction_results.txt rows", totals.orfs),
    ]
    return [f"{a} {x} != {b} {y}" for a, x, b, y in checks if x != y]


def summarise_sample(folder: Path, sample: str) -> dict:
    """The summary row of one sample, its `reconciled` cell naming every count that differs."""
    recorded = load_run_info(folder / RUN_INFO)
    totals = SampleWalk(folder, recorded).run()
    problems = reconcile(recorded, totals)
    row = {"sample": sample, "input_records": recorded.input_records,
           "sequences": sum(totals.sequence_calls.values()), "chunks": sum(totals.chunk_calls.values()),
           "orfs": totals.orfs}
    row.update({f"sequences_{call}": totals.sequence_calls[call] for call in SEQUENCE_CALLS})
    row.update({f"chunks_{call}": totals.chunk_calls[call] for call in CHUNK_CALLS})
    row["reconciled"] = "yes" if not problems else "NO: " + "; ".join(problems)
    return row


def report(rows: list[dict], without_results: int = 0) -> int:
    """One line per sample that does not reconcile and a total (`rows`: the samples with results);
    exit 5 when any does not."""
    failed = [row for row in rows if row["reconciled"] != "yes"]
    for row in failed:
        print(f"virnucpro summary: sample {row['sample']} does not reconcile: {row['reconciled'][4:]}",
              file=sys.stderr)
    missing = f", {without_results} without results" if without_results else ""
    print(f"virnucpro summary: {len(rows) + without_results} samples, {len(rows) - len(failed)} reconcile{missing}",
          file=sys.stderr)
    return ExitCode.INCONSISTENT if failed else ExitCode.OK


def command_row(args: argparse.Namespace) -> int:
    row = summarise_sample(args.result_dir, args.sample)
    write_table([row], args.out)
    return report([row])


# --- merge --------------------------------------------------------------------------------------------

def read_row_file(path: Path) -> dict[str, str]:
    """The one sample row of a `row` output, its counts whole numbers (exit 5 otherwise)."""
    rows = list(itertools.islice(read_table(path, COLUMNS, ROW_FILE_HINT), 2))
    if not rows:
        raise Inconsistent(f"{path} holds no sample row, only a header: a sample's summary is missing",
                           ROW_FILE_HINT)
    if len(rows) > 1:
        raise Inconsistent(f"{path} holds more than one row (line {rows[1][0]}): a row file is one sample's",
                           "give the files `virnucpro_summary.py row` wrote, each once")
    number, row = rows[0]
    for column in COUNT_COLUMNS:
        whole_number(path, number, row, column)
    return row


def row_problems(row: dict[str, str]) -> list[str]:
    """What does not add up in one summary row: its calls against its totals, and its own status."""
    n = {column: int(row[column]) for column in COUNT_COLUMNS}
    scored = n["chunks_virus"] + n["chunks_others"]
    checks = [
        ("input_records", n["input_records"], "sequences", n["sequences"]),
        ("sequences", n["sequences"], "sequences_virus+others+no_orf+empty",
         sum(n[f"sequences_{call}"] for call in SEQUENCE_CALLS)),
        ("chunks", n["chunks"], "chunks_virus+others+no_orf", sum(n[f"chunks_{call}"] for call in CHUNK_CALLS)),
    ]
    problems = [f"{a} {x} != {b} {y}" for a, x, b, y in checks if x != y]
    if not scored <= n["orfs"] <= len(FRAMES) * scored:
        problems.append(f"orfs {n['orfs']} for {scored} chunks with ORFs (each has 1 to 6)")
    if n["chunks"] < n["sequences"] - n["sequences_empty"]:
        problems.append(f"chunks {n['chunks']} < non-empty sequences {n['sequences'] - n['sequences_empty']}")
    if n["sequences_no_orf"] > n["chunks_no_orf"]:
        problems.append(f"sequences_no_orf {n['sequences_no_orf']} > chunks_no_orf {n['chunks_no_orf']}")
    if row["reconciled"] != "yes":
        problems.append(row["reconciled"][4:] if row["reconciled"].startswith("NO: ")
                        else f"reconciled is {row['reconciled']!r}")
    return problems


NO_RESULTS = "NO: no results (a task of this sample failed and the run went on without it)"


def command_merge(args: argparse.Namespace) -> int:
    rows = [read_row_file(path) for path in row_files(args.rows)]
    repeated = sorted(sample for sample, n in Counter(row["sample"] for row in rows).items() if n > 1)
    if repeated:
        raise Inconsistent(f"sample(s) {', '.join(map(repr, repeated))} appear more than once in "
                           f"{', '.join(map(str, args.rows))}", "give each sample's row file once")
    for row in rows:
        problems = row_problems(row)
        row["reconciled"] = "yes" if not problems else "NO: " + "; ".join(problems)
    samples = None if args.samples_from is None else read_sample_ids(args.samples_from)
    missing = samples_without_rows(rows, samples)
    rows = sorted(rows + [{"sample": sample, **dict.fromkeys(COUNT_COLUMNS, ""), "reconciled": NO_RESULTS}
                          for sample in missing], key=lambda row: row["sample"])
    write_table(rows, args.out)
    write_table(rows, args.mqc, MQC_HEADER)
    for sample in missing:
        print(f"virnucpro summary: sample {sample} has no results: a task of it failed and the run went on "
              "without it (errorStrategy 'ignore'); it is listed as such", file=sys.stderr)
    return report([row for row in rows if row["reconciled"] != NO_RESULTS], without_results=len(missing))


def row_files(paths: list[Path]) -> list[Path]:
    """The row files given: a folder stands for every file in it but hidden ones (a `.DS_Store`; the
    SUMMARY task stages its rows in one), so the command line stays short however many samples the
    run has."""
    files = []
    for path in paths:
        with reading(path, "give the files `virnucpro_summary.py row` wrote, or folders of them"):
            files.extend(sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
                         if path.is_dir() else [path])
    return files


def read_sample_ids(path: Path) -> list[str]:
    """The run's sample ids, one per line of `path` (--samples-from; empty lines and a byte-order mark
    are passed over); an id holding a tab or a carriage return, or one given twice, is exit 5."""
    with reading(path, SAMPLES_HINT), open_regular(path, SAMPLES_HINT) as lines:
        numbered = [(number, line.rstrip("\n").lstrip("\ufeff") if number == 1 else line.rstrip("\n"))
                    for number, line in enumerate(lines, 1)]
    bad = [number for number, sample in numbered if "\t" in sample or "\r" in sample]
    if bad:
        raise Inconsistent(f"{path} line {bad[0]}: a sample id holds a tab or a carriage return",
                           "give one sample id per line, in plain text with Unix line ends")
    hashed = [number for number, sample in numbered if sample.startswith("#")]
    if hashed:
        raise Inconsistent(f"{path} line {hashed[0]}: a sample id starts with '#': {HASH_FIRST}",
                           "rename the sample")
    ids = [sample for _number, sample in numbered if sample]
    repeated = sorted(sample for sample, n in Counter(ids).items() if n > 1)
    if repeated:
        raise Inconsistent(f"{path} names sample(s) {', '.join(map(repr, repeated[:5]))} more than once",
                           "give each sample id once")
    return ids


def samples_without_rows(rows: list[dict[str, str]], samples: list[str] | None) -> list[str]:
    """The run's samples (`--samples-from`) that have no row: their tasks failed and were ignored, so
    the table lists them as without results rather than leaving them out. A row of a sample the run
    does not have is refused (exit 5); no rows at all only with --samples-from."""
    if samples is None:
        if not rows:
            raise Inconsistent("no row files given", "give the files `virnucpro_summary.py row` wrote")
        return []
    foreign = sorted({row["sample"] for row in rows} - set(samples))
    if foreign:
        raise Inconsistent(f"row(s) of sample(s) {', '.join(map(repr, foreign))}, which --samples-from does not list",
                           "give the rows of this run's samples only")
    return sorted(set(samples) - {row["sample"] for row in rows})


# --- command line -------------------------------------------------------------------------------------

def sample_name(value: str) -> str:
    """A sample id that fits in one cell of a tab-separated table and starts a line MultiQC reads."""
    if not value or any(c in value for c in "\t\r\n"):
        raise argparse.ArgumentTypeError(f"{value!r} is empty or holds a tab or line break")
    if value.startswith("#"):
        raise argparse.ArgumentTypeError(f"{value!r} starts with '#': {HASH_FIRST}")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    row = commands.add_parser("row", help="the summary row of one sample's predict folder")
    row.add_argument("result_dir", type=Path)
    row.add_argument("--sample", required=True, type=sample_name)
    row.add_argument("--out", type=Path, required=True)
    row.set_defaults(run=command_row)
    merge = commands.add_parser("merge", help="one table from every sample's row")
    merge.add_argument("rows", nargs="*", type=Path, help="row files, or folders of them")
    merge.add_argument("--samples-from", type=Path, metavar="IDS.txt",
                       help="every sample of the run, one per line: one without a row is listed as having no results")
    merge.add_argument("--out", type=Path, required=True, help="run-level table (TSV)")
    merge.add_argument("--mqc", type=Path, required=True, help="MultiQC custom-content table")
    merge.set_defaults(run=command_merge)
    return parser


def stop(signum: int, _frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # SIGHUP under nohup stays ignored
            signal.signal(signum, stop)
    try:
        return args.run(args)
    except Inconsistent as exc:
        print(f"virnucpro summary: {exc}", file=sys.stderr)
        return ExitCode.INCONSISTENT
    except Stopped as exc:
        print(f"virnucpro summary: {exc} received: stopped (nothing left behind; run it again)", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except SpillFailed as exc:
        print(f"virnucpro summary: {exc}\n  fix: free space there, or point TMPDIR at a folder with room "
              f"(about 8 bytes per sequence)", file=sys.stderr)
        return ExitCode.OUTPUT_WRITE
    except OSError as exc:  # every read turns its OSError into Inconsistent: this is --out or --mqc
        return write_failed(exc)


def write_failed(exc: OSError) -> int:
    """One message for an --out or --mqc that could not be written. A name too long for the file
    system is the caller's (a long sample name), exit 3, not the storage's (exit 10: disk full, ...)."""
    if exc.errno == errno.ENAMETOOLONG:
        print(f"virnucpro summary: cannot write {exc.filename}: the file name is too long for the file system\n"
              "  fix: give a shorter --out name (in the pipeline: a shorter sample name)", file=sys.stderr)
        return ExitCode.BAD_INPUT
    fix = WRITE_FIXES.get(exc.errno, "free space or choose a writable output folder")
    print(f"virnucpro summary: cannot write {exc.filename}: {exc.strerror or exc}\n  fix: {fix}", file=sys.stderr)
    return ExitCode.OUTPUT_WRITE


# errno of a failed --out/--mqc -> its fix (each exit 10, as any output not written)
WRITE_FIXES = {
    errno.ENOSPC: "free space there, or choose an output folder with room",
    errno.EDQUOT: "free space there or raise your quota, or choose another output folder",
    errno.EROFS: "choose an output folder on a writable file system",
    errno.EACCES: "make its folder writable by this user, or choose another output folder",
    errno.EPERM: "make its folder writable by this user, or choose another output folder",
    errno.EISDIR: "it is a folder: give a file path",
    errno.ENOENT: "its folder does not exist: create it, or give another path",
    errno.ENOTDIR: "a part of its path is a file, not a folder: give another path",
}


if __name__ == "__main__":
    sys.exit(main())
