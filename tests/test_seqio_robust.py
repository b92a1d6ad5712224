"""The input reader under hostile inputs (issue 9, points 3, 7 and 10): line ends as Python's universal
newlines read them wherever blocks are cut, binary data refused at the first block that shows it
in bounded memory, headers with control characters or bytes that are not UTF-8 refused by name."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from Bio import SeqIO

from memory_helpers import traced_peak
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

    def read_to_refusal() -> BadInputError:
        with pytest.raises(BadInputError) as refused:
            for _ in read_records(stream):
                pass
        return refused.value

    refusal, peak = traced_peak(read_to_refusal)
    return refusal, stream, peak


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
    records, peak = traced_peak(lambda: records_of(path))
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

@pytest.mark.parametrize("protein", ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MXXKLLEEPQXXX", "xxxxflipqe", "MEF"])
def test_protein_is_refused_with_or_without_x(tmp_path, run_cli, protein):
    path = tmp_path / "protein.fa"
    path.write_text(f">dna\nACGTXXXXNNNNacgtxxxx\n>p1 a protein\n{protein}\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "'p1' (line 3)" in message and "looks like a protein" in message



@pytest.mark.parametrize("stray", ["I", "7", "E"])
def test_a_stray_letter_in_dna_is_refused_as_such_not_as_protein(tmp_path, run_cli, stray):
    """A reviewer's case: one 'I' in 1,000 bases was refused as "a protein sequence", sending the user
    looking for a mix-up that is not there. The count and the way to keep the record are said."""
    bases = "ACGT" * 250
    path = tmp_path / "dna.fa"
    path.write_text(f">r1\n{bases[:500]}{stray}{bases[500:]}\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert f"'r1' (line 1) has 1 of 1,001 characters that are no nucleotide code: '{stray}'" in message, message
    assert "protein" in message and "looks like a protein" not in message and "mask them as N" in message


@pytest.mark.parametrize("read", ["ACGTACGTACGZACGTACGTAC", "ACGTAC1GTACGTACGTACGTA", "ACGTEFACGT"])
def test_one_or_two_stray_letters_in_a_short_read_are_not_called_protein(tmp_path, run_cli, read):
    """A reviewer's case: the share test alone called one 'Z' in a 22-base read a protein."""
    path = tmp_path / "short.fa"
    path.write_text(f">good\n{'ACGT' * 60}\n>r1\n{read}\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "'r1' (line 3)" in message and "looks like a protein" not in message and "mask them as N" in message

# --- bounded memory whatever the input (blank-line, header and binary bombs) -------------------------

BOMB = 48 << 20  # bytes of filler: bounds below are a few blocks, the old reader held the filler (2x-16x)
MEASURE = ("import resource, subprocess, sys\n"
           "run = subprocess.run(sys.argv[1:], stderr=subprocess.PIPE, text=True)\n"
           "sys.stderr.write(run.stderr)\n"
           "print(run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def prepare_peak(path: Path, outdir: Path) -> tuple[int, str, int]:
    """Exit code, message and peak memory (bytes) of `virnucpro prepare --threads 1` in a fresh process."""
    result = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "virnucpro", "prepare",
                             str(path), "--outdir", str(outdir), "--threads", "1"], capture_output=True, text=True)
    code, peak_kb = map(int, result.stdout.split())
    return code, result.stderr, peak_kb * 1024


@pytest.fixture(scope="module")
def baseline_peak(tmp_path_factory) -> int:
    """The peak memory of preparing a one-record file: what the interpreter and imports cost."""
    folder = tmp_path_factory.mktemp("baseline")
    (folder / "tiny.fa").write_bytes(b">ok\nACGTACGTAC\n")
    code, message, peak = prepare_peak(folder / "tiny.fa", folder / "out")
    assert code == 0, message
    return peak


