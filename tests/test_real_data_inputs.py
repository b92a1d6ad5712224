"""Inputs as real data comes: paired-end reads (two mate files, interleaved), read files that are no
FASTA/FASTQ text (BAM, CRAM, SRA, ZIP), ids in two Unicode spellings, one input under two spellings."""

from __future__ import annotations

import bz2
import gzip
import re
import shutil
import struct
import subprocess
import sys
import unicodedata
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from virnucpro import prepared as fmt

BASES = "ATGAAACCCGGGTTTATGAAACCCGGGTTTAAACCCGGG"


def fastq(records: list[str], bases: str = BASES) -> str:
    """4-line FASTQ records, one per header (given without its '@')."""
    return "".join(f"@{header}\n{bases}\n+\n{'I' * len(bases)}\n" for header in records)


def mate_bases(mate: int) -> str:
    """The reads of mate 1 or 2 (two mates read the two strands: never the same file twice)."""
    return BASES if mate == 1 else BASES[::-1]


def illumina(mate: int, n: int = 3) -> str:
    """Mate `mate` of an Illumina run: same id in both files, the mate in the comment."""
    return fastq([f"M01:12:FC1:1:1101:{i}:1 {mate}:N:0:ACGTAC" for i in range(n)])


def fasterq_dump(n: int = 3, mate: int = 1) -> str:
    """A mate file as fasterq-dump writes them (sra_1 and sra_2 alike): 'SRR123456.1 1 length=39'."""
    return fastq([f"SRR123456.{i} {i} length={len(BASES)}" for i in range(1, n + 1)], mate_bases(mate))


def interleaved(n: int = 3) -> str:
    """Both mates of each pair one after the other, with one id."""
    return fastq([f"read{i} {mate}:N:0:ACGTAC" for i in range(n) for mate in (1, 2)])


def sequence_ids(outdir: Path) -> list[str]:
    return [row.split("\t", 1)[0] for row in (outdir / fmt.SEQUENCES).read_text().splitlines()[1:]]


def awk_commands(message: str) -> list[str]:
    """The awk commands a refusal's fix gives, each up to its output file."""
    return re.findall(r"((?:\w+ -dc \S+ \| )?awk '[^']*'(?: \S+)? > \S+)", message)


# --- 1: paired-end reads ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["illumina", "fasterq-dump gzip"])
def test_mate_files_are_refused_as_mates_with_ways_out(tmp_path, run_cli, kind):
    """R1 and R2 hold one id per pair: still exit 3 (each read is scored on its own), but the message
    says they look like mates and gives three ways out, the last one a command naming the files."""
    if kind == "illumina":
        r1, r2 = tmp_path / "s_R1.fastq", tmp_path / "s_R2.fastq"
        r1.write_text(illumina(1))
        r2.write_text(illumina(2))
    else:
        r1, r2 = tmp_path / "sra_1.fastq.gz", tmp_path / "sra_2.fastq.gz"
        r1.write_bytes(gzip.compress(fasterq_dump().encode()))
        r2.write_bytes(gzip.compress(fasterq_dump(mate=2).encode()))
    code, message = run_cli("prepare", r1, r2, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "duplicate sequence id" in message and "look like the two mates of paired-end reads" in message, message
    for way_out in ("its own sample", "fastp --merge", "bbmerge", "/1", "/2"):
        assert way_out in message, (way_out, message)
    commands = awk_commands(message)
    assert len(commands) == 2 and str(r1) in commands[0] and str(r2) in commands[1], message
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk here")
@pytest.mark.parametrize("layout", ["two files gzip", "interleaved"])
def test_the_awk_command_given_makes_the_ids_unique(tmp_path, run_cli, layout):
    """The command the fix gives runs as printed, and its output prepares: every mate with /1 or /2."""
    if layout == "interleaved":
        inputs = [tmp_path / "pairs.fastq"]
        inputs[0].write_text(interleaved())
    else:
        inputs = [tmp_path / "sra_1.fastq.gz", tmp_path / "sra_2.fastq.gz"]
        for mate, path in enumerate(inputs, 1):
            path.write_bytes(gzip.compress(fasterq_dump(mate=mate).encode()))
    code, message = run_cli("prepare", *inputs, "--outdir", tmp_path / "refused")
    assert code == 3, message
    commands = awk_commands(message)
    assert commands, message
    renamed = []
    for command in commands:
        subprocess.run(command, shell=True, check=True, cwd=tmp_path)
        renamed.append(tmp_path / command.rsplit("> ", 1)[1])
    code, message = run_cli("prepare", *renamed, "--outdir", tmp_path / "out")
    assert code == 0, message
    ids = sequence_ids(tmp_path / "out")
    assert len(ids) == 6 and all(rid.endswith(("/1", "/2")) for rid in ids), ids
    assert {rid[:-2] for rid in ids} == {rid[:-2] for rid in ids if rid.endswith("/1")}


def record(form: str, header: str, newline: str = "\n", bases: str = BASES) -> str:
    """One record: FASTQ with 4 lines (the '+' line repeating the header), or FASTA with its
    sequence on two lines."""
    if form == "fastq":
        lines = [f"@{header}", bases, f"+{header}", "I" * len(bases)]
    else:
        lines = [f">{header}", bases[:20], bases[20:]]
    return "".join(line + newline for line in lines)


def paired_inputs(directory: Path, form: str, names: list[str], newline: str) -> list[Path]:
    """Three pairs of reads in two mate files or, for one name, one interleaved file, compressed as
    the names end. With CRLF line ends the ids are bare (the '\\r' then ends the id), else commented."""
    paths = [directory / name for name in names]
    header = "read{i}" if newline == "\r\n" else "read{i} {mate}:N:0:ACGTAC"
    for number, path in enumerate(paths, 1):
        mates = (1, 2) if len(paths) == 1 else (number,)
        text = "".join(record(form, header.format(i=i, mate=mate), newline, mate_bases(mate)) for i in range(3)
                       for mate in mates)
        data = text.encode()
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else bz2.compress(data)
                         if path.suffix == ".bz2" else data)
    return paths


