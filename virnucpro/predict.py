"""The `predict` stage: embedding shards + prepare tables -> the original's two tables, our per-chunk
and per-sequence tables, an HTML report and run_info.json.

Shards are checked to belong to the prepared sample and to each other, ordered by the index stored
in them (never by argument order), and streamed one at a time through the classifier. Before any
output is written, every embedding row's id is compared with its prepared shard's record and every
count from input records to ORFs is reconciled: a stage file that disagrees is exit 5, never a
warning in the report of a successful run.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from virnucpro import __version__, h5shard
from virnucpro import prepared as fmt
from virnucpro.calls import (CHUNK_COLUMNS, CHUNKS, HIGHEST, HIGHEST_COLUMNS, RESULT_COLUMNS, RESULTS, RUN_INFO,
                             SEQUENCE_CALLS, SEQUENCE_COLUMNS, SEQUENCES, ChunkScore, SequenceTally, chunk_cells,
                             header_line, orf_chunk_id, orf_label, result_line, row_line)
from virnucpro.console import Progress, info, warn
from virnucpro.errors import (BadInputError, InconsistentInputsError, InterruptedByUser, ModelsError, NumericalError, UsageError,
                              VirnucproError, check_stop, naming, open_output, output_errors, path_mode, printable, resolved,
                              stop_keeps_nothing, stop_signals_deferred)
from virnucpro.models import store
from virnucpro.outdir import OutputFolder, claim, fresh_work_folder, remove_written, work_pattern
from virnucpro.seqio import unicode_text, working_directory

REPORT = "report.html"
OUTPUTS = (RESULTS, HIGHEST, CHUNKS, SEQUENCES, REPORT, RUN_INFO)  # the tables' names and columns: calls.py
STAGING = ".predict.partial"  # outputs are written here and moved into --outdir only when all exist
HIGHEST_RUNS = ".highest-runs"  # in the staging folder: sorted runs of the highest-score table
# the relative paths predict writes in its staging folder: nothing else there is ever deleted
STAGING_FILES = work_pattern(*(re.escape(name) for name in OUTPUTS),
                             rf"{re.escape(HIGHEST_RUNS)}(?:/run_[0-9]+\.tsv)?")
HISTOGRAM_BINS = 20
TOP_SEQUENCES = 25  # sequences listed in the report
HIGHEST_RUN_LINES = 1_000_000  # rows of the highest-score table sorted in memory at a time (~110 MB with 45-character ids)
HIGHEST_RUN_CHARS = 50_000_000  # and characters: ids may be 1,000 long (a run of them then ~60 MB, not 1 GB)
HIGHEST_MERGE_WAYS = 256  # runs merged at once (files open): more runs are merged into fewer first
PROGRESS_ROWS = 50_000  # ids checked between two updates of the progress shown
CLASSIFIER_ROWS = 2048  # small shards' rows joined per classifier call (27 MB of 3,328 features; a block stays whole)


# --- shard checks ----------------------------------------------------------------------------------

def order_shards(manifest: dict, paths: Sequence[Path],
                 prepared: Path | None = None) -> list[h5shard.EmbeddingShardInfo]:
    """Embedding shards in index order, after checking they are exactly this sample's shards (of the
    prepare folder `prepared`, when given, to tell which side of a row count is wrong)."""
    expected = {s["index"]: s for s in manifest["shards"]}
    by_index: dict[int, h5shard.EmbeddingShardInfo] = {}
    for path in h5shard.shard_files(paths):
        shard = h5shard.read_info(path)
        own = expected.get(shard.shard_index)
        if own is None or own["sha256"] != shard.shard_sha256 or shard.shard_of != len(expected):
            if prepared is not None:  # a manifest from elsewhere: the prepare folder's own files disagree with it
                fmt.check_files(prepared, manifest)
            raise InconsistentInputsError(f"{path} was embedded from a shard that is not part of this prepared "
                                          "sample (different input, chunk size or sharding)",
                                          "give the .h5 files made from this --prepared directory")
        if shard.shard_index in by_index:
            raise InconsistentInputsError(f"{path} repeats shard {shard.shard_index} "
                                          f"(also {by_index[shard.shard_index].path})",
                                          "give each embedding shard once")
        if shard.records != own["records"]:
            raise _rows_differ(shard, own, prepared)
        by_index[shard.shard_index] = shard
    missing = sorted(set(expected) - set(by_index))
    if missing:
        names = ", ".join(fmt.shard_name(i) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InconsistentInputsError(f"{len(missing)} embedding shard(s) missing: {names}",
                                      "embed every shard of the prepared sample and pass all .h5 files")
    shards = [by_index[i] for i in sorted(by_index)]
    _check_same_models(shards, manifest["chunk_size"])
    return shards


def _rows_differ(shard: h5shard.EmbeddingShardInfo, own: dict, prepared: Path | None) -> InconsistentInputsError:
    """Exit 5 for an embedding shard whose rows are not the records its prepare manifest gives its
    shard: blaming the manifest when the shard file itself holds as many records as the .h5 rows."""
    in_file = None
    if prepared is not None:
        with contextlib.suppress(VirnucproError, OSError):  # an unreadable shard is named by the later checks
            in_file = sum(1 for _ in fmt.read_shard(prepared / own["file"], links=False))
    if in_file is None or in_file == own["records"]:
        return InconsistentInputsError(f"{shard.path} has {shard.records:,} rows, its shard has {own['records']:,}",
                                       "rerun embed for this shard")
    return InconsistentInputsError(f"{prepared / fmt.MANIFEST} says {own['file']} holds {own['records']:,} records, "
                                   f"but it holds {in_file:,} ({shard.path} has {shard.records:,} rows)",
                                   fmt.REPAIR_HINT)


def _check_same_models(shards: list[h5shard.EmbeddingShardInfo], chunk_size: int) -> None:
    first = shards[0]
    for shard in shards:
        if shard.chunk_size != chunk_size:
            raise InconsistentInputsError(f"{shard.path} was made at chunk size {shard.chunk_size}, the "
                                          f"prepared sample at {chunk_size}", "rerun prepare and embed together")
        if store.model_checksums(shard.models) != store.model_checksums(first.models) or shard.widths != first.widths:
            raise InconsistentInputsError(f"{shard.path} was embedded with other models than {first.path}",
                                          "embed every shard with the same models directory")
    precisions = sorted({s.precision for s in shards})
    if len(precisions) > 1:
        warn(f"embedding shards were made at different precisions ({', '.join(precisions)}); scores may differ "
             "slightly between them")
    _warn_other_versions(shards)


def _warn_other_versions(shards: list[h5shard.EmbeddingShardInfo]) -> None:
    """Embeddings another virnucpro version wrote (in this format) are scored, said so: `embed` never
    reuses them as its own, since another version may compute other vectors."""
    older = [s for s in shards if s.virnucpro_version != __version__]
    if older:
        named = ", ".join(str(s.path) for s in older[:3]) + (f" and {len(older) - 3:,} more" if len(older) > 3 else "")
        versions = ", ".join(sorted({str(s.virnucpro_version) for s in older}))
        warn(f"{len(older):,} embedding shard(s) were written by virnucpro {versions}, this is {__version__}: "
             f"{named}; their vectors are scored as that version computed them (embed them again with this "
             "version to be sure)")


def _warn_prepared_by_another_version(prepared: Path, manifest: dict) -> None:
    """A prepare folder another virnucpro version wrote (in this format) is scored, said so: its ids
    and records passed that version's checks, which this one may make stricter (an older one let
    through ids that only look alike)."""
    if manifest["virnucpro_version"] != __version__:
        warn(f"{prepared} was prepared by virnucpro {manifest['virnucpro_version']}, this is {__version__}: its "
             "records are scored as that version read and checked them (prepare the input again with this "
             "version to be sure)")


# --- ids and counts from the input records to the embedding rows ----------------------------------

def check_stage_files(prepared: Path, manifest: dict, shards: list[h5shard.EmbeddingShardInfo]) -> None:
    """Every embedding row's id is its prepared shard's record id, in order, and every count from
    input records to ORFs reconciles (exit 5); streamed, so memory does not grow with the sample."""
    fmt.check_tables(prepared, manifest)
    walk = fmt.TableWalk(prepared, manifest).orf_chunks()
    entries = sorted(manifest["shards"], key=lambda entry: entry["index"])
    with Progress("predict: checking", total=manifest["counts"]["orfs"], unit="ORFs") as progress:
        for entry, shard in zip(entries, shards):
            fmt.check_shard_file(prepared, entry)
            _check_shard_ids(prepared, prepared / entry["file"], shard, walk, progress)
    for chunk_id, line in walk:
        raise InconsistentInputsError(f"the prepared tables do not reconcile: {prepared / fmt.CHUNKS} line {line} "
                                      f"gives chunk {chunk_id!r} more ORFs than the prepared shards hold",
                                      fmt.REPAIR_HINT)


def _check_shard_ids(prepared: Path, shard_file: Path, shard: h5shard.EmbeddingShardInfo, walk,
                     progress: Progress) -> None:
    """The ids of the HDF5 shard equal the records of `shard_file`, each an ORF of the next chunk
    `walk` gives."""
    records, h5 = (record[0] for record in fmt.read_shard(shard_file, links=False)), shard.path
    row, counted = -1, 0
    for row, (expected, found) in enumerate(itertools.zip_longest(records, h5shard.iter_ids(h5, seal=shard.seal))):
        if row - counted >= PROGRESS_ROWS:  # rows checked, counted a block at a time: one call per row costs
            progress.advance(row - counted)
            counted = row
        if expected != found:
            raise InconsistentInputsError(
                f"{h5}: /ids[{row}] is {_id_text(found)} but record {row + 1} of {shard_file} (line {row + 3}) "
                f"is {_id_text(expected)}", "embed this shard again from this prepared folder")
        chunk_id, line = next(walk, (None, None))
        if chunk_id is None or orf_chunk_id(expected) != chunk_id:
            where = f"line {line} gives an ORF of {fmt.shown(chunk_id)} here" if chunk_id else "lists no more ORFs"
            raise InconsistentInputsError(f"the prepared tables do not reconcile: ORF {fmt.shown(expected)} is record "
                                          f"{row + 1} of {shard_file} but {prepared / fmt.CHUNKS} {where}",
                                          fmt.REPAIR_HINT)
    progress.advance(row + 1 - counted)


def _id_text(value: str | None) -> str:
    """An id as a message shows it: cut to 60 characters (a shard's id may be any length)."""
    return "missing (no more rows)" if value is None else fmt.shown(value)


# --- per-ORF scores and per-chunk maxima, streamed in input order ----------------------------------

@dataclass
class ScoreHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)

    def add(self, scores: np.ndarray) -> None:
        bins = np.minimum((scores * HISTOGRAM_BINS).astype(int), HISTOGRAM_BINS - 1)
        for b, n in zip(*np.unique(bins, return_counts=True)):
            self.counts[int(b)] += int(n)