def gzip_bomb(path: Path, head: bytes, filler: bytes, tail: bytes = b"") -> Path:
    """`head`, BOMB bytes of `filler`, `tail`, gzip-compressed (a few hundred KB on disk)."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(head)
        piece = filler * ((1 << 20) // len(filler))
        for _ in range(BOMB >> 20):
            out.write(piece)
        out.write(tail)
    return path


@pytest.mark.parametrize("blank", [b"\n", b"\r", b"\r\n", b" \t\n"], ids=["lf", "cr", "crlf", "spaces"])
def test_blank_lines_after_a_record_cost_no_memory(tmp_path, baseline_peak, blank):
    """A record followed by 48 MB of blank lines (a zero-padded download run through tr): the record
    and the one after it are prepared in memory of a few blocks; blank lines are not accumulated."""
    path = gzip_bomb(tmp_path / "blank.fa.gz", b">ok\nACGTACGTAC\n", blank, b">next\nATGCCC\n")
    code, message, peak = prepare_peak(path, tmp_path / "out")
    assert code == 0, message
    rows = {r["sequence_id"]: r["length"] for r in fmt.read_table(tmp_path / "out" / fmt.SEQUENCES)}
    assert rows == {"ok": "10", "next": "6"}
    assert peak - baseline_peak < 16 * seqio.BLOCK, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("block", [7, 64, 4096])
def test_blank_lines_across_blocks_keep_sequences_and_line_numbers(tmp_path, monkeypatch, block):
    """A record broken by runs of blank lines longer than a block, then several records in one block:
    the same records, sequences and header line numbers as Python's universal newlines give."""
    data = (b">a x\nACGT\n" + b"\n" * 9000 + b"GG\n" + b" \t\n" * 3000 + b"CC\n\r\n" + b"\r" * 5000 + b"TTAA\n>b\nCC\n\n>c\nGG\n"
            + b"\n" * 3000 + b">d\n" + b"\n" * 5000 + b"AT\n>e\nA")
    path = tmp_path / "in.fa"
    path.write_bytes(data)
    monkeypatch.setattr(seqio, "BLOCK", block)
    assert records_of(path) == universal_fasta(data)
    assert records_of(path)[0][:2] == ("a", "ACGTGGCCTTAA")


def test_blank_lines_inside_a_fastq_record_are_not_accumulated(tmp_path, baseline_peak):
    path = gzip_bomb(tmp_path / "blank.fq.gz", b"@q1\nACGT\n", b"\n", b"GGCC\n+\nIIIIIIII\n")
    code, message, peak = prepare_peak(path, tmp_path / "out")
    assert code == 0, message
    assert [r["length"] for r in fmt.read_table(tmp_path / "out" / fmt.SEQUENCES)] == ["8"]
    assert peak - baseline_peak < 16 * seqio.BLOCK, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("head,filler,tail,line", [
    (b">", b"A", b"\nACGT\n", 1),                        # one enormous id
    (b">", b">", b"\nACGT\n", 1),                        # a line of '>'
    (b">ok\nACGT\n>", b"x ", b"\nACGT\n", 3),            # past the first record, an enormous description
    (b"@", b"A", b"\nACGT\n+\nIIII\n", 1),               # a FASTQ header
    (b"@q\nACGT\n+", b"q", b"\nIIII\n", 3),              # a FASTQ separator line repeating no header
], ids=["fasta-id", "gt", "description", "fastq-id", "fastq-plus"])
def test_a_header_longer_than_the_limit_is_refused_while_streaming(tmp_path, baseline_peak, head, filler, tail, line):
    """A 48 MB header is refused (exit 3, the line and the limit named) after about a block, never held whole."""
    path = gzip_bomb(tmp_path / "header.fa.gz", head, filler, tail)
    code, message, peak = prepare_peak(path, tmp_path / "out")
    assert code == 3, message
    assert f"line {line}:" in message and f"{seqio.HEADER_LIMIT:,} bytes" in message and "Traceback" not in message
    assert peak - baseline_peak < 8 * seqio.BLOCK, f"peak {peak / 2**20:.0f} MiB"
    assert not (tmp_path / "out").exists()


