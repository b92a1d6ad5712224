"""The whole-group fast paths of prepare (plain ASCII FASTA split with list operations, reads that
are each their one chunk, ORF lines cut from one joined strand) give exactly what the record-by-record
path and the original give, and hand every group they cannot take to the path that names the record."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from test_prepare_reference import original_orfs, random_record, shard_rows
from virnucpro import prepared as fmt
from virnucpro.errors import BadInputError
from virnucpro.prepare import _cut_into_chunks, prepare
from virnucpro.seqio import ID_LIMIT, RecordGroup, _plain_fasta_columns


def parsed(text: str) -> tuple[list[str], list[str]]:
    records = list(RecordGroup(Path("in.fa"), fasta_text=text).parse())
    return [r.id for r in records], [r.sequence for r in records]


def random_fasta_text(rng: random.Random) -> str:
    """The text of a FASTA group after its first '>': descriptions with tabs, wrapped and blank
    lines, spaces and tabs inside sequences, empty records, lowercase and IUPAC letters."""
    records = []
    for i in range(rng.randrange(1, 40)):
        header = rng.choice([f"r{i}", f"r{i} desc", f"r{i}\tdesc two", f"  r{i}", f"r{i}|x:1-9 len=3"])
        seq = random_record(rng, rng.randrange(0, 300)) if rng.random() > 0.1 else ""
        width = rng.randrange(1, 80)
        lines = [seq[k:k + width] for k in range(0, len(seq), width)]
        lines = [line + rng.choice(["", "", " ", "\t"]) for line in lines]
        if rng.random() < 0.2:
            lines.insert(rng.randrange(len(lines) + 1), "")
        records.append("\n".join([header, *lines]))
    return "\n>".join(records) + rng.choice(["", "\n"])


@pytest.mark.parametrize("seed", range(40))
def test_plain_groups_split_as_record_by_record(seed):
    text = random_fasta_text(random.Random(seed))
    assert _plain_fasta_columns(text) == parsed(text)
    assert RecordGroup(Path("in.fa"), fasta_text=text).columns() == parsed(text)


@pytest.mark.parametrize("text", [
    "r1 caf\u00e9\nACGT\n>r2\nAC",             # not ASCII: a description, allowed
    "r1 \"quoted\" description\nACGT",       # a double quote, allowed in a description
    "r1\nAC GT\n>r2 x\n\nTT",                 # no reason to refuse: still equal
])
def test_groups_the_fast_path_declines_or_takes_read_the_same(text):
    assert RecordGroup(Path("in.fa"), fasta_text=text).columns() == parsed(text)


@pytest.mark.parametrize("text, named", [
    ("r1\nACGT\n>   \nACGT", "line 3: the header has no sequence id (nothing but blanks"),
    ("r1\nACGT\n>\"r2\nACGT", "line 3: the id '\"r2' starts with a double quote"),
    ("r1\nAC\n>r2\u200b\nAC", "line 3: the id 'r2\\u200b' holds U+200B"),
    (f"r1\nAC\n>{'x' * (ID_LIMIT + 1)}\nAC", "line 3: the id 'xxxx"),
    (f"r1\nAC\n>r2 {'d' * (1 << 16)}\nAC", "line 3: header line 'r2 ddd"),
])
def test_a_group_holding_a_refused_header_names_its_line(text, named):
    """The fast path declines (None) and `columns` falls back to `parse`, which names the record."""
    assert _plain_fasta_columns(text) is None
    with pytest.raises(BadInputError) as refused:
        RecordGroup(Path("in.fa"), fasta_text=text, first_line=1).columns()
    assert named in str(refused.value)


@pytest.mark.parametrize("size", [500, 37])
def test_reads_that_fit_a_chunk_match_the_original(tmp_path, size):
    """Every record no longer than --chunk-size (the short-read path: each record its one chunk),
    lowercase, IUPAC and masked letters, both strands: ORFs and chunk rows as the original's."""
    rng = random.Random(size)
    lengths = [1, 2, 3, 4, size - 1, size] + [rng.randrange(1, size + 1) for _ in range(400)]
    records = [(f"r{i}", random_record(rng, n)) for i, n in enumerate(lengths)]
    fasta = tmp_path / "reads.fa"
    fasta.write_text("".join(f">{rid} read\n{seq}\n" for rid, seq in records))
    out = tmp_path / "prep"
    prepare([fasta], out, chunk_size=size)
    assert shard_rows(out) == [orf for rid, seq in records for orf in original_orfs(rid, seq, size)]
    assert [(c["chunk_id"], c["sequence_id"], c["start"], c["length"]) for c in fmt.read_table(out / fmt.CHUNKS)] == [
        (f"{rid}_chunk_1", rid, "0", str(len(seq))) for rid, seq in records]
    n_orfs = {rid: len(original_orfs(rid, seq, size)) for rid, seq in records}
    assert [(r["sequence_id"], int(r["n_chunks"]), int(r["n_orfs"])) for r in fmt.read_table(out / fmt.SEQUENCES)] == [
        (rid, 1, n_orfs[rid]) for rid, _ in records]