def _score_text(value: np.float32) -> str:
    """The original writes `str()` of numpy float32 values."""
    return str(np.float32(value))


def score_orfs(shards: list[h5shard.EmbeddingShardInfo], classifier, outdir: Path, histogram: ScoreHistogram,
               orfs: int) -> Iterator[tuple[str, float, float]]:
    """Write prediction_results.txt block by block, yielding (orf_id, virus, others) per ORF in order;
    `orfs`, the ORFs expected, is the progress shown's total.

    The scores yielded are the parsed text values, as the original re-reads its table with pandas.
    """
    from virnucpro.classifier import predict_proba

    with open_output(outdir / RESULTS, "w", encoding="utf-8", newline="\n") as out, \
            Progress("predict: scoring", total=orfs, unit="ORFs") as progress:
        out.write(header_line(RESULT_COLUMNS))
        for ids, features in _classifier_batches(shards, CLASSIFIER_ROWS):
            probabilities = predict_proba(classifier, features)
            histogram.add(probabilities[:, 1])
            lines, scores = _result_lines(ids, probabilities)
            out.write("".join(lines))
            yield from scores
            progress.advance(len(ids))


def _classifier_batches(shards: list[h5shard.EmbeddingShardInfo], rows: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, features) of every shard in order, each block checked finite; consecutive blocks (small
    shards) joined while they fit in `rows` rows, a larger block passed on whole. Each classifier call
    pays a sync of torch's intra-op threads: one per 75-ORF shard cost ~35 ms on a busy CPU."""
    ids: list[str] = []
    blocks: list[np.ndarray] = []
    for shard in shards:
        for block_ids, features in h5shard.iter_rows(shard.path, seal=shard.seal):
            _check_finite(features, block_ids, shard.path)
            if ids and len(ids) + len(block_ids) > rows:
                yield ids, np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
                ids, blocks = [], []
            ids.extend(block_ids)
            blocks.append(features)
    if ids:
        yield ids, np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def _result_lines(ids: Sequence[str], probabilities: np.ndarray) -> tuple[list[str], list[tuple[str, float, float]]]:
    """prediction_results.txt lines of one block, and each ORF's (id, virus, others) as written."""
    lines, scores = [], []
    for orf_id, (others, virus) in zip(ids, probabilities):
        text_others, text_virus = _score_text(others), _score_text(virus)
        lines.append(result_line(orf_id, orf_label(virus, others), text_others, text_virus))
        scores.append((orf_id, float(text_virus), float(text_others)))
    return lines, scores


