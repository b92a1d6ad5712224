"""What the seal of an embedding shard costs: its check against the full read `predict` does anyway.

Writes one shard of real widths (768 DNABERT-S + 2,560 ESM-2 float32 per row, 13 KB) through
`h5shard.write_shard` (which seals and reads it back), then times, from the page cache as predict
mostly sees it: the seal check alone, `read_info` (seal + attributes), `iter_rows` (seal + every
row with the vector checksums), and the three reads predict makes of each shard. Prints each as a ratio
to a plain h5py read that gives the same rows as iter_rows, ids decoded and vectors joined, without
any check (best of --repeats each; the rows of both are compared first), and the load average at the start
and the end. --rows and --repeats below 1 are refused (exit 2): they would time nothing.

    python benchmarks/bench_h5.py [--rows 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conditions  # noqa: E402

from virnucpro import h5shard  # noqa: E402

WIDTHS = (768, 2560)


def _write(path: Path, rows: int) -> float:
    """A shard of `rows` random rows; returns the seconds write_shard took (write, seal, verify)."""
    generator = np.random.default_rng(0)
    ids = [f"read_{i:07d}_chunk_1F1" for i in range(rows)]
    attrs = {"shard_index": 0, "shard_of": 1, "shard_sha256": "0" * 64, "chunk_size": 500,
             "models": {"dnabert_s": {"name": "x", "sha256": "1" * 64}, "esm2": {"name": "y", "sha256": "2" * 64}},
             "precision": "fp32", "device": "cpu"}

    def block(start: int, stop: int):
        return tuple(generator.standard_normal((stop - start, width), dtype=np.float32) for width in WIDTHS)

    started = time.perf_counter()
    h5shard.write_shard(path, ids, block, WIDTHS, attrs)
    return time.perf_counter() - started


def _plain_blocks(path: Path):
    """(ids, features) blocks read with h5py alone, ids decoded and features joined as iter_rows
    gives them, nothing checked: the baseline, timed as it is compared (the same work, unchecked)."""
    import h5py

    with h5py.File(path, "r", locking=False) as handle:
        for start in range(0, handle["ids"].shape[0], h5shard.ROWS_PER_WRITE):
            stop = start + h5shard.ROWS_PER_WRITE
            ids = [value.decode() if isinstance(value, bytes) else str(value) for value in handle["ids"][start:stop]]
            yield ids, np.hstack([handle["dnabert_s"][start:stop], handle["esm2"][start:stop]])


def _same_rows(path: Path, rows: int) -> bool:
    """Whether the checked read gives every row the plain read gives, ids and values, and read_info
    counts them: the timings compare the same work."""
    got = 0
    try:
        for (ids, features), (plain_ids, plain) in zip(h5shard.iter_rows(path), _plain_blocks(path), strict=True):
            if list(ids) != plain_ids or not np.array_equal(features, plain):
                return False
            got += len(ids)
    except ValueError:  # one read gave more blocks than the other
        return False
    return got == rows == h5shard.read_info(path).records


def _as_predict_reads(path: Path) -> None:
    """What predict reads of one shard: attributes (hashing the file), then ids and rows, which find
    the file unchanged since and do not hash it again."""
    info = h5shard.read_info(path)
    list(h5shard.iter_ids(path, seal=info.seal))
    list(h5shard.iter_rows(path, seal=info.seal))


def _best(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def parse_args(argv) -> argparse.Namespace:
    """--rows and --repeats of at least 1 (an empty file or no timing measures nothing: exit 2)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=conditions.positive_int, default=20000)
    parser.add_argument("--repeats", type=conditions.positive_int, default=3)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    conditions.print_load("start", "1 (h5py and sha256 run in this thread)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shard.h5"
        written = _write(path, args.rows)
        size = path.stat().st_size
        if not _same_rows(path, args.rows):
            print("FAILED: the checked read does not give the rows the plain read gives; no timing is meaningful")
            return 1
        plain = _best(args.repeats, lambda: list(_plain_blocks(path)))
        timings = {"seal check": _best(args.repeats, lambda: h5shard.check_seal(path)),
                   "read_info (seal + attributes)": _best(args.repeats, lambda: h5shard.read_info(path)),
                   "iter_rows (seal + rows + checksums)": _best(args.repeats, lambda: list(h5shard.iter_rows(path))),
                   "predict's reads (info, ids, rows)": _best(args.repeats, lambda: _as_predict_reads(path))}
    print(f"shard: {args.rows:,} rows, {size / 1e6:,.0f} MB; write_shard (write, seal, verify) {written:.2f} s")
    print(f"baseline, plain h5py read of every row (ids decoded, vectors joined, as iter_rows gives them): "
          f"{plain:.3f} s ({size / 1e6 / plain:,.0f} MB/s), "
          f"best of {args.repeats}")
    for name, seconds in timings.items():
        print(f"{name:38s} {seconds:7.3f} s   {seconds / plain:5.2f}x the plain read")
    conditions.print_load("end", "1 (h5py and sha256 run in this thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
