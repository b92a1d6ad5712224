"""The original's call rules for a chunk and a sequence, and how our tables write their numbers.

Standard library only: `virnucpro predict` writes its tables with these, and the pipeline's run
summary (bin/virnucpro_summary.py, which runs with any Python 3) derives the same rows again from
the ORF scores with these, so the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


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
