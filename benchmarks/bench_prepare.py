"""Prepare throughput and memory: `virnucpro prepare` against a straightforward pure-Python version.

Both run as whole commands in fresh subprocesses on the same synthetic reads (100k x 500 bp, half
coding-like, half random); their ORF records are checked equal before timing counts. `prepare`
uses every CPU this process may use (`--threads` default). Peak RSS of
`virnucpro prepare` is measured for 1x and 10x the input to show memory does not grow with it.

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
    """Wall time and peak RSS of one command run in a fresh process."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-writer-only", action="store_true", help="only the shard writer's scaling")
    args = parser.parse_args()
    shard_writer_scaling()
    if args.shard_writer_only:
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fasta = write_reads(tmp / "reads.fa", args.reads)
        big = write_reads(tmp / "reads10x.fa", args.reads * 10, seed=1)
        script = tmp / "pure_python.py"
        script.write_text(PURE_PYTHON)

        baseline = measure([sys.executable, str(script), str(fasta), str(tmp / "pure.tsv"), "500"])
        ours = [measure(virnucpro_command(fasta, tmp / f"ours{i}")) for i in range(args.repeats)]
        if (tmp / "pure.tsv").read_text().splitlines() != shard_records(tmp / "ours0"):
            raise SystemExit("pure-Python and virnucpro ORF records differ: the benchmark is void")
        best = min(r["seconds"] for r in ours)
        big_run = measure(virnucpro_command(big, tmp / "ours_big"))

    print(f"input: {args.reads:,} reads x 500 bp (half coding-like, half random); records identical")
    print(f"pure Python : {baseline['seconds']:8.2f} s  {args.reads / baseline['seconds']:>10,.0f} reads/s")
    print(f"virnucpro   : {best:8.2f} s  {args.reads / best:>10,.0f} reads/s  (best of {args.repeats})")
    print(f"speed-up    : {baseline['seconds'] / best:8.1f}x whole command (target >= 15x)")
    rss1, rss10 = ours[0]["peak_rss_mb"], big_run["peak_rss_mb"]
    print(f"peak RSS    : {rss1:.0f} MB at 1x, {rss10:.0f} MB at 10x ({(rss10 / rss1 - 1) * 100:+.1f}%, "
          f"target within 10%)")
    big_rate = args.reads * 10 / big_run["seconds"]
    print(f"10x run     : {big_run['seconds']:.1f} s ({big_rate:,.0f} reads/s, "
          f"{big_rate / (args.reads / baseline['seconds']):.1f}x the pure-Python rate: start-up amortised)")


if __name__ == "__main__":
    main()