def _check_finite(features: np.ndarray, ids: Sequence[str], path: Path) -> None:
    """NaN/Inf features name the shard and the first record that has them (exit 9)."""
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise NumericalError(f"{path} holds NaN/Inf features for {ids[bad]} ({int((~finite).sum()):,} "
                             "record(s) in this block)", "embed that shard again (a second failure points at "
                             "the GPU or the model files: `virnucpro models check`)")


def chunk_scores(orfs: Iterable[tuple[str, float, float]]) -> Iterator[ChunkScore]:
    """Each chunk's ChunkScore once its last ORF is seen (a chunk's ORFs are consecutive: checked
    against the prepared tables before any output is written)."""
    current: ChunkScore | None = None
    for orf_id, virus, others in orfs:
        chunk_id = orf_chunk_id(orf_id)
        if chunk_id is None:  # check_stage_files refuses such ids before any score is computed
            raise ValueError(f"ORF id {orf_id!r} does not end with a frame label")
        if current is not None and current.chunk_id == chunk_id:
            current.add(orf_id, virus, others)
            continue
        if current is not None:
            yield current
        current = ChunkScore(chunk_id, orf_id, virus, others)
    if current is not None:
        yield current


class HighestTable:
    """The original's per-chunk table, sorted by chunk id as pandas groupby sorts it (as strings).

    Memory stays bounded: rows are sorted in runs of `run_lines`, each spilled to a file in `folder`,
    and the runs are merged when the table is written. Rows are kept as their written lines, which
    sort as their ids do: the tab after the id comes before any character an id may hold.
    """

    def __init__(self, folder: Path, run_lines: int | None = None, run_chars: int | None = None):
        self.folder, self.run_lines = folder, run_lines or HIGHEST_RUN_LINES
        self.run_chars = run_chars or HIGHEST_RUN_CHARS
        self.pending: list[str] = []
        self.pending_chars = 0
        self.runs: list[Path] = []
        self.made = 0  # run files made, for the next one's name

    def add(self, chunk: ChunkScore) -> None:
        """One chunk's row; a full run (in rows or in characters) goes to disk."""
        line = row_line(HIGHEST_COLUMNS, {"Modified_ID": chunk.chunk_id, "Is_Virus": str(chunk.is_virus)})
        self.pending.append(line)
        self.pending_chars += len(line)
        if len(self.pending) >= self.run_lines or self.pending_chars >= self.run_chars:
            self._spill()

    def _new_run(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.made += 1
        return self.folder / f"run_{self.made - 1:05d}.tsv"

    def _spill(self) -> None:
        run = self._new_run()
        self.pending.sort()
        with open_output(run, "w", encoding="utf-8", newline="\n") as out:
            out.writelines(self.pending)
        self.runs.append(run)
        self.pending, self.pending_chars = [], 0

    @staticmethod
    def _merge(runs: list[Path], out) -> None:
        """The rows of the sorted `runs` written to the open file `out` in order (each run open meanwhile)."""
        with contextlib.ExitStack() as stack:
            out.writelines(heapq.merge(*[stack.enter_context(open(run, encoding="utf-8", newline="\n")) for run in runs]))

    def write(self, path: Path) -> None:
        """Merge the runs into `path`, then remove them. Past HIGHEST_MERGE_WAYS runs (256 million rows,
        or 12 GB of ids), the first ones are merged into one first: never more files open than that."""
        if self.pending:
            self._spill()
        while len(self.runs) > HIGHEST_MERGE_WAYS:
            first, merged = self.runs[:HIGHEST_MERGE_WAYS], self._new_run()
            with open_output(merged, "w", encoding="utf-8", newline="\n") as out:
                self._merge(first, out)
            for run in first:
                run.unlink()
            self.runs = self.runs[HIGHEST_MERGE_WAYS:] + [merged]
        with open_output(path, "w", encoding="utf-8", newline="\n") as out:
            out.write(header_line(HIGHEST_COLUMNS))
            self._merge(self.runs, out)
        shutil.rmtree(self.folder, ignore_errors=True)


# --- our tables ----------------------------------------------------------------------------------

def sequence_line(seq: dict[str, str], tally: SequenceTally, call: str) -> str:
    """One sequence's line of our sequences.tsv: its prepared row's cells, its counts and its call."""
    return row_line(SEQUENCE_COLUMNS, {**seq, **tally.cells(), "call": call})


class _NextChunk:
    """The chunk-score stream, taken one chunk at a time when the chunk table reaches that chunk."""

    def __init__(self, scores: Iterable[ChunkScore]):
        self._scores = iter(scores)
        self.waiting = next(self._scores, None)
        self.taken = 0

    def take(self, chunk_id: str) -> ChunkScore | None:
        """The score of `chunk_id` when it is the next scored chunk, else None (a chunk without ORF)."""
        if self.waiting is None or self.waiting.chunk_id != chunk_id:
            return None
        found, self.waiting = self.waiting, next(self._scores, None)
        self.taken += 1
        return found


@dataclass
class _Summary:
    """Calls per class, the 25 best-scored sequences for the report, chunks scored."""

    calls: dict = field(default_factory=lambda: dict.fromkeys(SEQUENCE_CALLS, 0))
    top: list = field(default_factory=list)
    chunks_scored: int = 0

    def add(self, seq: dict[str, str], tally: SequenceTally, call: str) -> None:
        self.calls[call] += 1
        if tally.scored:
            self.top.append((tally.virus / tally.scored, tally.top, seq["sequence_id"], int(seq["length"]),
                             int(seq["n_chunks"]), tally.virus, tally.scored, call))
            if len(self.top) > 4 * TOP_SEQUENCES:
                self._trim()

    def _trim(self) -> None:
        self.top = sorted(self.top, key=lambda t: (-t[0], -t[1], t[2]))[:TOP_SEQUENCES]

    def as_dict(self) -> dict:
        self._trim()
        return {"calls": self.calls, "top": self.top}


def write_tables(prepared: Path, tables: dict[str, str], scores: Iterable[ChunkScore], outdir: Path,
                 threshold: float) -> _Summary:
    """chunks.tsv, sequences.tsv and the highest-score table in one pass: the prepared sequence and
    chunk tables and the chunk scores all come in input order, so memory stays O(block). `tables`:
    the manifest's sha256 of each prepared table, which what is read here must have (exit 5)."""
    try:
        return _write_tables(prepared, tables, scores, outdir, threshold)
    except (KeyError, ValueError):  # undecodable, a column missing, a number that is none
        fmt.check_tables(prepared, {"tables": tables})  # a table changed while read is the cause, exit 5
        raise


def _write_tables(prepared: Path, tables: dict[str, str], scores: Iterable[ChunkScore], outdir: Path,
                  threshold: float) -> _Summary:
    """`write_tables`' one pass over the prepared tables and the scores."""
    summary, chunk_rows = _Summary(), fmt.read_table(prepared / fmt.CHUNKS, tables[fmt.CHUNKS])
    scored, highest = _NextChunk(scores), HighestTable(outdir / HIGHEST_RUNS)
    with open_output(outdir / CHUNKS, "w", encoding="utf-8", newline="\n") as chunks_out, \
            open_output(outdir / SEQUENCES, "w", encoding="utf-8", newline="\n") as sequences_out:
        chunks_out.write(header_line(CHUNK_COLUMNS))
        sequences_out.write(header_line(SEQUENCE_COLUMNS))
        for seq in fmt.read_table(prepared / fmt.SEQUENCES, tables[fmt.SEQUENCES]):
            tally = SequenceTally()
            for row in itertools.islice(chunk_rows, int(seq["n_chunks"])):
                score = _chunk_of(seq, row, scored, prepared)
                tally.add(score)
                if score is not None:
                    highest.add(score)
                chunks_out.write(_chunk_row(row, score))
            call = tally.call(threshold, seq["status"] == "empty")
            summary.add(seq, tally, call)
            sequences_out.write(sequence_line(seq, tally, call))
    _check_all_used(prepared, chunk_rows, scored)
    highest.write(outdir / HIGHEST)
    summary.chunks_scored = scored.taken
    return summary


def _chunk_of(seq: dict[str, str], row: dict[str, str], scored: _NextChunk, prepared: Path) -> ChunkScore | None:
    """The score of chunk `row` (None: no ORF), after checking the row belongs to sequence `seq`."""
    if row["sequence_id"] != seq["sequence_id"]:
        raise InconsistentInputsError(f"the prepared tables do not reconcile: chunk {row['chunk_id']!r} of "
                                      f"{prepared / fmt.CHUNKS} belongs to {row['sequence_id']!r}, expected a "
                                      f"chunk of {seq['sequence_id']!r}", fmt.REPAIR_HINT)
    return scored.take(row["chunk_id"])


def _chunk_row(row: dict[str, str], score: ChunkScore | None) -> str:
    """One line of our chunks.tsv: its prepared row's cells and those its score gives."""
    return row_line(CHUNK_COLUMNS, {**row, **chunk_cells(score)})


def _check_all_used(prepared: Path, chunk_rows: Iterator[dict[str, str]], scored: _NextChunk) -> None:
    """Every chunk row belongs to a listed sequence and every scored chunk to a chunk row (exit 5)."""
    extra = next(chunk_rows, None)
    if extra is not None:
        raise InconsistentInputsError(f"the prepared tables do not reconcile: chunk {extra['chunk_id']!r} of "
                                      f"{prepared / fmt.CHUNKS} belongs to no sequence of "
                                      f"{prepared / fmt.SEQUENCES}", fmt.REPAIR_HINT)
    if scored.waiting is not None:
        raise InconsistentInputsError(f"ORFs of chunk {scored.waiting.chunk_id!r} were scored but "
                                      f"{prepared / fmt.CHUNKS} does not list that chunk there", fmt.REPAIR_HINT)


# --- the command ------------------------------------------------------------------------------------

def predict(prepared: Path, embeddings: Sequence[Path], outdir: Path, classifier: Path | None = None,
            models: Path | None = None, threshold: float = 0.5, stage_seconds: dict | None = None,
            output: OutputFolder | None = None, input_names: Sequence[str] | None = None,
            loaded_classifier=None) -> Path:
    """Run the predict stage; every output file is written under `outdir` (`run` passes its own
    claimed folder as `output`, the input paths of its command line as `input_names`, and the
    classifier it checked at its start, loaded from `classifier`, as `loaded_classifier`)."""
    started = time.monotonic()
    prepared, outdir = Path(prepared), Path(outdir)
    threshold = float(threshold) + 0.0  # `--threshold -0` is 0.0, not "-0.0" in the report and run_info
    _refuse_prepared_as_outdir(prepared, outdir)
    standalone = output is None  # `run` says itself what it replaces
    # a stop leaves no checkpoint to resume from (an earlier set of outputs stays as it was)
    with stop_keeps_nothing(), _claimed(outdir, output) as output:  # locked first: never two commands in it
        inputs = _checked_inputs(prepared, embeddings, classifier, models, loaded_classifier)
        if standalone and output.recorded:
            _say_earlier_results_replaced(outdir)
        if input_names is not None:
            inputs.manifest = _inputs_named(inputs.manifest, input_names)
        with output_errors(outdir):
            staging = fresh_work_folder(outdir / STAGING, STAGING_FILES, "predict's staging folder")
            try:
                with naming(staging):  # a full disk told from a full inode table before the clean-up
                    n_chunks, n_orfs, calls = _write_outputs(inputs, prepared, staging, threshold, started,
                                                             stage_seconds)
                    output.publish(staging, OUTPUTS)  # run_info.json last: its presence marks a complete set
            finally:
                with stop_signals_deferred():  # once published, a stop waits until the staging folder is gone
                    remove_written(staging, STAGING_FILES)
    info(f"predicted {n_orfs:,} ORFs in {n_chunks:,} chunks; sequences: {calls['virus']:,} virus, "
         f"{calls['others']:,} others, {calls['no_orf']:,} without ORF, {calls['empty']:,} empty -> {outdir}")
    return outdir


def _say_earlier_results_replaced(outdir: Path) -> None:
    """Say that the results an earlier command wrote in `outdir` are replaced when this predict
    succeeds: when it finished, and which version wrote them where it is another one."""
    try:
        earlier = json.loads((outdir / RUN_INFO).read_text("utf-8"))
        version, finished = earlier.get("virnucpro_version"), earlier.get("finished")
    except (OSError, ValueError, AttributeError):  # none, or one that cannot be read: said without details
        version = finished = None
    by = f" of virnucpro {printable(str(version))}" if version is not None and version != __version__ else ""
    when = f" (finished {printable(finished)})" if isinstance(finished, str) else ""
    info(f"replacing the earlier results{by} in {outdir}{when} when this predict succeeds")


@dataclass
class _Inputs:
    """What predict reads, every part already checked against the others."""

    manifest: dict
    shards: list
    model: object
    classifier: Path
    tiny: bool


def _inputs_named(manifest: dict, names: Sequence[str]) -> dict:
    """The manifest with its inputs under `names`: `run` reuses a prepare of the same files by
    content, maybe given under other paths (and from another folder), and its outputs name the files
    of its own command, relative to its own folder."""
    if len(names) != len(manifest["inputs"]):
        raise ValueError(f"{len(names)} input names for {len(manifest['inputs'])} prepared inputs")
    return {**manifest, "working_directory": working_directory(),
            "inputs": [{**entry, "path": name} for entry, name in zip(manifest["inputs"], names)]}


def _refuse_prepared_as_outdir(prepared: Path, outdir: Path) -> None:
    """Exit 3 when predict would write over the tables it reads."""
    if resolved(outdir, "--outdir") == resolved(prepared, "--prepared"):
        raise BadInputError(f"--outdir {outdir} is the --prepared directory: its chunks.tsv and "
                            "sequences.tsv would be overwritten while being read",
                            "choose another --outdir")


def _checked_inputs(prepared: Path, embeddings: Sequence[Path], classifier: Path | None,
                    models: Path | None, loaded=None) -> _Inputs:
    """The prepared manifest, the HDF5 shards in order and the classifier (`loaded` when given),
    cross-checked (exit 3-5)."""
    from virnucpro.classifier import load_classifier

    check_stop()  # a stop during torch's first import is only noted (torch catches every Exception there)
    manifest = fmt.load_manifest(prepared)
    _warn_prepared_by_another_version(prepared, manifest)
    require_own_classifier(manifest["chunk_size"], classifier)
    shards = order_shards(manifest, embeddings, prepared)
    tiny, given = any(s.tiny for s in shards), classifier is not None
    if classifier is None:
        model_set = _located_models(models, manifest["chunk_size"], tiny)
        check_embedding_models(shards, model_set.directory)
        classifier = model_set.classifier(manifest["chunk_size"])
        tiny = tiny or model_set.tiny
    elif loaded is None:  # `run` checked the classifier it loaded against its chunk size, before any work
        refuse_classifier_unlike_its_record(Path(classifier), models)
        refuse_classifier_of_other_chunk_size(Path(classifier), manifest["chunk_size"], models)
    model = loaded if loaded is not None else load_classifier(Path(classifier))
    check_classifier_fits(model, Path(classifier), shards[0].widths)
    if given:
        check_classifier_encoders(Path(classifier), models, shard_encoders(shards[0]),
                                  f"{shards[0].path} was embedded with", lambda where: "predict with the classifier "
                                  f"made for the models these shards were embedded with, or embed them again with {where}")
    check_stage_files(prepared, manifest, shards)
    return _Inputs(manifest, shards, model, Path(classifier), tiny)


def _located_models(models: Path | None, chunk_size: int, tiny_embeddings: bool):
    """The models folder holding the classifier for `chunk_size` (exit 4 when it is missing). For
    embeddings made with tiny test models, the hint names the folder of those tiny models (unless
    --models is one, whose own hint rewrites it): the published classifier it would otherwise
    suggest downloading never fits such embeddings, whether --models was given or not."""
    try:
        return store.locate(models, roles=(f"classifier_{chunk_size}",))
    except ModelsError as exc:
        if not tiny_embeddings or (models is not None and store.is_tiny_folder(Path(models))):
            raise
        raise ModelsError(f"{exc.message}; these embeddings were made with tiny test models",
                          "give the folder of those tiny models with --models DIR (or VIRNUCPRO_MODELS)") from None


def _write_outputs(inputs: _Inputs, prepared: Path, staging: Path, threshold: float, started: float,
                   stage_seconds: dict | None) -> tuple[int, int, dict]:
    """Every output file into `staging`; returns the chunks and ORFs scored and the calls per class."""
    from virnucpro.report import check_reconciles, write_report

    histogram = ScoreHistogram()
    expected = inputs.manifest["counts"]["orfs"]
    with _closed(score_orfs(inputs.shards, inputs.model, staging, histogram, expected)) as orfs:
        summary = write_tables(prepared, inputs.manifest["tables"], chunk_scores(orfs), staging, threshold)
    rows = sum(histogram.counts)
    check_reconciles(inputs.manifest["counts"], rows, summary.chunks_scored, summary.calls)  # exit 5 otherwise
    seconds = dict(stage_seconds or {})
    seconds["predict"] = round(time.monotonic() - started, 3)
    run_info = _run_info(inputs.manifest, inputs.shards, inputs.classifier, inputs.model.sha256, threshold,
                         inputs.tiny, seconds)
    write_report(staging / REPORT, manifest=inputs.manifest, rows=rows, n_chunks_scored=summary.chunks_scored,
                 summary=summary.as_dict(), histogram=histogram.counts, run_info=run_info,
                 name=Path(os.path.abspath(staging.parent)).name)  # the output folder's (the pipeline's: the sample)
    with naming(staging / RUN_INFO):
        (staging / RUN_INFO).write_text(json.dumps(run_info, indent=2) + "\n")
    return summary.chunks_scored, rows, summary.calls


@contextlib.contextmanager
def _closed(orfs: Iterator[tuple[str, float, float]]) -> Iterator[Iterator[tuple[str, float, float]]]:
    """`score_orfs` closed when the block ends, not whenever it is garbage-collected: when another
    output fails (a full disk), closing its still-open results file fails too, and at collection
    that failure would print a traceback ("Exception ignored in ...") after the clear message. On a
    failure the first error is the one reported; closing then only releases the file."""
    try:
        yield orfs
    except BaseException:
        with contextlib.suppress(OSError):
            orfs.close()
        raise
    orfs.close()


def _claimed(outdir: Path, output: OutputFolder | None):
    """The caller's claimed output folder, or this command's own claim on `--outdir`."""
    return contextlib.nullcontext(output) if output is not None else claim(outdir, "predict", OUTPUTS)


def refuse_classifier_unlike_its_record(path: Path, models: Path | None) -> None:
    """A `--classifier` that a models manifest records by its name (the manifest of its own folder, of
    the folder a link to it leads into, or of --models, which may record it in a subfolder), but whose
    bytes are not the ones recorded, is exit 4, as it is through --models: a model file damaged or
    replaced after it was downloaded. Under a name no manifest records, it is the user's own."""
    mode = path_mode(path, ModelsError)
    if mode is None or not S_ISREG(mode):
        return  # a missing file is load_classifier's error
    for folder, name in _recorded_names(path, models):
        role, recorded = _recorded_classifier_checksum(folder, name)
        digest = store.sha256_file(path) if recorded else None
        if recorded and digest != recorded:
            raise ModelsError(f"classifier {path} has sha256 {digest}, but the manifest of {folder} records {recorded} "
                              f"for {name} (a corrupt or replaced file)",
                              f"{store.refetch_hint(folder, role)}; keep a classifier of your own under a name "
                              "the manifest does not record")


def _recorded_names(path: Path, models: Path | None) -> list[tuple[Path, str]]:
    """(models folder, the classifier's name relative to it) for each folder that may record the
    classifier at `path`: the file as named, and the file a link leads to."""
    named, real = Path(os.path.abspath(path)), Path(os.path.realpath(path))
    pairs = []
    for folder in _models_folders(models, path):
        folder = Path(os.path.abspath(folder))
        pairs += [(folder, file.relative_to(folder).as_posix()) for file in (named, real) if file.is_relative_to(folder)]
    return list(dict.fromkeys(pairs))


def _recorded_classifier_checksum(folder: Path, name: str) -> tuple[str | None, str | None]:
    """(role, sha256 lower case) the models manifest of `folder` records for the classifier file
    `name`; (None, None) where it records none. A manifest this user cannot read is exit 4 naming its
    owner (it may record the classifier); one that is no models manifest records nothing here."""
    from virnucpro.models import pins

    manifest_path = folder / store.MANIFEST
    if os.path.isfile(manifest_path):
        with store.reading(manifest_path), open(manifest_path, "rb"):
            pass
    try:
        manifest = store.read_manifest(folder) or {"models": {}}
    except InterruptedByUser:
        raise
    except VirnucproError:
        return None, None
    for role in (f"classifier_{size}" for size in pins.CLASSIFIER_CHUNK_SIZES):
        recorded = manifest["models"].get(role, {}).get("sha256", {}).get(name)
        if recorded:
            return role, str(recorded).lower()
    return None, None


def refuse_classifier_of_other_chunk_size(path: Path, chunk_size: int, models: Path | None) -> None:
    """A `--classifier` known to be made for the other standard chunk size (the published file, or the
    models folder's own) is exit 5: the features fit either way, so nothing else would tell; at a
    custom chunk size, one known to be made for a standard size is taken, said so. Asked before the
    classifier is loaded: a folder on its way that cannot be entered is exit 4 here (`path_mode`),
    where the loader's own checks took it for a failed write."""
    from virnucpro.models import pins

    mode = path_mode(path, ModelsError)
    if mode is None or not S_ISREG(mode):
        return  # a missing file is load_classifier's error
    made_for = _known_chunk_size(path, chunk_size, models)
    if made_for is None or made_for == chunk_size:
        return
    if chunk_size not in pins.CLASSIFIER_CHUNK_SIZES:
        warn(f"classifier {path} is the one made for {made_for}-bp chunks, and the prepared sample was cut into "
             f"{chunk_size}-bp chunks: its scores are of a model trained on chunks of another length")
        return
    raise InconsistentInputsError(f"classifier {path} is the one made for {made_for}-bp chunks, but the "
                                  f"prepared sample was cut into {chunk_size}-bp chunks",
                                  f"use the {chunk_size}-bp classifier "
                                  f"({_twin(path, made_for, chunk_size, _models_folders(models, path))}), "
                                  f"or cut the sample into {made_for}-bp chunks (--chunk-size {made_for} of "
                                  "prepare, or of run)")


def _known_chunk_size(path: Path, chunk_size: int, models: Path | None) -> int | None:
    """The standard chunk size the classifier at `path` is known to be made for (a published file, or
    one a models folder's manifest records), `chunk_size` first; None when it is none of them."""
    from virnucpro.models import pins, store

    digest, blob = store.sha256_file(path, git_sha1=True)
    for size in sorted(pins.CLASSIFIER_CHUNK_SIZES, key=lambda size: size != chunk_size):
        role = f"classifier_{size}"
        known = {spec.git_sha1 for spec in pins.SOURCES[role].files}
        for folder in _models_folders(models, path):
            known |= _manifest_checksums(folder, role)
        if digest in known or blob in known:
            return size
    return None


def _twin(classifier: Path, chunk_size: int, wanted: int, folders: list[Path]) -> str:
    """The classifier for `wanted`-bp chunks where the user will look for it: beside `classifier`
    (made for `chunk_size`) and named as that one is, else a published or tiny one in the models
    folders; else its published name."""
    beside = classifier.with_name(classifier.name.replace(str(chunk_size), str(wanted), 1))
    candidates = [beside] if beside != classifier else []
    candidates += [folder / f"{wanted}_model{tiny}.pth" for folder in folders for tiny in ("", "_tiny")]
    return next((str(path) for path in candidates if os.path.isfile(path)), f"{wanted}_model.pth")


def require_own_classifier(chunk_size: int, classifier: Path | None, why: str = "the sample was prepared") -> None:
    """Only the chunk sizes of the published classifiers (300, 500) can do without `--classifier`;
    another one needs the user's own (exit 2)."""
    from virnucpro.models.pins import CLASSIFIER_CHUNK_SIZES

    if classifier is None and chunk_size not in CLASSIFIER_CHUNK_SIZES:
        raise UsageError(f"{why} at chunk size {chunk_size}; the published classifiers are for "
                         f"{' and '.join(map(str, CLASSIFIER_CHUNK_SIZES))} only",
                         "give your classifier for this chunk size with --classifier")


def _models_folders(models: Path | None, classifier: Path) -> list[Path]:
    """Where a manifest may name the classifier: its own folder (and, when it is reached through a
    link, the folder the link leads into) and the models folder in use."""
    folders = list(dict.fromkeys([classifier.parent, Path(os.path.realpath(classifier)).parent]))
    with contextlib.suppress(VirnucproError):
        folders.append(store.models_dir(models))
    return folders


def _manifest_checksums(folder: Path, role: str) -> set[str]:
    """The sha256 of `role`'s files in the models manifest of `folder`, lower case as `sha256_file`
    gives them (the manifest may hold upper case); none without a sound one."""
    try:
        manifest = store.read_manifest(folder) or {"models": {}}
    except InterruptedByUser:
        raise
    except VirnucproError:
        return set()
    return {str(digest).lower() for digest in manifest["models"].get(role, {}).get("sha256", {}).values()}


def check_embedding_models(shards: list[h5shard.EmbeddingShardInfo], directory: Path) -> None:
    """The encoders the shards were embedded with are the ones the manifest of the models folder
    `directory` records (exit 5 otherwise): results are never made from embeddings of models the
    folder no longer holds (a file replaced in place; in the pipeline, EMBED results a -resume kept).
    Compared from the manifest's records only: the pipeline's PREDICT has no model file to hash. A
    role the manifest cannot tell (no manifest, no entry, a hand-staged folder, a file without a
    recorded sha256), or that the shards do not name, is not checked."""
    first = shards[0]  # every shard was checked to name the same models (`_check_same_models`)
    for role in store.ENCODER_ROLES:
        recorded = store.recorded_identity(directory, role)
        made = (first.models.get(role) or {}).get("sha256")
        if recorded is not None and made is not None and made.lower() != recorded:
            raise InconsistentInputsError(
                f"{first.path} was embedded with another {role} model than the models folder {directory} holds: "
                f"the shard records {role} {made[:12]}..., the folder's {store.MANIFEST} records {recorded[:12]}...",
                "embed the shards again with these models (or predict with --models set to the folder they were "
                "made with); in the Nextflow pipeline, a -resume kept embeddings made before the models changed: "
                "run without -resume")


def check_classifier_encoders(classifier: Path, models: Path | None, made: dict, embedded: str,
                              fix: Callable[[str], str]) -> None:
    """A classifier known to belong to other encoders than the embeddings' (`made`: identity by role,
    None where unknown) is exit 5: the features fit either way, and it would score features of models
    it was never trained on. Known: a published classifier (the published encoders), or one the
    manifest of its own folder or of the models folder records (that folder's encoders). One recorded
    nowhere (the user's own) is taken as it is; so is a role either side cannot tell. `embedded`:
    what the message says made the embeddings, "X was embedded with"; `fix`: the hint, given `where`."""
    known = _encoders_of_classifier(classifier, models)
    if not known or any(not _other_encoders(made, recorded) for _, recorded in known):
        return
    where, recorded = known[0]
    role = _other_encoders(made, recorded)[0]
    raise InconsistentInputsError(f"classifier {classifier} belongs to {where}, but {embedded} another {role} model "
                                  f"({made[role][:12]}...; {where}: {recorded[role][:12]}...)",
                                  fix(where))


def shard_encoders(shard: h5shard.EmbeddingShardInfo) -> dict:
    """The encoder identity by role an embedding shard records, None where it records none."""
    return {role: ((shard.models.get(role) or {}).get("sha256") or "").lower() or None for role in store.ENCODER_ROLES}


def _other_encoders(made: dict, recorded: dict) -> list[str]:
    """The roles whose identity the shards (`made`) and a model set (`recorded`) both tell, and differ."""
    return [role for role, identity in made.items() if identity and recorded.get(role) and identity != recorded[role]]


def _encoders_of_classifier(classifier: Path, models: Path | None) -> list[tuple[str, dict]]:
    """(where, encoder identity by role) for each model set the classifier file is known to be part of."""
    from virnucpro.models import pins

    mode = path_mode(classifier, ModelsError)
    if mode is None or not S_ISREG(mode):
        return []  # load_classifier said what is wrong with it
    digest, blob = store.sha256_file(classifier, git_sha1=True)
    roles = [f"classifier_{size}" for size in pins.CLASSIFIER_CHUNK_SIZES]
    known = []
    if any(blob == spec.git_sha1 for role in roles for spec in pins.SOURCES[role].files):
        known.append(("the published models", {role: store.published_identity(role) for role in store.ENCODER_ROLES}))
    for folder in dict.fromkeys(_models_folders(models, classifier)):
        if any(digest in _manifest_checksums(folder, role) for role in roles):
            known.append((f"the models folder {folder}", {role: _recorded_identity(folder, role)
                                                          for role in store.ENCODER_ROLES}))
    return known


def _recorded_identity(folder: Path, role: str) -> str | None:
    """`store.recorded_identity`, None for a manifest that cannot be read (as `_manifest_checksums`)."""
    try:
        return store.recorded_identity(folder, role)
    except InterruptedByUser:
        raise
    except VirnucproError:
        return None


def check_classifier_fits(model, path: Path, widths: tuple[int, int]) -> None:
    """The classifier takes exactly the DNABERT-S + ESM-2 features these embeddings have (exit 5)."""
    if model.input_dim != sum(widths):
        raise InconsistentInputsError(f"classifier {path} takes {model.input_dim} features but the "
                                      f"embeddings have {sum(widths)} ({widths[0]} DNABERT-S + "
                                      f"{widths[1]} ESM-2)",
                                      "use the classifier that belongs to the embedding models")


def _software() -> dict:
    """The versions that computed the scores here (the embeddings' torch is the one their task had:
    the pipeline's versions file records it), and the platform."""
    import platform

    import h5py
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "platform": platform.platform(), "virnucpro_code_sha256": code_sha256()}


