"""Input handling of `prepare`: formats, compression, and every bad input with its message and exit 3."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import prepared as fmt

GOOD = ">s1 first\nATGAAACCCGGGTTTAAACCCGGGTTTAAACCC\n>s2\nATGGCGGCGGCGGCGGCGGCG\n"


def shard_text(outdir: Path) -> str:
    return "".join((outdir / s["file"]).read_text().split("\n", 1)[1]
                   for s in fmt.load_manifest(outdir)["shards"])


@pytest.fixture
def good_output(tmp_path, run_cli):
    path = tmp_path / "good.fa"
    path.write_text(GOOD)
    code, _ = run_cli("prepare", path, "--outdir", tmp_path / "good")
    assert code == 0
    return shard_text(tmp_path / "good")


@pytest.mark.parametrize("variant", ["gzip", "bzip2", "xz", "xz_multistream", "fastq", "crlf", "lowercase", "wrapped",
                                     "gzip_multimember"])
def test_equivalent_encodings_give_the_same_records(tmp_path, run_cli, good_output, variant):
    path = tmp_path / "input"
    if variant == "gzip":
        path.write_bytes(gzip.compress(GOOD.encode()))
    elif variant == "gzip_multimember":
        half = GOOD.index(">s2")
        path.write_bytes(gzip.compress(GOOD[:half].encode()) + gzip.compress(GOOD[half:].encode()))
    elif variant == "bzip2":
        path.write_bytes(bz2.compress(GOOD.encode()))
    elif variant == "xz":
        path.write_bytes(lzma.compress(GOOD.encode()))
    elif variant == "xz_multistream":
        half = GOOD.index(">s2")
        path.write_bytes(lzma.compress(GOOD[:half].encode()) + lzma.compress(GOOD[half:].encode()))
    elif variant == "fastq":
        records = [block.split("\n", 1) for block in GOOD[1:].split("\n>")]
        path.write_text("".join(f"@{h}\n{s.strip()}\n+\n{'I' * len(s.strip())}\n" for h, s in records))
    elif variant == "crlf":
        path.write_bytes(GOOD.replace("\n", "\r\n").encode())
    elif variant == "lowercase":
        path.write_text("\n".join(line if line.startswith(">") else line.lower() for line in GOOD.split("\n")))
    elif variant == "wrapped":
        path.write_text(">s1 first\nATGAAACCCGG\nGTTTAAACCCGGG\n\nTTTAAACCC\n>s2\nATGGCGGCG\nGCGGCGGCGGCG")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0, message
    assert shard_text(tmp_path / "out") == good_output


def test_several_files_form_one_sample(tmp_path, run_cli, good_output):
    first, second = tmp_path / "a.fa", tmp_path / "b.fa.gz"
    half = GOOD.index(">s2")
    first.write_text(GOOD[:half])
    second.write_bytes(gzip.compress(GOOD[half:].encode()))
    code, _ = run_cli("prepare", first, second, "--outdir", tmp_path / "out")
    assert code == 0
    assert shard_text(tmp_path / "out") == good_output
    manifest = fmt.load_manifest(tmp_path / "out")
    assert [i["records"] for i in manifest["inputs"]] == [1, 1]
    assert manifest["inputs"][1]["sha256"] == fmt.sha256_of(second)


def test_empty_records_are_skipped_counted_and_listed(tmp_path, run_cli):
    path = tmp_path / "in.fa"
    path.write_text(">e1\n>s1\nATGAAACCC\n>e2\n\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0 and "2 empty record(s) skipped" in message
    manifest = fmt.load_manifest(tmp_path / "out")
    assert manifest["counts"]["empty_sequences"] == 2 and manifest["counts"]["sequences"] == 3
    rows = {r["sequence_id"]: r["status"] for r in fmt.read_table(tmp_path / "out" / fmt.SEQUENCES)}
    assert rows == {"e1": "empty", "s1": "ok", "e2": "empty"}


def test_iupac_and_gap_symbols_pass_and_u_warns(tmp_path, run_cli):
    path = tmp_path / "in.fa"
    path.write_text(">s1\nATGNNNRYKM-.*AAACCC\n>s2\nAUGAAACCC\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0
    assert "s2" in message and "contains U" in message


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


BAD_INPUTS = {
    "missing": (None, ["not found", "missing.fa"]),
    "empty_file": (b"", ["is empty"]),
    "only_blank_lines": (b"\n\n  \n", ["is empty"]),
    "not_fasta": (b"hello world\nthis is text\n", ["not FASTA or FASTQ", "hello world"]),
    "binary": (bytes(range(256)) * 20, ["binary data"]),
    "truncated_gzip": (gzip.compress(GOOD.encode() * 50)[:-30], ["truncated gzip"]),
    "truncated_bzip2": (bz2.compress(GOOD.encode() * 50)[:-30], ["bzip2"]),
    "corrupt_gzip": (b"\x1f\x8b" + b"\x00garbage" * 20, ["not a valid gzip"]),
    "protein": (b">p1 some protein\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n", ["'p1'", "protein"]),
    "digits": (b">d1\nACGT12ACGT\n", ["'d1'", "'12'"]),
    "duplicate_ids": (b">x\nACGT\n>y\nACGT\n>x dup\nACGT\n", ["duplicate sequence id 'x'", "line 1", "line 5"]),
    "no_id": (b">s1\nACGT\n> \nACGT\n", ["line 3", "no sequence id"]),
    "fastq_truncated": (b"@r1\nACGT\n+\nII\n", ["'r1'", "truncated"]),
    "fastq_bad_quality": (b"@r1\nACGT\n+\nIIIIII\n", ["'r1'", "6 quality"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exit_3_with_clear_message_and_no_output(tmp_path, run_cli, case):
    data, expected = BAD_INPUTS[case]
    path = tmp_path / "missing.fa" if data is None else write(tmp_path / f"{case}.in", data)
    out = tmp_path / "out"
    code, message = run_cli("prepare", path, "--outdir", out)
    assert code == 3, message
    assert "Traceback" not in message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))


def test_duplicate_ids_across_files_name_both(tmp_path, run_cli):
    a = write(tmp_path / "a.fa", ">x\nACGT\n")
    b = write(tmp_path / "b.fa", ">y\nACGT\n>x\nACGTA\n")
    code, message = run_cli("prepare", a, b, "--outdir", tmp_path / "out")
    assert code == 3 and "'x'" in message and "a.fa" in message and "b.fa line 3" in message


def test_unreadable_file(tmp_path, run_cli):
    path = write(tmp_path / "locked.fa", GOOD)
    path.chmod(0)
    try:
        if path.open("rb"):  # root reads anything: nothing to test then
            pytest.skip("running as root: permissions are not enforced")
    except PermissionError:
        code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
        assert code == 3 and "cannot read" in message
    finally:
        path.chmod(0o644)


def test_chunk_size_other_than_300_500_needs_opt_in(tmp_path, run_cli):
    path = write(tmp_path / "in.fa", GOOD)
    code, _ = run_cli("prepare", path, "--outdir", tmp_path / "out", "--chunk-size", "400",
                      "--allow-any-chunk-size")
    assert code == 0 and fmt.load_manifest(tmp_path / "out")["chunk_size"] == 400


def test_outdir_with_foreign_content_is_refused(tmp_path, run_cli):
    path = write(tmp_path / "in.fa", GOOD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, message = run_cli("prepare", path, "--outdir", out)
    assert code == 3 and "precious.txt, which virnucpro did not write" in message
    assert (out / "precious.txt").read_text() == "keep me"


def test_ten_mbp_contig_in_bounded_memory(tmp_path):
    """A 10 Mbp record is prepared in a fresh process whose peak memory stays far below what
    holding per-codon Python objects would need (and within a small multiple of the record)."""
    path = tmp_path / "contig.fa"
    script = (
        "import random, sys\n"
        "rng = random.Random(1)\n"
        "seq = ''.join(rng.choices('ACGT', k=10_000_000))\n"
        "with open(sys.argv[1], 'w') as out:\n"
        "    out.write('>contig\\n')\n"
        "    out.writelines(seq[i:i+80] + '\\n' for i in range(0, len(seq), 80))\n")
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    measure = ("import resource, subprocess, sys\n"
               "rc = subprocess.run(sys.argv[1:]).returncode\n"
               "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    result = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "virnucpro", "prepare",
                             str(path), "--outdir", str(tmp_path / "out")], capture_output=True, text=True)
    rc, peak_kb = map(int, result.stdout.split())
    assert rc == 0, result.stderr
    manifest = fmt.load_manifest(tmp_path / "out")
    assert manifest["counts"]["chunks"] == 20_000 and manifest["counts"]["bases"] == 10_000_000
    assert peak_kb < 250 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


@pytest.mark.parametrize("variant", ["cr_only", "bom", "utf8_id"])
def test_old_mac_line_ends_bom_and_unicode_ids(tmp_path, run_cli, variant):
    path = tmp_path / "in.fa"
    if variant == "cr_only":
        path.write_bytes(b">a x\rATGAAACCCGGG\r>b\rATGCCCAAA\r")
        expected = ["a", "b"]
    elif variant == "bom":
        path.write_bytes(b"\xef\xbb\xbf>a\nATGAAACCCGGG\n")
        expected = ["a"]
    else:
        path.write_bytes(">s\u00e9q-\u03b1 d\u00e9sc\nATGAAACCCGGG\n".encode())
        expected = ["s\u00e9q-\u03b1"]
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0, message
    rows = list(fmt.read_table(tmp_path / "out" / fmt.SEQUENCES))
    assert [r["sequence_id"] for r in rows] == expected
    assert all(r["length"] != "0" for r in rows)
    orf_ids = [line.split("\t")[0] for line in shard_text(tmp_path / "out").splitlines()[1:]]
    assert orf_ids and orf_ids[0].startswith(expected[0] + "_chunk_1")


def test_outdir_holding_a_foreign_manifest_is_refused(tmp_path, run_cli):
    path = write(tmp_path / "in.fa", GOOD)
    out = tmp_path / "models-like"
    out.mkdir()
    (out / "manifest.json").write_text('{"format_version": 1, "models": {}}')
    (out / "thesis.txt").write_text("precious")
    code, message = run_cli("prepare", path, "--outdir", out)
    assert code == 3 and "manifest.json, which virnucpro did not write" in message
    assert (out / "thesis.txt").read_text() == "precious"


def test_rerun_replaces_its_own_earlier_output(tmp_path, run_cli):
    path = write(tmp_path / "in.fa", GOOD)
    assert run_cli("prepare", path, "--outdir", tmp_path / "out")[0] == 0
    path.write_text(GOOD.replace(">s2", ">s3"))
    assert run_cli("prepare", path, "--outdir", tmp_path / "out")[0] == 0
    assert [r["sequence_id"] for r in fmt.read_table(tmp_path / "out" / fmt.SEQUENCES)] == ["s1", "s3"]


def test_bad_option_values_are_usage_errors(tmp_path, run_cli):
    path = write(tmp_path / "in.fa", GOOD)
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out", "--chunk-size", "400")
    assert code == 2 and "--allow-any-chunk-size" in message
    code, _ = run_cli("embed", tmp_path / "x.tsv", "--out", tmp_path / "x.h5", "--precision", "fp8")
    assert code == 2
    code, _ = run_cli("run", path, "--outdir", tmp_path / "o", "--device", "tpu")
    assert code == 2


def _unboxed(message: str) -> str:
    """A usage error's text without the box typer draws around it and its line breaks."""
    return " ".join(message.replace("│", " ").split())


