"""The `prepare` stage: chunk every input record, translate six frames, keep stop-free frames.

Reproduces the original VirNucPro exactly (SPEC §1 steps 1-3): its chunk placement (including the
short last chunk), codons with non-ACGT letters silently dropped, the `+1` nucleotide of each ORF.
Translation is vectorised with numpy over batches of chunks; records stream through, so memory is
bounded by the longest record plus one batch.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import multiprocessing
import os
import re
import signal
import threading
import stat
import sys
import time
import unicodedata
from array import array
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as ResultNotYet
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from virnucpro import prepared as fmt
from virnucpro.calls import FRAMES, chunk_id_of
from virnucpro.console import Progress, info, warn
from virnucpro.errors import (shell_word, process_limit, OPEN_FILE_LIMITS, STOP_SIGNALS, THREAD_LIMIT, BadInputError, HostOutOfMemory,
                             UsageError, VirnucproError, check_stop, naming, open_output, output_errors, stop_keeps_nothing,
                             stop_signals_blocked, stop_signals_deferred)
from virnucpro.outdir import claim, fresh_work_folder, remove_written, work_pattern
from virnucpro.seqio import (BLOCK, STDIN, HashingTextStream, Record, RecordGroup, invalid_letters, letters_refusal,
                            read_records, record_groups, take_blank_notes, unicode_text,
                            working_directory)
from virnucpro.threads import available_cpus

BATCH_BASES = 1 << 20  # bases translated per numpy batch: bounds the index arrays (~50 MB)


# --- six-frame translation (SPEC §1 steps 2-3) ----------------------------------------------

# The standard genetic code (NCBI translation table 1), codons in TCAG order: T T T, T T C, ...
STANDARD_CODE = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"


def _codon_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per codon coded base-5 (A C G T other) at a forward position: the amino acid it reads as on
    the forward strand, the amino acid its reverse complement reads as on the reverse strand (0
    marks a dropped codon), and whether it is a stop on the forward (1) or reverse (2) strand."""
    def amino(codon: str) -> str:
        first, second, third = ("TCAG".index(base) for base in codon)
        return STANDARD_CODE[16 * first + 4 * second + third]

    complement = {"A": "T", "C": "G", "G": "C", "T": "A"}
    forward, reverse, stop = (np.zeros(125, dtype=np.uint8) for _ in range(3))
    for i, a in enumerate("ACGT"):
        for j, b in enumerate("ACGT"):
            for k, c in enumerate("ACGT"):
                index = 25 * i + 5 * j + k
                forward[index] = ord(amino(a + b + c))
                reverse[index] = ord(amino(complement[c] + complement[b] + complement[a]))
                stop[index] = 1 if forward[index] == STOP else 2 if reverse[index] == STOP else 0
    return forward, reverse, stop


STOP = ord("*")
FORWARD_AMINO, REVERSE_AMINO, STOP_STRAND = _codon_tables()
BASE_CODE = np.full(256, 4, dtype=np.uint8)
for _code, (_upper, _lower) in enumerate(zip(b"ACGT", b"acgt")):
    BASE_CODE[_upper] = BASE_CODE[_lower] = _code
BASE_CODE_BYTES = BASE_CODE.tobytes()  # the same table for bytes.translate (a C loop, 5x a numpy lookup)
COMPLEMENT = bytes.maketrans(b"ACGTacgt", b"TGCAtgca")  # other codes stay, as in the original


def _codon_index(codes: np.ndarray) -> np.ndarray:
    """Base-5 code of the three bases starting at each position (positions past the end read 'other')."""
    padded = np.concatenate([codes, np.full(2, 4, dtype=np.uint8)])
    return padded[:-2] * 25 + padded[1:-1] * 5 + padded[2:]


def _strand_stop_codes(strand: int) -> list:
    return [np.uint8(code) for code in np.flatnonzero(STOP_STRAND == strand)]


FORWARD_STOPS, REVERSE_STOPS = _strand_stop_codes(1), _strand_stop_codes(2)


