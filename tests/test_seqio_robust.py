"""The input reader under hostile inputs (issue 9, points 3, 7 and 10): line ends as Python's universal
newlines read them wherever blocks are cut, binary data refused at the first block that shows it
in bounded memory, headers with control characters or bytes that are not UTF-8 refused by name."""

from __future__ import annotations

import gzip
import io
import tracemalloc
import zlib
from pathlib import Path

import pytest
from Bio import SeqIO

from virnucpro import prepared as fmt
from virnucpro import seqio
from virnucpro.errors import BadInputError
from virnucpro.seqio import HashingTextStream, read_records


def records_of(path: Path) -> list[tuple[str, str, int]]:
    return [(r.id, r.sequence, r.line) for r in read_records(HashingTextStream(path))]


def universal_fasta(data: bytes) -> list[tuple[str, str, int]]:
    """What the original reads: Biopython on a text-mode file (universal newlines), header line numbers."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=None).read()
    header_lines = [n for n, line in enumerate(text.split("\n"), start=1) if line.startswith(">")]
    parsed = [(r.id, str(r.seq)) for r in SeqIO.parse(io.StringIO(text), "fasta")]
    return [(rid, seq, line) for (rid, seq), line in zip(parsed, header_lines, strict=True)]


# --- point 3: line ends ------------------------------------------------------------------------

MAC = b">m1 old mac\rACGTACGTAA\rCCGGTT\r>m2\rGGGAAATTTCCC\r"
UNIX = b">s0 unix\nATGAAACCCGGGTTT\nAAACCC\n>s1\nATGCCC\n"
WINDOWS = b">w1 windows\r\nATGGCG\r\nGCGGCG\r\n\r\n>w2\r\nTTTAAA\r\n"


def test_concatenated_mac_and_unix_files_keep_every_record(tmp_path, run_cli):
    """`cat mac_cr.fa unix.fa`: CR-only lines first, LF lines after, in one file."""
    path = tmp_path / "mixed.fa"
    path.write_bytes(MAC + UNIX)
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0, message
    rows = {r["sequence_id"]: int(r["length"]) for r in fmt.read_table(tmp_path / "out" / fmt.SEQUENCES)}
    assert rows == {rid: len(seq) for rid, seq, _ in universal_fasta(MAC + UNIX)}
    assert rows == {"m1": 16, "m2": 12, "s0": 21, "s1": 6}


@pytest.mark.parametrize("block", list(range(1, 24)) + [64, 1000])
def test_line_ends_mixed_anywhere_and_cut_anywhere(tmp_path, monkeypatch, block):
    """Every cut of the input into blocks (a CRLF split between two blocks included) reads the same
    records, sequences and header line numbers as Python's universal newlines."""
    data = UNIX + MAC + WINDOWS + b">last\rAC\r\nGT\n\rTT"
    path = tmp_path / "in.fa"
    path.write_bytes(data)
    monkeypatch.setattr(seqio, "BLOCK", block)
    assert records_of(path) == universal_fasta(data)


@pytest.mark.parametrize("block", [6, 7, 8, 13, 4096])
def test_gzip_and_fastq_line_ends_cut_anywhere(tmp_path, monkeypatch, block):
    """Decompressed output comes in blocks of at most BLOCK bytes too; FASTQ line numbers stay exact."""
    fastq = b"@q1 x\r\nACGT\r\n+\r\nIIII\r\n@q2\rGGCC\r+\rIIII\r\n\n@q3\nTTAA\n+\nIIII"
    path = tmp_path / "in.fq.gz"
    path.write_bytes(gzip.compress(fastq))
    monkeypatch.setattr(seqio, "BLOCK", block)
    assert records_of(path) == [("q1", "ACGT", 1), ("q2", "GGCC", 5), ("q3", "TTAA", 10)]


# --- point 7: binary data, bounded cost ------------------------------------------------------------

def refusal_and_peak_memory(path: Path) -> tuple[BadInputError, HashingTextStream, int]:
    stream = HashingTextStream(path)
    tracemalloc.start()
    try:
        with pytest.raises(BadInputError) as refused:
            for _ in read_records(stream):
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return refused.value, stream, peak


def test_nul_padding_after_a_record_refused_at_the_first_block(tmp_path):
    """A truncated download padded with zeros (no newline in them) past the first 4 KB: refused where
    the zeros begin, after reading one block or two, not after reading (and holding) all of them."""
    record = b">r1 good\n" + b"ATGAAACCCGGGTTT\n" * 500 + b">r2\nACGT"
    path = tmp_path / "padded.fa"
    with open(path, "wb") as out:
        out.write(record)
        for _ in range(32):
            out.write(bytes(1 << 20))
    error, stream, peak = refusal_and_peak_memory(path)
    assert stream.bytes_read <= 2 * seqio.BLOCK
    assert peak < 8 * seqio.BLOCK
    assert "binary data" in str(error) and f"byte offset {len(record):,}" in str(error) and str(path) in str(error)
    assert "line 503" in str(error) and "0x00" in str(error)