def code_sha256(package: Path | None = None) -> str:
    """sha256 of virnucpro's own source (each module's path and bytes, in path order; `package`: the
    package folder, this one by default): it tells two code states apart where the version string
    cannot (a development version spans many commits)."""
    import hashlib

    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py"), key=lambda found: found.relative_to(package).as_posix()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _shard_layout(manifest: dict) -> dict:
    """How prepare cut the ORFs into shards (every shard but the last holds `records_per_shard`):
    `prepare --shard-size` with that number lays them out again, and a layout moves the scores' last
    digits (each shard is batched on its own)."""
    shards = manifest["shards"]
    return {"shards": len(shards), "records_per_shard": max((entry["records"] for entry in shards), default=0)}


def _as_text(path: str | None) -> str | None:
    """A path read from a stage file, as text that can be written as UTF-8 (None stays None)."""
    return None if path is None else unicode_text(path)


def _run_info(manifest: dict, shards: list, classifier: Path, classifier_sha256: str, threshold: float, tiny: bool,
              seconds: dict) -> dict:
    """run_info.json: what made these tables (version, command and the folder it ran in, which
    its relative paths are relative to, the versions that wrote the stage files, the software,
    inputs and the folder the prepare that read them ran in, models, the classifier as loaded,
    settings, times)."""
    return {
        "virnucpro_version": __version__,
        "stage_versions": {"prepare": manifest["virnucpro_version"],
                           "embed": sorted({s.virnucpro_version for s in shards})},
        "command": [unicode_text(word) for word in sys.argv],
        "working_directory": working_directory(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "software": _software(),
        "inputs_working_directory": _as_text(manifest.get("working_directory")),
        "inputs": [{**entry, "path": unicode_text(entry["path"])} for entry in manifest["inputs"]],
        "chunk_size": manifest["chunk_size"],
        "models": shards[0].models,
        "classifier": {"path": unicode_text(str(classifier)), "sha256": classifier_sha256},
        "tiny_models": tiny,
        "precision": sorted({s.precision for s in shards}),
        "device": sorted({s.device for s in shards}),
        "attention_path": sorted({s.attention for s in shards if s.attention}),  # none: no vector computed
        "embed_settings": h5shard.settings_in_order({entry for s in shards for entry in s.settings}),
        "threshold": threshold,
        "counts": manifest["counts"],
        "shard_layout": _shard_layout(manifest),
        "seconds": seconds,
    }
