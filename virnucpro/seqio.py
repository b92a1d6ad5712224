"""Streaming FASTA/FASTQ reader: compression and format detected from content, input hashed on the fly.

Memory is O(longest record): the raw file is read in blocks, decompressed incrementally and split
into lines; only the record being assembled is held. Every problem is a `BadInputError` naming the
file (and line or record) and the fix.
"""

from __future__ import annotations

import bz2
import hashlib
import itertools
import lzma
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from virnucpro.errors import BadInputError

BLOCK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
UTF8_BOM = b"\xef\xbb\xbf"

# Letters a nucleotide record may hold: IUPAC codes plus the gap/stop symbols the original tolerates
# (codons containing anything but ACGT are dropped during translation, as in the original).
NUCLEOTIDE_SYMBOLS = b"ACGTUNRYSWKMBDHV-.*acgtunryswkmbdhv"


@dataclass
class Record:
    """One input record: `id` is the first whitespace-delimited word of the header."""

    id: str
    sequence: str
    line: int  # 1-based line of the header, for messages


XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
STDIN = "-"  # an input path that means standard input (read once, as it is streamed)


def _decompressor(kind: str):
    if kind == "gzip":
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return bz2.BZ2Decompressor()


def _compression(head: bytes, path: Path) -> str:
    """The compression the first bytes show; zstd is named with the command that reads it."""
    if head.startswith(ZSTD_MAGIC):
        raise BadInputError(f"{path} is zstd-compressed, which virnucpro does not read",
                            f"decompress it on the fly: zstd -dc {path} | virnucpro prepare - ...")
    return ("gzip" if head.startswith(GZIP_MAGIC) else "bzip2" if head.startswith(BZIP2_MAGIC)
            else "xz" if head.startswith(XZ_MAGIC) else "none")