@pytest.mark.parametrize("command", ["prepare", "run"])
def test_a_chunk_size_beyond_64_bits_is_a_usage_error_before_any_work(command, tmp_path, run_cli):
    """Stored as a 64-bit integer by every stage: a larger one used to pass prepare, then crash embed."""
    path = write(tmp_path / "in.fa", GOOD)
    code, message = run_cli(command, path, "--outdir", tmp_path / "out", "--allow-any-chunk-size",
                            "--chunk-size", str(2**63))
    assert code == 2 and "is too large; the largest is 9223372036854775807" in _unboxed(message), message
    assert not (tmp_path / "out").exists()
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "small", "--allow-any-chunk-size",
                            "--chunk-size", "2")
    assert code == 2 and "the smallest is 3" in _unboxed(message), message


def test_the_largest_chunk_size_goes_through_prepare(tmp_path, run_cli):
    path = write(tmp_path / "in.fa", GOOD)
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out", "--allow-any-chunk-size",
                            "--chunk-size", str(2**63 - 1))
    assert code == 0, message
    assert fmt.load_manifest(tmp_path / "out")["chunk_size"] == 2**63 - 1


def test_duplicates_found_across_spilled_hash_buckets(tmp_path, run_cli, monkeypatch):
    from virnucpro.prepare import IdRegistry

    monkeypatch.setattr(IdRegistry, "BUFFER", 3)
    path = write(tmp_path / "in.fa", "".join(f">r{i}\nACGTACGT\n" for i in range(20)) + ">r4\nACGT\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "duplicate sequence id 'r4'" in message and "line 9" in message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_or_utf32_text_is_named_not_called_damaged(tmp_path, run_cli, encoding):
    path = tmp_path / "wide.fa"
    text = GOOD if encoding != "utf-16-be" else "\ufeff" + GOOD  # the -be codec writes no byte order mark
    path.write_text(text, encoding=encoding)
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "UTF-16 or UTF-32 text" in message and "iconv" in message, message


def test_zstd_input_is_named_with_the_command_that_reads_it(tmp_path, run_cli):
    path = tmp_path / "reads.fa.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(64))  # the zstd frame magic
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "zstd-compressed" in message and "zstd -dc" in message


def _many_reads(n: int) -> str:
    """Over one read-ahead block (1 MiB) of FASTA, so that a pre-check would swallow records."""
    codon = "ATGGCTGCAAAGGAT"
    return "".join(f">r{i}\n{codon * 30}\n" for i in range(n))


def test_dash_is_standard_input_and_every_record_is_read(tmp_path):
    text = _many_reads(3000)
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", "-", "--outdir", str(tmp_path / "out")],
                          input=text, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert fmt.load_manifest(tmp_path / "out")["counts"]["sequences"] == 3000


@pytest.mark.parametrize("argument", ["-", "/dev/stdin"])
def test_run_reads_a_pipe_once_and_loses_no_record(tmp_path, tiny_models, argument):
    """`run` checks regular files before its models load; a stream is checked as prepare reads it."""
    text = _many_reads(3000)
    assert len(text) > 1 << 20
    done = subprocess.run([sys.executable, "-m", "virnucpro", "run", argument, "--models", str(tiny_models),
                           "--outdir", str(tmp_path / "out"), "--device", "cpu"],
                          input=text, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (tmp_path / "out" / "sequences.tsv").read_text().splitlines()[1:]
    assert len(rows) == 3000


@pytest.mark.parametrize("argument", ["-", "/dev/stdin"])
def test_a_closed_standard_input_is_read_as_nothing_not_as_our_own_files(tmp_path, argument):
    """`<&-`: the lock file opened first took fd 0, and `/dev/stdin` read it as the input."""
    command = f'exec <&-; exec "{sys.executable}" -m virnucpro prepare {argument} --outdir "{tmp_path / "out"}"'
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "is closed" in done.stderr or "is empty" in done.stderr, done.stderr
    assert '"pid"' not in done.stderr, done.stderr


def test_closed_standard_streams_are_held_by_dev_null(tmp_path):
    """Nothing we open later may take fd 1 or 2: what a library or a child writes there would land in it."""
    probe = ("from virnucpro.entry import _fill_closed_standard_streams as fill; fill(); import os; "
             "open(os.environ['REPORT'], 'w').write(' '.join(os.readlink(f'/proc/self/fd/{fd}') for fd in (0, 1, 2)))")
    report = tmp_path / "fds"
    subprocess.run(["bash", "-c", f'exec <&- >&- 2>&-; exec "{sys.executable}" -c "{probe}"'],
                   env={**os.environ, "REPORT": str(report)}, timeout=60)
    assert report.read_text() == "/dev/null /dev/null /dev/null"


def test_duplicate_ids_on_standard_input_are_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", "-", "--outdir", str(tmp_path / "out")],
                          input=GOOD + GOOD, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3 and "duplicate sequence id 's1'" in done.stderr, done.stderr
    assert "standard input record 1 and standard input record 3" in done.stderr


def test_duplicate_ids_in_a_named_pipe_are_exit_3_not_a_hang(tmp_path):
    """A FIFO is read once like standard input: the second pass that names duplicates re-opened it and
    waited for ever for a writer (and `<(...)` gave a false 'is empty')."""
    import os
    import threading

    fifo = tmp_path / "reads.fa"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_text(">a\nACGTACGTAC\n>a\nACGTACGTAC\n"), daemon=True)
    feeder.start()
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", str(fifo), "--outdir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "duplicate sequence id 'a'" in done.stderr, done.stderr
    assert f"pipe {fifo} record 1 and pipe {fifo} record 2" in done.stderr


def test_the_recorded_checksum_of_a_large_input_is_that_of_every_byte(tmp_path, run_cli):
    """An input checksum taken over part of each block read (the first 64 KiB, say) passed every test:
    each one hashed files smaller than a block. A rerun compares it with a real sha256."""
    import hashlib
    import random

    rng = random.Random(3)
    text = "".join(f">r{i}\n{''.join(rng.choice('ACGT') for _ in range(1_500))}\n" for i in range(2_000))
    plain, packed = tmp_path / "big.fa", tmp_path / "big2.fa.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.replace(">r", ">q").encode(), compresslevel=1))
    assert plain.stat().st_size > 3_000_000
    code, message = run_cli("prepare", plain, packed, "--outdir", tmp_path / "out")
    assert code == 0, message
    recorded = [entry["sha256"] for entry in fmt.load_manifest(tmp_path / "out")["inputs"]]
    assert recorded == [hashlib.sha256(plain.read_bytes()).hexdigest(), hashlib.sha256(packed.read_bytes()).hexdigest()]