@pytest.mark.parametrize("lengths", [[5, 3, 10], [5, 0, 3], [11, 4], [0], [10, 10]])
def test_cutting_reads_whole_equals_cutting_record_by_record(lengths):
    """The short-read shortcut of `_cut_into_chunks` (every record non-empty and at most the chunk
    size) gives the columns the general loop gives; empty and longer records take the loop."""
    ids = [f"s{i}" for i in range(len(lengths))]
    sequences = ["A" * n for n in lengths]
    cut = _cut_into_chunks(ids, sequences, 10)
    expected = [(f"{rid}_chunk_{k}", rid, start, size) for rid, seq in zip(ids, sequences)
                for k, (start, size) in enumerate(fmt.chunk_spans(len(seq), 10), start=1)]
    assert list(zip(cut.ids, cut.sequence_ids, cut.starts, cut.lengths)) == expected
    assert cut.chunks == [seq[start:start + size] for (_, rid, start, size) in expected
                          for seq in [sequences[ids.index(rid)]]]
    counts = [sum(1 for row in expected if row[1] == rid) for rid in ids]
    assert cut.first_chunk == [sum(counts[:r]) for r in range(len(ids) + 1)]


# --- FASTQ: plain four-line blocks split as lists, the rest line by line ---------------------------

def random_fastq(rng: random.Random) -> bytes:
    """FASTQ text mostly of plain four-line records, some not plain: wrapped sequences, a '+' line
    repeating the header, qualities starting with '@' or '+', empty reads, blank lines, CRLF."""
    out = []
    for i in range(rng.randrange(1, 60)):
        seq = "".join(rng.choices("ACGTN", k=rng.choice([0, 1, 5, 30, 151])))
        qual = "".join(rng.choices("@+I#!5", k=len(seq)))
        head = rng.choice([f"@r{i}", f"@r{i} 1:N:0:ACGT", f"@r{i}\tx"])
        plus = "+" if rng.random() < 0.9 else "+" + head[1:]
        if rng.random() < 0.05 and len(seq) > 2:
            seq = seq[:2] + "\n" + seq[2:]  # a wrapped sequence: the reader goes line by line from here
        out.append(f"{head}\n{seq}\n{plus}\n{qual}\n" + ("\n" if rng.random() < 0.03 else ""))
    text = "".join(out)
    if rng.random() < 0.2:
        text = text[:-1]  # no final line end
    return (text.replace("\n", "\r\n") if rng.random() < 0.1 else text).encode()


def read_or_refusal(path: Path) -> list | str:
    from virnucpro.seqio import HashingTextStream, read_records
    try:
        return [(r.id, r.sequence, r.line) for r in read_records(HashingTextStream(path))]
    except BadInputError as exc:
        return str(exc)


def read_line_by_line(path: Path, monkeypatch) -> list | str:
    """What the line-by-line reader alone gives (the plain-block path turned off)."""
    from virnucpro import seqio
    with monkeypatch.context() as patched:
        patched.setattr(seqio, "_plain_fastq_columns", lambda lines: None)
        return read_or_refusal(path)


