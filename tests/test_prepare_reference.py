"""`prepare` reproduces the original VirNucPro's chunks and ORF records exactly."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from Bio.Data.CodonTable import standard_dna_table

from virnucpro import prepared as fmt
from virnucpro.prepare import prepare


def read_fasta(path: Path) -> list[tuple[str, str]]:
    records: list[list[str]] = []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            records.append([line[1:].split()[0], ""])
        elif records:
            records[-1][1] += line.strip()
    return [tuple(r) for r in records]


def shard_rows(outdir: Path) -> list[tuple[str, str, str]]:
    manifest = fmt.load_manifest(outdir)
    rows = []
    for shard in sorted(manifest["shards"], key=lambda s: s["index"]):
        rows += list(fmt.read_shard(outdir / shard["file"]))
    return rows


CASES = [("golden/mixed", 300, "golden/mixed_300"), ("golden/mixed", 500, "golden/mixed_500")] + [
    (f"vanilla/{name}", 500, f"vanilla/{name}")
    for name in ("test_fixed_500bp", "test_sequences_small", "test_with_orfs")]


@pytest.mark.parametrize("source,size,expected", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_orf_records_identical_to_original(reference_dir, tmp_path, source, size, expected):
    out = tmp_path / "prep"
    prepare([reference_dir / f"{source}.fa"], out, chunk_size=size, shard_size=97)
    rows = shard_rows(out)
    nucleotides = read_fasta(reference_dir / f"{expected}_identified_nucleotide.fa")
    proteins = read_fasta(reference_dir / f"{expected}_identified_protein.faa")
    assert [(r[0], r[1]) for r in rows] == nucleotides
    assert [(r[0], r[2]) for r in rows] == proteins


@pytest.mark.parametrize("source,size", [("golden/mixed", 300), ("golden/mixed", 500),
                                         ("vanilla/test_with_orfs", 500)])
def test_chunk_table_matches_original_chunks(reference_dir, tmp_path, source, size):
    out = tmp_path / "prep"
    prepare([reference_dir / f"{source}.fa"], out, chunk_size=size)
    inputs = dict(read_fasta(reference_dir / f"{source}.fa"))
    chunks = list(fmt.read_table(out / fmt.CHUNKS))
    ours = [(c["chunk_id"], inputs[c["sequence_id"]][int(c["start"]):int(c["start"]) + int(c["length"])])
            for c in chunks]
    assert ours == read_fasta(reference_dir / f"{source}_chunked{size}.fa")


def test_no_orf_sample_is_valid_and_empty(reference_dir, tmp_path):
    out = tmp_path / "prep"
    manifest = prepare([reference_dir / "vanilla/test_sequences_small.fa"], out)
    assert manifest["counts"]["orfs"] == 0
    assert len(manifest["shards"]) == 1 and manifest["shards"][0]["records"] == 0
    assert shard_rows(out) == []
    statuses = {row["status"] for row in fmt.read_table(out / fmt.SEQUENCES)}
    assert statuses == {"no_orf"}


def test_counts_reconcile(reference_dir, tmp_path):
    out = tmp_path / "prep"
    manifest = prepare([reference_dir / "golden/mixed.fa"], out, chunk_size=300, shard_size=50)
    counts = manifest["counts"]
    sequences = list(fmt.read_table(out / fmt.SEQUENCES))
    chunks = list(fmt.read_table(out / fmt.CHUNKS))
    assert len(sequences) == counts["sequences"] == manifest["inputs"][0]["records"] == 300
    assert sum(int(s["length"]) for s in sequences) == counts["bases"]
    assert len(chunks) == counts["chunks"] == sum(int(s["n_chunks"]) for s in sequences)
    assert sum(s["records"] for s in manifest["shards"]) == counts["orfs"] == len(shard_rows(out))
    assert sum(int(c["n_orfs"]) for c in chunks) == counts["orfs"] == sum(int(s["n_orfs"]) for s in sequences)
    assert sum(int(c["n_orfs"]) == 0 for c in chunks) == counts["chunks_without_orf"]
    assert [s["index"] for s in manifest["shards"]] == list(range(len(manifest["shards"])))
    for shard in manifest["shards"]:
        info = fmt.shard_info(out / shard["file"])
        assert (info.index, info.of, info.chunk_size) == (shard["index"], len(manifest["shards"]), 300)
        assert info.sha256 == shard["sha256"]
    assert all(s["records"] <= 50 for s in manifest["shards"])


# --- fuzz against a literal transcription of the original ------------------------------------

CODONS = dict(standard_dna_table.forward_table)
CODONS.update({codon: "*" for codon in standard_dna_table.stop_codons})


def original_chunks(seq: str, size: int) -> list[str]:
    """The original's chunk placement, transcribed literally from its description (SPEC §1 step 1)."""
    n = math.ceil(len(seq) / size)
    extra = n * size - len(seq)
    low = extra // n
    n_up = extra - low * (n - 1)
    shifts = [low + 1] * n_up + [low] * (n - 1 - n_up) + [0]
    return [seq[k * size - sum(shifts[:k]): k * size - sum(shifts[:k]) + size] for k in range(n)]


