"""Streaming FASTA/FASTQ reader: compression and format detected from content, input hashed on the fly.

Memory is O(block + longest record sequence + longest line): the raw file is read in blocks,
decompressed incrementally (a block at most at a time) and split into lines as Python's universal
newlines split them; only the record being assembled is held, without its blank lines, and a line
that runs on past a block is checked as it grows (a header against HEADER_LIMIT, any other line for
ASCII) and held whole until it ends, spaces included (a line of blanks costs as a line of bases).
Every problem is a `BadInputError` naming the file (and line or record, and the byte offset for
bytes that are no text) and the fix.
"""

from __future__ import annotations

import bz2
import hashlib
import itertools
import lzma
import os
import re
import select
import stat
import sys
import unicodedata
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from virnucpro.errors import (shell_word, BadInputError, name_too_long, unopenable_file, open_file_limit, path_too_long,
                              printable)

BLOCK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
# what follows "BZh" and the block size digit: a block's magic (pi), or the end of an empty stream (sqrt(pi))
BZIP2_FIRST_BLOCK = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")

# Letters a nucleotide record may hold: IUPAC codes, X (masked, as RepeatMasker -x writes it) and the
# gap/stop symbols the original tolerates (codons holding anything but ACGT are dropped during
# translation, as in the original).
NUCLEOTIDE_SYMBOLS = b"ACGTUNRYSWKMBDHVX-.*acgtunryswkmbdhvx"
PROTEIN_LIKE = set("EFILPQJOZefilpqjoz")
BYTE_ORDER_MARK = "\ufeff"  # UTF-8 files from Windows tools start with it; inside a file it is misplaced



def _joined(blocks: Iterable[bytes], size: int = BLOCK) -> Iterator[bytes]:
    """`blocks` (each at most `size` bytes) joined into blocks of at most `size`: a gzip of one member
    per read inflates member by member, and a block per read made prepare 80 times slower."""
    parts: list[bytes] = []
    held = 0
    for block in blocks:
        if held and held + len(block) > size:
            yield b"".join(parts)
            parts, held = [], 0
        parts.append(block)
        held += len(block)
    if parts:
        yield b"".join(parts)


@dataclass
class Record:
    """One input record: `id` is the first whitespace-delimited word of the header."""

    id: str
    sequence: str
    line: int  # 1-based line of the header, for messages


XZ_MAGIC = b"\xfd7zXZ\x00"
# zstd's frame magic, or a skippable frame first (pzstd starts with one: 0x184D2A5X, X = 0..F)
ZSTD_MAGIC = (b"\x28\xb5\x2f\xfd", *(bytes([0x50 + low]) + b"\x2a\x4d\x18" for low in range(16)))
LZ4_MAGIC = (b"\x04\x22\x4d\x18", b"\x02\x21\x4c\x18")  # lz4's frame format, and its legacy one (lz4 -l)
# a legacy .lzma file (lzma_alone) has no magic: it starts with its properties byte, 0x5d for every
# preset, then its dictionary size, a multiple of 64 KiB, little-endian: two zero bytes first
LZMA_ALONE_START = b"\x5d\x00\x00"
# compressions virnucpro does not read, by first bytes: how it is named, the tool that decompresses it
UNREAD_COMPRESSIONS = (
    (ZSTD_MAGIC, "zstd-compressed", "zstd"),
    (LZ4_MAGIC, "lz4-compressed", "lz4"),
    (LZMA_ALONE_START, "lzma-compressed (the legacy .lzma format, not xz)", "xz --format=lzma"),
)
STDIN = "-"  # an input path that means standard input (read once, as it is streamed)


BGZF_HEADER = 18  # the bytes of a BGZF block's header, its 'BC' subfield included


def _is_bgzf_member(start: bytes) -> bool:
    """Whether a gzip member starting with `start` is a BGZF block (its extra field's first subfield
    is 'BC', as htslib checks); `start` holds its header whole unless the input ends within it."""
    return start[:4] == b"\x1f\x8b\x08\x04" and start[12:14] == b"BC"


def _decompressor(kind: str):
    if kind == "gzip":
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return bz2.BZ2Decompressor()


# how torch before 1.6 (or _use_new_zipfile_serialization=False) began a saved file: its magic number,
# pickled (protocol 2, a 10-byte long)
LEGACY_TORCH_START = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

# Files of reads that are no FASTA/FASTQ text, by their first bytes (a BAM's once its BGZF, a gzip,
# is inflated): what each is, and the command that gives FASTQ (`{path}`: the input, shell-quoted).
KNOWN_BINARY = (
    (b"BAM\x01", "a BAM file (aligned or unaligned reads, e.g. from a Nanopore basecaller)",
     "convert it to FASTQ: samtools fastq {path} > reads.fastq, then give reads.fastq"),
    (tuple(b"CRAM" + bytes([major]) for major in range(1, 5)), "a CRAM file (reads compressed against a reference)",
     "convert it to FASTQ: samtools fastq {path} > reads.fastq (add --reference ref.fa when samtools "
     "asks for the reference), then give reads.fastq"),
    (b"NCBI.sra", "an SRA run file (NCBI Sequence Read Archive)",
     "extract FASTQ with the SRA Toolkit: fasterq-dump {path} (a paired-end run gives _1 and _2 files: "
     "see 'Paired-end reads' in docs/usage.md)"),
    (b"PK\x03\x04", "a ZIP archive",
     "unzip it first (unzip {path}) and give the FASTA/FASTQ files inside, or stream one: "
     "unzip -p {path} reads.fastq | virnucpro prepare - ..."),
)


def _known_binary(head: bytes, path: Path) -> BadInputError | None:
    """The refusal of an input whose first bytes `head` show a known file of reads that is no text
    (BAM, CRAM, SRA, ZIP), with the command that converts it; None for anything else."""
    zipped = head.startswith(b"PK\x03\x04") and b"/data.pkl" in head[30:300]  # torch.save's zip: its pickle first
    if zipped or head.startswith(LEGACY_TORCH_START):
        return BadInputError(f"{path} is a PyTorch file (a saved model, such as the original's 500_model.pth), not "
                             "FASTA/FASTQ text", "a classifier of your own is given with --classifier FILE; the "
                             "inputs are files of reads (see docs/migrating.md)")
    for magic, what, hint in KNOWN_BINARY:
        if head.startswith(magic):
            return BadInputError(f"{path} is {what}, not FASTA/FASTQ text", hint.format(path=shell_word(str(path))))
    return None


TAR_MAGIC_AT = 257  # a tar header's magic, after the name, mode, owner, size, ... fields
TAR_MAGICS = (b"ustar\x0000", b"ustar  \x00")  # POSIX (with its version) and GNU tar