PAIRED_LAYOUTS = [
    ("fastq", ["sra_1.fastq.gz", "sra_2.fastq.gz"], "\n"),
    ("fastq", ["pairs.fastq"], "\n"),
    ("fastq", ["r_1.fq", "r_2.fq"], "\r\n"),
    ("fastq", ["pairs.fq"], "\r\n"),
    ("fasta", ["m_1.fa", "m_2.fa"], "\n"),
    ("fasta", ["m_1.fasta.bz2", "m_2.fasta.bz2"], "\n"),
    ("fasta", ["pairs.fna"], "\n"),
    ("fasta", ["m_1.fa", "m_2.fa"], "\r\n"),
    ("fasta", ["pairs.fa"], "\r\n"),
]


@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk here")
@pytest.mark.parametrize("form, names, newline", PAIRED_LAYOUTS,
                         ids=[f"{form} {' '.join(names)} {ascii(newline)}" for form, names, newline in PAIRED_LAYOUTS])
def test_the_fix_given_for_each_format_runs_and_prepares(tmp_path, run_cli, form, names, newline):
    """FASTA mates get a FASTA awk (the FASTQ one turned every third line into '+') and FASTA names,
    and no FASTQ-only tool; CRLF files get /1 before the '\\r' (it once came after, and the FASTQ
    was refused). Each command runs as printed; its output prepares, sequences untouched."""
    inputs = paired_inputs(tmp_path, form, names, newline)
    code, message = run_cli("prepare", *inputs, "--outdir", tmp_path / "refused")
    assert code == 3 and "paired-end" in message, message
    assert ("fastp --merge" in message) == (form == "fastq") and "bbmerge.sh" in message, message
    assert ("4-line FASTQ" in message) == (form == "fastq"), message
    renamed = []
    for command in awk_commands(message):
        subprocess.run(command, shell=True, check=True, cwd=tmp_path)
        renamed.append(tmp_path / command.rsplit("> ", 1)[1])
        written = renamed[-1].read_bytes()
        assert written.count(b"\n") == written.count(newline.encode()), written  # line ends kept
    stems = [name.split(".")[:2] for name in names]  # m_1.fasta.bz2: m_1, fasta
    assert [path.name for path in renamed] == [f"{stem}.ids.{extension}" for stem, extension in stems], message
    if len(names) == 1:
        split = re.search(r"reformat\.sh in=\S+ out1=(\S+) out2=([^\s)]+)", message)
        stem, extension = stems[0]
        assert split and [Path(out).name for out in split.groups()] == [f"{stem}_R{m}.{extension}" for m in (1, 2)]
    code, message = run_cli("prepare", *renamed, "--outdir", tmp_path / "out")
    assert code == 0, message
    rows = [row.split("\t") for row in (tmp_path / "out" / fmt.SEQUENCES).read_text().splitlines()[1:]]
    mates = [(i, m) for i in range(3) for m in (1, 2)]
    if len(names) == 2:
        mates.sort(key=lambda pair: pair[1])  # all of R1, then all of R2
    assert [row[0] for row in rows] == [f"read{i}/{m}" for i, m in mates], rows
    assert all(row[1] == str(len(BASES)) for row in rows), rows


