"""The original's call rules for a chunk and a sequence, and how our tables write their numbers.

Standard library only: `virnucpro predict` writes its tables with these, and the pipeline's run
summary (bin/virnucpro_summary.py, which runs with any Python 3) derives the same rows again from
the ORF scores with these, so the two can never drift apart. The one place that knows the predict
output tables: their file names, columns, call names, the frame labels that end an ORF id and the
way a chunk id is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

RESULTS = "prediction_results.txt"  # the original's per-ORF table
HIGHEST = "prediction_results_highestscore.csv"  # the original's per-chunk table (tab-separated, as it wrote it)
CHUNKS = "chunks.tsv"
SEQUENCES = "sequences.tsv"
RUN_INFO = "run_info.json"
RESULT_COLUMNS = ("Sequence_ID", "Prediction", "score1", "score2")  # score1: others, score2: virus
HIGHEST_COLUMNS = ("Modified_ID", "Is_Virus")
CHUNK_COLUMNS = ("chunk_id", "sequence_id", "start", "length", "n_orfs", "best_orf", "max_score_virus", "call")
SEQUENCE_COLUMNS = ("sequence_id", "length", "n_chunks", "n_chunks_virus", "n_chunks_no_orf", "fraction_virus",
                    "max_score_virus", "mean_score_virus", "call")
SEQUENCE_CALLS = ("virus", "others", "no_orf", "empty")
CHUNK_CALLS = ("virus", "others", "no_orf")
FRAMES = ("F1", "F2", "F3", "R1", "R2", "R3")  # an ORF id is its chunk id + frame; a chunk's ORFs in this order


def header_line(columns: Sequence[str]) -> str:
    """The header line of a table with these columns."""
    return "\t".join(columns) + "\n"


def row_line(columns: Sequence[str], cells: Mapping[str, str]) -> str:
    """One line of a table: the text cells of `columns`, in their order (other keys of `cells` are ignored)."""
    return "\t".join([cells[column] for column in columns]) + "\n"


def result_line(orf_id: str, prediction: str, score1: str, score2: str) -> str:
    """One row of prediction_results.txt, its cells in RESULT_COLUMNS order (tests/test_one_format.py
    checks the two agree): written once per ORF, so positional rather than looked up by column."""
    return f"{orf_id}\t{prediction}\t{score1}\t{score2}\n"


def chunk_id_of(sequence_id: str, k: int) -> str:
    """The id of chunk `k` (from 1) of a sequence: chunk ids are as unique as sequence ids."""
    return f"{sequence_id}_chunk_{k}"


def orf_chunk_id(orf_id: str) -> str | None:
    """The chunk id an ORF id names (the id less the frame label that ends it); None without a label."""
    for frame in FRAMES:
        if orf_id.endswith(frame):
            return orf_id[:-len(frame)]
    return None


def orf_label(virus: float, others: float) -> str:
    """The original's Prediction of one ORF: virus only when its score is above others (torch.max keeps
    the first class, others, on ties)."""
    return "virus" if virus > others else "others"


def number_cell(value: float | None) -> str:
    """A number as chunks.tsv and sequences.tsv write it (NA for none)."""
    return "NA" if value is None else f"{value:.6g}"


@dataclass
class ChunkScore:
    """The best ORF of a chunk and the maxima the original's per-chunk call compares."""

    chunk_id: str
    best_orf: str
    max_virus: float
    max_others: float

    def add(self, orf_id: str, virus: float, others: float) -> None:
        """One more ORF of this chunk: the first ORF with the highest virus score stays the best."""
        if virus > self.max_virus:
            self.best_orf, self.max_virus = orf_id, virus
        self.max_others = max(self.max_others, others)

    @property
    def is_virus(self) -> bool:
        """The original's rule: best virus score at least the best others score."""
        return self.max_virus >= self.max_others

    @property
    def call(self) -> str:
        """The chunk's call in chunks.tsv."""
        return "virus" if self.is_virus else "others"


def chunk_cells(score: ChunkScore | None) -> dict[str, str]:
    """The derived cells of a chunks.tsv row: no ORF gives best_orf NA and call no_orf."""
    if score is None:
        return {"best_orf": "NA", "max_score_virus": number_cell(None), "call": "no_orf"}
    return {"best_orf": score.best_orf, "max_score_virus": number_cell(score.max_virus), "call": score.call}


@dataclass
class SequenceTally:
    """One input sequence's chunks, counted in order: the numbers of its row of sequences.tsv."""

    n_chunks: int = 0
    virus: int = 0
    no_orf: int = 0
    scored: int = 0
    total: float = 0.0
    top: float | None = None

    def add(self, score: ChunkScore | None) -> None:
        """One more chunk: its best ORF's score, or None for a chunk without ORF."""
        self.n_chunks += 1
        if score is None:
            self.no_orf += 1
            return
        self.virus += score.is_virus
        self.scored += 1
        self.total += score.max_virus
        self.top = score.max_virus if self.top is None else max(self.top, score.max_virus)

    def call(self, threshold: float, empty: bool) -> str:
        """empty, no_orf, or virus when the fraction of virus chunks reaches `threshold`, else others."""
        if empty:
            return "empty"
        if not self.scored:
            return "no_orf"
        return "virus" if self.virus / self.scored >= threshold else "others"

    def cells(self) -> dict[str, str]:
        """The counted columns of sequences.tsv, as written."""
        fraction = self.virus / self.scored if self.scored else None
        mean = self.total / self.scored if self.scored else None
        return {"n_chunks_virus": str(self.virus), "n_chunks_no_orf": str(self.no_orf),
                "fraction_virus": number_cell(fraction), "max_score_virus": number_cell(self.top),
                "mean_score_virus": number_cell(mean)}
