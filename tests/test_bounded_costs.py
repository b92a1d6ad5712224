"""Costs that must stay bounded as one input grows: work linear in the lines written, memory flat in
the number of sequences. Counted (list elements copied, peak RSS), never timed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virnucpro import prepared as fmt
from virnucpro.prepare import ShardWriter


class CopyCountingList(list):
    """A list that adds the length of every slice taken of it (or of its slices) to `copied[0]`."""

    def __init__(self, items, copied: list[int]):
        super().__init__(items)
        self.copied = copied

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if isinstance(index, slice):
            self.copied[0] += len(item)
            return CopyCountingList(item, self.copied)
        return item


def orf_lines(n: int, start: int = 0) -> list[str]:
    return [f"r_chunk_{i}F1\tACGTA\tT\n" for i in range(start, start + n)]


def expected_shards(lines: list[str], shard_size: int) -> list[str]:
    """The shard bodies a plain line-by-line writer gives: `shard_size` lines each, in order."""
    return ["".join(lines[i:i + shard_size]) for i in range(0, len(lines), shard_size)] or [""]


def written_shards(writer: ShardWriter, chunk_size: int = 500) -> list[str]:
    """The bodies of the finished shard files (first line and header checked, then dropped)."""
    rows = writer.finish(chunk_size)
    bodies = []
    for row in rows:
        first, header, body = (writer.directory.parent / row["file"]).read_text().split("\n", 2)
        assert first == fmt.shard_first_line(chunk_size, row["index"], len(rows)).rstrip("\n")
        assert header == "\t".join(fmt.SHARD_COLUMNS)
        assert row["records"] == body.count("\n")
        bodies.append(body)
    return bodies


@pytest.mark.parametrize("shard_size", [1, 3, 7, 1000])
def test_shard_writer_copies_each_line_once_however_small_the_shards(tmp_path, shard_size):
    """One group of many ORF lines (a long contig) and tiny shards: every line is copied a bounded number
    of times (the old loop re-sliced the rest of the list per shard filled: quadratic)."""
    copied = [0]
    lines = orf_lines(3000)
    writer = ShardWriter(tmp_path / "shards", shard_size)
    (tmp_path / "shards").mkdir()
    writer.write_lines(CopyCountingList(lines, copied))
    assert copied[0] <= len(lines), f"{copied[0]} list elements copied to write {len(lines)} lines"
    assert written_shards(writer) == expected_shards(lines, shard_size)


@pytest.mark.parametrize("shard_size", [1, 4, 10, 25])
def test_shard_boundaries_inside_and_across_groups(tmp_path, shard_size):
    """Groups of uneven sizes (empty ones too) whose lines cross shard boundaries inside a group and
    between groups: the shards are the lines in order, `shard_size` a shard, the last one partial."""
    groups = [orf_lines(n, start) for n, start in ((23, 0), (0, 23), (1, 23), (57, 24), (9, 81), (0, 90))]
    writer = ShardWriter(tmp_path / "shards", shard_size)
    (tmp_path / "shards").mkdir()
    for group in groups:
        writer.write_lines(group)
    assert written_shards(writer) == expected_shards([line for group in groups for line in group], shard_size)


def test_shard_writer_with_no_lines_writes_one_empty_shard(tmp_path):
    writer = ShardWriter(tmp_path / "shards", 5)
    (tmp_path / "shards").mkdir()
    writer.write_lines([])
    assert written_shards(writer) == [""]


# --- bin/virnucpro_summary.py row: memory flat in the number of sequences --------------------------

SUMMARY = Path(__file__).resolve().parent.parent / "bin" / "virnucpro_summary.py"
# The child's peak RSS as its parent sees it: a wrapper process whose only child is the command, so no
# earlier child of the test process counts (RUSAGE_CHILDREN keeps the largest child ever waited for).
PEAK_OF_CHILD = ("import resource, subprocess, sys\n"
                 "code = subprocess.run(sys.argv[1:]).returncode\n"
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                 "sys.exit(code)\n")


def no_orf_predict_folder(folder: Path, ids: list[str]) -> Path:
    """A predict folder whose sequences each have one chunk without ORF: every table row a line."""
    folder.mkdir()
    with open(folder / "sequences.tsv", "w") as sequences, open(folder / "chunks.tsv", "w") as chunks:
        sequences.write("sequence_id\tlength\tn_chunks\tn_chunks_virus\tn_chunks_no_orf\tfraction_virus\t"
                        "max_score_virus\tmean_score_virus\tcall\n")
        chunks.write("chunk_id\tsequence_id\tstart\tlength\tn_orfs\tbest_orf\tmax_score_virus\tcall\n")
        sequences.writelines(f"{i}\t150\t1\t0\t1\tNA\tNA\tNA\tno_orf\n" for i in ids)
        chunks.writelines(f"{i}_chunk_1\t{i}\t0\t150\t0\tNA\tNA\tno_orf\n" for i in ids)
    (folder / "prediction_results.txt").write_text("Sequence_ID\tPrediction\tscore1\tscore2\n")
    (folder / "prediction_results_highestscore.csv").write_text("Modified_ID\tIs_Virus\n")
    counts = {"sequences": len(ids), "empty_sequences": 0, "bases": 150 * len(ids), "chunks": len(ids),
              "chunks_without_orf": len(ids), "orfs": 0}
    (folder / "run_info.json").write_text(json.dumps({"inputs": [{"path": "x", "records": len(ids)}],
                                                      "counts": counts, "threshold": 0.5, "chunk_size": 500}))
    return folder


def summary_row(folder: Path, out: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """`virnucpro_summary.py row` on `folder` in its own process: (the run, its peak RSS in bytes)."""
    run = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, sys.executable, str(SUMMARY), "row", str(folder),
                          "--sample", "s1", "--out", str(out)], capture_output=True, text=True, timeout=600,
                         env=env)
    return run, int(run.stdout.split()[-1]) * 1024


def test_summary_row_memory_stays_flat_for_a_million_sequences(tmp_path):
    """1M sequences: a set of their ids alone cost ~110 MB (4M: 465 MB); hashes spilled to disk keep
    the whole process under 64 MiB (about 22 MiB measured; the set version peaked at 131 MB)."""
    count = 1_000_000
    folder = no_orf_predict_folder(tmp_path / "sample", [f"read_{i:012d}" for i in range(count)])
    run, peak = summary_row(folder, tmp_path / "row.tsv")
    assert run.returncode == 0, run.stderr
    row = dict(zip(*(line.split("\t") for line in (tmp_path / "row.tsv").read_text().splitlines())))
    assert (row["sequences"], row["chunks_no_orf"], row["reconciled"]) == (str(count), str(count), "yes")
    assert peak < 64 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB for {count} sequences"


@pytest.mark.parametrize("first, second", [(3, 70_000), (69_000, 69_001), (0, 1)])
def test_summary_row_finds_a_duplicate_id_anywhere(tmp_path, first, second):
    """A sequence listed twice (its chunk rows too, so every other check passes) is named, whether the
    two rows are far apart across spilled buffers or side by side; no temporary file is left."""
    ids = [f"r{i}" for i in range(70_010)]
    ids[second] = ids[first]
    folder = no_orf_predict_folder(tmp_path / "sample", ids)
    (tmp_path / "tmp").mkdir()
    run, _ = summary_row(folder, tmp_path / "row.tsv", env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert run.returncode == 5 and "Traceback" not in run.stderr, run.stderr
    assert (f"sequences.tsv line {second + 2}: sequence 'r{first}' is listed a second time "
            f"(first on line {first + 2})") in run.stderr, run.stderr
    assert not list((tmp_path / "tmp").iterdir())


def test_summary_row_with_unique_ids_leaves_no_temporary_file(tmp_path):
    folder = no_orf_predict_folder(tmp_path / "sample", [f"r{i}" for i in range(70_000)])
    (tmp_path / "tmp").mkdir()
    run, _ = summary_row(folder, tmp_path / "row.tsv", env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert run.returncode == 0, run.stderr
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("duplicate", [True, False], ids=["duplicate first", "damage alone"])
def test_summary_row_names_a_duplicate_before_a_later_damaged_row(tmp_path, duplicate):
    """Ids are checked once the walk stops: a duplicate among the rows read is named first (as the
    set did, row by row); without one, the damaged row's own message, never a traceback."""
    ids = [f"r{i}" for i in range(70_010)]
    if duplicate:
        ids[69_990] = ids[5]
    folder = no_orf_predict_folder(tmp_path / "sample", ids)
    with open(folder / "sequences.tsv", "a") as sequences:
        sequences.write("broken\t150\n")
    run, _ = summary_row(folder, tmp_path / "row.tsv")
    assert run.returncode == 5 and "Traceback" not in run.stderr, run.stderr
    expected = "line 69992: sequence 'r5' is listed a second time" if duplicate else "line 70012 has 2 tab-separated"
    assert expected in run.stderr, run.stderr