@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk here")
@pytest.mark.parametrize("form, names", [("fasta", ["lane=1.fa", "lane=2.fa"]), ("fasta", ["lane=p.fa"]),
                                         ("fastq", ["lane=1.fq", "lane=2.fq"]), ("fastq", ["lane=p.fq"])])
def test_the_fix_given_reads_a_byte_order_mark_a_blank_after_the_marker_and_a_name_with_equals(
        tmp_path, run_cli, form, names):
    """What prepare reads as ids the printed command must too: a UTF-8 byte order mark hid the first
    header (an interleaved FASTA then got every later mate the other label, exit 0), `> r1` put the
    /1 before the id, and awk took `lane=1.fa` for an assignment and read its standard input."""
    paths = [tmp_path / name for name in names]
    for number, path in enumerate(paths, 1):
        mates = (1, 2) if len(paths) == 1 else (number,)
        text = "".join(record(form, f" read{i} c{mate}") for i in range(3) for mate in mates)
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert ids_after_the_printed_fix(tmp_path, run_cli, paths) == mate_ids(3, len(paths))


def ids_after_the_printed_fix(tmp_path: Path, run_cli, paths: list[Path]) -> list[str]:
    """The ids prepare reads from mate files `paths` once the awk commands its refusal prints have run."""
    code, message = run_cli("prepare", *paths, "--outdir", tmp_path / "refused")
    assert code == 3 and "paired-end" in message, message
    renamed = []
    for command in awk_commands(message):
        subprocess.run(command, shell=True, check=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=60)
        renamed.append(tmp_path / command.rsplit("> ", 1)[1])
    code, message = run_cli("prepare", *renamed, "--outdir", tmp_path / "out")
    assert code == 0, message
    return sequence_ids(tmp_path / "out")


def mate_ids(reads: int, files: int) -> list[str]:
    """read<i>/1 and read<i>/2 of `reads` pairs, in input order: interleaved in one file, else all of R1 first."""
    mates = sorted(((i, m) for i in range(reads) for m in (1, 2)), key=lambda pair: pair[1] if files == 2 else 0)
    return [f"read{i}/{m}" for i, m in mates]


@pytest.mark.skipif(shutil.which("reformat.sh") is None, reason="no BBTools here")
@pytest.mark.parametrize("form, name", [("fastq", "pairs.fastq.gz"), ("fasta", "pairs.fasta")])
def test_the_split_command_given_splits_the_mates(tmp_path, run_cli, form, name):
    """BBTools' reformat.sh, as printed, writes each mate to a file of the input's format."""
    inputs = paired_inputs(tmp_path, form, [name], "\n")
    code, message = run_cli("prepare", *inputs, "--outdir", tmp_path / "refused")
    command = re.search(r"reformat\.sh in=\S+ out1=\S+ out2=[^\s)]+", message)
    assert code == 3 and command, message
    subprocess.run(command.group(), shell=True, check=True, cwd=tmp_path, capture_output=True)
    for mate in (1, 2):
        code, message = run_cli("prepare", tmp_path / f"pairs_R{mate}.{form}", "--outdir", tmp_path / f"out{mate}")
        assert code == 0 and sequence_ids(tmp_path / f"out{mate}") == ["read0", "read1", "read2"], message


def test_an_interleaved_file_is_refused_as_interleaved_mates(tmp_path, run_cli):
    path = tmp_path / "pairs.fastq"
    path.write_text(interleaved())
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "duplicate sequence id 'read" in message and "looks like an interleaved paired-end file" in message, message
    assert "line 1" in message and "line 5" in message, message
    for way_out in ("fastp --merge", "bbmerge", "/1", "/2"):
        assert way_out in message, (way_out, message)