def test_header_limit_applies_to_headers_within_a_block_too(tmp_path, run_cli):
    path = tmp_path / "in.fa"
    path.write_bytes(b">ok\nACGT\n>" + b"y" * seqio.HEADER_LIMIT + b"\nACGT\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "line 3:" in message and f"{seqio.HEADER_LIMIT:,} bytes" in message


@pytest.mark.parametrize("block", [5, 4096])
def test_headers_up_to_the_limit_and_long_quality_lines_starting_with_at_are_accepted(tmp_path, monkeypatch, block):
    """A header of exactly HEADER_LIMIT bytes, multi-byte characters split across blocks, and a 100 kbp
    read whose quality line starts with '@' (Q31) all read as before."""
    monkeypatch.setattr(seqio, "BLOCK", block)
    header = ">" + "\u00e9" * 1000 + " " + "d" * (seqio.HEADER_LIMIT - 2002)
    fasta = tmp_path / "in.fa"
    fasta.write_bytes(header.encode() + b"\nACGT\n")
    assert len(header.encode()) == seqio.HEADER_LIMIT
    assert records_of(fasta) == [("\u00e9" * 1000, "ACGT", 1)]
    read = "ACGT" * 25_000
    fastq = tmp_path / "in.fq"
    fastq.write_text(f"@long\n{read}\n+\n{'@' * len(read)}\n@next\nAC\n+\n@@\n")
    assert records_of(fastq) == [("long", read, 1), ("next", "AC", 5)]


@pytest.mark.parametrize("filler", [b"\xff", "\u00e9".encode()], ids=["not-utf8", "not-ascii"])
def test_non_ascii_bytes_in_a_sequence_line_refused_at_the_first_block(tmp_path, baseline_peak, filler):
    """48 MB of 0xff (or of valid UTF-8 'é') with no line end after a record: refused in the block that
    shows the first byte, naming the line and byte offset, without buffering the line."""
    head = b">ok\n" + b"ACGT" * 150 + b"\n"
    path = gzip_bomb(tmp_path / "binary.fa.gz", head, filler)
    code, message, peak = prepare_peak(path, tmp_path / "out")
    assert code == 3, message
    assert peak - baseline_peak < 8 * seqio.BLOCK, f"peak {peak / 2**20:.0f} MiB"
    assert "line 3:" in message and f"byte 0x{filler[0]:02x} at byte offset {len(head):,}" in message


@pytest.mark.parametrize("padding", [512, 3 * 2**20 + 5])
def test_nul_padding_after_a_gzip_member_spanning_raw_blocks_is_skipped(tmp_path, monkeypatch, padding):
    """`gzip -t` accepts zeros after a member however many there are; they were skipped only inside
    the raw block that ended the member, so padding reaching into the next block was 'not gzip'."""
    monkeypatch.setattr(seqio, "BLOCK", 4096)
    text = b"".join(b">r%d\nACGTACGTAC\n" % i for i in range(3000))
    member = gzip.compress(text)
    path = tmp_path / "padded.fa.gz"
    path.write_bytes(member + b"\x00" * padding + gzip.compress(b">last\nACGT\n") + b"\x00" * padding)
    assert [r[0] for r in records_of(path)] == [f"r{i}" for i in range(3000)] + ["last"]


@pytest.mark.parametrize("fastq", [False, True], ids=["fasta", "fastq"])
def test_an_id_longer_than_the_limit_is_refused(tmp_path, run_cli, fastq):
    """Every chunk and ORF row repeats the id: one past ID_LIMIT is exit 3, naming the line and the limit;
    one at the limit is read."""
    def record(rid: str) -> str:
        return f"@{rid} a description\nACGTACGT\n+\nIIIIIIII\n" if fastq else f">{rid} a description\nACGTACGT\n"
    longest = "i" * seqio.ID_LIMIT
    path = tmp_path / "in.fq"
    path.write_text(record("ok") + record(longest) + record(longest + "j"))
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    line = 9 if fastq else 5
    assert code == 3 and f"line {line}:" in message and f"{seqio.ID_LIMIT + 1:,} characters" in message, message
    path.write_text(record("ok") + record(longest))
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "kept")
    assert code == 0, message
    assert longest in (tmp_path / "kept" / "sequences.tsv").read_text()


