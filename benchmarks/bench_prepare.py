"""Prepare throughput and memory: `virnucpro prepare` against a straightforward pure-Python version.

Both run as whole commands in fresh subprocesses on the same synthetic reads (100k x 500 bp, half
coding-like, half random), interleaved, best of --repeats each, with `prepare` of the same reads as
FASTQ beside them; every virnucpro run's ORF records are checked equal to the pure-Python ones (else
the benchmark is void: exit 1). `prepare` uses every
CPU this process may use (`--threads` default). Peak RSS, for 1x and 10x the input to show memory
does not grow with it, is that of the command's largest single process (ru_maxrss of the waited-for
children is a maximum over processes, not a sum: the main process or one worker, whichever is
larger). The load average is printed at the start and the end.

    python benchmarks/bench_prepare.py [--reads 100000] [--repeats 3] [--shard-writer-only]

It first times the shard writer on one group of ORF lines at 1x and 4x its size (one long contig in
small shards), the ratio of time per line showing it linear.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import conditions  # noqa: E402
from synthetic import write_reads  # noqa: E402

# A plain implementation of the original algorithm (SPEC §1 steps 1-3): per-line FASTA parsing,
# per-codon dictionary translation, string concatenation, plus the same bookkeeping `prepare` does
# (duplicate ids, chunk and sequence tables), so both sides do the whole command's work.
PURE_PYTHON = r'''
import math, sys
from Bio.Data.CodonTable import standard_dna_table
TABLE = dict(standard_dna_table.forward_table)
TABLE.update({c: "*" for c in standard_dna_table.stop_codons})
COMP = str.maketrans("ACGTacgt", "TGCAtgca")

def records(path):
    rid, parts = None, []
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith(">"):
            if rid is not None:
                yield rid, "".join(parts)
            rid, parts = line[1:].split()[0], []
        else:
            parts.append(line)
    if rid is not None:
        yield rid, "".join(parts)

def chunks(seq, size):
    n = math.ceil(len(seq) / size)
    extra = n * size - len(seq)
    low = extra // n
    n_up = extra - low * (n - 1)
    shifts = [low + 1] * n_up + [low] * (n - 1 - n_up) + [0]
    for k in range(n):
        start = k * size - sum(shifts[:k])
        yield k, seq[start:start + size]

def translate(s, f):
    out = ""
    for i in range(f, len(s) - 2, 3):
        aa = TABLE.get(s[i:i + 3])
        if aa is not None:
            out += aa
    return out

inp, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = set()
with open(out, "w") as w, open(out + ".chunks", "w") as wc, open(out + ".sequences", "w") as ws:
    for rid, seq in records(inp):
        if rid in seen:
            sys.exit(f"duplicate id {rid}")
        seen.add(rid)
        n_seq = 0
        for k, chunk in chunks(seq, size):
            up = chunk.upper()
            rc = up.translate(COMP)[::-1]
            n_chunk = 0
            for strand, label in ((up, "F"), (rc, "R")):
                for f in range(3):
                    protein = translate(strand, f)
                    if protein and "*" not in protein:
                        w.write(f"{rid}_chunk_{k + 1}{label}{f + 1}\t{strand[f:f + 3 * len(protein) + 1]}\t{protein}\n")
                        n_chunk += 1
            wc.write(f"{rid}_chunk_{k + 1}\t{rid}\t{len(chunk)}\t{n_chunk}\n")
            n_seq += n_chunk
        ws.write(f"{rid}\t{len(seq)}\t{n_seq}\n")
'''

MEASURE = r'''
import resource, subprocess, sys, json, time
start = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
'''


def measure(command: list[str]) -> dict:
    """Wall time of one command run in a fresh process, and the peak RSS of its largest process."""
    result = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    if data["rc"] != 0:
        raise SystemExit(f"command failed: {' '.join(command)}")
    return data


def virnucpro_command(fasta: Path, outdir: Path) -> list[str]:
    return [sys.executable, "-m", "virnucpro", "prepare", str(fasta), "--outdir", str(outdir)]


def shard_records(outdir: Path) -> list[str]:
    rows = []
    for shard in sorted((outdir / "shards").glob("shard_*.tsv")):
        rows += shard.read_text().splitlines()[2:]
    return rows


def shard_writer_seconds(lines: int, shard_size: int) -> float:
    """Seconds `ShardWriter` takes to write one group of `lines` ORF lines (one long contig) in shards
    of `shard_size`, in this process."""
    import time

    from virnucpro.prepare import ShardWriter

    group = [f"contig_chunk_{i}F1\tACGTACGTA\tTRV\n" for i in range(lines)]
    with tempfile.TemporaryDirectory() as tmp:
        writer = ShardWriter(Path(tmp), shard_size)
        start = time.perf_counter()
        writer.write_lines(group)
        writer.finish(500)
        return time.perf_counter() - start


def shard_writer_scaling(lines: int = 50_000, shard_size: int = 100) -> None:
    """Time per line at 1x and 4x the lines of one group: about 1.0 when the writer is linear (slicing
    the rest of the list off per shard filled made it grow with the group)."""
    small, large = shard_writer_seconds(lines, shard_size), shard_writer_seconds(4 * lines, shard_size)
    print(f"shard writer: {lines:,} lines of one group in shards of {shard_size}: {small:.2f} s; 4x the lines: "
          f"{large:.2f} s ({large / (4 * small):.2f}x the time per line, linear = 1.0)")


def workers() -> int:
    """The worker processes `virnucpro prepare` starts by default (none for one CPU)."""
    from virnucpro.threads import available_cpus

    cpus = available_cpus()
    return cpus if cpus > 1 else 0


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=conditions.positive_int, default=100_000)
    parser.add_argument("--repeats", type=conditions.positive_int, default=3, help="best of N, both sides")
    parser.add_argument("--writer-lines", type=conditions.positive_int, default=50_000,
                        help="lines of the shard writer's group (1x; the second run has 4x)")
    parser.add_argument("--shard-writer-only", action="store_true", help="only the shard writer's scaling")
    return parser.parse_args(argv)


def fastq_of(fasta: Path, fastq: Path) -> Path:
    """The same reads as four-line FASTQ (every quality 'I'), as sequencers write them."""
    records = fasta.read_text().split(">")[1:]
    with open(fastq, "w") as out:
        for record in records:
            header, _, body = record.partition("\n")
            sequence = body.replace("\n", "")
            out.write(f"@{header}\n{sequence}\n+\n{'I' * len(sequence)}\n")
    return fastq


def timed_sides(tmp: Path, fasta: Path, script: Path, repeats: int) -> tuple[list[dict], list[dict], list[dict]]:
    """`repeats` interleaved runs of each side, and of virnucpro on the same reads as FASTQ; every
    virnucpro run's records must equal the baseline's."""
    fastq = fastq_of(fasta, tmp / "reads.fq")
    baseline, ours, ours_fastq = [], [], []
    for i in range(repeats):
        baseline.append(measure([sys.executable, str(script), str(fasta), str(tmp / "pure.tsv"), "500"]))
        ours.append(measure(virnucpro_command(fasta, tmp / f"ours{i}")))
        ours_fastq.append(measure(virnucpro_command(fastq, tmp / f"ours_fq{i}")))
        expected = (tmp / "pure.tsv").read_text().splitlines()
        if expected != shard_records(tmp / f"ours{i}") or expected != shard_records(tmp / f"ours_fq{i}"):
            raise SystemExit(f"run {i + 1}: pure-Python and virnucpro ORF records differ: the benchmark is void")
    return baseline, ours, ours_fastq


def check_big_run(tmp: Path, big: Path, script: Path) -> None:
    """The 10x run's records against the pure-Python baseline's on the same reads (run once, untimed):
    its rate and memory are reported, so what it computed is checked too."""
    subprocess.run([sys.executable, str(script), str(big), str(tmp / "pure_big.tsv"), "500"], check=True)
    if (tmp / "pure_big.tsv").read_text().splitlines() != shard_records(tmp / "ours_big"):
        raise SystemExit("10x run: pure-Python and virnucpro ORF records differ: the benchmark is void")


def print_results(reads: int, repeats: int, baseline: list[dict], ours: list[dict], ours_fastq: list[dict],
                  big_run: dict) -> None:
    pure, best = min(r["seconds"] for r in baseline), min(r["seconds"] for r in ours)
    best_fastq = min(r["seconds"] for r in ours_fastq)
    print(f"input: {reads:,} reads x 500 bp (half coding-like, half random); records identical in every run")
    print(f"pure Python : {pure:8.2f} s  {reads / pure:>10,.0f} reads/s  (best of {repeats})")
    print(f"virnucpro   : {best:8.2f} s  {reads / best:>10,.0f} reads/s  (best of {repeats})")
    print(f"speed-up    : {pure / best:8.1f}x whole command (target >= 15x)")
    print(f"as FASTQ    : {best_fastq:8.2f} s  {reads / best_fastq:>10,.0f} reads/s  (best of {repeats}; "
          f"{pure / best_fastq:.1f}x the pure-Python FASTA rate)")
    rss1, rss10 = ours[0]["peak_rss_mb"], big_run["peak_rss_mb"]
    print(f"peak RSS    : largest process {rss1:.0f} MB at 1x, {rss10:.0f} MB at 10x "
          f"({(rss10 / rss1 - 1) * 100:+.1f}%, target within 10%)")
    big_rate = reads * 10 / big_run["seconds"]
    print(f"10x run     : {big_run['seconds']:.1f} s ({big_rate:,.0f} reads/s, "
          f"{big_rate / (reads / pure):.1f}x the best pure-Python rate on the 1x reads: virnucpro's start-up "
          f"amortised; the pure-Python process, whose start-up is a bare interpreter's, is not timed at 10x)")


def main(argv=None) -> None:
    args = parse_args(argv)
    conditions.print_load("start", f"prepare workers: {workers()} (every CPU it may use; 0 when 1), "
                                   "pure Python: 1")
    shard_writer_scaling(args.writer_lines)
    if args.shard_writer_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fasta = write_reads(tmp / "reads.fa", args.reads)
        big = write_reads(tmp / "reads10x.fa", args.reads * 10, seed=1)
        script = tmp / "pure_python.py"
        script.write_text(PURE_PYTHON)
        baseline, ours, ours_fastq = timed_sides(tmp, fasta, script, args.repeats)
        big_run = measure(virnucpro_command(big, tmp / "ours_big"))
        check_big_run(tmp, big, script)
    print_results(args.reads, args.repeats, baseline, ours, ours_fastq, big_run)
    conditions.print_load("end", f"prepare workers: {workers()}, pure Python: 1")

if __name__ == "__main__":
    main()