def original_orfs(record_id: str, seq: str, size: int) -> list[tuple[str, str, str]]:
    out = []
    for k, chunk in enumerate(original_chunks(seq, size), start=1):
        upper = chunk.upper()
        reverse = upper.translate(str.maketrans("ACGTacgt", "TGCAtgca"))[::-1]
        for label, strand in (("F", upper), ("R", reverse)):
            for f in range(3):
                protein = "".join(CODONS[strand[i:i + 3]] for i in range(f, len(strand) - 2, 3)
                                  if strand[i:i + 3] in CODONS)
                if protein and "*" not in protein:
                    out.append((f"{record_id}_chunk_{k}{label}{f + 1}",
                                strand[f:f + 3 * len(protein) + 1], protein))
    return out


def random_record(rng: random.Random, length: int) -> str:
    if rng.random() < 0.5:  # coding-like: sense codons, so long stop-free frames exist
        sense = [c for c, a in CODONS.items() if a != "*"]
        seq = "".join(rng.choices(sense, k=length // 3 + 1))[:length]
    else:
        seq = "".join(rng.choices("ACGT", k=length))
    letters = list(seq)
    for _ in range(rng.randrange(0, 4)):
        if letters:
            letters[rng.randrange(len(letters))] = rng.choice("NRYSWKMBDHV-")
    seq = "".join(letters)
    return seq.lower() if rng.random() < 0.2 else seq


@pytest.mark.parametrize("size", [300, 500, 7])
def test_fuzz_against_literal_original(tmp_path, size):
    rng = random.Random(size)
    lengths = [1, 2, 3, 5, size - 1, size, size + 1, 2 * size - 10, 3 * size - 10, 1490, 1499, 1501]
    lengths += [rng.randrange(1, 3000) for _ in range(150)]
    records = [(f"r{i}", random_record(rng, n)) for i, n in enumerate(lengths)]
    fasta = tmp_path / "fuzz.fa"
    fasta.write_text("".join(f">{rid} desc\n{seq}\n" for rid, seq in records))
    out = tmp_path / "prep"
    prepare([fasta], out, chunk_size=size)
    expected = [orf for rid, seq in records for orf in original_orfs(rid, seq, size)]
    assert shard_rows(out) == expected
    starts = [(c["chunk_id"], int(c["length"])) for c in fmt.read_table(out / fmt.CHUNKS)]
    assert starts == [(f"{rid}_chunk_{k}", len(chunk)) for rid, seq in records
                      for k, chunk in enumerate(original_chunks(seq, size), start=1)]


def masked_and_spaced(rng: random.Random, seq: str) -> str:
    """`seq` with runs masked by X or x (RepeatMasker -x) and wrapped into lines holding spaces and tabs."""
    letters = list(seq)
    for _ in range(rng.randrange(0, 4)):
        start = rng.randrange(len(letters))
        run = rng.randrange(1, 40)
        letters[start:start + run] = rng.choice("Xx") * len(letters[start:start + run])
    lines, position = [], 0
    while position < len(letters):
        width = rng.randrange(1, 90)
        line = "".join(c + rng.choice(["", "", "", " ", "\t", "  "]) for c in letters[position:position + width])
        lines.append(rng.choice(["", " ", "\t"]) + line + rng.choice(["", " ", "\t", " \t "]))
        position += width
    return "\n".join(lines)


@pytest.mark.parametrize("size", [500, 7])
def test_x_masked_and_whitespace_records_as_the_original_reads_them(tmp_path, size):
    """Biopython's FASTA parser (the original's reader) drops spaces and tabs inside sequence lines; X
    codons are dropped in translation like N codons. Our shards equal the original's ORFs, and
    sequences.tsv counts N and X (either case) as masked bases."""
    from Bio import SeqIO

    rng = random.Random(14)
    lengths = [1, 3, size - 1, size + 1, 1490] + [rng.randrange(1, 2500) for _ in range(60)]
    fasta = tmp_path / "masked.fa"
    fasta.write_text("".join(f">m{i} masked\tby RepeatMasker -x\n{masked_and_spaced(rng, random_record(rng, n))}\n"
                             for i, n in enumerate(lengths)) + ">allx\nXXXXXXXXXXXX xxxxxx\t\n")
    out = tmp_path / "prep"
    prepare([fasta], out, chunk_size=size)
    original = [(r.id, str(r.seq)) for r in SeqIO.parse(fasta, "fasta")]
    assert any("X" in seq for _, seq in original) and any("x" in seq for _, seq in original)
    assert shard_rows(out) == [orf for rid, seq in original for orf in original_orfs(rid, seq, size)]
    rows = list(fmt.read_table(out / fmt.SEQUENCES))
    assert [(r["sequence_id"], int(r["length"]), int(r["masked_bases"])) for r in rows] == [
        (rid, len(seq), sum(seq.count(c) for c in "NnXx")) for rid, seq in original]


def test_short_last_chunk_1490_at_500():
    assert original_chunks("A" * 1490, 500) == ["A" * 500, "A" * 500, "A" * 498]
    assert list(fmt.chunk_spans(1490, 500)) == [(0, 500), (496, 500), (992, 498)]


def test_outputs_do_not_depend_on_worker_processes(reference_dir, tmp_path, monkeypatch):
    import virnucpro.prepare
    import virnucpro.seqio

    pools = []

    class CountedPool(virnucpro.prepare.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(virnucpro.seqio, "BLOCK", 8192)  # many record groups from a small FASTA
    monkeypatch.setattr(virnucpro.prepare, "ProcessPoolExecutor", CountedPool)
    for threads in (1, 3):
        prepare([reference_dir / "golden/mixed.fa"], tmp_path / f"t{threads}", chunk_size=300, shard_size=100,
                threads=threads)
    assert len(pools) == 1  # the 3-thread run used worker processes, the 1-thread run did not
    for name in ("sequences.tsv", "chunks.tsv", "manifest.json", "shards/shard_00003.tsv"):
        assert (tmp_path / "t1" / name).read_bytes() == (tmp_path / "t3" / name).read_bytes(), name


def test_one_group_input_starts_no_worker_process(reference_dir, tmp_path, monkeypatch):
    import virnucpro.prepare

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started for a one-group input")

    monkeypatch.setattr(virnucpro.prepare, "ProcessPoolExecutor", no_pool)
    prepare([reference_dir / "golden/mixed.fa"], tmp_path / "p", threads=4)
    assert (tmp_path / "p" / "manifest.json").is_file()


def test_genetic_code_equals_biopython_standard_table():
    from virnucpro.prepare import FORWARD_AMINO, REVERSE_AMINO

    bases = "ACGT"
    for codon, amino in list(CODONS.items()):
        index = 25 * bases.index(codon[0]) + 5 * bases.index(codon[1]) + bases.index(codon[2])
        assert chr(FORWARD_AMINO[index]) == amino
        reverse = codon.translate(str.maketrans("ACGT", "TGCA"))[::-1]
        assert chr(REVERSE_AMINO[index]) == CODONS[reverse]
