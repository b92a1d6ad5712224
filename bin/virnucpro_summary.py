#!/usr/bin/env python3
"""One run-level table from the per-sample results of `virnucpro predict`, and its MultiQC twin.

    virnucpro_summary.py row RESULT_DIR --sample ID --out ID.summary.tsv      (in each PREDICT task)
    virnucpro_summary.py merge ROW.tsv... --out virnucpro_summary.tsv --mqc virnucpro_summary_mqc.tsv

`row` reads one sample's predict folder. Every count is taken from the tables themselves and
checked against the counts prepare recorded (run_info.json): input records -> sequences.tsv rows
-> chunks.tsv rows -> prediction_results.txt rows. A sample that does not reconcile is written with
its status and then fails the step (exit 5): a result that does not add up is an error, not a
warning. `merge` joins the rows of every sample, checking each again. Standard library only: it
runs in any container with a Python 3.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

EXIT_INCONSISTENT = 5  # CONTRACTS.md: inconsistent inputs between stages

COLUMNS = [
    "sample", "input_records", "sequences", "chunks", "orfs",
    "sequences_virus", "sequences_others", "sequences_no_orf", "sequences_empty",
    "chunks_virus", "chunks_others", "chunks_no_orf", "reconciled",
]

MQC_HEADER = """# id: 'virnucpro-virnucpro-summary'
# section_name: 'virnucpro: calls per sample'
# description: 'Input records, chunks and ORFs of each sample, its sequence and chunk calls, and whether the counts reconcile from input to tables.'
# plot_type: 'table'
"""


def read_rows(path: Path) -> list[dict]:
    """The data rows of a tab-separated table with a header line."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def summarise_sample(folder: Path, sample: str) -> tuple[dict, list[str]]:
    """The summary row of one sample and the list of counts that do not reconcile."""
    run_info = json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
    counts = run_info["counts"]
    sequences = read_rows(folder / "sequences.tsv")
    chunks = read_rows(folder / "chunks.tsv")
    orfs = read_rows(folder / "prediction_results.txt")
    sequence_calls = Counter(row["call"] for row in sequences)
    chunk_calls = Counter(row["call"] for row in chunks)
    input_records = sum(int(entry["records"]) for entry in run_info["inputs"])
    checks = [
        ("input records", input_records, "sequences.tsv rows", len(sequences)),
        ("prepared sequences", counts["sequences"], "sequences.tsv rows", len(sequences)),
        ("prepared chunks", counts["chunks"], "chunks.tsv rows", len(chunks)),
        ("prepared ORFs", counts["orfs"], "prediction_results.txt rows", len(orfs)),
        ("prepared chunks without ORF", counts["chunks_without_orf"], "chunks called no_orf", chunk_calls["no_orf"]),
        ("prepared empty sequences", counts["empty_sequences"], "sequences called empty", sequence_calls["empty"]),
    ]
    problems = [f"{a} {x} != {b} {y}" for a, x, b, y in checks if x != y]
    row = {
        "sample": sample, "input_records": input_records, "sequences": len(sequences),
        "chunks": len(chunks), "orfs": len(orfs),
        "sequences_virus": sequence_calls["virus"], "sequences_others": sequence_calls["others"],
        "sequences_no_orf": sequence_calls["no_orf"], "sequences_empty": sequence_calls["empty"],
        "chunks_virus": chunk_calls["virus"], "chunks_others": chunk_calls["others"],
        "chunks_no_orf": chunk_calls["no_orf"],
        "reconciled": "yes" if not problems else "NO: " + "; ".join(problems),
    }
    return row, problems


def write_table(rows: list[dict], path: Path, header: str = "") -> None:
    """The rows as a tab-separated table, preceded by `header` (MultiQC's comment lines)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(header)
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def report(rows: list[dict]) -> int:
    """One line per sample that does not reconcile and a total; exit 5 when any does not."""
    failed = [row for row in rows if row["reconciled"] != "yes"]
    for row in failed:
        print(f"virnucpro summary: sample {row['sample']} does not reconcile: {row['reconciled'][4:]}",
              file=sys.stderr)
    print(f"virnucpro summary: {len(rows)} samples, {len(rows) - len(failed)} reconcile", file=sys.stderr)
    return EXIT_INCONSISTENT if failed else 0


def command_row(args: argparse.Namespace) -> int:
    row, _ = summarise_sample(args.result_dir, args.sample)
    write_table([row], args.out)
    return report([row])


def command_merge(args: argparse.Namespace) -> int:
    rows = sorted((row for path in args.rows for row in read_rows(path)), key=lambda row: row["sample"])
    samples = [row["sample"] for row in rows]
    if len(set(samples)) != len(samples):
        print(f"virnucpro summary: a sample appears twice in {', '.join(map(str, args.rows))}", file=sys.stderr)
        return EXIT_INCONSISTENT
    write_table(rows, args.out)
    write_table(rows, args.mqc, MQC_HEADER)
    return report(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    row = commands.add_parser("row", help="the summary row of one sample's predict folder")
    row.add_argument("result_dir", type=Path)
    row.add_argument("--sample", required=True)
    row.add_argument("--out", type=Path, required=True)
    row.set_defaults(run=command_row)
    merge = commands.add_parser("merge", help="one table from every sample's row")
    merge.add_argument("rows", nargs="+", type=Path)
    merge.add_argument("--out", type=Path, required=True, help="run-level table (TSV)")
    merge.add_argument("--mqc", type=Path, required=True, help="MultiQC custom-content table")
    merge.set_defaults(run=command_merge)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
