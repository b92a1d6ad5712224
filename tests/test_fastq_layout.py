"""FASTQ layout faults named for what they are: a short quality line never swallows the next record,
the quality length reported is the quality line's own, a missing '+' line or a FASTQ record inside
FASTA is said so, a '+' line naming another record is refused; lz4 and legacy lzma are named."""

from __future__ import annotations

import io
import lzma
from pathlib import Path

import pytest
from Bio import SeqIO

from virnucpro import prepared as fmt
from virnucpro import seqio
from virnucpro.errors import BadInputError
from virnucpro.seqio import HashingTextStream, read_records

SWALLOW = "@r1\nACGTACGTACG\n+\nIIIII\n@r2\nA\n+\nI\n@r3\nACGTACGT\n+\nIIIIIIII\n"
PLAIN = "".join(f"@p{i}\nACGTAC\n+\nIIIIII\n" for i in range(6))  # read by the four-line path


def read_or_refusal(path: Path) -> list | str:
    try:
        return [(r.id, r.sequence, r.line) for r in read_records(HashingTextStream(path))]
    except BadInputError as exc:
        return str(exc)


def both_paths(path: Path, monkeypatch, blocks=(5, 9, 17, 64, 4096)) -> list:
    """What the reader gives for every block size, with and without the four-line path: all the same."""
    results = []
    for block in blocks:
        monkeypatch.setattr(seqio, "BLOCK", block)
        results.append(read_or_refusal(path))
        with monkeypatch.context() as patched:
            patched.setattr(seqio, "_plain_fastq_columns", lambda lines: None)
            results.append(read_or_refusal(path))
    assert all(result == results[0] for result in results), results
    return results[0]


def test_a_short_quality_line_never_swallows_the_next_record(tmp_path, run_cli):
    path = tmp_path / "x.fq"
    path.write_text(SWALLOW)
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "'r1'" in message and "line 4" in message and "5 quality characters" in message, message
    assert "11 bases" in message and "'@r2'" in message and "next record's header" in message, message
    assert not (tmp_path / "out" / fmt.SEQUENCES).exists()


@pytest.mark.parametrize("before", ["", PLAIN])
def test_the_swallow_is_refused_by_both_paths_wherever_blocks_are_cut(tmp_path, monkeypatch, before):
    path = tmp_path / "x.fq"
    path.write_text(before + SWALLOW)
    refusal = both_paths(path, monkeypatch)
    assert isinstance(refusal, str) and "'r1'" in refusal and "5 quality characters" in refusal, refusal


