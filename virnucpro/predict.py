"""The `predict` stage: embedding shards + prepare tables -> the original's two tables, our per-chunk
and per-sequence tables, an HTML report and run_info.json.

Shards are checked to belong to the prepared sample and to each other, ordered by the index stored
in them (never by argument order), and streamed one at a time through the classifier. Before any
output is written, every embedding row's id is compared with its prepared shard's record and every
count from input records to ORFs is reconciled: a stage file that disagrees is exit 5, never a
warning in the report of a successful run.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from virnucpro import __version__, h5shard
from virnucpro import prepared as fmt
from virnucpro.console import info, warn
from virnucpro.errors import BadInputError, InconsistentInputsError, NumericalError, output_errors
from virnucpro.outdir import OutputFolder, claim

RESULTS = "prediction_results.txt"
HIGHEST = "prediction_results_highestscore.csv"
CHUNKS_OUT = "chunks.tsv"
SEQUENCES_OUT = "sequences.tsv"
REPORT = "report.html"
RUN_INFO = "run_info.json"
OUTPUTS = (RESULTS, HIGHEST, CHUNKS_OUT, SEQUENCES_OUT, REPORT, RUN_INFO)
STAGING = ".predict.partial"  # outputs are written here and moved into --outdir only when all exist
CHUNK_COLUMNS = ("chunk_id", "sequence_id", "start", "length", "n_orfs", "best_orf", "max_score_virus", "call")
SEQUENCE_COLUMNS = ("sequence_id", "length", "n_chunks", "n_chunks_virus", "n_chunks_no_orf", "fraction_virus",
                    "max_score_virus", "mean_score_virus", "call")
HISTOGRAM_BINS = 20


# --- shard checks ----------------------------------------------------------------------------------

def order_shards(manifest: dict, paths: Sequence[Path]) -> list[h5shard.EmbeddingShardInfo]:
    """Embedding shards in index order, after checking they are exactly this sample's shards."""
    expected = {s["index"]: s for s in manifest["shards"]}
    by_index: dict[int, h5shard.EmbeddingShardInfo] = {}
    for path in paths:
        shard = h5shard.read_info(Path(path))
        own = expected.get(shard.shard_index)
        if own is None or own["sha256"] != shard.shard_sha256 or shard.shard_of != len(expected):
            raise InconsistentInputsError(f"{path} was embedded from a shard that is not part of this prepared "
                                          "sample (different input, chunk size or sharding)",
                                          "give the .h5 files made from this --prepared directory")
        if shard.shard_index in by_index:
            raise InconsistentInputsError(f"{path} repeats shard {shard.shard_index} "
                                          f"(also {by_index[shard.shard_index].path})",
                                          "give each embedding shard once")
        if shard.records != own["records"]:
            raise InconsistentInputsError(f"{path} has {shard.records} rows, its shard has {own['records']}",
                                          "rerun embed for this shard")
        by_index[shard.shard_index] = shard
    missing = sorted(set(expected) - set(by_index))
    if missing:
        names = ", ".join(fmt.shard_name(i) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InconsistentInputsError(f"{len(missing)} embedding shard(s) missing: {names}",
                                      "embed every shard of the prepared sample and pass all .h5 files")
    shards = [by_index[i] for i in sorted(by_index)]
    _check_same_models(shards, manifest["chunk_size"])
    return shards


def _check_same_models(shards: list[h5shard.EmbeddingShardInfo], chunk_size: int) -> None:
    first = shards[0]
    for shard in shards:
        if shard.chunk_size != chunk_size:
            raise InconsistentInputsError(f"{shard.path} was made at chunk size {shard.chunk_size}, the "
                                          f"prepared sample at {chunk_size}", "rerun prepare and embed together")
        if shard.models != first.models or shard.widths != first.widths:
            raise InconsistentInputsError(f"{shard.path} was embedded with other models than {first.path}",
                                          "embed every shard with the same models directory")
    precisions = sorted({s.precision for s in shards})
    if len(precisions) > 1:
        warn(f"embedding shards were made at different precisions ({', '.join(precisions)}); scores may differ "
             "slightly between them")


# --- ids and counts from the input records to the embedding rows ----------------------------------

def check_stage_files(prepared: Path, manifest: dict, shards: list[h5shard.EmbeddingShardInfo]) -> None:
    """Every embedding row's id is its prepared shard's record id, in order, and every count from
    input records to ORFs reconciles (exit 5); streamed, so memory does not grow with the sample."""
    walk = fmt.TableWalk(prepared, manifest).orf_chunks()
    entries = sorted(manifest["shards"], key=lambda entry: entry["index"])
    for entry, shard in zip(entries, shards):
        _check_prepared_shard(prepared, entry)
        _check_shard_ids(prepared, prepared / entry["file"], shard.path, walk)
    for chunk_id, line in walk:
        raise InconsistentInputsError(f"the prepared tables do not reconcile: {prepared / fmt.CHUNKS} line {line} "
                                      f"gives chunk {chunk_id!r} more ORFs than the prepared shards hold",
                                      fmt.REPAIR_HINT)


def _check_prepared_shard(prepared: Path, entry: dict) -> None:
    """The shard file is the one prepare wrote and the manifest (and so the HDF5 file) names."""
    path = prepared / entry["file"]
    try:
        unchanged = fmt.sha256_of(path) == entry["sha256"]
    except OSError as exc:
        raise InconsistentInputsError(f"cannot read the prepared shard {path}: {exc.strerror or exc}",
                                      fmt.REPAIR_HINT) from None
    if not unchanged:
        raise InconsistentInputsError(f"{path} changed after prepare: its sha256 is not the one in "
                                      f"{prepared / fmt.MANIFEST}", fmt.REPAIR_HINT)


def _check_shard_ids(prepared: Path, shard_file: Path, h5: Path, walk) -> None:
    """The ids of `h5` equal the records of `shard_file`, each an ORF of the next chunk `walk` gives."""
    records = (record[0] for record in fmt.read_shard(shard_file))
    for row, (expected, found) in enumerate(itertools.zip_longest(records, h5shard.iter_ids(h5))):
        if expected != found:
            raise InconsistentInputsError(
                f"{h5}: /ids[{row}] is {_id_text(found)} but record {row + 1} of {shard_file} (line {row + 3}) "
                f"is {_id_text(expected)}", "embed this shard again from this prepared folder")
        chunk_id, line = next(walk, (None, None))
        if expected[:-2] != chunk_id:
            where = f"line {line} gives an ORF of {chunk_id!r} here" if chunk_id else "lists no more ORFs"
            raise InconsistentInputsError(f"the prepared tables do not reconcile: ORF {expected!r} is record "
                                          f"{row + 1} of {shard_file} but {prepared / fmt.CHUNKS} {where}",
                                          fmt.REPAIR_HINT)


def _id_text(value: str | None) -> str:
    return "missing (no more rows)" if value is None else repr(value)


# --- per-chunk accumulation ------------------------------------------------------------------------

@dataclass
class ChunkScore:
    """The best ORF of a chunk and the maxima the original's per-chunk call compares."""

    best_orf: str
    max_virus: float
    max_others: float


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


def classify_shards(shards: list[h5shard.EmbeddingShardInfo], classifier, outdir: Path
                    ) -> tuple[dict[str, ChunkScore], ScoreHistogram, int]:
    """Write prediction_results.txt shard by shard; return per-chunk scores, histogram and row count."""
    from virnucpro.classifier import predict_proba

    chunks: dict[str, ChunkScore] = {}
    histogram = ScoreHistogram()
    rows = 0
    with open(outdir / RESULTS, "w", encoding="utf-8", newline="\n") as out:
        out.write("Sequence_ID\tPrediction\tscore1\tscore2\n")
        for shard in shards:
            for ids, features in h5shard.iter_rows(shard.path):
                _check_finite(features, ids, shard.path)
                probabilities = predict_proba(classifier, features)
                histogram.add(probabilities[:, 1])
                lines = []
                for orf_id, (others, virus) in zip(ids, probabilities):
                    label = "virus" if virus > others else "others"  # torch.max keeps the first on ties
                    text_others, text_virus = _score_text(others), _score_text(virus)
                    lines.append(f"{orf_id}\t{label}\t{text_others}\t{text_virus}\n")
                    # the original re-reads its table with pandas: compare the parsed text values
                    _update_chunk(chunks, orf_id, float(text_virus), float(text_others))
                out.write("".join(lines))
                rows += len(ids)
    return chunks, histogram, rows


def _check_finite(features: np.ndarray, ids: Sequence[str], path: Path) -> None:
    """NaN/Inf features name the shard and the first record that has them (exit 9)."""
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise NumericalError(f"{path} holds NaN/Inf features for {ids[bad]} ({int((~finite).sum()):,} "
                             "record(s) in this block)", "embed that shard again (a second failure points at "
                             "the GPU or the model files: `virnucpro models check`)")


def _update_chunk(chunks: dict[str, ChunkScore], orf_id: str, virus: float, others: float) -> None:
    chunk_id = orf_id[:-2]
    current = chunks.get(chunk_id)
    if current is None:
        chunks[chunk_id] = ChunkScore(orf_id, virus, others)
        return
    if virus > current.max_virus:
        current.best_orf, current.max_virus = orf_id, virus
    current.max_others = max(current.max_others, others)


def write_highest(chunks: dict[str, ChunkScore], outdir: Path) -> None:
    """The original's per-chunk table: pandas groupby sorts the chunk ids as strings."""
    with open(outdir / HIGHEST, "w", encoding="utf-8", newline="\n") as out:
        out.write("Modified_ID\tIs_Virus\n")
        out.write("".join(f"{chunk_id}\t{_is_virus(chunks[chunk_id])}\n" for chunk_id in sorted(chunks)))


def _is_virus(chunk: ChunkScore) -> bool:
    return chunk.max_virus >= chunk.max_others


# --- our tables ----------------------------------------------------------------------------------

@dataclass
class SequenceTally:
    length: int
    n_chunks: int = 0
    virus: int = 0
    no_orf: int = 0
    scores: list[float] = field(default_factory=list)

    def call(self, threshold: float, empty: bool) -> str:
        if empty:
            return "empty"
        if not self.scores:
            return "no_orf"
        return "virus" if self.virus / len(self.scores) >= threshold else "others"


def _fmt(value: float | None) -> str:
    return "NA" if value is None else f"{value:.6g}"


def write_our_tables(prepared: Path, chunks: dict[str, ChunkScore], outdir: Path, threshold: float) -> dict:
    """chunks.tsv and sequences.tsv, every chunk and every input sequence; returns call counts."""
    tallies: dict[str, SequenceTally] = {}
    with open(outdir / CHUNKS_OUT, "w", encoding="utf-8", newline="\n") as out:
        out.write("\t".join(CHUNK_COLUMNS) + "\n")
        for row in fmt.read_table(prepared / fmt.CHUNKS):
            tally = tallies.setdefault(row["sequence_id"], SequenceTally(0))
            tally.n_chunks += 1
            score = chunks.get(row["chunk_id"])
            if score is None:
                tally.no_orf += 1
                call, best, top = "no_orf", "NA", None
            else:
                call = "virus" if _is_virus(score) else "others"
                best, top = score.best_orf, score.max_virus
                tally.virus += call == "virus"
                tally.scores.append(score.max_virus)
            out.write(f"{row['chunk_id']}\t{row['sequence_id']}\t{row['start']}\t{row['length']}\t"
                      f"{row['n_orfs']}\t{best}\t{_fmt(top)}\t{call}\n")
    calls = {"virus": 0, "others": 0, "no_orf": 0, "empty": 0}
    top_sequences = []
    with open(outdir / SEQUENCES_OUT, "w", encoding="utf-8", newline="\n") as out:
        out.write("\t".join(SEQUENCE_COLUMNS) + "\n")
        for row in fmt.read_table(prepared / fmt.SEQUENCES):
            tally = tallies.get(row["sequence_id"], SequenceTally(0))
            call = tally.call(threshold, row["status"] == "empty")
            calls[call] += 1
            scored = len(tally.scores)
            fraction = tally.virus / scored if scored else None
            top = max(tally.scores) if scored else None
            mean = sum(tally.scores) / scored if scored else None
            out.write(f"{row['sequence_id']}\t{row['length']}\t{row['n_chunks']}\t{tally.virus}\t{tally.no_orf}\t"
                      f"{_fmt(fraction)}\t{_fmt(top)}\t{_fmt(mean)}\t{call}\n")
            if top is not None:
                top_sequences.append((fraction, top, row["sequence_id"], int(row["length"]), int(row["n_chunks"]), call))
    top_sequences.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return {"calls": calls, "top": top_sequences[:25]}


# --- the command ------------------------------------------------------------------------------------

def predict(prepared: Path, embeddings: Sequence[Path], outdir: Path, classifier: Path | None = None,
            models: Path | None = None, threshold: float = 0.5, stage_seconds: dict | None = None,
            output: OutputFolder | None = None) -> Path:
    """Run the predict stage; every output file is written under `outdir` (`run` passes its own
    claimed folder as `output`)."""
    started = time.monotonic()
    prepared, outdir = Path(prepared), Path(outdir)
    inputs = _checked_inputs(prepared, embeddings, outdir, classifier, models)
    with _claimed(outdir, output) as output, output_errors(outdir):
        staging = outdir / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            n_chunks, n_orfs, calls = _write_outputs(inputs, prepared, staging, threshold, started,
                                                     stage_seconds)
            output.publish(staging, OUTPUTS)  # run_info.json last: its presence marks a complete set
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    info(f"predicted {n_orfs:,} ORFs in {n_chunks:,} chunks: {calls['virus']:,} virus, "
         f"{calls['others']:,} others, {calls['no_orf']:,} without ORF, {calls['empty']:,} empty "
         f"sequences -> {outdir}")
    return outdir


@dataclass
class _Inputs:
    """What predict reads, every part already checked against the others."""

    manifest: dict
    shards: list
    model: object
    classifier: Path
    tiny: bool


def _checked_inputs(prepared: Path, embeddings: Sequence[Path], outdir: Path, classifier: Path | None,
                    models: Path | None) -> _Inputs:
    """The prepared manifest, the HDF5 shards in order and the classifier, cross-checked (exit 3-5)."""
    from virnucpro.classifier import load_classifier
    from virnucpro.models import store

    manifest = fmt.load_manifest(prepared)
    if outdir.resolve() == prepared.resolve():
        raise BadInputError(f"--outdir {outdir} is the --prepared directory: its chunks.tsv and "
                            "sequences.tsv would be overwritten while being read",
                            "choose another --outdir")
    shards = order_shards(manifest, embeddings)
    tiny = any(s.tiny for s in shards)
    if classifier is None:
        model_set = store.locate(models, roles=(f"classifier_{manifest['chunk_size']}",))
        classifier = model_set.classifier(manifest["chunk_size"])
        tiny = tiny or model_set.tiny
    model = load_classifier(Path(classifier))
    check_classifier_fits(model, Path(classifier), shards[0].widths)
    check_stage_files(prepared, manifest, shards)
    return _Inputs(manifest, shards, model, Path(classifier), tiny)


def _write_outputs(inputs: _Inputs, prepared: Path, staging: Path, threshold: float, started: float,
                   stage_seconds: dict | None) -> tuple[int, int, dict]:
    """Every output file into `staging`; returns the chunks and ORFs scored and the calls per class."""
    from virnucpro.report import write_report

    chunks, histogram, rows = classify_shards(inputs.shards, inputs.model, staging)
    write_highest(chunks, staging)
    summary = write_our_tables(prepared, chunks, staging, threshold)
    seconds = dict(stage_seconds or {})
    seconds["predict"] = round(time.monotonic() - started, 3)
    run_info = _run_info(inputs.manifest, inputs.shards, inputs.classifier, threshold, inputs.tiny, seconds)
    write_report(staging / REPORT, manifest=inputs.manifest, rows=rows, n_chunks_scored=len(chunks),
                 summary=summary, histogram=histogram.counts, run_info=run_info)
    (staging / RUN_INFO).write_text(json.dumps(run_info, indent=2) + "\n")
    return len(chunks), rows, summary["calls"]


def _claimed(outdir: Path, output: OutputFolder | None):
    """The caller's claimed output folder, or this command's own claim on `--outdir`."""
    return nullcontext(output) if output is not None else claim(outdir, "predict", OUTPUTS)


def check_classifier_fits(model, path: Path, widths: tuple[int, int]) -> None:
    """The classifier takes exactly the DNABERT-S + ESM-2 features these embeddings have (exit 5)."""
    if model.input_dim != sum(widths):
        raise InconsistentInputsError(f"classifier {path} takes {model.input_dim} features but the "
                                      f"embeddings have {sum(widths)} ({widths[0]} DNABERT-S + "
                                      f"{widths[1]} ESM-2)",
                                      "use the classifier that belongs to the embedding models")


def _run_info(manifest: dict, shards: list, classifier: Path, threshold: float, tiny: bool, seconds: dict) -> dict:
    return {
        "virnucpro_version": __version__,
        "command": sys.argv,
        "inputs": manifest["inputs"],
        "chunk_size": manifest["chunk_size"],
        "models": shards[0].models,
        "classifier": {"path": str(classifier), "sha256": fmt.sha256_of(classifier)},
        "tiny_models": tiny,
        "precision": sorted({s.precision for s in shards}),
        "device": sorted({s.device for s in shards}),
        "attention_path": sorted({s.attention for s in shards}),
        "threshold": threshold,
        "counts": manifest["counts"],
        "seconds": seconds,
    }