def _frames_with_stop(codons: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(chunks, 6) bool: the frame holds a stop codon; columns 0-2 are F1-F3, 3-5 are R1-R3.

    Codons starting at positions of one residue class modulo 3 (a strided view) belong to one
    forward frame of each chunk, the frame fixed by the chunk's offset; so one OR-reduction per
    chunk over that view, for each residue and strand, answers every frame without looking at the
    stops one by one. A reverse-strand stop is found at the forward position of its reverse
    complement: a codon at chunk position p lies at reverse-strand position L-3-p.
    """
    has_stop = np.zeros((len(lengths), 6), dtype=bool)
    rows = np.arange(len(lengths))
    for stops, reverse in ((FORWARD_STOPS, False), (REVERSE_STOPS, True)):
        is_stop = codons == stops[0]
        for code in stops[1:]:  # comparisons beat a table lookup over every position
            is_stop |= codons == code
        for residue in range(3):
            view = is_stop[residue::3]
            if not len(view):
                continue
            # codon starts p with p = residue (mod 3) and offset <= p <= offset + length - 3
            first = (offsets - residue + 2) // 3
            stop = (offsets + lengths - 3 - residue) // 3 + 1
            bounds = np.clip(np.stack([first, stop], axis=1).ravel(), 0, len(view) - 1)
            found = np.logical_or.reduceat(view, bounds)[0::2] & (stop > first)
            at_end = np.flatnonzero((stop == len(view)) & (stop > first))  # reduceat cannot reach the end
            found[at_end] = [view[first[k]:].any() for k in at_end]
            slot = 3 + (offsets + lengths - 3 - residue) % 3 if reverse else (residue - offsets) % 3
            has_stop[rows, slot] |= found
    return has_stop


def six_frame_orfs(chunk_ids: Sequence[str], chunks: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The ORF lines of chunks (stop-free, non-empty frames, in chunk order then F1 F2 F3 R1 R2 R3)
    and how many each chunk has.

    Translation reads the chunks case-blind; ORF nucleotides come from the upper-cased strand, as
    in the original.
    """
    frames = _stop_free_frames(chunks) if chunks else None
    if frames is None:
        return [], np.zeros(len(chunks), dtype=np.int64)
    proteins, sizes = _translate_frames(frames)
    return _orf_lines(chunk_ids, chunks, frames, proteins, sizes)


@dataclass
class _Frames:
    """The stop-free frames of a list of chunks, vectorised: one entry per (chunk, frame slot)."""

    codons: np.ndarray     # codon index at every position of the joined chunks
    offsets: np.ndarray    # where each chunk starts in the joined string
    lengths: np.ndarray    # chunk lengths
    chunk: np.ndarray      # chunk of each frame
    slot: np.ndarray       # 0-5 = F1 F2 F3 R1 R2 R3
    n_codons: np.ndarray   # whole codons in each frame


def _stop_free_frames(chunks: Sequence[str]) -> Optional[_Frames]:
    """Every frame with at least one codon and no stop codon, or None when there is none."""
    lengths = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    codes = "".join(chunks).encode("ascii").translate(BASE_CODE_BYTES)
    codons = _codon_index(np.frombuffer(codes, dtype=np.uint8))
    counts = np.maximum(0, (lengths[:, None] - np.tile(np.arange(3), 2)[None, :]) // 3)
    open_frame = (counts > 0) & ~_frames_with_stop(codons, offsets, lengths)
    candidates = np.flatnonzero(open_frame.ravel())
    if not len(candidates):
        return None
    chunk, slot = np.divmod(candidates, 6)
    return _Frames(codons, offsets, lengths, chunk, slot, counts.ravel()[candidates])


def _translate_frames(f: _Frames) -> tuple[str, np.ndarray]:
    """All proteins joined in one string, and each frame's amino-acid count (dropped codons excluded)."""
    shift = f.slot % 3
    reverse = f.slot >= 3
    # forward frames read ascending from offset+shift; reverse frames read the forward codons at
    # chunk positions L-3-shift, L-6-shift, ... (descending)
    starts = np.where(reverse, f.offsets[f.chunk] + f.lengths[f.chunk] - 3 - shift,
                      f.offsets[f.chunk] + shift)
    steps = np.where(reverse, -3, 3)
    n = f.n_codons
    seg_begin = np.cumsum(n) - n
    within = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(seg_begin, n)
    element_codons = f.codons[np.repeat(starts, n) + np.repeat(steps, n) * within]
    gathered = np.where(np.repeat(reverse, n), REVERSE_AMINO[element_codons], FORWARD_AMINO[element_codons])
    valid = gathered != 0
    valid_cum = np.concatenate([[0], np.cumsum(valid)])
    n_amino = valid_cum[seg_begin + n] - valid_cum[seg_begin]
    return gathered[valid].tobytes().decode("ascii"), n_amino


def _orf_lines(chunk_ids: Sequence[str], chunks: Sequence[str], f: _Frames, proteins: str,
               sizes: np.ndarray) -> tuple[list[str], np.ndarray]:
    """One ORF line per frame that kept at least one amino acid (the original keeps no empty
    protein), and the ORFs of each chunk.

    An ORF's nucleotides are its strand's `[shift, shift + 3 * amino acids + 1)`, cut at the chunk's
    end: a frame's dropped codons shorten it, as in the original. Every strand is read from one
    upper-cased copy of the joined chunks followed by its reverse complement, the reverse strand of
    a chunk being the reverse complement's slice that mirrors it; so each ORF costs two slices.
    """
    kept = sizes > 0
    protein_end = np.cumsum(sizes)[kept]
    size, chunk, slot = sizes[kept], f.chunk[kept], f.slot[kept]
    forward = "".join(chunks).encode("ascii").upper()  # nucleotide codes only: letters were checked
    total = len(forward)
    shift = slot % 3
    length = f.lengths[chunk]
    strand_start = np.where(slot >= 3, 2 * total - f.offsets[chunk] - length, f.offsets[chunk])
    start = strand_start + shift
    end = strand_start + np.minimum(shift + 3 * size + 1, length)
    both = (forward + forward.translate(COMPLEMENT)[::-1]).decode("ascii")
    names = [chunk_ids[k] + FRAMES[s] for k, s in zip(chunk.tolist(), slot.tolist())]
    nucleotides = [both[a:b] for a, b in zip(start.tolist(), end.tolist())]
    amino_acids = [proteins[a:b] for a, b in zip((protein_end - size).tolist(), protein_end.tolist())]
    return fmt.orf_lines(names, nucleotides, amino_acids), np.bincount(chunk, minlength=len(chunks))


# --- one group of records (runs in a worker process) -----------------------------------------

@dataclass
class Counts:
    sequences: int = 0
    empty_sequences: int = 0
    bases: int = 0
    chunks: int = 0
    chunks_without_orf: int = 0
    orfs: int = 0

    def add(self, other: "Counts") -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class GroupResult:
    """What one group of records contributes, formatted: shard lines and table rows, in order."""

    counts: Counts
    orf_lines: list[str]
    chunk_rows: str
    sequence_rows: str
    id_hashes: array
    rna_records: list[str]
    blank_notes: list[tuple[str, str]]  # seqio.take_blank_notes of the process that prepared it


def _refuse_bad_letters(records: Iterable[Record], path: Path) -> None:
    """Refuse the first record holding letters that are no nucleotide code, protein above all (X is
    masked DNA, as N: the original drops codons holding either)."""
    for record in records:
        bad = invalid_letters(record.sequence)
        if bad:
            raise letters_refusal(path, record.id, record.line, bad, len(record.sequence))


def _rna_and_masked(ids: list[str], sequences: list[str], joined: str) -> tuple[list[str], list[int]]:
    """The ids of records holding U (RNA), and the masked bases (N or X, either case) of each
    record; `joined` (the sequences as one string) says first whether any record holds either."""
    masks = [letter for letter in "NnXx" if letter in joined]
    masked = ([sum(sequence.count(letter) for letter in masks) for sequence in sequences] if masks
              else [0] * len(sequences))
    if "U" not in joined and "u" not in joined:
        return [], masked
    return [rid for rid, sequence in zip(ids, sequences) if "U" in sequence or "u" in sequence], masked


def _translate_chunks(chunk_ids: list[str], chunks: list[str]) -> tuple[list[str], list[int]]:
    """Formatted ORF lines and ORFs per chunk, translating about BATCH_BASES at a time."""
    lines: list[str] = []
    per_chunk: list[int] = []
    begin = 0
    while begin < len(chunks):
        end, bases = begin, 0
        while end < len(chunks) and (bases < BATCH_BASES or end == begin):
            bases += len(chunks[end])
            end += 1
        batch_lines, batch_counts = six_frame_orfs(chunk_ids[begin:end], chunks[begin:end])
        lines += batch_lines
        per_chunk += batch_counts.tolist()
        begin = end
    return lines, per_chunk


def prepare_group(group: RecordGroup, chunk_size: int) -> GroupResult:
    """Check, chunk and translate one group of whole records (a pure function: runs in a worker).

    Record ids are hashed (by `id_key`) with Python's string hash, whose per-process key forked
    workers share with the main process, which confirms duplicates with the same hash.
    """
    ids, sequences = group.columns()
    joined = "".join(sequences)
    if invalid_letters(joined):
        _refuse_bad_letters(group.parse(), group.path)
    rna, masked = _rna_and_masked(ids, sequences, joined)
    hashes = array("q", [hash(id_key(rid)) for rid in ids])
    cut = _cut_into_chunks(ids, sequences, chunk_size)
    orf_lines, per_chunk = _translate_chunks(cut.ids, cut.chunks)
    table = fmt.chunk_rows(cut.ids, cut.sequence_ids, cut.starts, cut.lengths, per_chunk)
    orfs_before = np.cumsum([0, *per_chunk])
    first_chunk = np.array(cut.first_chunk)
    n_chunks = np.diff(first_chunk).tolist()
    n_orfs = (orfs_before[first_chunk[1:]] - orfs_before[first_chunk[:-1]]).tolist()
    lengths = list(map(len, sequences))
    sequence_rows = fmt.sequence_rows(ids, lengths, n_chunks, n_orfs, masked)
    counts = Counts(sequences=len(ids), empty_sequences=lengths.count(0), bases=len(joined),
                    chunks=len(cut.chunks), chunks_without_orf=per_chunk.count(0), orfs=len(orf_lines))
    return GroupResult(counts, orf_lines, table, sequence_rows, hashes, rna, take_blank_notes())


@dataclass
class _Chunked:
    """The chunks of a group of records as columns (chunk id, sequence id, start, length, bases) and,
    per record, the index of its first chunk (plus one end index after the last record)."""

    ids: list[str] = field(default_factory=list)
    sequence_ids: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)
    first_chunk: list[int] = field(default_factory=list)

    def add(self, rid: str, k: int, start: int, sequence: str) -> None:
        """Chunk `k` (1-based) of record `rid`, starting at `start`."""
        self.ids.append(chunk_id_of(rid, k))
        self.sequence_ids.append(rid)
        self.starts.append(start)
        self.lengths.append(len(sequence))
        self.chunks.append(sequence)


def _cut_into_chunks(ids: list[str], sequences: list[str], chunk_size: int) -> _Chunked:
    """Each record whole when it fits in `chunk_size` (none when empty), else its overlapping chunks."""
    lengths = list(map(len, sequences))
    if lengths and 0 < min(lengths) and max(lengths) <= chunk_size:  # reads: every record is its one chunk
        return _Chunked([chunk_id_of(rid, 1) for rid in ids], ids, [0] * len(ids), lengths, sequences,
                        list(range(len(ids) + 1)))
    cut = _Chunked()
    for rid, sequence in zip(ids, sequences):
        cut.first_chunk.append(len(cut.chunks))
        if len(sequence) <= chunk_size:
            if sequence:
                cut.add(rid, 1, 0, sequence)
            continue
        for k, (start, size) in enumerate(fmt.chunk_spans(len(sequence), chunk_size), start=1):
            cut.add(rid, k, start, sequence[start:start + size])
    cut.first_chunk.append(len(cut.chunks))
    return cut


# --- the sample: groups in order -------------------------------------------------------------

class ShardWriter:
    """Writes ORF records into numbered shard bodies; the first line (which needs the shard count)
    is added when the sample is complete."""

    def __init__(self, directory: Path, shard_size: int):
        self.directory, self.shard_size = directory, shard_size
        self.bodies: list[Path] = []
        self.records: list[int] = []
        self._handle = None
        self.beyond: int | None = None  # ORFs past the shard cap: counted only, for the refusal's advice

    def _open_next(self) -> None:
        if self._handle:
            self._handle.close()
        if len(self.bodies) >= fmt.MAX_SHARDS:
            self._count_the_rest()
            return
        body = self.directory / (fmt.shard_name(len(self.bodies)) + ".body")
        self.bodies.append(body)
        self.records.append(0)
        self._handle = open_output(body, "x", encoding="utf-8", newline="\n")  # "x": never through a link

    def write_lines(self, lines: list[str]) -> None:
        """Append formatted ORF lines, starting a new shard every `shard_size` records.

        Walks `lines` with an index, each line sliced out once: one group (a long contig) may hold
        millions of lines, and cutting the rest of the list off per shard would be quadratic."""
        done = 0
        while done < len(lines):
            if self.beyond is None and (self._handle is None or self.records[-1] >= self.shard_size):
                self._open_next()
            if self.beyond is not None:  # past the cap
                self.beyond += len(lines) - done
                return
            end = min(len(lines), done + self.shard_size - self.records[-1])
            self._handle.write("".join(lines[done:end]))
            self.records[-1] += end - done
            done = end

    def _count_the_rest(self) -> None:
        """Past the cap of shards a sample is cut into: the shards written go (nothing will use them),
        and the rest of the input's ORFs are only counted, so that the refusal at the end names a
        --shard-size that fits the whole input (a pipe cannot be read again to find it)."""
        for body in self.bodies:
            body.unlink(missing_ok=True)
        self._handle, self.beyond = None, 0
        warn(f"--shard-size {self.shard_size:,} cuts this input into more than {fmt.MAX_SHARDS:,} shards: "
             "reading the rest of it only to count its ORFs, to say which --shard-size fits (nothing is kept)")

    def _refuse_past_the_cap(self) -> None:
        """Exit 2 with the --shard-size that cuts all of the input's ORFs into at most MAX_SHARDS shards."""
        total = sum(self.records) + self.beyond
        raise UsageError(f"--shard-size {self.shard_size:,} cuts this input ({total:,} ORFs) into more than "
                         f"{fmt.MAX_SHARDS:,} shards",
                         f"give a --shard-size of at least {-(-total // fmt.MAX_SHARDS):,} (the default, 100,000, "
                         "suits a GPU task per shard)")

    def finish(self, chunk_size: int) -> list[dict]:
        """Turn bodies into final shard files with their first line and header; return manifest rows."""
        if self.beyond is not None:
            self._refuse_past_the_cap()
        if self._handle is None:
            self._open_next()
        self._handle.close()
        rows = []
        of = len(self.bodies)
        for index, (body, records) in enumerate(zip(self.bodies, self.records)):
            final = body.with_suffix("")
            digest = hashlib.sha256()
            with open_output(final, "xb") as out:
                head = fmt.shard_header(chunk_size, index, of).encode("utf-8")
                out.write(head)
                digest.update(head)
                with open(body, "rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
                        digest.update(block)
            body.unlink()
            rows.append(fmt.shard_entry(index, records, digest.hexdigest()))
        return rows


@dataclass
class InputSummary:
    path: Path
    sha256: str = ""
    records: int = 0
    compression: str = "none"  # as read (gzip, bzip2, xz): for the commands a refusal gives
    format: str = "fastq"  # as read (fasta or fastq): for the same commands
    unusual_blanks: bool = False  # an id was cut at a Unicode blank beyond space and tab: the commands cut there too


class InlineExecutor:
    """The executor interface, run in this process (one thread: no worker to feed)."""

    def submit(self, function, *args) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _room_for_threads(count: int) -> None:
    """The RuntimeError of a thread that cannot start, unless `count` more threads can run at once: a
    process pool forks its workers, then starts the two threads it runs on (each worker and thread
    takes a slot of `ulimit -u`), and a thread refused then left the workers waiting for ever."""
    release = threading.Event()
    started = []
    try:
        for _ in range(count):
            thread = threading.Thread(target=release.wait, daemon=True)
            thread.start()
            started.append(thread)
    finally:
        release.set()
        for thread in started:
            thread.join()


class SamplePreparer:
    """Sends groups of records to workers and writes their results strictly in input order, so
    outputs do not depend on the number of workers; at most a few groups are in flight.

    The first group is done in this process and the worker processes start only when a second
    one comes: a small input (one group, about 1 MB) never forks.
    """

    def __init__(self, workdir: Path, chunk_size: int, shard_size: int, workers: int):
        self.chunk_size = chunk_size
        self.counts = Counts()
        self.registry = IdRegistry(workdir / ".ids")
        self.shards = ShardWriter(workdir / fmt.SHARD_DIR, shard_size)
        self.sequences = open_output(workdir / fmt.SEQUENCES, "x", encoding="utf-8", newline="\n")
        self.chunks = open_output(workdir / fmt.CHUNKS, "x", encoding="utf-8", newline="\n")
        self.sequences.write(fmt.header_line(fmt.SEQUENCES_HEADER))
        self.chunks.write(fmt.header_line(fmt.CHUNKS_HEADER))
        self.workers = workers
        self.executor = InlineExecutor()
        self.in_flight: deque = deque()
        self.depth = 2 * max(1, workers)
        self.rna_warnings = 0
        self.blanks_noted: set[str] = set()

    def submit(self, group: RecordGroup, summary: InputSummary) -> None:
        check_stop()
        starting = self.workers > 0 and self.in_flight and isinstance(self.executor, InlineExecutor)
        future = self._start_workers(group) if starting else None
        if future is None:
            try:
                future = self.executor.submit(prepare_group, group, self.chunk_size)
            except BrokenProcessPool:
                raise _worker_died(summary.path, self.executor) from None
        self.in_flight.append((summary, future))
        while len(self.in_flight) > self.depth:
            self._apply(*self.in_flight.popleft())

    def _start_workers(self, group: RecordGroup) -> Optional[Future]:
        """The worker processes started, with `group` (read already) as their first task; None when
        they cannot start: their semaphores need a usable /dev/shm (which `docker --ipc=none`, some
        sandboxes or a read-only mount take away), and a limit on processes (`ulimit -u`, a
        container's or job's pids limit) stops the forks. This process then prepares every group,
        `group` included, as `run` does (slower, same outputs); only its own results are written."""
        with stop_signals_blocked():  # the first submit forks every worker
            try:
                _room_for_threads(self.workers + 2)
                self.executor = ProcessPoolExecutor(max_workers=self.workers, initializer=_worker_setup,
                                                    initargs=(os.getpid(),),
                                                    mp_context=_WorkerContext())
                return self.executor.submit(prepare_group, group, self.chunk_size)
            except (OSError, NotImplementedError, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and process_limit(exc) is None:
                    raise  # not the pool's thread refused (`ulimit -u`) after its workers forked: a bug
                self._prepare_here(exc)
                return None

    def _prepare_here(self, exc: BaseException) -> None:
        """From now on, prepare in this process: the workers forked before one failed are killed (the
        results of any group they took are never read), with one warning saying why."""
        if not isinstance(self.executor, InlineExecutor):
            for worker in multiprocessing.active_children():
                worker.kill()
                worker.join(timeout=5)  # reaped: no worker outlives the fallback
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = InlineExecutor()
        self.workers, self.depth = 0, 2  # inline results are held until written: few of them
        warn(f"prepare's worker processes cannot start ({_why_no_workers(exc)}); preparing in this process "
             "instead, which is slower (same outputs)")

    def _apply(self, summary: InputSummary, future: Future) -> None:
        result: GroupResult = _result_of(future, summary.path, self.executor)
        self.shards.write_lines(result.orf_lines)
        self.chunks.write(result.chunk_rows)
        self.sequences.write(result.sequence_rows)
        self.counts.add(result.counts)
        self.registry.add_many(result.id_hashes)
        summary.records += result.counts.sequences
        for record_id in result.rna_records[:max(0, 3 - self.rna_warnings)]:
            warn(f"record '{record_id}' contains U (RNA?); as in the original, codons with U are dropped, "
                 "not read as T")
        self.rna_warnings += len(result.rna_records)
        notes = result.blank_notes + take_blank_notes()  # this process's own too (FASTQ's)
        self._warn_of_blanks(notes)
        summary.unusual_blanks |= any(path == str(summary.path) for path, _ in notes)

    def _warn_of_blanks(self, notes: list[tuple[str, str]]) -> None:
        """Each input's first note of an id cut at an unusual blank, once (every worker notes its own)."""
        for path, message in notes:
            if path not in self.blanks_noted:
                self.blanks_noted.add(path)
                warn(message)

    def finish(self) -> list[dict]:
        while self.in_flight:
            self._apply(*self.in_flight.popleft())
        self.close()
        if self.rna_warnings > 3:
            warn(f"{self.rna_warnings:,} records contain U (RNA?) in all, the first 3 named above")
        return self.shards.finish(self.chunk_size)

    def close(self) -> None:
        """Stop the workers and close the tables. Aborting (a signal or an error), no queued group
        starts; the few groups already handed to workers finish (each is bounded). Finishing, every
        result is in, and a worker frozen with SIGSTOP is not waited for: see `_stop_pool`."""
        _stop_pool(self.executor)
        self.sequences.close()
        self.chunks.close()


# what stops worker processes, by the errno of the failure, when it is no missing /dev/shm (the
# process limits in errors.py's words)
WORKER_START_CAUSES = {
    **{code: what for code, (what, _hint) in OPEN_FILE_LIMITS.items()},
    errno.EAGAIN: THREAD_LIMIT,
    errno.ENOMEM: "no memory is left to fork another process",
}
SEMAPHORE_ERRNOS = (errno.ENOENT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.ENOSYS)


def _why_no_workers(exc: BaseException) -> str:
    """Why the workers could not start, the failure's own words first, then the cause its errno
    names: open files or processes run out, or semaphores without a usable /dev/shm (`docker
    --ipc=none`, a read-only mount); an errno naming neither gets both guesses."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    code = errno.EAGAIN if isinstance(exc, RuntimeError) else getattr(exc, "errno", None)  # the pool's thread refused
    if code in WORKER_START_CAUSES:
        return f"{reason}: {WORKER_START_CAUSES[code]}"
    if code in SEMAPHORE_ERRNOS or isinstance(exc, NotImplementedError):
        return f"{reason}: their semaphores need a writable /dev/shm"
    return f"{reason}: their semaphores need a writable /dev/shm, and a limit on processes stops them too"


WORKER_LOOK_SECONDS = 1.0  # while a result is awaited, how often the workers are looked at (one may have died)
POOL_ABORT_SECONDS = 30.0  # how long aborting waits for the workers to finish the groups they hold
POOL_CLOSES_SECONDS = 5.0  # how long the pool's thread is given to close its pipes itself, once unwedged
POOL_UNWEDGE_SECONDS = 30.0  # after a dead worker is dealt with, how long the pool's threads may take


def _stop_pool(executor: ProcessPoolExecutor) -> None:
    """Shut the pool down without starting queued groups, never waiting on it for ever. A worker that
    dies meanwhile (the out-of-memory killer, a kill -9) may die sending its result, holding the
    result pipe's lock with half a message in it: the pool's reader then waits for the rest, the
    other workers for the lock, its feeder for them, and the command would hang. So a
    dead worker unwedges the pool: the others are killed and this process's end of the result pipe
    closed, so that the pool's reader sees end-of-file. The pool then closes the end of the other pipe
    itself (Python 3.11 and later); only where it has not after a while is it closed here, never
    while the pool's thread may close it too (a close from each at once printed a traceback). Workers
    that have not finished after POOL_ABORT_SECONDS (one stopped with SIGSTOP never does) are dealt
    with as dead ones: their groups' results are not wanted."""
    thread = getattr(executor, "_executor_manager_thread", None)  # None when no group was submitted
    workers = list((getattr(executor, "_processes", None) or {}).values())
    results, calls = getattr(executor, "_result_queue", None), getattr(executor, "_call_queue", None)
    executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + POOL_ABORT_SECONDS
    while thread is not None and thread.is_alive():
        thread.join(timeout=0.1)
        if any(worker.exitcode not in (None, 0) for worker in workers) or time.monotonic() > deadline:
            for worker in multiprocessing.active_children():
                worker.kill()
            for end, after in ((getattr(results, "_writer", None), POOL_CLOSES_SECONDS),
                               (getattr(calls, "_reader", None), POOL_UNWEDGE_SECONDS)):
                if end is not None and thread.is_alive():
                    end.close()
                    thread.join(timeout=after)
            return


def _result_of(future: Future, path: Path, executor) -> "GroupResult":
    """A group's result, or the error of a worker that died (see `_worker_died`). A worker killed while
    it sends a result leaves the pool's reader waiting for the rest of that message, and the pool never
    says it is broken (prepare waited for ever): so the workers are looked at while the result is awaited."""
    while True:
        try:
            return future.result(timeout=WORKER_LOOK_SECONDS)
        except ResultNotYet:
            workers = list((getattr(executor, "_processes", None) or {}).values())
            if any(worker.exitcode not in (None, 0) for worker in workers):
                raise _worker_died(path, executor) from None
        except BrokenProcessPool:
            raise _worker_died(path, executor) from None


def _worker_died(path: Path, executor) -> VirnucproError:
    """A worker died (only a signal can end one). Killed by SIGKILL, most often by the out-of-memory
    killer, it is exit 137 (what the kernel gives a process it kills), which pipelines retry with more
    memory; another signal (a crash) is exit 1. The others are killed: the pool ends them with SIGTERM,
    which they ignore (see `_worker_setup`), then waits for its queue feeder, blocked writing to them,
    for ever. Said plainly, not as a bug."""
    signals = _dead_worker_signals(executor)
    for worker in multiprocessing.active_children():
        worker.kill()
    check_stop()
    hint = "give prepare more memory or fewer --threads, then rerun"
    died = f"a prepare worker process died while preparing {path}"
    if signal.SIGKILL in signals:
        return HostOutOfMemory(f"{died}: killed by SIGKILL (out of memory? the out-of-memory killer sends "
                               "SIGKILL)", hint)
    if signals:  # the out-of-memory killer sends SIGKILL only: another signal is a crash
        names = ", ".join(sorted(signal.Signals(n).name for n in signals))
        return VirnucproError(f"{died} (it crashed: killed by {names})",
                              "rerun with --threads 1 (no worker processes); if it crashes again, report it")
    return VirnucproError(f"{died} (killed by a signal, most often the out-of-memory killer)", hint)


def _dead_worker_signals(executor, wait: float = 1.0) -> set[int]:
    """The signals that ended the pool's dead workers (empty when unknown). The pool's own thread may
    be reaping a worker at the same moment, so its status is looked for a little while."""
    workers = list((getattr(executor, "_processes", None) or {}).values())
    deadline = time.monotonic() + wait
    while True:
        codes = {worker.exitcode for worker in workers} - {None}
        if codes or time.monotonic() > deadline:
            return {-code for code in codes if code < 0 and -code in signal.valid_signals()}
        time.sleep(0.02)


PR_SET_PDEATHSIG = 1


class _Worker(multiprocessing.context.ForkProcess):
    """A prepare worker process: the pool's `terminate` kills it, as its SIGTERM is ignored (see
    `_worker_setup`). A pool whose worker died terminates the others, then waits for its queue's
    feeder (Python 3.12 and later), which the live ones kept blocked: prepare hung for ever."""

    def terminate(self) -> None:
        self.kill()


class _WorkerContext(multiprocessing.context.ForkContext):
    """The fork context, making `_Worker` processes."""

    Process = _Worker


def _worker_setup(parent: int) -> None:
    """In each worker: die with the main process, even when it is killed, and leave signals to it.

    Every stop signal is ignored: Ctrl-C, Nextflow, SLURM and `timeout` signal the whole process
    tree, and a worker killed while it sends its result would leave the main process waiting for
    the rest of that message for ever. The main process alone stops: its workers finish the groups
    they hold (each bounded) and exit; were it killed, the parent-death signal below ends them.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the main process for the fork
    if not _killed_with_parent():
        threading.Thread(target=_exit_once_orphaned, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the main process died before the line above took effect
        os._exit(1)


def _killed_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where it cannot (macOS has no
    prctl): there a worker outlived a main process killed with SIGKILL, holding its folder's lock."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        return False


def _exit_once_orphaned(parent: int, every: float = 0.5) -> None:
    """A worker's watch where no parent-death signal exists: exit as soon as the main process is gone."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


# --- duplicate ids ---------------------------------------------------------------------------

class IdRegistry:
    """64-bit hashes of every record id, so duplicates are found without holding the ids.

    Hashes are buffered, then spilled to 16 bucket files by their top bits; at the end each bucket
    is sorted on its own. Memory stays flat as inputs grow (1/16 of the hashes at most, at the end).
    """

    BUFFER = 1 << 16
    BUCKETS = 16
    CONFIRM_BATCH = 1 << 12  # repeated hashes confirmed per pass over the id table

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.buffer = array("q")

    def add_many(self, hashes: array) -> None:
        self.buffer.extend(hashes)
        if len(self.buffer) >= self.BUFFER:
            self._spill()

    def _bucket(self, index: int) -> Path:
        return self.directory / f"ids_{index:02d}.bin"

    def _spill(self) -> None:
        values = np.frombuffer(self.buffer, dtype=np.int64)
        buckets = (values.view(np.uint64) >> np.uint64(60)).astype(np.int64)
        for index in range(self.BUCKETS):
            with naming(self._bucket(index)), open(self._bucket(index), "ab") as handle:
                handle.write(values[buckets == index].data)  # not ndarray.tofile: its failures have no errno
        self.buffer = array("q")

    def repeated_hash_batches(self) -> Iterator[set[int]]:
        """The hashes that occur more than once, in sets of CONFIRM_BATCH (the last one smaller), one
        bucket sorted at a time (its file then removed): memory stays bounded however many ids
        repeat, and when fewer repeat, one set holds them all (the first duplicate read is named)."""
        self._spill()
        batch: set[int] = set()
        for index in range(self.BUCKETS):
            ordered = np.sort(np.fromfile(self._bucket(index), dtype=np.int64))
            self._bucket(index).unlink()
            repeats = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
            while len(repeats):
                room = self.CONFIRM_BATCH - len(batch)
                batch.update(repeats[:room].tolist())
                repeats = repeats[room:]
                if len(batch) == self.CONFIRM_BATCH:
                    yield batch
                    batch = set()
        self.directory.rmdir()
        if batch:
            yield batch


DUPLICATE_HINT = "make ids unique (e.g. prefix them with the sample or file name)"


def id_key(record_id: str) -> str:
    """What makes two ids one: their text in Unicode normal form C. An accented letter written as
    one character (as most keyboards type it) or as a letter and a combining accent (as macOS file
    names give it) looks the same in every table, so it is one id. ASCII ids, nearly all real ones,
    are their own normal form: only the others pay for normalizing.

    Each Python normalizes with its own tables (13.0 on 3.10, 15.1 on 3.13), and two ids of marks
    added since were one id on one Python, two on another. So only the runs of characters Unicode 3.2
    had are normalized (they normalize alike in every version: Unicode's stability policy); a
    character added since is kept as written, and 'café' with an emoji after it is still one id in
    both spellings."""
    if record_id.isascii():
        return record_id
    return "".join("".join(run) if newer else unicodedata.normalize("NFC", "".join(run))
                   for newer, run in itertools.groupby(record_id, key=_newer_than_unicode_3_2))


def _newer_than_unicode_3_2(character: str) -> bool:
    """Whether Unicode 3.2 lacked this character (unassigned then, or a noncharacter)."""
    return unicodedata.ucd_3_2_0.category(character) == "Cn"


class _Read(NamedTuple):
    """One record as the duplicate search saw it: its id as written, its input, its number there."""

    record_id: str
    source: InputSummary
    number: int


def _record_numbers(summaries: Sequence[InputSummary]) -> Iterator[tuple[InputSummary, int]]:
    """(input, 1-based record number in it) of every record, in the order prepare read them."""
    for summary in summaries:
        for number in range(1, summary.records + 1):
            yield summary, number


def _name_duplicate(table: Path, summaries: Sequence[InputSummary], repeated: set[int]) -> None:
    """Confirm the ids whose hashes repeat against `table` (sequences.tsv: every record id, in input
    order) and name the first real duplicate: a stream needs no second read, and two distinct ids
    sharing a 64-bit hash are never taken for one. Only ids with a repeated hash are held."""
    seen: dict[str, _Read] = {}
    with closing(fmt.sequence_ids(table)) as record_ids:
        for (summary, number), record_id in zip(_record_numbers(summaries), record_ids):
            key = id_key(record_id)
            if hash(key) not in repeated:
                continue
            if key in seen:
                raise _duplicate_error(seen[key], _Read(record_id, summary, number))
            seen[key] = _Read(record_id, summary, number)


def _duplicate_error(first: _Read, second: _Read) -> BadInputError:
    """The refusal of two records with one id (exit 3: each read is scored on its own, so ids must be
    unique), saying when they are one id in two Unicode spellings, or look like the mates of a pair:
    the same id in another input (R1 and R2), or on the very next record (an interleaved file)."""
    message = (f"duplicate sequence id '{first.record_id}': {_where(first.source.path, first.number)} and "
               f"{_where(second.source.path, second.number)}")
    if first.record_id != second.record_id:
        return BadInputError(f"{message} hold the same id in two Unicode spellings ({ascii(first.record_id)} and "
                             f"{ascii(second.record_id)}), which look identical in every table",
                             "rename one of them: ids that look the same are one id to whoever reads the tables")
    unique = "VirNucPro scores every read on its own, so every id must be unique"
    if first.source is not second.source and first.source.sha256 and first.source.sha256 == second.source.sha256:
        return BadInputError(f"{message}; {second.source.path} has the same content as {first.source.path} (one "
                             f"sha256): the same reads given twice", f"give {first.source.path} once")
    if first.source is not second.source:
        return BadInputError(f"{message}; the same ids in two input files look like the two mates of paired-end "
                             f"reads (R1 and R2), or one file given twice (a compressed copy?), and {unique}",
                             _mate_files_hint(first.source, second.source))
    if second.number == first.number + 1:
        return BadInputError(f"{message}; the same id on two records in a row looks like an interleaved paired-end "
                             f"file (each mate after the other), and {unique}", _interleaved_hint(first.source))
    return BadInputError(message, DUPLICATE_HINT)


# awk programs that append /1 or /2 to each record's id, before its comment or a CRLF file's '\r':
# 4-line FASTQ by line number (the '+' line, which may repeat the old header, emptied), FASTA on
# each '>' line (an interleaved file's mates alternate); POSIX awk, checked with mawk
# Each program first drops a UTF-8 byte order mark (else the first header is not seen, and in an
# interleaved file every later mate gets the other label) and blanks after the header's marker
# (`> r1`: virnucpro's id is r1; the /1 would go before it)
BOM_AWK = r'NR==1{sub(/^\357\273\277/,"")} '
ONE_MATE_AWK = {"fastq": BOM_AWK + r'NR%4==1{sub(/^@[ \t]*/,"@"); sub(/[ \t\r]|$/,"/MATE&")} '
                                  r'NR%4==3{sub(/^[+][^\r]*/,"+")} 1',
                "fasta": BOM_AWK + r'/^>/{sub(/^>[ \t]*/,">"); sub(/[ \t\r]|$/,"/MATE&")} 1'}
INTERLEAVED_AWK = {"fastq": BOM_AWK + r'NR%4==1{sub(/^@[ \t]*/,"@"); sub(/[ \t\r]|$/,NR%8==1?"/1&":"/2&")} '
                                     r'NR%4==3{sub(/^[+][^\r]*/,"+")} 1',
                   "fasta": BOM_AWK + r'/^>/{sub(/^>[ \t]*/,">"); sub(/[ \t\r]|$/,++n%2?"/1&":"/2&")} 1'}
# Unicode's blanks beyond ASCII that end an id as Biopython's split() ends it (`seqio._record_id`;
# U+0085 is refused), as UTF-8 byte sequences in octal: alternatives, not a bracket of bytes, which
# awk in a UTF-8 locale would read as characters; added to the programs for an input whose ids were
# cut at one (not to every hint: they are long)
UNUSUAL_BLANKS_AWK = "|".join("".join(f"\\{byte:03o}" for byte in chr(point).encode()) for point in range(0x80, 0x3001)
                              if chr(point).isspace() and point != 0x85)
EXTENSIONS = {"fastq": (".fastq", ".fq"), "fasta": (".fa", ".fasta", ".fna", ".fas")}  # the first when none


def _merge_or_rename(sources: Sequence[InputSummary], fastp_option: str = "") -> str:
    """The last two ways out for mates: merge each pair (fastp reads FASTQ only), or append /1 and /2."""
    fastq = all(source.format == "fastq" for source in sources)
    fastp = f"fastp --merge{fastp_option} or " if fastq else ""
    return (f"merge each pair into one read first (e.g. {fastp}bbmerge.sh), or append /1 and /2 to the ids "
            f"(each mate is then scored as a sequence of its own{'; 4-line FASTQ' if fastq else ''})")


def _mate_files_hint(one: InputSummary, two: InputSummary) -> str:
    """The ways out for two mate files, the last one as commands on them (into two new files, also
    when the mates' names differ only by compression: m.fq and m.fq.gz)."""
    taken: set[Path] = set()
    return (f"if one file is a copy of the other, give it once; for mates, run each mate file as its own sample "
            f"(its own command and --outdir), {_merge_or_rename([one, two])}: "
            f"{_awk_command(one, ONE_MATE_AWK[one.format].replace('MATE', '1'), taken)} and "
            f"{_awk_command(two, ONE_MATE_AWK[two.format].replace('MATE', '2'), taken)} (then give the two new files)")


def _interleaved_hint(source: InputSummary) -> str:
    """The ways out for an interleaved file, the last one as a command on it."""
    return (f"split the mates into two files (e.g. with BBTools: {_split_command(source)}) and run each as its "
            f"own sample, {_merge_or_rename([source], ' --interleaved_in')}: "
            f"{_awk_command(source, INTERLEAVED_AWK[source.format])} (then give the new file)")


DECOMPRESS = {"gzip": "gzip -dc", "bzip2": "bzip2 -dc", "xz": "xz -dc"}


def _named(source: InputSummary, ending: str, taken: set[Path] | None = None) -> tuple[Path, str]:
    """The input's path (a stream: a file name for it) and, shell-quoted, a new plain file beside it:
    its name without compression and format extensions, `ending` (numbered when a file of that name
    exists, or is in `taken`: names this hint gives already, to which it is added), then the input's
    format extension. A command of a hint never writes over a file."""
    extensions = EXTENSIONS[source.format]
    path = source.path if _rereadable(source.path) else Path("reads" + extensions[0])
    name = path.name
    for suffix in (".gz", ".bz2", ".xz"):
        name = name.removesuffix(suffix)
    extension = next((e for e in extensions if name.endswith(e)), extensions[0])
    taken = set() if taken is None else taken
    new = path.with_name(name.removesuffix(extension) + ending + extension)
    for number in itertools.count(2):
        if new not in taken and not os.path.lexists(new):
            break
        new = path.with_name(name.removesuffix(extension) + f"{ending}{number}" + extension)
    taken.add(new)
    return path, shell_word(str(new))


def _awk_command(source: InputSummary, program: str, taken: set[Path] | None = None) -> str:
    """A shell command running awk `program` over an input into a new plain file beside it."""
    path, out = _named(source, ".ids", taken)
    if source.unusual_blanks:
        program = (program.replace(r"[ \t]*/", rf"([ \t]|{UNUSUAL_BLANKS_AWK})*/")
                   .replace(r"[ \t\r]|$", rf"[ \t\r]|{UNUSUAL_BLANKS_AWK}|$"))
    given = shell_word(str(path) if path.is_absolute() else f"./{path}")  # awk reads `a=1.fa` as an assignment
    if source.compression in DECOMPRESS:
        return f"{DECOMPRESS[source.compression]} {given} | awk '{program}' > {out}"
    return f"awk '{program}' {given} > {out}"


def _split_command(source: InputSummary) -> str:
    """BBTools' command that splits an interleaved input into one file per mate, beside it, in its format."""
    taken: set[Path] = set()
    path, first = _named(source, "_R1", taken)
    return f"reformat.sh in={shell_word(str(path))} out1={first} out2={_named(source, '_R2', taken)[1]}"


def _where(path: Path, number: int) -> str:
    """Where record `number` of an input is: its line in a file (read again up to it), its number in a stream."""
    if not _rereadable(path):
        return f"{'standard input' if str(path) == STDIN else f'pipe {path}'} record {number:,}"
    stream = HashingTextStream(path)
    try:
        record = next(itertools.islice(read_records(stream), number - 1, None), None)
    finally:
        stream.close()
    return f"{path} line {record.line}" if record else f"{path} record {number:,}"


def _input_bytes(inputs: list[Path]) -> int | None:
    """The inputs' total size for progress; None (unknown) when one is a stream (a pipe, `-`)."""
    if not all(_rereadable(path) for path in inputs):
        return None
    total = 0
    for path in inputs:
        with suppress(OSError):  # reported properly when the file is opened
            total += path.stat().st_size
    return total


# --- the command ---------------------------------------------------------------------------------

def _rereadable(path: Path) -> bool:
    """True for a regular file (or a missing path, reported when opened); False for a stream."""
    if str(path) == STDIN:
        return False
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return True


def check_distinct_inputs(inputs: Sequence[Path]) -> None:
    """Each input once: the same file (by device and inode, so also a FIFO or a link to it) or
    standard input given twice would be read twice, or block forever on a stream (exit 3)."""
    seen: dict[tuple[int, int], Path] = {}
    for path in inputs:
        if str(path) == STDIN and sys.stdin is None:
            raise BadInputError("standard input ('-') is closed", "pipe the records into virnucpro, or give a file")
        try:
            info = os.stat(0 if str(path) == STDIN else path)
        except OSError:
            continue  # reported properly when the file is opened
        key = (info.st_dev, info.st_ino)
        if key in seen:
            raise _given_twice(seen[key], path)
        seen[key] = path


def refuse_inputs_inside(inputs: Sequence[Path], folders: Sequence[Path]) -> None:
    """Exit 3 for an input inside a folder the command works in (`folders`: its hidden staging or
    work folder in --outdir), where a file with one of the names it writes there is removed before
    it is read. Compared as real paths (links followed); standard input is in none."""
    places = [os.path.realpath(folder) for folder in folders]
    for path in inputs:
        real = None if str(path) == STDIN else os.path.realpath(path)
        for folder, place in zip(folders, places):
            if real is not None and real.startswith(place + os.sep):
                raise BadInputError(f"input {path} lies in {folder}, the folder this command keeps its work in "
                                    "(its files there may be removed)", "move the file out of that folder and give "
                                                                        "its new path")


def _given_twice(first: Path, second: Path) -> BadInputError:
    """The refusal of two inputs that are one file. A Path drops './' and doubled slashes, so
    `a.fa ./a.fa` arrive as one text twice: then the file is named once."""
    same = "" if first == second else f" (it is the same file as {first})"
    return BadInputError(f"input {second} is given twice{same}", "give each input once")


def check_inputs(inputs: Iterable[Path], work_folders: Sequence[Path] = ()) -> None:
    """Each input opens and its first records read as nucleotide FASTA/FASTQ (exit 3 otherwise): `run`
    checks this before it downloads or loads models, so a mistyped input costs seconds, not a download.
    None may lie in the command's `work_folders` (`refuse_inputs_inside`).

    Only regular files are read ahead: standard input, pipes, FIFOs and `<(zcat ...)` can be read
    once only, so they are checked as prepare reads them.
    """
    inputs = [Path(p) for p in inputs]
    check_distinct_inputs(inputs)
    refuse_inputs_inside(inputs, work_folders)
    for path in inputs:
        if _rereadable(path):
            _check_first_records(path)


def _check_first_records(path: Path) -> None:
    """The records in the first block of a file's text parse and hold nucleotide codes; the record
    the block cuts is checked as far as it goes, and an error the cut may cause (a FASTQ record
    without its quality) is left to prepare, which reads the whole file."""
    stream = HashingTextStream(path, limit=BLOCK)
    records = read_records(stream)
    try:
        while True:
            try:
                record = next(records, None)
            except BadInputError:
                if stream.cut_short:
                    return
                raise
            if record is None:
                return
            _refuse_bad_letters([record], path)
    finally:
        stream.close()


STAGING = ".virnucpro-partial"  # hidden work folder inside --outdir; only finished files leave it
# the relative paths prepare writes in it (the manifest's temporary file by its prefix): nothing else
# there is ever deleted
STAGING_FILES = work_pattern(rf"{re.escape(fmt.SEQUENCES)}|{re.escape(fmt.CHUNKS)}",
                             rf"\.?{re.escape(fmt.MANIFEST)}(?:\.[^/]*)?",
                             rf"{fmt.SHARD_DIR}(?:/{fmt.SHARD_PATTERN}(?:\.body)?)?", r"\.ids(?:/ids_[0-9]+\.bin)?")
OUTPUTS = (fmt.SEQUENCES, fmt.CHUNKS, fmt.SHARD_DIR, fmt.MANIFEST)  # the manifest last: it marks completion


def prepare(inputs: Iterable[Path], outdir: Path, chunk_size: int = 500, shard_size: int = 100_000,
            threads: int | None = None, published_in: Path | None = None) -> dict:
    """Run the prepare stage; returns the manifest. Nothing appears at `outdir` unless it succeeds.
    `published_in`: where the user will find the tables when not in `outdir` (`run` publishes them).

    The output folder is locked for the whole run and written only if empty, new or an earlier
    prepare output; work happens in a hidden sub-folder, so `--outdir .`, a symlink or a mount
    point work and the folder itself is never renamed or removed.
    """
    inputs = [Path(p) for p in inputs]
    outdir = Path(outdir)
    check_distinct_inputs(inputs)
    refuse_inputs_inside(inputs, [outdir / STAGING])
    with stop_keeps_nothing(), claim(outdir, "prepare", OUTPUTS) as output, output_errors(outdir):
        staging = fresh_work_folder(outdir / STAGING, STAGING_FILES, "prepare's staging folder")
        try:  # from here on, whatever fails, what prepare wrote into the staging folder goes
            with naming(staging):  # a full disk told from a full inode table before the clean-up
                (staging / fmt.SHARD_DIR).mkdir()
                manifest = _prepare_into(staging, inputs, chunk_size, shard_size, threads or available_cpus())
                output.publish(staging, OUTPUTS)
        finally:
            with stop_signals_deferred():  # once published, a stop waits until the staging folder is gone
                remove_written(staging, STAGING_FILES)
    _report(manifest, outdir, published_in)
    return manifest


def _prepare_into(work: Path, inputs: list[Path], chunk_size: int, shard_size: int, threads: int) -> dict:
    """Read every input once, write the tables and shards into `work`; returns the manifest.

    This process reads the inputs and writes the outputs; with more than one thread, groups of
    records are checked, chunked and translated by `threads` worker processes.
    """
    summaries = [InputSummary(path) for path in inputs]
    preparer = SamplePreparer(work, chunk_size, shard_size, workers=threads if threads > 1 else 0)
    try:
        with Progress("prepare", total=_input_bytes(inputs), unit="input bytes") as progress:
            for summary in summaries:
                stream = HashingTextStream(summary.path)
                read = 0
                for group in record_groups(stream):
                    preparer.submit(group, summary)
                    progress.advance(stream.bytes_read - read)
                    read = stream.bytes_read
                summary.sha256, summary.compression = stream.sha256.hexdigest(), stream.compression
                summary.format = stream.format
            shards = preparer.finish()
    except BaseException:
        preparer.close()
        raise
    for summary in summaries:
        if summary.records == 0:
            raise BadInputError(f"{summary.path} holds no records", "give a FASTA or FASTQ file with sequences")
    for repeated in preparer.registry.repeated_hash_batches():
        _name_duplicate(work / fmt.SEQUENCES, summaries, repeated)
    manifest = _manifest(chunk_size, summaries, shards, preparer.counts, work)
    fmt.write_json_atomic(work / fmt.MANIFEST, manifest)
    return manifest


def _manifest(chunk_size: int, summaries: list[InputSummary], shards: list[dict], counts: Counts,
              work: Path) -> dict:
    """The prepare folder's manifest: inputs, shards and tables with their checksums, and the counts."""
    inputs = [fmt.input_entry(unicode_text(str(s.path)), s.sha256, s.records) for s in summaries]
    return fmt.manifest(work, chunk_size, inputs, shards, vars(counts), working_directory())


def _report(manifest: dict, outdir: Path, published_in: Path | None) -> None:
    """The end-of-prepare summary, naming the folder the user will find: under `run` (`published_in`)
    the prepare folder is the run's work folder, removed when the run succeeds, so it is not named."""
    counts = manifest["counts"]
    if counts["empty_sequences"]:
        when = " when the run succeeds" if published_in else ""  # a run that fails later writes no table
        warn(f"{counts['empty_sequences']} empty record(s) skipped (listed as 'empty' in "
             f"{(published_in or outdir) / fmt.SEQUENCES}{when})")
    info(f"prepared {counts['sequences']:,} sequences ({counts['bases']:,} bp) -> {counts['chunks']:,} "
         f"chunks of {manifest['chunk_size']} -> {counts['orfs']:,} ORFs in {len(manifest['shards'])} "
         f"shard(s); {counts['chunks_without_orf']:,} chunks without ORF" + ("" if published_in else f" -> {outdir}"))