def test_a_short_quality_line_is_counted_alone(tmp_path, run_cli):
    """150 bases, 149 quality characters, then the next header: 149 is said, not 156."""
    path = tmp_path / "x.fq"
    path.write_text("@r1\n" + "A" * 150 + "\n+\n" + "I" * 149 + "\n@r30001\n" + "A" * 150 + "\n+\n" + "I" * 150 + "\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "149 quality characters" in message and "150 bases" in message, message
    assert "156" not in message and "line 4" in message and "next record's header" in message, message


def test_a_long_quality_line_is_named_with_its_length(tmp_path, monkeypatch):
    path = tmp_path / "x.fq"
    path.write_text(PLAIN + "@r1\nACGT\n+\nIIIII\n@r2\nA\n+\nI\n")
    refusal = both_paths(path, monkeypatch)
    assert "line 28" in refusal and "5 quality characters for 4 bases" in refusal, refusal


def test_a_quality_spanning_more_lines_than_its_sequence_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "x.fq"
    path.write_text("@r1\nACGTACGT\n+\nIIII\nIIII\n")
    refusal = both_paths(path, monkeypatch)
    assert "'r1'" in refusal and "line 4" in refusal and "4 quality characters for 8 bases" in refusal, refusal
    assert "next record's header" not in refusal


def wrapped_fastq(width: int) -> str:
    """Records wrapped at `width`, sequence and quality alike, qualities starting with '@' or '+'."""
    out = []
    for i, length in enumerate([0, 1, width, width + 1, 3 * width, 3 * width + 2]):
        seq = ("ACGTN" * 40)[:length]
        qual = ("@+I#" * 60)[i % 3:][:length]
        wrap = lambda text: "".join(text[at:at + width] + "\n" for at in range(0, len(text), width))
        out.append(f"@w{i} d\n{wrap(seq)}+{'' if i % 2 else 'w' + str(i) + ' d'}\n{wrap(qual)}")
    return "".join(out)


@pytest.mark.parametrize("before", ["", PLAIN])
@pytest.mark.parametrize("width", [1, 3, 7])
def test_wrapped_fastq_reads_as_biopython_reads_it(tmp_path, monkeypatch, before, width):
    text = before + wrapped_fastq(width) + PLAIN
    path = tmp_path / "x.fq"
    path.write_text(text)
    records = both_paths(path, monkeypatch, blocks=range(3, 40, 4))
    assert [(rid, seq) for rid, seq, _ in records] == [(r.id, str(r.seq)) for r in SeqIO.parse(io.StringIO(text), "fastq")]


def test_a_missing_plus_line_is_said_and_its_line_named(tmp_path, monkeypatch, run_cli):
    path = tmp_path / "x.fq"
    path.write_text("@r1\nACGTACGT\nIIIIIIII\n@r2\nACGTACGT\nIIIIIIII\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "'+' line" in message and "line 3" in message and "'r1'" in message, message
    assert "protein" not in message
    refusal = both_paths(path, monkeypatch)
    assert "'+' line" in refusal and "line 3" in refusal, refusal


def test_a_fastq_record_inside_fasta_is_said_and_its_line_named(tmp_path, run_cli):
    path = tmp_path / "x.fa"
    path.write_text(">r0\nACGT\n>r1\nACGTACGT\n@r2\nACGT\n+\nIIII\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "FASTQ record" in message and "line 5" in message and "'@r2'" in message, message
    assert "protein" not in message


@pytest.mark.parametrize("data, name, command", [
    (b"\x04\x22\x4d\x18" + bytes(64), "lz4", "lz4 -d"),
    (b"\x02\x21\x4c\x18" + bytes(64), "lz4", "lz4 -d"),  # lz4 -l, the legacy format (a review's case)
    (b"\x50\x2a\x4d\x18" + bytes(64), "zstd", "zstd -d"),  # pzstd's skippable frame first (a review's case)
    (lzma.compress(b">r\nACGT\n", format=lzma.FORMAT_ALONE), "lzma", "xz --format=lzma -d"),
], ids=["lz4", "lz4-legacy", "pzstd", "lzma"])
def test_lz4_and_legacy_lzma_are_named_with_the_command_that_reads_them(tmp_path, run_cli, data, name, command):
    path = tmp_path / "reads.fa.x"
    path.write_bytes(data)
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and f"{name}-compressed" in message and command in message, message
    assert "damaged" not in message


@pytest.mark.parametrize("header, plus, accepted", [
    ("@r1", "+", True), ("@r1", "+r1", True), ("@r1 d x", "+r1 d x", True), ("@r1 d", "+r1 d  ", True),
    ("@r1 d", "+r1", True), ("@r1", "+r9", False), ("@r1 d", "+r9", False), ("@r1", "+r1 d", False),
    ("@r1 d", "+r1 e", False),
])
def test_a_plus_line_naming_another_record_is_refused(tmp_path, monkeypatch, header, plus, accepted):
    """The text after '+', when there is any, is the text after '@' (as Biopython) or the id alone."""
    path = tmp_path / "x.fq"
    text = PLAIN + f"{header}\nACGT\n{plus}\nIIII\n" + PLAIN
    path.write_text(text)
    result = both_paths(path, monkeypatch)
    if accepted:
        plain_plus = text.replace(f"\n{plus}\n", "\n+\n")
        expected = [(r.id, str(r.seq)) for r in SeqIO.parse(io.StringIO(plain_plus), "fastq")]
        assert [(rid, seq) for rid, seq, _ in result] == expected
    else:
        assert isinstance(result, str) and "'r1'" in result and "line 27" in result, result
        assert f"'{plus.rstrip()}'" in result, result


def test_a_compression_not_read_on_standard_input_is_answered_with_a_pipe(tmp_path):
    """A review's case: zstd on standard input was told `zstd -d -` and `zstd -dc - | virnucpro prepare -`."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", "-", "--outdir", str(tmp_path / "out")],
                          input=b"\x28\xb5\x2f\xfd" + bytes(64), capture_output=True, timeout=120)
    message = done.stderr.decode()
    said = " ".join(message.split())
    assert done.returncode == 3 and "zstd-compressed" in said, message
    assert "decompress it in the pipe: ... | zstd -dc | virnucpro prepare - ..." in said and "-d -" not in said, message


def _bgzf(path: Path, text: bytes) -> list[int]:
    """`text` written as a BGZF file (bgzip's format, blocks of 64 KiB or less, then the empty end
    block); the offsets at which its blocks start (Biopython's writer, as bgzip writes them)."""
    from Bio import bgzf

    with bgzf.BgzfWriter(str(path), "wb") as writer:
        writer.write(text)
    with open(path, "rb") as handle:
        return [start for start, *_ in bgzf.BgzfBlocks(handle)]


def test_a_bgzf_file_cut_at_a_block_end_is_refused_not_read_as_whole(tmp_path, run_cli):
    """A review's case: bgzip (or samtools) stopped midway leaves whole blocks without BGZF's end
    block; gzip reads that as a complete file, and the records after the cut were lost without a word
    (the record at the cut shortened). A whole BGZF file, and one followed by a plain gzip member, are
    read whole."""
    import gzip

    text = "".join(f">contig{i}\n{'ACGTTGCA' * 2000}\n" for i in range(12)).encode()
    whole = tmp_path / "whole.fa.gz"
    starts = _bgzf(whole, text)
    assert len(starts) > 3
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes(whole.read_bytes()[:starts[2]])
    for given in (cut,):
        code, message = run_cli("prepare", given, "--outdir", tmp_path / "refused")
        assert code == 3 and "truncated BGZF (bgzip) file" in message and "end-of-file block" in message, message
        assert not (tmp_path / "refused").exists()
    appended = tmp_path / "appended.fa.gz"
    appended.write_bytes(whole.read_bytes() + gzip.compress(b">extra\nACGTACGT\n"))
    for given, records in ((whole, 12), (appended, 13)):
        code, message = run_cli("prepare", given, "--outdir", tmp_path / given.stem)
        assert code == 0 and f"prepared {records} sequences" in message, message


@pytest.mark.parametrize("raw_block", [7, 13, 1 << 20])
def test_a_bgzf_header_split_across_reads_is_still_seen(tmp_path, run_cli, monkeypatch, raw_block):
    """A later review's case: a block whose header began in the last bytes of one read (a pipe may give
    a few bytes at a time) was taken for plain gzip, and a cut file passed as whole."""
    monkeypatch.setattr(seqio, "BLOCK", raw_block)
    text = "".join(f">contig{i}\n{'ACGTTGCA' * 2000}\n" for i in range(12)).encode()
    whole = tmp_path / "whole.fa.gz"
    starts = _bgzf(whole, text)
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes(whole.read_bytes()[:starts[2]])
    code, message = run_cli("prepare", cut, "--outdir", tmp_path / "refused", "--threads", "1")
    assert code == 3 and "truncated BGZF" in message, message
    code, message = run_cli("prepare", whole, "--outdir", tmp_path / "whole", "--threads", "1")
    assert code == 0 and "prepared 12 sequences" in message, message