def _tar_archive(head: bytes, path: Path) -> BadInputError | None:
    """The refusal of an input whose first 512 bytes are a tar header ("damaged or padded" sent users
    downloading it again), with the tar command; only once a control character was found: a FASTA
    header may hold "ustar" at that offset ("mustard")."""
    if head[TAR_MAGIC_AT:TAR_MAGIC_AT + 8] not in TAR_MAGICS:
        return None
    if str(path) == STDIN:
        hint = "extract the archive first (tar xf ARCHIVE) and give the FASTA/FASTQ files inside"
    else:
        quoted = shell_word(str(path))
        hint = (f"extract it first (tar xf {quoted}) and give the FASTA/FASTQ files inside, or stream one: "
                f"tar xOf {quoted} reads.fastq | virnucpro prepare - ...")
    return BadInputError(f"{path} is a tar archive, not FASTA/FASTQ text", hint)


def _compressed_again(head: bytes, path: Path) -> BadInputError | None:
    """The refusal of a decompressed input whose first bytes `head` are compressed once more (a file
    compressed twice: `gzip` run on a .gz); None for anything else."""
    bzip2 = head.startswith(BZIP2_MAGIC) and head[3:4].isdigit() and head[4:10] in BZIP2_FIRST_BLOCK
    for found, what in ((head.startswith(GZIP_MAGIC), "gzip"), (bzip2, "bzip2"), (head.startswith(XZ_MAGIC), "xz"),
                        (head.startswith(ZSTD_MAGIC), "zstd"), (head.startswith(LZ4_MAGIC), "lz4")):
        if found:
            return BadInputError(f"{path} is compressed twice: once decompressed, it is {what}-compressed data, "
                                 "not FASTA/FASTQ text", "decompress its outer layer into a file (gzip -dc, "
                                 "bzip2 -dc or xz -dc, as its outer layer is) and give that file")
    return None


def _compression(head: bytes, path: Path) -> str:
    """The compression the first bytes show; zstd, lz4 and legacy lzma, text in UTF-16 or UTF-32 (which would read as
    binary) and the binary files of reads in KNOWN_BINARY are named with the command that converts them."""
    known = _known_binary(head, path)
    if known is not None:
        raise known
    for magic, what, tool in UNREAD_COMPRESSIONS:
        if head.startswith(magic):
            quoted = shell_word(str(path))
            fix = (f"decompress it in the pipe: ... | {tool} -dc | virnucpro prepare - ..." if str(path) == STDIN else
                   f"decompress it first ({tool} -d {quoted}), or on the fly: {tool} -dc {quoted} | virnucpro prepare - ...")
            raise BadInputError(f"{path} is {what}, which virnucpro does not read: not a supported compression "
                                "(gzip, bzip2 and xz are)", fix)
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        raise BadInputError(f"{path} is UTF-16 or UTF-32 text (it starts with that byte order mark); "
                            "virnucpro reads ASCII/UTF-8 FASTA and FASTQ",
                            f"convert it: iconv -f UTF-16 -t UTF-8 {shell_word(str(path))} | virnucpro prepare - ... "
                            "(UTF-32 for a UTF-32 file)")
    return ("gzip" if head.startswith(GZIP_MAGIC) else "bzip2" if head.startswith(BZIP2_MAGIC)
            else "xz" if head.startswith(XZ_MAGIC) else "none")


CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # control characters but tab, LF and CR
# every other byte: deleting these leaves the controls, and text (nothing left) costs no output memory
NOT_CONTROL = bytes(byte for byte in range(256) if not CONTROL.match(bytes([byte])))
NOT_ASCII = re.compile(rb"[\x80-\xff]")
# in a decoded header: the C1 controls (a terminal escape sequence starts with U+009B) and the
# text-direction overrides and isolates, which make an id show as another one in terminals and the
# report
UNSAFE_IN_HEADER = re.compile("[\u0080-\u009f\u202a-\u202e\u2066-\u2069]")
# blanks that end an id as every tool ends it; Unicode's other spaces end it as Biopython's split()
# does, with a warning (ASCII's other control characters are refused where bytes are read)
ORDINARY_BLANKS = " \t\r\n"
_UNUSUAL_BLANK_NOTED: set[str] = set()  # inputs noted in this process (`_note_an_unusual_blank`)
_BLANK_NOTES: list[tuple[str, str]] = []  # (input, warning) not yet taken by `take_blank_notes`
# in an id: Unicode's default-ignorable code points, shown as nothing (zero-width spaces and
# joiners, text-direction marks, soft hyphen, word joiner, BOM, variation selectors, Hangul
# fillers, tags), so that two distinct ids would look the same in every table and report (a
# description, never written out, may hold them: text copied from Hebrew or Arabic holds marks)
INVISIBLE_IN_ID = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
                             "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
                             "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
