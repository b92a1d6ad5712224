"""Synthetic reads for benchmarks: coding-like (long stop-free frames) and random DNA."""

from __future__ import annotations

import random
from pathlib import Path

from Bio.Data.CodonTable import standard_dna_table

SENSE_CODONS = sorted(standard_dna_table.forward_table)


def coding_like(rng: random.Random, length: int) -> str:
    """A read made of sense codons only, so its forward frame 1 has no stop."""
    codons = rng.choices(SENSE_CODONS, k=length // 3 + 1)
    return "".join(codons)[:length]


def random_dna(rng: random.Random, length: int) -> str:
    return "".join(rng.choices("ACGT", k=length))


def write_reads(path: Path, n_reads: int, length: int = 500, seed: int = 0) -> Path:
    """FASTA of `n_reads` reads, alternating coding-like and random, 60-column lines."""
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(n_reads):
            seq = coding_like(rng, length) if i % 2 == 0 else random_dna(rng, length)
            out.write(f">read_{i} synthetic\n")
            for start in range(0, len(seq), 60):
                out.write(seq[start:start + 60] + "\n")
    return path