class HashingTextStream:
    """Reads a possibly compressed file as text lines while computing the sha256 of its raw bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0
        try:
            self._raw = sys.stdin.buffer if str(path) == STDIN else open(path, "rb")
        except FileNotFoundError:
            raise BadInputError(f"input file not found: {path}", "check the path") from None
        except IsADirectoryError:
            raise BadInputError(f"input is a directory, not a file: {path}",
                                "give the FASTA/FASTQ files inside it") from None
        except OSError as exc:
            raise BadInputError(f"cannot read input file {path}: {exc.strerror}",
                                "check the file permissions") from None
        head = self._read_raw()
        self.compression = _compression(head, path)
        self._pending = head

    def close(self) -> None:
        self._raw.close()

    def _read_raw(self) -> bytes:
        try:
            block = self._raw.read(BLOCK)
        except OSError as exc:
            raise BadInputError(f"cannot read input file {self.path}: {exc.strerror}",
                                "check the file and the storage it is on") from None
        self.sha256.update(block)
        self.bytes_read += len(block)
        return block

    def _plain_blocks(self) -> Iterator[bytes]:
        """Decompressed blocks; multi-member gzip and multi-stream bzip2/xz are followed."""
        block = self._pending
        if self.compression == "none":
            while block:
                yield block
                block = self._read_raw()
            return
        decomp = _decompressor(self.compression)
        name = self.compression
        while True:
            if not block:
                if not decomp.eof:
                    raise BadInputError(f"{self.path} is a truncated {name} file (it ends in the "
                                        "middle of the compressed stream)",
                                        "download or copy the file again")
                return
            try:
                yield decomp.decompress(block)
            except (OSError, zlib.error, lzma.LZMAError, EOFError, ValueError) as exc:
                raise BadInputError(f"{self.path} is not a valid {name} file ({exc})",
                                    "check that the file is not corrupt") from None
            if decomp.eof:
                rest = decomp.unused_data
                if rest.strip(b"\x00"):
                    decomp = _decompressor(self.compression)
                    block = rest
                    continue
                block = self._read_raw()
                if block:
                    decomp = _decompressor(self.compression)
                continue
            block = self._read_raw()

    def text_blocks(self) -> Iterator[str]:
        """Decoded text in large blocks that end at a line end (except possibly the last one).

        Text is UTF-8 (ids may hold any character; a byte that is not UTF-8 becomes U+FFFD and is
        then reported where it matters); a UTF-8 byte-order mark is dropped; old Mac files whose
        lines end in a lone CR are read as lines too, as the original's text-mode reading does.
        """
        carry = b""
        first = True
        cr_only = False
        for block in self._plain_blocks():
            if first and block:
                first = False
                self._reject_binary(block)
                if block.startswith(UTF8_BOM):
                    block = block[len(UTF8_BOM):]
                cr_only = b"\r" in block and b"\n" not in block
            if cr_only:
                block = block.replace(b"\r", b"\n")
            cut = block.rfind(b"\n")
            if cut < 0:
                carry += block
                continue
            yield (carry + block[:cut + 1]).decode("utf-8", errors="replace")
            carry = block[cut + 1:]
        if carry:
            yield carry.decode("utf-8", errors="replace")
        self._raw.close()

    def lines(self) -> Iterator[str]:
        """Text lines without line endings (LF or CRLF)."""
        for block in self.text_blocks():
            lines = block.split("\n")
            if lines[-1] == "":
                lines.pop()
            for line in lines:
                yield line.rstrip("\r")

    def _reject_binary(self, block: bytes) -> None:
        """NUL bytes or many control characters: not text (bytes >= 128 may be UTF-8 text)."""
        sample = block[:4096]
        controls = sum(c < 9 or 13 < c < 32 or c == 127 for c in sample)
        if b"\x00" in sample or controls > len(sample) // 20:
            raise BadInputError(f"{self.path} is binary data, not FASTA/FASTQ text",
                                "give a FASTA or FASTQ file (plain, gzip, bzip2 or xz)")


def _record_id(header: str, path: Path, line: int) -> str:
    """The first whitespace-delimited word of a header given without its '>' or '@'."""
    words = header.split(None, 1)
    if not words:
        raise BadInputError(f"{path}, line {line}: header '{header.strip()}' has no sequence id",
                            "give every record a name after '>' or '@'")
    return words[0]


def _fasta_record(text: str, path: Path, line: int) -> Record:
    """A record from its text after '>': the header line, then sequence lines."""
    header, _, body = text.partition("\n")
    rid = _record_id(header, path, line)
    sequence = body.replace("\n", "")
    if "\r" in sequence or " " in sequence:
        sequence = sequence.replace("\r", "").replace(" ", "")
    return Record(rid, sequence, line)


@dataclass
class RecordGroup:
    """Whole records of one file, about a megabyte of them: raw FASTA text (the text after the
    group's first '>') to be parsed where the group is processed, or records already parsed."""

    path: Path
    fasta_text: str | None = None
    first_line: int = 1
    records: list[Record] | None = None

    def parse(self) -> Iterator[Record]:
        if self.records is not None:
            yield from self.records
            return
        line = self.first_line
        for text in self.fasta_text.split("\n>"):
            yield _fasta_record(text, self.path, line)
            line += text.count("\n") + 1


def _fasta_groups(blocks: Iterator[str], first_block: str, path: Path) -> Iterator[RecordGroup]:
    """Cut line-aligned text blocks at the last record start of each block: whole-record groups."""
    start = first_block.index(">")
    line = first_block.count("\n", 0, start) + 1
    pieces = [first_block[start + 1:]]
    for block in blocks:
        if block.startswith(">"):  # the previous block ended a line: a record starts here
            boundary = 0
        else:
            found = block.rfind("\n>")
            if found < 0:
                pieces.append(block)  # still inside one (long) record
                continue
            boundary = found + 1
        text = "".join(pieces) + block[:boundary]  # ends with the newline before the next '>'
        yield RecordGroup(path, fasta_text=text[:-1], first_line=line)
        line += text.count("\n")
        pieces = [block[boundary + 1:]]
    yield RecordGroup(path, fasta_text="".join(pieces), first_line=line)


def _fastq_records(lines: Iterator[tuple[int, str]], first: tuple[int, str], path: Path) -> Iterator[Record]:
    header: tuple[int, str] | None = first
    while header is not None:
        line_no, text = header
        if not text.startswith("@"):
            raise BadInputError(f"{path}, line {line_no}: expected a FASTQ header starting with '@', "
                                f"found '{text[:40]}'", "check that the FASTQ file is complete")
        rid = _record_id(text[1:], path, line_no)
        seq_parts: list[str] = []
        for number, text in lines:
            if text.startswith("+"):
                break
            seq_parts.append(text.strip())
        else:
            raise BadInputError(f"{path}: FASTQ record '{rid}' (line {line_no}) has no '+' line",
                                "the file is truncated or not FASTQ")
        sequence = "".join(seq_parts)
        quality = 0
        while quality < len(sequence):
            nxt = next(lines, None)
            if nxt is None:
                raise BadInputError(f"{path}: FASTQ record '{rid}' (line {line_no}) has fewer quality "
                                    "characters than bases", "the file is truncated")
            quality += len(nxt[1].strip())
        if quality != len(sequence):
            raise BadInputError(f"{path}: FASTQ record '{rid}' (line {line_no}) has {quality} quality "
                                f"characters for {len(sequence)} bases", "check the FASTQ file")
        yield Record(rid, sequence, line_no)
        header = next(((n, t) for n, t in lines if t.strip()), None)


GROUP_BASES = 1 << 20


def record_groups(stream: HashingTextStream) -> Iterator[RecordGroup]:
    """Groups of whole records of one file, FASTA or FASTQ decided by the first non-blank character."""
    blocks = stream.text_blocks()
    first_block = next((b for b in blocks if b.strip()), None)
    if first_block is None:
        raise BadInputError(f"{stream.path} is empty (no records)", "give a FASTA or FASTQ file with sequences")
    marker = first_block.lstrip()[0]
    if marker == ">":
        yield from _fasta_groups(blocks, first_block, stream.path)
    elif marker == "@":
        lines = (line.rstrip("\r") for b in itertools.chain([first_block], blocks) for line in b.split("\n"))
        numbered = ((n, text) for n, text in enumerate(lines, start=1))
        first = next((n, t) for n, t in numbered if t.strip())
        group, bases = [], 0
        for record in _fastq_records(numbered, first, stream.path):
            group.append(record)
            bases += len(record.sequence)
            if bases >= GROUP_BASES:
                yield RecordGroup(stream.path, records=group)
                group, bases = [], 0
        if group:
            yield RecordGroup(stream.path, records=group)
    else:
        line = first_block.lstrip().split("\n", 1)[0]
        number = first_block[:len(first_block) - len(first_block.lstrip())].count("\n") + 1
        raise BadInputError(f"{stream.path} is not FASTA or FASTQ: line {number} starts with "
                            f"'{line[:30]}' instead of '>' or '@'",
                            "give a nucleotide FASTA or FASTQ file")


def read_records(stream: HashingTextStream) -> Iterator[Record]:
    """Every record of one file, in order."""
    for group in record_groups(stream):
        yield from group.parse()


def invalid_letters(sequence: str) -> str:
    """Characters of `sequence` that are no IUPAC nucleotide code (empty string when all are valid)."""
    if not sequence.isascii():
        return "".join(c for c in sequence if not c.isascii() or c.encode() not in NUCLEOTIDE_SYMBOLS)
    return sequence.encode("ascii").translate(None, NUCLEOTIDE_SYMBOLS).decode("ascii")