def test_a_duplicate_that_is_no_mate_keeps_the_plain_message(tmp_path, run_cli):
    """Records 1 and 3 of one file are no pair: no word of mates, the usual fix."""
    path = tmp_path / "contigs.fa"
    path.write_text(f">c1\n{BASES}\n>c2\n{BASES}\n>c1\n{BASES}\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "duplicate sequence id 'c1'" in message, message
    assert "paired-end" not in message and "prefix them with the sample or file name" in message, message


def test_mates_are_named_with_the_registry_spilling_and_confirming_in_small_batches(tmp_path, run_cli, monkeypatch):
    """The bounded duplicate search (hashes spilled to bucket files, confirmed a batch at a time) is
    what finds the mates: the message needs nothing beyond the two records it names."""
    from virnucpro.prepare import IdRegistry

    monkeypatch.setattr(IdRegistry, "BUFFER", 4)
    monkeypatch.setattr(IdRegistry, "CONFIRM_BATCH", 2)
    r1, r2 = tmp_path / "R1.fq", tmp_path / "R2.fq"
    r1.write_text(illumina(1, n=20))
    r2.write_text(illumina(2, n=20))
    code, message = run_cli("prepare", r1, r2, "--outdir", tmp_path / "out", "--threads", "1")
    assert code == 3 and "look like the two mates of paired-end reads" in message, message


def test_the_docs_show_the_awk_programs_prepare_gives():
    """docs/usage.md prints the same programs as the refusal, so a fix there reaches both."""
    from virnucpro.prepare import INTERLEAVED_AWK, ONE_MATE_AWK

    text = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    programs = [program.replace("MATE", mate) for program in ONE_MATE_AWK.values() for mate in "12"]
    for program in [*programs, *INTERLEAVED_AWK.values()]:
        assert f"awk '{program}'" in text, program


@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk here")
@pytest.mark.parametrize("form, names", [("fasta", ["pairs.fa"]), ("fastq", ["r_1.fq", "r_2.fq"])])
def test_the_fix_given_cuts_ids_where_prepare_cut_them_at_an_unusual_blank(tmp_path, run_cli, form, names):
    """Ids cut at a no-break space, U+3000, a thin space...: the awk given put /1 at the end of the
    line, prepare cut the id again before it, and the same refusal came back for the new file."""
    blanks = ["\u00a0", "\u3000", "\u2009", "\u202f", "\u205f", "\u1680", " "]
    paths = [tmp_path / name for name in names]
    for number, path in enumerate(paths, 1):
        mates = (1, 2) if len(paths) == 1 else (number,)
        path.write_text("".join(record(form, f"read{i}{blank}{mate}:N:0") for i, blank in enumerate(blanks)
                                for mate in mates), encoding="utf-8")
    assert ids_after_the_printed_fix(tmp_path, run_cli, paths) == mate_ids(len(blanks), len(paths))


def test_the_fix_given_is_short_where_no_id_was_cut_at_an_unusual_blank(tmp_path, run_cli):
    pairs = tmp_path / "pairs.fa"
    pairs.write_text(record("fasta", "read1 1:N:0") + record("fasta", "read1 2:N:0"))
    code, message = run_cli("prepare", pairs, "--outdir", tmp_path / "refused")
    assert code == 3 and "\\302\\240" not in message, message
    assert len(awk_commands(message)) == 1, message


# --- 2: files of reads that are no text ---------------------------------------------------------

def bgzf(data: bytes) -> bytes:
    """`data` as one BGZF block (gzip with the 'BC' extra field holding the block size) and the
    BGZF end-of-file block, as samtools and Dorado write BAM files."""
    def block(payload: bytes) -> bytes:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        deflated = compressor.compress(payload) + compressor.flush()
        size = 18 + len(deflated) + 8 - 1
        head = b"\x1f\x8b\x08\x04" + b"\x00" * 4 + b"\x00\xff" + struct.pack("<H", 6) + b"BC" + struct.pack("<HH", 2, size)
        return head + deflated + struct.pack("<II", zlib.crc32(payload), len(payload))
    return block(data) + block(b"")


def bam() -> bytes:
    header = b"@HD\tVN:1.6\tSO:unknown\n@RG\tID:run1\tPL:ONT\n"
    return bgzf(b"BAM\x01" + struct.pack("<i", len(header)) + header + struct.pack("<i", 0))


def zip_of_reads(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("reads.fastq", fastq(["r1"]))
    return path.read_bytes()


def tar_of_reads(path: Path, mode: str = "w") -> bytes:
    """A tar archive (gzip-compressed with mode "w:gz") holding one FASTQ file."""
    import io
    import tarfile

    data = fastq(["r1"]).encode()
    with tarfile.open(path, mode) as archive:
        entry = tarfile.TarInfo("reads.fastq")
        entry.size = len(data)
        archive.addfile(entry, io.BytesIO(data))
    return path.read_bytes()


@pytest.mark.parametrize("kind, content, expected", [
    ("BAM", lambda path: bam(), ["is a BAM file", "samtools fastq"]),
    ("tar", tar_of_reads, ["is a tar archive", "tar xf"]),
    ("tar.gz", lambda path: tar_of_reads(path, "w:gz"), ["is a tar archive", "tar xOf"]),
    ("CRAM", lambda path: b"CRAM\x03\x01" + b"\x00" * 20 + bytes(range(40)), ["is a CRAM file", "samtools fastq", "--reference"]),
    ("SRA", lambda path: b"NCBI.sra\x88\x19\x03\x05\x01\x00\x00\x00" + bytes(range(64)), ["is an SRA run file", "fasterq-dump"]),
    ("ZIP", zip_of_reads, ["is a ZIP archive", "unzip"]),
])
def test_files_of_reads_that_are_no_text_are_named_with_their_conversion(tmp_path, run_cli, kind, content, expected):
    path = tmp_path / f"reads.{kind.lower()}"
    path.write_bytes(content(path))
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "damaged" not in message and "binary data" not in message, message
    for fragment in [str(path), *expected]:
        assert fragment in message, (fragment, message)


def test_a_bam_on_standard_input_is_named_too(tmp_path):
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", "-", "--outdir", str(tmp_path / "out")],
                          input=bam(), capture_output=True, timeout=300)
    assert done.returncode == 3 and b"BAM file" in done.stderr and b"samtools fastq" in done.stderr, done.stderr


def test_text_that_starts_like_a_magic_word_is_no_such_file(tmp_path, run_cli):
    """'CRAM' followed by text is no CRAM file (its version byte is missing): the plain refusal."""
    path = tmp_path / "notes.txt"
    path.write_text("CRAMPED notes\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "is not FASTA or FASTQ" in message and "CRAM file" not in message, message


# --- 3: one id in two Unicode spellings --------------------------------------------------------

def test_an_id_in_two_unicode_spellings_is_a_duplicate(tmp_path, run_cli):
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    path = tmp_path / "cafe.fa"
    path.write_text(f">{composed} one\n{BASES}\n>{decomposed} two\n{BASES}\n", encoding="utf-8")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3, message
    assert "two Unicode spellings" in message and "line 1" in message and "line 3" in message, message
    assert "caf\\xe9" in message and "cafe\\u0301" in message, message


def test_ids_of_marks_newer_than_unicode_3_2_get_one_verdict_on_every_python(tmp_path, run_cli):
    """Normalized with each Python's own tables, `x` + U+0898 + U+0316 and the other order were one id
    on 3.11 to 3.13 and two on 3.10 (U+0898 is Unicode 14's): text holding a character Unicode 3.2 did
    not have is compared as written; older text normalizes alike everywhere (Ångström sign and Å)."""
    path = tmp_path / "ids.fa"
    path.write_text(f">x\u0898\u0316\n{BASES}\n>x\u0316\u0898\n{BASES}\n>a\u0316\u0301\n{BASES}\n", encoding="utf-8")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0, message
    path.write_text(f">\u212b\n{BASES}\n>\u00c5\n{BASES}\n", encoding="utf-8")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "again")
    assert code == 3 and "two Unicode spellings" in message, message


@pytest.mark.parametrize("pair", [("caf\u00e9\U0001f9a0", "cafe\u0301\U0001f9a0"),
                                  ("\U0001f9a0\u00e9", "\U0001f9a0e\u0301"),
                                  ("a\u0898\u212b", "a\u0898\u00c5")])
def test_two_spellings_are_one_id_beside_a_character_newer_than_unicode_3_2(tmp_path, run_cli, pair):
    """A reviewer's case: an emoji (Unicode 11) in the id made it skip normalization altogether, and
    'café🦠' in two spellings passed as two ids. The older characters around it are normalized."""
    path = tmp_path / "ids.fa"
    path.write_text(f">{pair[0]}\n{BASES}\n>{pair[1]}\n{BASES}\n", encoding="utf-8")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 3 and "two Unicode spellings" in message, message


def test_distinct_non_ascii_ids_are_no_duplicates(tmp_path, run_cli):
    path = tmp_path / "ids.fa"
    path.write_text(f">café\n{BASES}\n>cafè\n{BASES}\n>Δ1\n{BASES}\n", encoding="utf-8")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0, message
    assert sequence_ids(tmp_path / "out") == ["café", "cafè", "Δ1"]


def test_ascii_ids_pay_no_normalization(tmp_path, run_cli, monkeypatch):
    """Normalization costs a call per id: ASCII ids (nearly all real ones) never make it."""
    def refused(form: str, text: str) -> str:
        raise AssertionError(f"normalized an ASCII id: {text!r}")

    from virnucpro import prepare

    monkeypatch.setattr(prepare, "unicodedata", SimpleNamespace(normalize=refused))
    path = tmp_path / "ascii.fa"
    path.write_text(f">a1\n{BASES}\n>a2\n{BASES}\n>a1\n{BASES}\n")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out", "--threads", "1")
    assert code == 3 and "duplicate sequence id 'a1'" in message and "Unicode" not in message, message


# --- 4: one input under two spellings -------------------------------------------------------------

@pytest.mark.parametrize("second", ["a.fastq", "./a.fastq", ".//a.fastq"])
def test_an_input_typed_twice_alike_is_named_once(tmp_path, second):
    """`a.fastq ./a.fastq` once said "input a.fastq is given twice (it is the same file as a.fastq)"."""
    (tmp_path / "a.fastq").write_text(fastq(["r1"]))
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", "a.fastq", second, "--outdir", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3 and "input a.fastq is given twice" in done.stderr, done.stderr
    assert "same file as" not in done.stderr, done.stderr


def test_a_file_given_by_two_names_names_both(tmp_path):
    (tmp_path / "a.fastq").write_text(fastq(["r1"]))
    (tmp_path / "b.fastq").symlink_to("a.fastq")
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", "a.fastq", "b.fastq", "--outdir", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3 and "input b.fastq is given twice (it is the same file as a.fastq)" in done.stderr



@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk here")
def test_mates_named_alike_get_commands_into_two_new_files_never_over_a_file(tmp_path, run_cli):
    """A review's case: m.fq and m.fq.gz were both told `> m.ids.fq`, so running the fix wrote mate 2
    over mate 1 (and would write over a user's m.ids.fq)."""
    plain, packed = paired_inputs(tmp_path, "fastq", ["m_1.fq", "m_2.fq"], "\n")
    (tmp_path / "m.fq").write_bytes(plain.read_bytes())
    (tmp_path / "m.fq.gz").write_bytes(gzip.compress(packed.read_bytes()))
    (tmp_path / "m.ids.fq").write_text("the user's own file\n")
    code, message = run_cli("prepare", tmp_path / "m.fq", tmp_path / "m.fq.gz", "--outdir", tmp_path / "refused")
    assert code == 3 and "paired-end" in message, message
    written = [tmp_path / command.rsplit("> ", 1)[1] for command in awk_commands(message)]
    assert [path.name for path in written] == ["m.ids2.fq", "m.ids3.fq"], message
    for command in awk_commands(message):
        subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    assert (tmp_path / "m.ids.fq").read_text() == "the user's own file\n"
    assert run_cli("prepare", *written, "--outdir", tmp_path / "out")[0] == 0


def test_a_fasta_with_ustar_where_a_tar_header_has_it_is_read(tmp_path, run_cli):
    """"Indian mustard" in a header put "ustar" at byte 257, where tar's magic is: refused as a tar."""
    first = ">MZ000001.1 Turnip mosaic virus\n" + "ACGT" * 40 + "\n"
    start = ">MZ000002.1 Turnip mosaic virus isolate from"
    header = start + " " * (257 - len(first) - len(start) - len(" Indian m")) + " Indian mustard, complete genome\n"
    path = tmp_path / "mustard.fa"
    path.write_text(first + header + "ACGT" * 60 + "\n")
    assert path.read_bytes()[257:262] == b"ustar"
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0 and "tar archive" not in message, message


def test_a_tar_archive_on_standard_input_is_named_with_a_fix_that_works_there(tmp_path):
    archive = tmp_path / "reads.tgz"
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", "-", "--outdir", str(tmp_path / "out")],
                          input=tar_of_reads(archive, "w:gz"), capture_output=True, timeout=300)
    err = done.stderr.decode()
    assert done.returncode == 3 and "is a tar archive" in err and "tar xf ARCHIVE" in err and "xOf -" not in err, err