def test_compressed_zeros_are_inflated_a_block_at_a_time(tmp_path):
    """A small gzip file that inflates to 128 MB of zeros: memory stays a few blocks."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    record = b">r1\n" + b"ACGTACGT\n" * 1000
    parts = [compressor.compress(record)]
    parts += [compressor.compress(bytes(1 << 24)) for _ in range(8)]
    path = tmp_path / "bomb.fa.gz"
    path.write_bytes(b"".join(parts) + compressor.flush())
    error, _, peak = refusal_and_peak_memory(path)
    assert peak < 8 * seqio.BLOCK
    assert "binary data" in str(error) and f"byte offset {len(record):,}" in str(error)


def test_control_character_in_a_sequence_line_is_refused_with_its_place(tmp_path, run_cli):
    path = tmp_path / "ctl.fa"
    path.write_bytes(b">a\nACGT\nAC\x1bGT\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "line 3" in message and "byte offset 10" in message and "0x1b" in message


def test_a_long_single_line_record_reads_in_linear_time(tmp_path, monkeypatch):
    """An 8 Mbp sequence on one line read in 4 KB blocks (2,048 blocks without a line end): the
    unfinished line is kept as pieces, not re-copied for every block, and held once."""
    sequence = ("ACGTTGCA" * (1 << 20)).encode()
    path = tmp_path / "contig.fa"
    path.write_bytes(b">contig\n" + sequence + b"\n>next\nACGT\n")
    monkeypatch.setattr(seqio, "BLOCK", 4096)
    tracemalloc.start()
    try:
        records = records_of(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert records == [("contig", sequence.decode(), 1), ("next", "ACGT", 3)]
    assert peak < 6 * len(sequence)


# --- point 10: headers -------------------------------------------------------------------------------

def many_records(n: int) -> bytes:
    return b"".join(b">r%d\n%s\n" % (i, b"ACGTTGCA" * 12) for i in range(n))


@pytest.mark.parametrize("header,shown", [(b">bad\x00id desc", "bad\\x00id"), (b">esc desc\x1b[31m", "esc"),
                                          (b">del\x7f", "del\\x7f")])
def test_control_character_in_a_header_past_the_first_blocks(tmp_path, run_cli, monkeypatch, header, shown):
    monkeypatch.setattr(seqio, "BLOCK", 4096)
    head = many_records(200)  # about 20 KB: five blocks before the header
    path = tmp_path / "in.fa"
    path.write_bytes(head + header + b"\nACGTACGT\n" + many_records(3))
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    offset = len(head) + next(i for i, byte in enumerate(header) if byte < 32 or byte == 127)
    assert "line 401" in message and f"record '{shown}'" in message and f"byte offset {offset:,}" in message
    assert "Traceback" not in message and not (tmp_path / "out").exists()


def test_control_character_in_a_fastq_header(tmp_path, run_cli):
    path = tmp_path / "in.fq"
    path.write_bytes(b"@q1\nACGT\n+\nIIII\n@q2\x01x\nACGT\n+\nIIII\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "line 5" in message and "record 'q2\\x01x'" in message


def test_headers_that_are_not_utf8_are_refused_not_merged(tmp_path, run_cli):
    """Latin-1 'seq\xe9' and 'seq\xe8' would both become 'seq\ufffd' and collide as duplicates."""
    first = b">seq\xe9 one\nACGTACGT\n"
    path = tmp_path / "latin1.fa"
    path.write_bytes(first + b">seq\xe8 two\nACGTACGT\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "not UTF-8" in message and "line 1" in message and "byte offset 4" in message and "0xe9" in message
    assert "record 'seq\\xe9'" in message and "duplicate" not in message


def test_one_header_that_is_not_utf8_far_into_the_file(tmp_path, run_cli):
    head = many_records(20_000)  # past the first block
    path = tmp_path / "in.fa"
    path.write_bytes(head + b">caf\xe9\nACGT\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "line 40001" in message and f"byte offset {len(head) + 4:,}" in message and "not UTF-8" in message


def test_tabs_and_utf8_in_headers_stay_accepted(tmp_path, run_cli):
    path = tmp_path / "in.fa"
    path.write_bytes(">s\u00e9q\tdescription\twith tabs\nATGAAACCC\n>\u03b1\u03b2 x\nATGCCC\n".encode())
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0, message
    assert [r["sequence_id"] for r in fmt.read_table(tmp_path / "out" / fmt.SEQUENCES)] == ["s\u00e9q", "\u03b1\u03b2"]


# --- point 14: X is masked DNA, protein is still refused ---------------------------------------------

@pytest.mark.parametrize("protein", ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MXXKLLEEPQXXX", "xxxxflipqe"])
def test_protein_is_refused_with_or_without_x(tmp_path, run_cli, protein):
    path = tmp_path / "protein.fa"
    path.write_text(f">dna\nACGTXXXXNNNNacgtxxxx\n>p1 a protein\n{protein}\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "'p1' (line 3)" in message and "looks like a protein" in message