def test_the_longest_id_keeps_prepare_memory_a_small_multiple_of_the_record(tmp_path, baseline_peak):
    """A 2 Mbp record whose id has ID_LIMIT characters costs at most a few times what the same record
    with a short id costs (a 60,000-character id once cost a thousand times the record)."""
    sequence = "ACGTTGCAAGGCTTAACCGT" * 100_000
    costs = {}
    for name, rid in (("short", "contig_1"), ("longest", "i" * seqio.ID_LIMIT)):
        path = tmp_path / f"{name}.fa"
        path.write_text(f">{rid}\n{sequence}\n")
        code, message, peak = prepare_peak(path, tmp_path / f"out_{name}")
        assert code == 0, message
        costs[name] = peak - baseline_peak
    assert costs["longest"] < 4 * costs["short"], {name: f"{cost / 2**20:.0f} MiB" for name, cost in costs.items()}


@pytest.mark.parametrize("read", ["", "A"], ids=["empty reads", "1-bp reads"])
def test_fastq_groups_of_short_reads_stay_bounded_in_records(tmp_path, read):
    """Groups close at GROUP_RECORDS records too: a run of empty reads (cutadapt keeps them) was one
    group holding every record, so memory grew with the file."""
    path = tmp_path / "short.fq"
    count = 3 * seqio.GROUP_RECORDS + 5
    path.write_text("".join(f"@e{i}\n{read}\n+\n{'I' * len(read)}\n" for i in range(count)))
    sizes = [len(group.ids) for group in seqio.record_groups(HashingTextStream(path))]
    assert sum(sizes) == count and max(sizes) <= seqio.GROUP_RECORDS, sizes


@pytest.mark.parametrize("read", ["", "ACGTAC", "AC\nGT\n\nA"], ids=["empty records", "6-bp reads", "wrapped, blank"])
def test_fasta_groups_of_short_reads_stay_bounded_in_records(tmp_path, read):
    """FASTA groups close at GROUP_RECORDS records too, as FASTQ's do: a megabyte of 6-bp reads is
    ~70,000 records, each costing far more parsed than as text (400k reads: 499 MB peak vs 131 MB as
    FASTQ). Records, sequences and header line numbers stay those Biopython reads."""
    path = tmp_path / "short.fa"
    count = 3 * seqio.GROUP_RECORDS + 5
    path.write_text("".join(f">e{i} d\n{read}\n" for i in range(count)))
    groups = list(seqio.record_groups(HashingTextStream(path)))
    sizes = [sum(1 for _ in group.parse()) for group in groups]
    assert sum(sizes) == count and max(sizes) <= seqio.GROUP_RECORDS, sizes
    assert records_of(path) == universal_fasta(path.read_bytes())


@pytest.mark.parametrize("text", ["@r1\nAC GT\n+\nIIII\n", "@r1\nAC GT\n+\nIIII\n@r2\nA\n+\nI\n",
                                  "@r1\nACGT\nAC GT\n+\nIIIIIIII\n"], ids=["alone", "then a record", "second line"])
def test_a_space_inside_a_fastq_sequence_is_named(tmp_path, text):
    """A space was counted as a base: the refusal blamed a truncated file or the quality length."""
    path = tmp_path / "space.fq"
    path.write_text(text)
    with pytest.raises(BadInputError, match=r"record 'r1' \(line 1\) has a space inside its sequence"):
        records_of(path)


@pytest.mark.parametrize("text, suggestion", [
    (">a\nACGT\n\ufeff>b\nACGT\n", "a byte-order mark inside the file"),
    ("@a\nACGT\n+\nIIII\n\ufeff@b\nACGT\n+\nIIII\n", "starts with a byte-order mark"),
    (">a\n;made by hand\nACGT\n", "a ';' comment line?"),
], ids=["fasta bom", "fastq bom", "comment"])
def test_misplaced_marks_are_named_not_taken_for_protein(tmp_path, run_cli, text, suggestion):
    """A byte-order mark inside a file (Windows files joined with cat) and a ';' comment line were
    reported as odd letters or as protein."""
    path = tmp_path / "x.fa"
    path.write_text(text, encoding="utf-8")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and suggestion in message and "protein" not in message, message