def test_summary_row_with_a_full_tmpdir_names_it_and_leaves_nothing(tmp_path):
    """The id check's temporary files live in TMPDIR: when it is full, the message names that folder
    (it named `None` and blamed the output folder)."""
    folder = no_orf_predict_folder(tmp_path / "sample", [f"r{i}" for i in range(200_000)])
    (tmp_path / "tmp").mkdir()
    script = (f"import resource, subprocess, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
              f"sys.exit(subprocess.call([sys.executable, {str(SUMMARY)!r}, 'row', {str(folder)!r}, '--sample', "
              f"'s1', '--out', {str(tmp_path / 'row.tsv')!r}]))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert run.returncode == 10 and "Traceback" not in run.stderr, run.stderr
    assert f"temporary files in {tmp_path / 'tmp'}" in run.stderr and "TMPDIR" in run.stderr, run.stderr
    assert not list((tmp_path / "tmp").iterdir())


def test_summary_row_stopped_by_a_signal_removes_its_temporary_files(tmp_path):
    folder = no_orf_predict_folder(tmp_path / "sample", [f"r{i}" for i in range(3_000_000)])
    (tmp_path / "tmp").mkdir()
    process = subprocess.Popen([sys.executable, str(SUMMARY), "row", str(folder), "--sample", "s1", "--out",
                                str(tmp_path / "row.tsv")], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    deadline = time.monotonic() + 120
    while not list((tmp_path / "tmp").glob("*/ids_*.bin")):
        assert process.poll() is None and time.monotonic() < deadline, "no spill file appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 6 and "SIGTERM received" in err and "Traceback" not in err, err
    assert not list((tmp_path / "tmp").iterdir())


def test_a_gzip_of_one_member_per_read_is_read_in_blocks_not_read_by_read(tmp_path):
    """A review's case: each gzip member's output became its own text block, so its own record group
    and its own numpy pass: a gzip of one member per read prepared up to 80 times slower."""
    import gzip

    from virnucpro.seqio import HashingTextStream, record_groups

    reads = [f">r{i}\n{'ACGT' * 40}\n".encode() for i in range(5000)]
    path = tmp_path / "members.fa.gz"
    path.write_bytes(b"".join(gzip.compress(read, 1) for read in reads))
    stream = HashingTextStream(path)
    blocks = list(stream.text_blocks())
    assert "".join(block.text for block in blocks) == b"".join(reads).decode()
    assert len(blocks) == 1, len(blocks)  # 850 kB of text: one block, as a file of one member gives
    groups = list(record_groups(HashingTextStream(path)))
    assert sum(len(list(group.parse())) for group in groups) == 5000 and len(groups) <= 2, len(groups)


def test_a_shard_size_that_would_make_too_many_shards_is_exit_2_before_anything_is_published(
        tmp_path, run_cli, monkeypatch):
    """A review's case: --shard-size 1 on 700,000 reads wrote a manifest (73 MB) and a marker (27 MB)
    that predict and a rerun of prepare refused as damaged, after every shard was embedded."""
    monkeypatch.setattr(fmt, "MAX_SHARDS", 3)
    reads = tmp_path / "r.fa"
    reads.write_text("".join(f">c{i}\n{'GCTGCAAAA' * 60}\n" for i in range(4)))
    code, message = run_cli("prepare", reads, "--outdir", tmp_path / "p", "--shard-size", "1", "--threads", "1")
    said = " ".join(message.split())
    assert code == 2 and "reading the rest of it only to count its ORFs" in said, message
    found = re.search(r"--shard-size 1 cuts this input \(([\d,]+) ORFs\) into more than 3 shards", said)
    assert found, message
    orfs = int(found.group(1).replace(",", ""))
    fits = -(-orfs // 3)  # a later review's case: the advice was ten times the size, which could fail again
    assert f"give a --shard-size of at least {fits:,}" in said, message
    assert not (tmp_path / "p").exists()
    code, message = run_cli("prepare", reads, "--outdir", tmp_path / "p", "--shard-size", str(fits), "--threads", "1")
    assert code == 0, message
    shards = json.loads((tmp_path / "p" / fmt.MANIFEST).read_text())["shards"]
    assert len(shards) <= 3 and sum(shard["records"] for shard in shards) == orfs, shards