# in an id, beside those: characters with no glyph of their own in any font (Unicode's format
# characters, as of Unicode 15.1, written out so that every Python gives one verdict; private use;
# noncharacters) and the braille blank, which shows as a space. Unassigned code points stay accepted,
# as a newer Unicode may make them letters or emoji.
_UNSHOWN_RANGES = ((0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
                   (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E),
                   (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
                   (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
                   (0xE0001, 0xE0001), (0xE0020, 0xE007F),  # format characters (Cf)
                   (0x2800, 0x2800),  # the braille blank
                   (0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD),  # private use
                   (0xFDD0, 0xFDEF), *((plane + 0xFFFE, plane + 0xFFFF) for plane in range(0, 0x110000, 0x10000)))
UNSHOWN_IN_ID = re.compile("[" + "".join(f"{re.escape(chr(first))}-{re.escape(chr(last))}"
                                         for first, last in _UNSHOWN_RANGES) + "]")
UTF8_BOM = b"\xef\xbb\xbf"

# The longest header line accepted, in bytes with its '>' or '@' (64 KiB). Real headers (an id and a
# description: NCBI, ENA, Illumina, ONT with all its key=value fields) stay under a few hundred
# bytes; 64 KiB is two orders of magnitude above any of them, yet small enough that a header read
# as it streams in never costs memory beyond a block.
HEADER_LIMIT = 1 << 16

# The longest record id accepted, in characters. An id is repeated on every chunk and ORF row that
# prepare writes (six ORFs a chunk): at 1,000 characters that is 20 bytes per base on top of the ten
# every base costs, so memory and output stay a small multiple of the record; at 60,000 they were
# a thousand times the record. Real ids (accessions, read names, contig names) hold under a hundred.
ID_LIMIT = 1000


class TextBlock(NamedTuple):
    """Decoded text that ends at a line end (except at the end of the input), every line end as LF."""

    text: str
    first_line: int  # the number of its first line
    next_line: int  # the number of the line after it


def _line_ends(data: bytes) -> int:
    """Line ends in `data` as Python's universal newlines count them (LF, CR and CRLF)."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_escape(found: re.Match) -> str:
    """A lone surrogate as text: \\xNN for the byte of a file name it stands for, else \\uNNNN."""
    code = ord(found.group())
    return f"\\x{code - 0xdc00:02x}" if 0xdc80 <= code <= 0xdcff else f"\\u{code:04x}"


def unicode_text(text: str) -> str:
    """`text` with lone surrogates escaped, so that it can be written as UTF-8: Python holds each byte
    of a file name that is not UTF-8 as one (byte 0xff as U+DCFF, written here as \\xff)."""
    return SURROGATE.sub(_surrogate_escape, text)


def working_directory() -> str | None:
    """The folder this process runs in, which relative input paths are relative to (written as
    UTF-8); None when it was deleted meanwhile."""
    try:
        return unicode_text(os.getcwd())
    except OSError:
        return None


class UniversalText:
    """Decompressed bytes in, `TextBlock`s out: lines read exactly as Python's universal newlines
    read them (LF, CR, CRLF, mixed anywhere, a CRLF split across blocks), UTF-8 decoded strictly.

    Binary data, control characters (tab aside) and bytes that are not UTF-8 are refused in the
    block that shows them, naming the byte offset, the line and, in a header, the record: a
    replaced byte would make distinct ids collide. Only the unfinished last line is carried over
    from block to block (as a list of pieces: a line of any length costs linear time), and it is
    checked as it grows: a header (a line starting with one of `header_marks`, which the parser
    sets to what may start a header where it stands) past HEADER_LIMIT, or any other line holding a
    byte that is not ASCII, is refused in the block that shows it, never after the line is whole.
    """

    def __init__(self, path: Path):
        self.path = path
        self.pending: list[bytes] = []  # the unfinished last line, in non-empty pieces (its only line end: a final CR)
        self.pending_size = 0  # the bytes in `pending`
        self.pending_checked = True  # whether `pending` passed `_check_unfinished` (a new tail has not)
        self.pending_offset = 0  # the offset in the decompressed input of the first pending byte
        self.line = 1  # the number of the first pending line
        self.header_marks: bytes | None = None  # first bytes of a header line; None: every line (before the first record)

    def feed(self, block: bytes) -> TextBlock | None:
        """The whole lines completed by `block`, if any."""
        if block.translate(None, NOT_CONTROL):
            self._refuse_control(block)
        split = self._completed(block)
        if split is None:
            self._check_unfinished(block)
            self.pending.append(block)
            self.pending_size += len(block)
            return None
        data = b"".join([*self.pending, memoryview(block)[:split]])
        tail = block[split:]
        self.pending, self.pending_size, self.pending_checked = ([tail] if tail else []), len(tail), not tail
        return self._decode(data)

    def _completed(self, block: bytes) -> int | None:
        """How many first bytes of `block` end lines (with the pending bytes); None when no line ends."""
        end = len(block) - 1 if block.endswith(b"\r") else len(block)  # a final CR may start a CRLF
        cut = block.rfind(b"\n", 0, end)
        if b"\r" in block:
            cut = max(cut, block.rfind(b"\r", 0, end))
        if cut >= 0:
            return cut + 1
        if self.pending and self.pending[-1].endswith(b"\r"):  # the pending line ended with a CR (or a CRLF)
            return 1 if block.startswith(b"\n") else 0
        return None

    def _check_unfinished(self, block: bytes) -> None:
        """Refuse the line that `block` continues without ending as soon as it cannot be FASTA/FASTQ:
        a header longer than HEADER_LIMIT, or another (sequence, quality) line with non-ASCII bytes."""
        start = self.pending[0] if self.pending else block
        if self.pending_offset == 0 and start.startswith(UTF8_BOM):
            start = start[len(UTF8_BOM):]
        if self.header_marks is None or (start[:1] and start[:1] in self.header_marks):
            if self.pending_size + len(block) - block.endswith(b"\r") > HEADER_LIMIT:
                raise _header_too_long(self.path, self.line, start.decode("utf-8", errors="backslashreplace"))
        else:
            unchecked = [block] if self.pending_checked else [*self.pending, block]
            if not all(piece.isascii() for piece in unchecked):
                self._refuse_non_ascii(unchecked)
        self.pending_checked = True

    def _refuse_non_ascii(self, unchecked: list[bytes]) -> None:
        """The error for the first byte that is not ASCII in the unfinished line's `unchecked` end."""
        position = self.pending_offset + (self.pending_size if self.pending_checked else 0)
        for piece in unchecked:
            found = NOT_ASCII.search(piece)
            if found:
                position += found.start()
                byte = piece[found.start()]
                break
            position += len(piece)
        raise BadInputError(f"{self.path}, line {self.line}: byte 0x{byte:02x} at byte offset {position:,} is not "
                            "ASCII, yet this line is no header: sequence and quality lines hold ASCII letters only",
                            "the file is damaged or not FASTA/FASTQ text: check it, or download or copy it again")

    def finish(self) -> TextBlock | None:
        """The last line, when the input does not end with a line end."""
        data = b"".join(self.pending)
        self.pending = []
        return self._decode(data) if data else None

    def _decode(self, data: bytes) -> TextBlock:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._refusal(data[:exc.start], data[exc.start:], "is not UTF-8 text",
                                "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8): a replaced byte "
                                "could make distinct ids collide") from None
        if self.pending_offset == 0 and text.startswith(BYTE_ORDER_MARK):
            text = text[1:]  # a UTF-8 byte-order mark
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        first = self.line
        self.line += text.count("\n")
        self.pending_offset += len(data)
        return TextBlock(text, first, self.line)

    def _refuse_control(self, block: bytes) -> None:
        position = CONTROL.search(block).start()
        before = b"".join([*self.pending, block[:position]])
        raise self._refusal(before, block[position:], "holds a control character",
                            "remove it: ids and descriptions must be printable text")

    def _refusal(self, before: bytes, rest: bytes, problem: str, header_hint: str) -> BadInputError:
        """The error for the first byte of `rest`; `before` is what precedes it since a line start
        (the start of the input when nothing was decoded yet: a BAM shows itself there, see KNOWN_BINARY)."""
        if self.pending_offset == 0:  # the start of a decompressed input: which reads file it is
            head = (before[:512] + rest[:512])[:512]
            known = _known_binary(head, self.path) or _compressed_again(head, self.path) or _tar_archive(head, self.path)
            if known is not None:
                return known
        offset = self.pending_offset + len(before)
        line = self.line + _line_ends(before)
        start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
        head = before[start:start + 200] + (rest[:200] if len(before) - start < 200 else b"")
        text = head.decode("utf-8", errors="backslashreplace").replace("\r", "\n").split("\n", 1)[0]
        where = f"byte 0x{rest[0]:02x} at byte offset {offset:,}"
        if text[:1] in (">", "@"):
            words = text[1:].split(None, 1)
            record = printable(words[0]) if words else ""
            return BadInputError(f"{self.path}, line {line}: the header of record '{record}' {problem} ({where})",
                                 header_hint)
        return BadInputError(f"{self.path} holds binary data, not FASTA/FASTQ text: line {line} {problem} ({where})",
                             "the file is damaged or padded (e.g. an interrupted download): download or "
                             "copy it again; give FASTA or FASTQ (plain, gzip, bzip2 or xz)")


def _read_waking(fd: int, size: int) -> bytes:
    """Up to `size` bytes (fewer only at the end) of a pipe, FIFO or terminal, waking twice a second.

    A stop signal may be delivered to any thread (torch starts several); a plain blocking read in
    the main thread would then wait for more input before the signal is acted on.
    """
    pieces, got = [], 0
    while got < size:
        while not select.select([fd], [], [], 0.5)[0]:
            pass
        piece = os.read(fd, size - got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


class HashingTextStream:
    """Reads a possibly compressed file as text while computing the sha256 of its raw bytes.

    `limit` makes it a look ahead: text stops after about that many decompressed bytes (the last
    line then cut where the limit falls) and `cut_short` says so. A regular file read to its end is
    refused when it changed meanwhile (a download or copy still running), a stream never is.
    """

    def __init__(self, path: Path, limit: int | None = None):
        self.path = path
        self.limit, self.cut_short = limit, False
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0
        try:
            self._raw = sys.stdin.buffer if str(path) == STDIN else open(path, "rb")
        except IsADirectoryError:
            raise BadInputError(f"input is a directory, not a file: {path}",
                                "give the FASTA/FASTQ files inside it") from None
        except OSError as exc:
            if name_too_long(exc):
                raise path_too_long(exc, Path(path)) from None
            if open_file_limit(exc):
                raise  # no fault of the file: the CLI names the limit
            raise unopenable_file(path, exc, "input file") from None
        self._opened = os.fstat(self._raw.fileno())
        self._stream = not stat.S_ISREG(self._opened.st_mode)
        # where reading starts: a file given as standard input may have been read partly before us
        self._start = 0 if self._stream else os.lseek(self._raw.fileno(), 0, os.SEEK_CUR)
        self.text = UniversalText(path)  # the parser tells it where a header may start
        head = self._read_raw()
        self.compression = _compression(head, path)
        self.format = ""  # "fasta" or "fastq" once `record_groups` has seen the first record
        self._pending = head

    def close(self) -> None:
        self._raw.close()

    def _read_raw(self) -> bytes:
        try:
            block = _read_waking(self._raw.fileno(), BLOCK) if self._stream else self._raw.read(BLOCK)
        except OSError as exc:
            raise BadInputError(f"cannot read input file {self.path}: {exc.strerror}",
                                "check the file and the storage it is on") from None
        self.sha256.update(block)
        self.bytes_read += len(block)
        if not block and not self._stream:
            self._check_unchanged()
        return block

    def _check_unchanged(self) -> None:
        """Refuse a regular file whose size or time changed since it was opened, or whose size is not
        what was read (a file system that gives no size, as /proc, gives 0): it is still being written."""
        now = os.fstat(self._raw.fileno())
        read_to = self._start + self.bytes_read
        if ((now.st_size, now.st_mtime_ns) == (self._opened.st_size, self._opened.st_mtime_ns)
                and (now.st_size in (0, read_to) or (read_to > now.st_size and not self.bytes_read))):
            return  # (standard input may stand past the end: nothing to read)
        skipped = f", the first {self._start:,} read before virnucpro started" if self._start else ""
        raise BadInputError(f"{self.path} changed while it was read ({self._opened.st_size:,} bytes when opened{skipped}, "
                            f"{self.bytes_read:,} read, {now.st_size:,} now): it is still being written, or was "
                            "replaced meanwhile", "wait until the file is completely written (the download, copy "
                            "or program writing it has finished), then run again")

    def _plain_blocks(self) -> Iterator[bytes]:
        """Decompressed blocks of at most BLOCK bytes."""
        block = self._pending
        if self.compression != "none":
            yield from _joined(self._decompressed_blocks())
            return
        while block:
            yield block
            block = self._read_raw()

    def _decompressed_blocks(self) -> Iterator[bytes]:
        """Multi-member gzip and multi-stream bzip2/xz are followed; NUL padding after a member ends.
        A BGZF file (bgzip, samtools) ends with an empty member, its end-of-file block: one whose
        last member holds data was cut at a member's end (bgzip stopped midway), which gzip itself
        takes for a whole file."""
        decomp, block = _decompressor(self.compression), self._member_start(self._pending)
        bgzf, inflated = _is_bgzf_member(block), 0
        while block:
            for out in self._inflate(decomp, block):
                inflated += len(out)
                yield out
            if not decomp.eof:
                block = self._read_raw()
                continue
            block = self._member_start(self._after_padding(decomp.unused_data))
            if block:
                decomp, bgzf, inflated = _decompressor(self.compression), _is_bgzf_member(block), 0
        if not decomp.eof:
            raise BadInputError(f"{self.path} is a truncated {self.compression} file (it ends in the "
                                "middle of the compressed stream)", "download or copy the file again")
        if self.compression == "gzip" and bgzf and inflated:
            raise BadInputError(f"{self.path} is a truncated BGZF (bgzip) file: it lacks the end-of-file block "
                                "that ends every BGZF file, so it was cut short (bgzip or samtools stopped "
                                "midway) and records are missing", "compress it again from its source, or "
                                "download or copy it again")

    def _member_start(self, block: bytes) -> bytes:
        """`block`, extended by the next raw reads until it holds a member's whole BGZF header (a pipe
        may give a few bytes at a time): whether the member is BGZF is told from its first 18 bytes."""
        while block and len(block) < BGZF_HEADER:
            raw = self._read_raw()
            if not raw:
                break
            block += raw
        return block

    def _after_padding(self, rest: bytes) -> bytes:
        """The input after a finished member and any NUL padding, however many raw blocks the padding
        spans (tape and block devices pad to their block size); empty at the end of the input."""
        rest = rest.lstrip(b"\x00")
        while not rest:
            raw = self._read_raw()
            if not raw:
                return b""
            rest = raw.lstrip(b"\x00")
        return rest

    def _inflate(self, decomp, data: bytes) -> Iterator[bytes]:
        """What `data` decompresses to, BLOCK bytes at most at a time (zeros inflate a thousandfold)."""
        while True:
            try:
                out = decomp.decompress(data, BLOCK)
            except (OSError, zlib.error, lzma.LZMAError, EOFError, ValueError) as exc:
                raise BadInputError(f"{self.path} is not a valid {self.compression} file ({exc})",
                                    "check that the file is not corrupt") from None
            yield out
            data = getattr(decomp, "unconsumed_tail", b"")  # zlib keeps unread input here
            more = not decomp.needs_input if hasattr(decomp, "needs_input") else bool(data) or len(out) == BLOCK
            if decomp.eof or not more:
                return

    def text_blocks(self) -> Iterator[TextBlock]:
        """The input as text in blocks of whole lines (see `UniversalText`), up to `limit` if set."""
        taken = 0
        for block in self._plain_blocks():
            decoded = self.text.feed(block) if block else None
            if decoded is not None:
                yield decoded
            taken += len(block)
            if self.limit is not None and taken >= self.limit:
                self.cut_short = True
                break
        decoded = self.text.finish()
        if decoded is not None:
            yield decoded
        self._raw.close()


def _header_too_long(path: Path, line: int, header: str) -> BadInputError:
    """The refusal of a header line longer than HEADER_LIMIT (`header`: its start, marker included)."""
    return BadInputError(f"{path}, line {line}: header line '{printable(header[:40])}...' is longer than "
                         f"{HEADER_LIMIT:,} bytes, the most virnucpro accepts (real FASTA/FASTQ headers hold a "
                         "few hundred at most)", "the file is damaged or not FASTA/FASTQ: look at that line "
                         "(e.g. head -c 300 on the file); shorten the header if it is really meant")


def _record_id(header: str, path: Path, line: int) -> str:
    """The first whitespace-delimited word of a header given without its '>' or '@'."""
    if len(header) * 4 >= HEADER_LIMIT and len(header.encode()) >= HEADER_LIMIT:
        raise _header_too_long(path, line, header[:40])
    words = header.split(None, 1)
    if not words:
        raise BadInputError(f"{path}, line {line}: the header has no sequence id (nothing but blanks after its "
                            "'>' or '@')",
                            "give every record a name after '>' or '@'")
    _check_header_text(header, words[0], path, line)
    if len(words) > 1 or len(words[0]) != len(header):
        _note_an_unusual_blank(header, words[0], path, line)
    if len(words[0]) > ID_LIMIT:
        raise BadInputError(f"{path}, line {line}: the id '{printable(words[0][:40])}...' is {len(words[0]):,} "
                            f"characters long, more than the {ID_LIMIT:,} virnucpro accepts (every chunk and ORF "
                            "row repeats it)", "shorten the ids: keep a short first word and put the rest after a "
                            "space, where it is the description")
    return words[0]


def take_blank_notes() -> list[tuple[str, str]]:
    """The (input, warning) notes of ids cut at an unusual blank that this process made since the
    last call: prepare's workers hand theirs over with their results, and prepare warns of each
    input once, in input order."""
    notes = _BLANK_NOTES[:]
    _BLANK_NOTES.clear()
    return notes


def _note_an_unusual_blank(header: str, rid: str, path: Path, line: int) -> None:
    """Note (`take_blank_notes`), once per input and process, an id cut at a blank other than a
    space or tab (a no-break space, U+3000...): Biopython cuts ids at every Unicode blank, so the
    original does and so does virnucpro, but samtools, seqkit and awk read on: the ids differ."""
    start = header.index(rid)
    around = header[start - 1:start] + header[start + len(rid):start + len(rid) + 1]  # the blanks either side
    blank = next((character for character in around if character not in ORDINARY_BLANKS), None)
    if blank is None or str(path) in _UNUSUAL_BLANK_NOTED:
        return
    _UNUSUAL_BLANK_NOTED.add(str(path))
    escaped = "".join(f"\\x{byte:02x}" for byte in blank.encode())
    _BLANK_NOTES.append((str(path), f"{path}, line {line}: the id '{printable(rid)}' {'starts after' if around[0] == blank and start else 'ends at'} "
         f"U+{ord(blank):04X} "
         f"({unicodedata.name(blank, 'a control character').lower()}), as Biopython and the original cut ids, but "
         f"samtools, seqkit and awk do not (later ids of this file cut so are not named); to keep the whole name "
         f"as the id, replace that character first: sed 's/{escaped}/_/g'"))


def _check_header_text(header: str, rid: str, path: Path, line: int) -> None:
    """Refuse (exit 3) what would change the outputs' meaning for their readers: a control character
    beyond ASCII's, and an id starting with a double quote, which table readers (pandas, R, csv)
    take for the start of a quoted field: they merge rows, or lose them without a word."""
    unsafe = UNSAFE_IN_HEADER.search(header)
    if unsafe:
        raise BadInputError(f"{path}, line {line}: header '{printable(header[:60])}' holds U+{ord(unsafe.group()):04X}, a "
                            "control character or text-direction override", "remove it: ids and descriptions must be printable text")
    invisible = INVISIBLE_IN_ID.search(rid)
    if invisible:
        shown = printable(rid[:60]).replace(invisible.group(), ascii(invisible.group())[1:-1])
        raise BadInputError(f"{path}, line {line}: the id '{shown}' holds U+{ord(invisible.group()):04X}, a character "
                            "shown as nothing (zero-width, text-direction mark, soft hyphen, variation selector...): ids "
                            "that differ only by it would look the same in every table", "remove it from the id (a "
                            "description, after a space, may keep it)")
    unshown = None if rid.isascii() else UNSHOWN_IN_ID.search(rid)
    if unshown:
        shown = printable(rid[:60]).replace(unshown.group(), ascii(unshown.group())[1:-1])
        raise BadInputError(f"{path}, line {line}: the id '{shown}' holds U+{ord(unshown.group()):04X}, a "
                            "character no font shows as itself (format character, private use, noncharacter, braille "
                            "blank): ids that differ only by it would look the same in every table",
                            "remove it from the id (a description, after a space, may keep it)")
    if rid.startswith('"'):
        raise BadInputError(f"{path}, line {line}: the id '{printable(rid[:60])}' starts with a double quote, which "
                            "readers of the output tables (pandas, R, Python's csv) take for the start of a "
                            "quoted field: they would merge or lose rows", "rename the sequence: drop or replace the "
                            "leading quote (and check that the ids stay distinct)")


def _fasta_record(text: str, path: Path, line: int) -> Record:
    """A record from its text after '>': the header line, then sequence lines."""
    header, _, body = text.partition("\n")
    rid = _record_id(header, path, line)
    if body.startswith("@") or "\n@" in body:
        raise _fastq_inside_fasta(body, path, rid, line)
    sequence = body.replace("\n", "")
    if " " in sequence or "\t" in sequence:  # removed, as Biopython's FASTA parser removes them
        sequence = sequence.replace(" ", "").replace("\t", "")
    return Record(rid, sequence, line)


def _fastq_inside_fasta(body: str, path: Path, rid: str, line: int) -> BadInputError:
    """The refusal of FASTA record `rid` (header on `line`) whose sequence lines `body` hold a line
    starting with '@': no sequence holds it, a FASTQ header does (files of both joined with cat?)."""
    at = 0 if body.startswith("@") else body.index("\n@") + 1
    shown = printable(body[at:].split("\n", 1)[0][:40])
    number = line + 1 + body.count("\n", 0, at)
    return BadInputError(f"{path}, line {number}: '{shown}', inside FASTA record '{rid}' (line {line}), looks like "
                         "the header of a FASTQ record: FASTA and FASTQ records in one file", "give the FASTQ "
                         "records as a file of their own, or convert them to FASTA first (e.g. seqkit fq2fa)")


@dataclass
class RecordGroup:
    """Whole records of one file, about a megabyte of them: raw FASTA text (the text after the
    group's first '>') to be parsed where the group is processed, or FASTQ records already parsed,
    as columns (a worker process receives them several times faster than as `Record` objects)."""

    path: Path
    fasta_text: str | None = None
    first_line: int = 1
    ids: list[str] | None = None
    sequences: list[str] | None = None
    lines: array | None = None  # of each record's header

    @classmethod
    def of_records(cls, path: Path, records: list[Record]) -> "RecordGroup":
        return cls(path, ids=[r.id for r in records], sequences=[r.sequence for r in records],
                   lines=array("q", [r.line for r in records]))

    def parse(self) -> Iterator[Record]:
        if self.ids is not None:
            yield from map(Record, self.ids, self.sequences, self.lines)
            return
        line = self.first_line
        for text in self.fasta_text.split("\n>"):
            yield _fasta_record(text, self.path, line)
            line += text.count("\n") + 1

    def columns(self) -> tuple[list[str], list[str]]:
        """The ids and the sequences of the records, in order: what `parse` gives, without the line
        numbers that only messages need (`parse` again finds a record's line)."""
        if self.ids is not None:
            return self.ids, self.sequences
        plain = _plain_fasta_columns(self.fasta_text)
        if plain is not None:
            return plain
        records = list(self.parse())
        return [record.id for record in records], [record.sequence for record in records]


def _plain_fasta_columns(text: str) -> tuple[list[str], list[str]] | None:
    """`RecordGroup.columns` of FASTA text holding nothing any record must be refused for, worked out
    over the whole group with list operations (short reads cost several times less than through
    `parse`); None when the text is not plain: not ASCII (the Unicode checks of `_check_header_text`),
    a double quote anywhere, a header without id, an id or header over its limit. `parse` then goes
    record by record and names the one at fault, if any."""
    if not text.isascii() or '"' in text:
        return None
    records = [record.partition("\n") for record in text.split("\n>")]
    headers = [header for header, _, _ in records]
    if max(map(len, headers)) >= HEADER_LIMIT:
        return None
    try:
        ids = [header.split(None, 1)[0] for header in headers]
    except IndexError:  # a header of blanks only
        return None
    if max(map(len, ids)) > ID_LIMIT:
        return None
    sequences = [body.replace("\n", "") for _, _, body in records]
    joined = "".join(sequences)
    if " " in joined or "\t" in joined:  # removed, as `_fasta_record` removes them
        sequences = [sequence.replace(" ", "").replace("\t", "") for sequence in sequences]
    return ids, sequences


def _bases_only(text: str) -> str:
    """Sequence lines without their line ends, spaces and tabs (all removed from a sequence anyway)."""
    for blank in "\n \t":
        if blank in text:
            text = text.replace(blank, "")
    return text


def _record_start(text: str, first: bool) -> int:
    """Where the first (or the last) record start of a line-aligned text block is; -1 if none."""
    if text.startswith(">"):  # the previous block ended a line: a record starts here
        return 0
    found = text.find("\n>") if first else text.rfind("\n>")
    return found + 1 if found >= 0 else -1


def _fasta_groups(blocks: Iterator[TextBlock], first: TextBlock, path: Path) -> Iterator[RecordGroup]:
    """Cut line-aligned text blocks at the last record start of each block: whole-record groups.

    A record running on through whole blocks is held without their line ends and blanks, so blank
    lines cost nothing; its group ends at the next record start, so the lines a group counts stay exact.
    """
    start = first.text.index(">")
    line = first.first_line + first.text.count("\n", 0, start)
    pieces, spanning = [first.text[start + 1:]], False
    for block in blocks:
        text = block.text
        boundary = _record_start(text, first=spanning)
        if boundary < 0:
            pieces.append(_bases_only(text))  # still inside one (long) record
            spanning = True
            continue
        if boundary:  # the group ends before the newline that precedes the next '>'
            pieces.append(text[:boundary - 1])
        elif pieces[-1].endswith("\n"):
            pieces[-1] = pieces[-1][:-1]
        yield from _capped_groups("".join(pieces), line, path)
        line = block.next_line - text.count("\n", boundary)
        pieces, spanning = [text[boundary + 1:]], False
    yield from _capped_groups("".join(pieces), line, path)


def _capped_groups(text: str, line: int, path: Path) -> Iterator[RecordGroup]:
    """The records of one group's FASTA text (after its first '>', header on `line`) in groups of at
    most GROUP_RECORDS records, as FASTQ groups are: a megabyte of short reads is ~70,000 records, and
    a record costs far more once parsed and prepared than as text."""
    if text.count(">") < GROUP_RECORDS or text.count("\n>") < GROUP_RECORDS:  # '>' alone: 3x faster
        yield RecordGroup(path, fasta_text=text, first_line=line)
        return
    start = 0
    while True:
        cut = start - 1
        for _ in range(GROUP_RECORDS):  # the '\n>' that ends record GROUP_RECORDS of this part
            cut = text.find("\n>", cut + 1)
            if cut < 0:
                yield RecordGroup(path, fasta_text=text[start:], first_line=line)
                return
        part = text[start:cut]
        yield RecordGroup(path, fasta_text=part, first_line=line)
        line += part.count("\n") + 1  # as RecordGroup.parse counts: the '\n>' ends a line
        start = cut + 2


def _fastq_records(lines: Iterator[tuple[int, str]], first: tuple[int, str], path: Path,
                   reader: UniversalText) -> Iterator[Record]:
    """FASTQ records; `reader` is told what may start a header at the line read next (quality may start with '@')."""
    header: tuple[int, str] | None = first
    while header is not None:
        line_no, text = header
        if not text.startswith("@"):
            mark = " (it starts with a byte-order mark: files joined with cat?)" if text[:1] == BYTE_ORDER_MARK else ""
            raise BadInputError(f"{path}, line {line_no}: expected a FASTQ header starting with '@', "
                                f"found '{text[:40]}'{mark}", "check that the FASTQ file is complete")
        rid = _record_id(text[1:], path, line_no)
        reader.header_marks = b"+"  # the separator line repeats the header
        sequence, sequence_lines = _fastq_sequence(lines, path, rid, header)
        reader.header_marks = b""
        record = Record(rid, sequence, line_no)
        _read_fastq_quality(lines, path, record, sequence_lines)
        yield record
        reader.header_marks = b"@"
        header = next(((n, t) for n, t in lines if t.strip()), None)


def _read_fastq_quality(lines: Iterator[tuple[int, str]], path: Path, record: Record, sequence_lines: int) -> None:
    """Read the quality lines of `record`: as many characters as its bases, on no more lines than its
    sequence took (writers that wrap wrap both alike), so that a short quality line never takes the
    next record's lines for the rest of its quality (they would be lost without a word)."""
    bases, quality, taken = len(record.sequence), 0, []
    while quality < bases:
        nxt = next(lines, None)
        if nxt is None:
            raise BadInputError(f"{path}: FASTQ record '{record.id}' (line {record.line}) has fewer quality "
                                f"characters than bases ({quality} for {bases})", "the file is truncated")
        if not nxt[1].strip():
            continue  # a line of blanks holds no quality, as it held no bases
        if len(taken) == sequence_lines:
            raise _quality_refusal(path, record, taken, quality, nxt)
        taken.append(nxt[0])
        quality += len(nxt[1].strip())
    if quality != bases:
        raise _quality_refusal(path, record, taken, quality, None)


def _quality_refusal(path: Path, record: Record, taken: list[int], quality: int,
                     following: tuple[int, str] | None) -> BadInputError:
    """The refusal of `record` whose quality lines (numbered `taken`) hold `quality` characters, not
    one a base; `following` is the line after them when the quality would have run on into it."""
    where = f"line {taken[0]}" if len(taken) == 1 else f"lines {taken[0]}-{taken[-1]}"
    message = (f"{path}, {where}: the quality of FASTQ record '{record.id}' (line {record.line}) holds "
               f"{quality} quality characters for {len(record.sequence)} bases")
    if following is not None:
        number, text = following
        message += (f"; line {number}, '{printable(text[:40])}', looks like the next record's header"
                    if text.startswith("@") else
                    f"; it cannot go on to line {number}: a quality spans no more lines than its sequence")
    return BadInputError(message, "the file is damaged (a quality line cut short or too long): look at those "
                         "lines; write or download the file again")


def _fastq_sequence(lines: Iterator[tuple[int, str]], path: Path, rid: str,
                    header: tuple[int, str]) -> tuple[str, int]:
    """The sequence of record `rid` (`header`: its line number and text) and the lines it took: its
    lines up to the '+' line. FASTQ allows no whitespace inside a sequence (Biopython refuses it too):
    a space would be counted as a base, and then the quality length would be reported wrong."""
    header_line, parts = header[0], []
    for number, text in lines:
        if text.startswith("+"):
            _check_plus_line(path, rid, header, number, text)
            return "".join(parts), len(parts)
        bases = text.strip()
        if " " in bases:
            raise BadInputError(f"{path}, line {number}: FASTQ record '{rid}' (line {header_line}) has a space "
                                "inside its sequence, which FASTQ does not allow",
                                "remove the spaces: FASTQ sequence lines hold bases only")
        if parts or "\t" in bases:  # a first line alone is held anyway, and its letters checked later
            bases = _fastq_bases(bases, path, number, rid, header_line, parts)
        if bases:
            parts.append(bases)
    raise BadInputError(f"{path}: FASTQ record '{rid}' (line {header_line}) has no '+' line",
                        "the file is truncated or not FASTQ")


def _check_plus_line(path: Path, rid: str, header: tuple[int, str], number: int, text: str) -> None:
    """Refuse a '+' line naming another record than its header: the text after '+', when there is
    any, is the header's text after '@' (as Biopython asks) or its id alone (trailing blanks aside)."""
    named = text[1:].rstrip()
    if named and named not in (header[1][1:].rstrip(), rid):
        raise BadInputError(f"{path}, line {number}: the '+' line of FASTQ record '{rid}' (line {header[0]}), "
                            f"'{printable(text.rstrip()[:60])}', names another record than its header "
                            f"'{printable(header[1].rstrip()[:60])}'", "the file is damaged or its records are "
                            "mixed up: a '+' line is '+' alone or repeats its header's text")


def _fastq_bases(text: str, path: Path, number: int, rid: str, header_line: int, parts: list[str]) -> str:
    """`text`, a sequence line of record `rid` after the lines `parts`, when it holds nucleotide codes
    only. A record is held until its '+' line, so a line that is no sequence (SAM, a header or a
    quality where '+' belongs) is refused at once: a file that only starts like FASTQ is never held whole."""
    bad = invalid_letters(text)
    if not bad:
        return text
    if "\t" in text:
        raise BadInputError(f"{path}, line {number}: '{printable(text[:40])}' holds a tab, which no FASTQ line holds: "
                            "this looks like SAM or another tab-separated table, not FASTQ",
                            "give FASTQ or FASTA (e.g. samtools fastq turns SAM/BAM into FASTQ)")
    if text.startswith("@"):
        raise BadInputError(f"{path}: FASTQ record '{rid}' (line {header_line}) has no '+' line before line "
                            f"{number}, '{printable(text[:40])}'", "the file is damaged or not FASTQ: look at those lines")
    if len(parts) == 1 and len(text) == len(parts[0]):
        raise BadInputError(f"{path}, line {number}: FASTQ record '{rid}' (line {header_line}) has no '+' line "
                            f"before its quality? Line {number}, '{printable(text[:40])}', is as long as the sequence "
                            f"and holds what no sequence holds ({''.join(sorted(set(bad)))[:20]!r}), as a quality line",
                            "the file is damaged or not FASTQ: each record is a '@' header, its sequence, a '+' "
                            "line and its quality")
    raise letters_refusal(path, rid, header_line, bad, len(text))


def letters_refusal(path: Path, rid: str, line: int, bad: str, letters: int) -> BadInputError:
    """The refusal of record `rid` whose sequence (`letters` long, or the line of it read) holds `bad`,
    characters that are no nucleotide code."""
    shown = "".join(sorted(set(bad)))[:20]
    return BadInputError(f"{path}, record '{rid}' (line {line}) has {len(bad):,} of {letters:,} characters that are "
                         f"no nucleotide code: {shown!r}{_what_the_letters_suggest(bad, letters)}",
                         "give nucleotide sequences (IUPAC codes, N, X, '-', '.', '*' are accepted)")


def _what_the_letters_suggest(bad: str, letters: int) -> str:
    """What characters that are no nucleotide code most likely are, for the refusal's message: protein
    only when letters no DNA holds make a share of the sequence that a protein's do (E, F, I, L, P, Q
    are over a third of a protein's residues) and are at least three or a third of it (one Z in a
    22-base read is a stray letter; 'MEF' is a peptide), a stray letter in DNA otherwise."""
    if BYTE_ORDER_MARK in bad:
        return " - a byte-order mark inside the file (files joined with cat?): remove it"
    if ";" in bad:
        return " - a ';' comment line? FASTA has no comments: remove it"
    protein_like = sum(c in PROTEIN_LIKE for c in bad)
    if protein_like >= max(1, letters // 20) and (protein_like >= 3 or 3 * protein_like >= letters):
        return " - this looks like a protein sequence"
    return (" - not a protein (too few of them), but no base either: the original silently dropped each codon "
            "holding one; mask them as N if the record is good otherwise")


GROUP_BASES = 1 << 20
GROUP_RECORDS = 1 << 14  # and at most this many records: short or empty reads add few bases each
NONEMPTY_LINE = re.compile(r"[^\n]+")


def _numbered_lines(blocks: Iterable[TextBlock]) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line but empty ones (nothing in FASTQ), numbered as the blocks say."""
    for block in blocks:
        if "\n\n" in block.text:  # empty lines: skipped one by one, never listed
            yield from _nonempty_lines(block)
            continue
        lines = block.text.split("\n")
        if lines[-1] == "":
            lines.pop()
        yield from enumerate(lines, start=block.first_line)


def _nonempty_lines(block: TextBlock) -> Iterator[tuple[int, str]]:
    """(line number, line) of the lines of `block` that are not empty."""
    number, counted = block.first_line, 0
    for match in NONEMPTY_LINE.finditer(block.text):
        number += block.text.count("\n", counted, match.start())
        counted = match.start()
        yield number, match.group()


def _fastq_groups(blocks: Iterable[TextBlock], path: Path, reader: UniversalText) -> Iterator[RecordGroup]:
    """FASTQ records in groups of at most GROUP_RECORDS records. Blocks of plain four-line records
    (nearly every FASTQ) are split with list operations (`_plain_fastq_columns`); from the first
    record that is not plain on, records are parsed line by line, as `_fastq_records` parses them,
    naming any fault."""
    blocks = iter(blocks)
    carry: list[str] = []  # the lines of a record the previous block began
    carry_line = 1
    for block in blocks:
        first_line = block.first_line - len(carry)
        lines = _listed_lines(block, carry)
        whole = len(lines or ()) // 4 * 4
        plain = _plain_fastq_columns(lines[:whole]) if lines is not None else None
        if plain is None:
            here = _numbered(lines, first_line) if lines is not None else itertools.chain(
                _numbered(carry, first_line), _numbered_lines([block]))
            yield from _parsed_fastq_groups(itertools.chain(here, _numbered_lines(blocks)), path, reader)
            return
        yield from _column_groups(path, *plain, first_line)
        carry, carry_line = lines[whole:], first_line + whole
        if not _plain_start(carry):  # read line by line now, as before the next block: a fault is named first
            yield from _parsed_fastq_groups(itertools.chain(_numbered(carry, carry_line), _numbered_lines(blocks)),
                                            path, reader)
            return
        reader.header_marks = NEXT_LINE_MARKS[len(carry)]
    if carry:
        yield from _parsed_fastq_groups(_numbered(carry, carry_line), path, reader)


def _listed_lines(block: TextBlock, carry: list[str]) -> list[str] | None:
    """`carry` then the lines of `block`; None when the block holds an empty line: those are skipped
    one by one, never listed (a run of millions costs no memory), by the line-by-line reader."""
    if block.text.startswith("\n") or "\n\n" in block.text:
        return None
    lines = carry + block.text.split("\n")
    if block.text.endswith("\n"):
        lines.pop()
    return lines


# what may start a header at the next line, after this many lines of a four-line record: as
# `_fastq_records` says it to the reader (a line in the place of a '+' line is checked as a header)
NEXT_LINE_MARKS = (b"@", b"+", b"+", b"")


def _plain_start(lines: list[str]) -> bool:
    """Whether the first lines of a record (fewer than four) are what `_fastq_records` reads without a
    fault and in the places the four-line reading gives them (a plain header, one sequence line, a
    '+' line), so that the line after them is checked as NEXT_LINE_MARKS says."""
    if not lines:
        return True
    record = (lines + ["", "+"][len(lines) - 1:])[:3]
    return _plain_fastq_columns([*record, "I" * len(record[1])]) is not None


def _plain_fastq_columns(lines: list[str]) -> tuple[list[str], list[str]] | None:
    """The ids and sequences of whole four-line records (header, one sequence line, '+' line, one
    quality line) that `_fastq_records` would read the same way and accept: ASCII headers with an id
    (no double quote, within the limits), sequences of nucleotide codes only, each as long as its
    quality line, which holds no blank. None when any record is not such, for `_fastq_records` to
    read and, if it must, name."""
    headers, sequences, separators, qualities = lines[0::4], lines[1::4], lines[2::4], lines[3::4]
    header_text = "\n" + "\n".join(headers)
    if header_text.count("\n@") != len(headers) or not header_text.isascii() or '"' in header_text:
        return None
    if ("\n" + "\n".join(separators)).count("\n+") != len(separators):
        return None
    if separators.count("+") != len(separators) and any(  # a '+' line naming its record: the same one?
            plus[1:].rstrip() not in ("", head[1:].rstrip()) for head, plus in zip(headers, separators)):
        return None
    if list(map(len, sequences)) != list(map(len, qualities)) or invalid_letters("".join(sequences)):
        return None
    quality_text = "".join(qualities)
    if not quality_text.isascii() or " " in quality_text or "\t" in quality_text:
        return None
    if headers and max(map(len, headers)) > HEADER_LIMIT:
        return None
    try:
        ids = [header[1:].split(None, 1)[0] for header in headers]
    except IndexError:  # a header of blanks only
        return None
    if ids and max(map(len, ids)) > ID_LIMIT:
        return None
    return ids, sequences


def _numbered(lines: list[str], first_line: int) -> Iterator[tuple[int, str]]:
    """(line number, line) of the lines that are not empty, as `_numbered_lines` gives them."""
    return ((number, line) for number, line in enumerate(lines, start=first_line) if line)


def _column_groups(path: Path, ids: list[str], sequences: list[str], first_line: int) -> Iterator[RecordGroup]:
    """Plain four-line records (the first header on `first_line`) in groups of GROUP_RECORDS at most."""
    for start in range(0, len(ids), GROUP_RECORDS):
        end = start + GROUP_RECORDS
        yield RecordGroup(path, ids=ids[start:end], sequences=sequences[start:end],
                          lines=array("q", range(first_line + 4 * start, first_line + 4 * min(end, len(ids)), 4)))


def _parsed_fastq_groups(numbered: Iterator[tuple[int, str]], path: Path,
                         reader: UniversalText) -> Iterator[RecordGroup]:
    """The records read by `_fastq_records` from these lines on, in groups of about GROUP_BASES bases
    or GROUP_RECORDS records, whichever comes first (a run of empty reads, as cutadapt keeps them,
    would be one group)."""
    reader.header_marks = b"@"  # a record starts here: what `_fastq_records` says after a record
    first = next(((n, t) for n, t in numbered if t.strip()), None)
    if first is None:
        return
    group, bases = [], 0
    for record in _fastq_records(numbered, first, path, reader):
        group.append(record)
        bases += len(record.sequence)
        if bases >= GROUP_BASES or len(group) >= GROUP_RECORDS:
            yield RecordGroup.of_records(path, group)
            group, bases = [], 0
    if group:
        yield RecordGroup.of_records(path, group)


def record_groups(stream: HashingTextStream) -> Iterator[RecordGroup]:
    """Groups of whole records of one file, FASTA or FASTQ decided by the first non-blank character."""
    blocks = stream.text_blocks()
    first = next((b for b in blocks if b.text.strip()), None)
    if first is None:
        name = "standard input ('-')" if str(stream.path) == STDIN else stream.path
        raise BadInputError(f"{name} is empty (no records)", "give a FASTA or FASTQ file with sequences")
    marker = first.text.lstrip()[0]
    if marker == ">":
        stream.text.header_marks, stream.format = b">", "fasta"
        yield from _fasta_groups(blocks, first, stream.path)
    elif marker == "@":
        stream.text.header_marks, stream.format = b"@", "fastq"
        yield from _fastq_groups(itertools.chain([first], blocks), stream.path, stream.text)
    else:
        text = first.text.lstrip()
        number = first.first_line + first.text[:len(first.text) - len(text)].count("\n")
        shown = printable(text.split("\n", 1)[0][:30])
        raise BadInputError(f"{stream.path} is not FASTA or FASTQ: line {number} starts with '{shown}' "
                            "instead of '>' or '@'", "give a nucleotide FASTA or FASTQ file")


def read_records(stream: HashingTextStream) -> Iterator[Record]:
    """Every record of one file, in order."""
    for group in record_groups(stream):
        yield from group.parse()


def invalid_letters(sequence: str) -> str:
    """Characters of `sequence` that are no IUPAC nucleotide code (empty string when all are valid)."""
    if not sequence.isascii():
        return "".join(c for c in sequence if not c.isascii() or c.encode() not in NUCLEOTIDE_SYMBOLS)
    return sequence.encode("ascii").translate(None, NUCLEOTIDE_SYMBOLS).decode("ascii")