@pytest.mark.parametrize("block", [7, 64, 333, 4096])
@pytest.mark.parametrize("seed", range(12))
def test_fastq_blocks_read_as_line_by_line(tmp_path, monkeypatch, seed, block):
    """Records, sequences and header lines equal the line-by-line reader's wherever blocks are cut,
    plain and other records mixed; and, for valid files, Biopython's records."""
    from Bio import SeqIO

    from virnucpro import seqio
    data = random_fastq(random.Random(seed))
    path = tmp_path / "in.fq"
    path.write_bytes(data)
    monkeypatch.setattr(seqio, "BLOCK", block)
    expected = read_line_by_line(path, monkeypatch)
    assert read_or_refusal(path) == expected
    if isinstance(expected, list) and b"\n\n" not in data and b"\r\n\r\n" not in data:
        with open(path, newline=None) as handle:
            assert [(rid, seq) for rid, seq, _ in expected] == [(r.id, str(r.seq)) for r in SeqIO.parse(handle, "fastq")]


@pytest.mark.parametrize("tail", [
    "@r3\nACGT\n+\nIII\n",              # fewer quality characters
    "@r3\nACGT\n+\nIIIII\n@r4\nA\n+\nI\n",  # more (read as the next record's lines)
    "@r3\nACGT\n+\n",                   # truncated
    "@r3\nACGT\n",                      # truncated before its '+' line
    "@r3\nACGT\nACGT\nIIII\n@r4\nA\n+\nI\n",  # a line where the '+' line belongs
    "r3\nACGT\n+\nIIII\n",              # no '@'
    "@r3\nAC GT\n+\nIIIII\n",           # a space in the sequence
    "@r3\nACEF\n+\nIIII\n",             # protein letters
    "@\"r3\nACGT\n+\nIIII\n",           # a leading quote
    "@ \nACGT\n+\nIIII\n",              # no id
    "@r3 caf\u00e9\nACGT\n+\nIIII\n",   # a description beyond ASCII: accepted
    f"@{'x' * 1001}\nACGT\n+\nIIII\n",  # an id over the limit
])
@pytest.mark.parametrize("block", [9, 4096])
def test_a_fastq_record_that_is_not_plain_is_named_as_line_by_line(tmp_path, monkeypatch, tail, block):
    from virnucpro import seqio
    path = tmp_path / "in.fq"
    path.write_text("@r1\nACGT\n+\nIIII\n@r2 d\nGG\n+\n@@\n" + tail, encoding="utf-8")
    monkeypatch.setattr(seqio, "BLOCK", block)
    expected = read_line_by_line(path, monkeypatch)
    assert read_or_refusal(path) == expected


@pytest.mark.parametrize("tail", [
    " \n@s\nACGT\n+" + "x" * 60 + "\nIIII\n",    # a blank line (skipped), then a '+' line over the limit
    "@r\n+\n@s\nACGT\n+" + "x" * 60 + "\nIIII\n",  # an empty record, then the same
    " \n@" + "x" * 60 + "\nACGT\n+\nIIII\n",       # a blank line, then a header over the limit
    "@r\n+\n@" + "x" * 60 + "\nACGT\n+\nIIII\n",   # an empty record, then the same
    "@r\nAC\nGT\n+" + "x" * 60 + "\nIIII\n",       # a wrapped sequence, then a long '+' line
    "garbage\n@t\nAC\x00T\n+\nIIII\n",             # a fault, then binary data in a later block
])
def test_the_lines_a_plain_block_leaves_are_read_as_line_by_line(tmp_path, monkeypatch, tail):
    """The 1-3 lines after a block's last whole four-line record begin the next record: the line after
    them is checked as the line-by-line reader would check it (a header or '+' line over the limit is
    refused while it streams, never held whole), and a fault in them is named before the next block
    is read. Every cut of the input into blocks, with a header limit small enough to reach."""
    from virnucpro import seqio
    path = tmp_path / "in.fq"
    path.write_bytes(("@a\nACGT\n+\nIIII\n@b\nGG\n+\nII\n" + tail).encode())
    monkeypatch.setattr(seqio, "HEADER_LIMIT", 40)
    for block in range(4, 48):
        monkeypatch.setattr(seqio, "BLOCK", block)
        assert read_or_refusal(path) == read_line_by_line(path, monkeypatch), f"blocks of {block} bytes"
