"""Inputs at their edges: names that are not UTF-8, protein caught before models, SAM given as FASTQ,
a file still being written, and duplicate ids on a stream (confirmed, never guessed, and named)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from memory_helpers import traced_peak
from virnucpro import prepared as fmt
from virnucpro.errors import BadInputError
from virnucpro.seqio import HashingTextStream, read_records

DNA = ">s1 first\nATGAAACCCGGGTTTAAACCCGGGTTTAAACCCGGGTTTAAACCCGGGTTTAAACCC\n>s2\nATGGCGGCGGCGGCGGCGGCG\n"
PROTEIN = ">p1 a protein\nMKVLAAGIVGLLLAQEPSTTRWYFH\n"


def virnucpro(*args, **options) -> subprocess.CompletedProcess:
    """`virnucpro ARGS` in a fresh process (paths may hold bytes that are not UTF-8)."""
    return subprocess.run([sys.executable, "-m", "virnucpro", *map(str, args)], capture_output=True,
                          text=True, errors="backslashreplace", timeout=300, **options)


def strict_text(path: Path) -> str:
    """The file's text, which must be UTF-8 without a lone surrogate, raw or JSON-escaped."""
    text = path.read_bytes().decode("utf-8")
    assert "\\udc" not in text.lower(), text
    return text


# --- 1: an input name that is not UTF-8 --------------------------------------------------------------

def test_run_on_a_file_name_that_is_not_utf8_writes_every_output(tmp_path, tiny_models):
    """The name (bytes that are no UTF-8, held by Python as surrogates) crashed the report, on every rerun."""
    name = os.fsdecode(b"bad\xffname.fa")
    (tmp_path / name).write_text(DNA)
    for attempt in range(2):
        done = virnucpro("run", name, "--outdir", "out", "--models", tiny_models, "--device", "cpu", cwd=tmp_path)
        assert done.returncode == 0, (attempt, done.stderr[-3000:])
    out = tmp_path / "out"
    assert "bad\\xffname.fa" in strict_text(out / "report.html")
    for produced in ("sequences.tsv", "chunks.tsv", "prediction_results.txt"):
        strict_text(out / produced)
    assert json.loads((out / "run_info.json").read_bytes())["inputs"][0]["path"] == "bad\\xffname.fa"
    assert b"\\udcff" not in (out / "run_info.json").read_bytes(), "a lone surrogate: invalid UTF-8 JSON text"


def test_names_that_are_not_utf8_are_shown_as_their_bytes_and_suggested_as_shell_words(tmp_path):
    """A review's case: a missing input named b'\\xff.fa' was said as '\\udcff.fa', and the command a
    message suggested (models download --dest) held that text: pasted, it made another folder."""
    done = virnucpro("prepare", os.fsdecode(b"\xff.fa"), "--outdir", "out", cwd=tmp_path)
    assert done.returncode == 3 and "input file not found: \\xff.fa" in done.stderr, done.stderr
    models = tmp_path / os.fsdecode(b"m\xffodels")
    (tmp_path / "a.fa").write_text(DNA)
    done = virnucpro("run", "a.fa", "--outdir", "out", "--models", models, "--offline", cwd=tmp_path)
    suggested = re.search(r"virnucpro models download --dest ([^\s`]+)", done.stderr)
    assert suggested and "udc" not in done.stderr, done.stderr
    made = subprocess.run(["bash", "-c", f"mkdir {suggested.group(1)}"], cwd=tmp_path)
    assert made.returncode == 0 and models.is_dir(), suggested.group(1)  # the shell reads back the same bytes


def test_prepare_manifest_names_the_input_in_valid_unicode(tmp_path, run_cli):
    name = os.fsdecode(b"caf\xe9.fa")  # a Latin-1 name
    (tmp_path / name).write_text(DNA)
    code, message = run_cli("prepare", tmp_path / name, "--outdir", tmp_path / "out")
    assert code == 0, message
    manifest = json.loads(strict_text(tmp_path / "out" / fmt.MANIFEST))
    assert manifest["inputs"][0]["path"] == str(tmp_path / "caf\\xe9.fa")


def test_report_of_an_older_manifest_holding_a_surrogate(tmp_path):
    """A prepare folder written before the fix still holds the raw name: the report escapes it."""
    from virnucpro.report import write_report

    counts = {"sequences": 1, "empty_sequences": 0, "chunks": 1, "chunks_without_orf": 1, "orfs": 0}
    manifest = {"counts": counts, "chunk_size": 500,
                "inputs": [{"path": os.fsdecode(b"old\xfe.fa"), "records": 1, "sha256": "0" * 64}]}
    run_info = {"tiny_models": True, "seconds": {"predict": 0.1}, "virnucpro_version": "x", "threshold": 0.5,
                "precision": ["fp32"], "device": ["cpu"]}
    summary = {"calls": {"virus": 0, "others": 0, "no_orf": 1, "empty": 0}, "top": []}
    write_report(tmp_path / "report.html", manifest, 0, 0, summary, [0] * 10, run_info)
    assert "old\\xfe.fa" in strict_text(tmp_path / "report.html")


# --- 2: protein given as DNA is refused before any model is looked for ------------------------------

@pytest.mark.parametrize("packing", ["plain", "gzip"])
def test_run_refuses_protein_before_looking_for_models(tmp_path, packing):
    path = tmp_path / "p.fa"
    path.write_bytes(PROTEIN.encode() if packing == "plain" else gzip.compress(PROTEIN.encode()))
    (tmp_path / "no-models").mkdir()
    done = virnucpro("run", path, "--outdir", tmp_path / "o", "--models", tmp_path / "no-models", "--offline")
    assert done.returncode == 3, done.stderr
    assert "'p1'" in done.stderr and "looks like a protein" in done.stderr and "models" not in done.stderr


def test_input_check_reads_a_bounded_start_of_a_long_record(tmp_path):
    """A 32 Mbp single-line record: the check looks at its first block, not at the whole record."""
    from virnucpro.prepare import check_inputs

    path = tmp_path / "chromosome.fa"
    with open(path, "w") as out:
        out.write(">chr1\n")
        for _ in range(32):
            out.write("ACGT" * (1 << 18))
        out.write("\n>p1\nMKVLEEPQ\n")
    _, peak = traced_peak(lambda: check_inputs([path]))
    assert peak < 8 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_input_check_names_protein_in_the_first_block_of_a_large_file(tmp_path):
    from virnucpro.prepare import check_inputs

    path = tmp_path / "big.fa"
    path.write_text(PROTEIN + "".join(f">r{i}\n{'ACGT' * 100}\n" for i in range(10_000)))
    with pytest.raises(BadInputError, match="'p1'.*protein"):
        check_inputs([path])


def test_input_check_leaves_a_cut_fastq_record_to_prepare(tmp_path, monkeypatch):
    """The check stops within a record; what it cannot see whole is no error."""
    from virnucpro import seqio
    from virnucpro.prepare import check_inputs

    monkeypatch.setattr(seqio, "BLOCK", 64)
    path = tmp_path / "reads.fq"
    path.write_text("".join(f"@r{i}\n{'ACGT' * 10}\n+\n{'I' * 40}\n" for i in range(100)))
    check_inputs([path])


# --- 3: SAM (or other text starting with '@') is refused at its first line that is no sequence -----------

def test_sam_given_as_fastq_is_named_at_its_second_line(tmp_path):
    path = tmp_path / "aligned.fq"
    path.write_text("@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chr1\tLN:1000\nr1\t0\tchr1\t1\t60\t4M\t*\t0\t0\tACGT\tIIII\n")
    with pytest.raises(BadInputError, match=r"line 2.*SAM"):
        list(read_records(HashingTextStream(path)))


def test_sam_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "aligned.sam.gz"
    line = b"r1\t0\tchr1\t1\t60\t40M\t*\t0\t0\t" + b"ACGT" * 10 + b"\t" + b"I" * 40 + b"\n"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b"@HD\tVN:1.6\n")
        out.write(line * ((48 << 20) // len(line)))
    refusal, peak = traced_peak(lambda: refusal_of(path))
    assert refusal is not None and re.search("line 2.*SAM", str(refusal)), refusal
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB"


def refusal_of(path) -> BadInputError | None:
    """The refusal reading `path` ends with, None when it reads to the end."""
    try:
        list(read_records(HashingTextStream(path)))
    except BadInputError as refused:
        return refused
    return None


def test_a_header_where_the_plus_line_belongs_is_named(tmp_path):
    path = tmp_path / "reads.fq"
    path.write_text("@r1\nACGT\n@r2\nACGT\n+\nIIII\n")
    with pytest.raises(BadInputError, match=r"'r1' \(line 1\) has no '\+' line.*line 3"):
        list(read_records(HashingTextStream(path)))


def test_multi_line_fastq_stays_accepted(tmp_path):
    path = tmp_path / "reads.fq"
    path.write_text("@r1 wrapped\nACGTAC\nGTNN\n+\nIIIIII\nIIII\n@r2\nAC\n+\n@@\n")
    assert [(r.id, r.sequence) for r in read_records(HashingTextStream(path))] == [("r1", "ACGTACGTNN"),
                                                                                   ("r2", "AC")]


# --- 4: a file that changes while it is read ------------------------------------------------------------

def big_fasta(path: Path) -> Path:
    """Records over several read blocks (1 MiB), so that the file can change between two blocks."""
    path.write_text("".join(f">r{i}\n{'ACGTTGCA' * 60}\n" for i in range(8000)))
    return path


def test_a_file_appended_to_while_it_is_read_is_refused(tmp_path):
    path = big_fasta(tmp_path / "growing.fa")
    records = read_records(HashingTextStream(path))
    next(records)
    with open(path, "a") as writer:
        writer.write(">late\nACGT")
    with pytest.raises(BadInputError, match="changed while it was read"):
        list(records)


def test_a_file_rewritten_in_place_while_it_is_read_is_refused(tmp_path):
    path = big_fasta(tmp_path / "rewritten.fa")
    records = read_records(HashingTextStream(path))
    next(records)
    with open(path, "r+b") as writer:
        writer.write(b">R0")
    os.utime(path, ns=(0, 12345))  # the coarse file clock may give the rewrite its old time
    with pytest.raises(BadInputError, match="changed while it was read"):
        list(records)


def test_prepare_of_a_file_still_being_written_exits_3(tmp_path, run_cli, monkeypatch):
    from virnucpro.prepare import SamplePreparer

    path = big_fasta(tmp_path / "growing.fa")
    submit = SamplePreparer.submit

    def submit_then_append(self, group, summary):
        submit(self, group, summary)
        with open(path, "a") as writer:
            writer.write(f">late{len(self.in_flight)}\nAC")
    monkeypatch.setattr(SamplePreparer, "submit", submit_then_append)
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out", "--threads", "1")
    assert code == 3 and "changed while it was read" in message and "growing.fa" in message, message
    assert not (tmp_path / "out").exists()


# --- 5: duplicate ids when an input is a stream ------------------------------------------------------------

def fifo_with(tmp_path: Path, text: str) -> Path:
    """A named pipe a thread writes `text` into (read once, like standard input)."""
    fifo = tmp_path / "reads.fa"
    os.mkfifo(fifo)
    threading.Thread(target=lambda: fifo.write_text(text), daemon=True).start()
    return fifo


def colliding(monkeypatch, ids: list[str]) -> None:
    """Make the hashes of `ids` repeat, as two distinct ids with one 64-bit hash would."""
    from virnucpro.prepare import IdRegistry

    add_many = IdRegistry.add_many
    extra = [hash(rid) for rid in ids]
    monkeypatch.setattr(IdRegistry, "add_many", lambda self, hashes: add_many(self, hashes + type(hashes)("q", extra)))


def test_a_hash_collision_on_a_stream_is_no_duplicate(tmp_path, run_cli, monkeypatch):
    colliding(monkeypatch, ["s1"])
    code, message = run_cli("prepare", fifo_with(tmp_path, DNA), "--outdir", tmp_path / "out", "--threads", "1")
    assert code == 0, message
    assert fmt.load_manifest(tmp_path / "out")["counts"]["sequences"] == 2


def test_a_real_duplicate_on_a_stream_is_named_among_collisions(tmp_path, run_cli, monkeypatch):
    from virnucpro.prepare import IdRegistry

    monkeypatch.setattr(IdRegistry, "CONFIRM_BATCH", 2)
    colliding(monkeypatch, ["a0", "a1", "a2", "a3", "a4"])
    text = "".join(f">a{i}\nACGTACGT\n" for i in range(6)) + ">a5 again\nACGT\n"
    code, message = run_cli("prepare", fifo_with(tmp_path, text), "--outdir", tmp_path / "out", "--threads", "1")
    assert code == 3, message
    assert "duplicate sequence id 'a5'" in message and "record 6" in message and "record 7" in message


def test_a_duplicate_on_standard_input_is_named(tmp_path):
    done = virnucpro("prepare", "-", "--outdir", tmp_path / "out", input=DNA + DNA)
    assert done.returncode == 3
    assert "duplicate sequence id 's1'" in done.stderr and "standard input" in done.stderr, done.stderr


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_standard_input_is_named_as_such(tmp_path, text):
    """A reviewer's case: the message said "- is empty", a name no user gave."""
    done = virnucpro("prepare", "-", "--outdir", tmp_path / "out", input=text)
    assert done.returncode == 3
    assert "standard input ('-') is empty (no records)" in done.stderr, done.stderr


def test_a_file_size_limit_is_exit_10_saying_so(tmp_path):
    """Under `ulimit -f`, a write past the limit fails with EFBIG (Python ignores SIGXFSZ): exit 10
    naming where it wrote and the limit to raise, not 'free space'."""
    import resource

    reads = tmp_path / "big.fa"
    reads.write_text("".join(f">r{i}\n{'ATGAAACCCGGGTTTTAA' * 40}\n" for i in range(3000)))

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, 40 * 1024))

    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", str(reads), "--outdir", str(tmp_path / "q")],
                          capture_output=True, text=True, preexec_fn=limit_file_size, timeout=120)
    assert done.returncode == 10, done.stderr
    assert "cannot write" in done.stderr and "ulimit -f" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "free space" not in done.stderr, done.stderr


# --- ids that would change meaning for the outputs' readers --------------------------------------

@pytest.mark.parametrize("text, culprit", [
    ('>"a\nACGT\n>b\nACGT\n', "starts with a double quote"),          # pandas merged or lost rows
    ('@"r desc\nACGT\n+\nIIII\n', "starts with a double quote"),
    (">a\u009b31m d\nACGT\n", "U+009B"),                                # a terminal escape
    (">ok \u202eesrever\nACGT\n", "U+202E"),                             # shows the text reversed
    (">ok\u0085x\nACGT\n", "U+0085"),
    (">ab\u200f-1\nACGT\n", "U+200F"),                                  # shows as 'ab1-'
    (">contig\u061c_7 d\nACGT\n", "U+061C"),
    (">r\u200e1\nACGT\n", "the id 'r\\u200e1' holds U+200E"),                # named where it is
    (">a\u200db\nACGT\n", "U+200D"),                                    # shows as 'ab'
    (">ab\u00ad\nACGT\n", "U+00AD"),
    ("@\u2060r desc\nACGT\n+\nIIII\n", "U+2060"),
    (">s2\ufeffx\nACGT\n", "U+FEFF"),                                  # a BOM inside an id
    (">\u3164\nACGT\n", "U+3164"),                                     # an id shown as nothing
    (">v\ufe0f\nACGT\n", "the id 'v\\ufe0f' holds U+FE0F"),
    (">t\U000e0041\nACGT\n", "U+E0041"),
    (">x\u2800\nACGT\n", "the id 'x\\u2800' holds U+2800"),           # the braille blank shows as a space
    (">x\ue000\nACGT\n", "U+E000"),                                    # private use: no glyph of its own
    ("@x\U00013430 d\nACGT\n+\nIIII\n", "U+13430"),                     # a format character
    (">x\ufdd0\nACGT\n", "U+FDD0"),                                    # noncharacters
    (">x\U0010ffff\nACGT\n", "U+10FFFF"),
    (">x\u0890\nACGT\n", "U+0890"),  # format characters since Unicode 14 and 15: refused whatever Python's
    (">x\U00013439\nACGT\n", "U+13439"),  # tables say (3.10 knows neither, 3.11 only the first)
])
def test_a_leading_quote_or_a_control_character_beyond_ascii_is_exit_3(tmp_path, text, culprit):
    reads = tmp_path / "reads.fa"
    reads.write_text(text, encoding="utf-8")
    done = virnucpro("prepare", reads, "--outdir", tmp_path / "out")
    assert done.returncode == 3 and culprit in done.stderr and "line 1" in done.stderr, done.stderr
    assert not (tmp_path / "out" / fmt.SEQUENCES).exists()


def test_quotes_inside_ids_and_other_unicode_stay_accepted(tmp_path):
    reads = tmp_path / "reads.fa"
    reads.write_text('>a"b x"y\nACGT\n>\u00e9\u4e2d\U0001f9a0 \u200dz \u200e\u05e9\u061c\ue000\u2800\nACGT\n'
                     '>u\u0378\nACGT\n', encoding="utf-8")  # unassigned (U+0378): a newer Unicode may assign it
    done = virnucpro("prepare", reads, "--outdir", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    ids = [line.split("\t")[0] for line in (tmp_path / "out" / fmt.SEQUENCES).read_text("utf-8").splitlines()[1:]]
    assert ids == ['a"b', "\u00e9\u4e2d\U0001f9a0", "u\u0378"]


def test_run_names_its_own_tables_and_an_odd_classifier_path_in_valid_unicode(tmp_path, tiny_models):
    """run's warning named its hidden stage folder (removed at the end); run_info.json held the
    classifier's path with a lone surrogate, which JSON readers cannot encode again."""
    reads = tmp_path / "reads.fa"
    reads.write_text(">empty\n>s1\n" + "ATGGCT" * 40 + "\n")
    classifier = Path(os.fsdecode(bytes(tmp_path) + b"/cl\xff.pth"))
    classifier.write_bytes((tiny_models / "500_model_tiny.pth").read_bytes())
    out = tmp_path / "out"
    done = virnucpro("run", reads, "--models", tiny_models, "--classifier", classifier, "--outdir", out)
    assert done.returncode == 0, done.stderr
    assert f"listed as 'empty' in {out / fmt.SEQUENCES} when the run succeeds)" in done.stderr, done.stderr
    info = json.loads(strict_text(out / "run_info.json"))
    assert info["classifier"]["path"].endswith("cl\\xff.pth"), info["classifier"]


# --- standard input and the file named `-` -------------------------------------------------------------

def _prepared_ids(out: Path) -> list[str]:
    return [line.split("\t")[0] for line in (out / "sequences.tsv").read_text().splitlines()[1:]]


def test_a_file_named_dash_given_as_dot_slash_dash_is_read_not_standard_input(tmp_path):
    """`./-` names the file `-` (pathlib shortens it to `-`, which means standard input): its records
    were silently replaced by those piped in; `-` still means standard input beside such a file."""
    (tmp_path / "-").write_text(">from_file\n" + "ATGAAACCC" * 20 + "\n")
    piped = ">from_stdin\n" + "ATGGCGGCG" * 20 + "\n"
    for given, expected in (("./-", ["from_file"]), ("-", ["from_stdin"])):
        out = tmp_path / f"out{len(given)}"
        done = virnucpro("prepare", given, "--outdir", out, "--threads", "1", cwd=tmp_path, input=piped)
        assert done.returncode == 0, done.stderr[-3000:]
        assert _prepared_ids(out) == expected, given


def test_a_rerun_on_standard_input_never_reuses_a_prepare_of_a_file_named_dash(tmp_path, monkeypatch):
    """`run -`'s rerun compares its inputs with a finished prepare by content: `-` is read once, so
    nothing can be compared; a file named `-` in the current folder is not standard input."""
    from virnucpro.prepare import prepare
    from virnucpro.run import _earlier_prepare
    (tmp_path / "-").write_text(DNA)
    prepare([(tmp_path / "-").absolute()], tmp_path / "prepared", chunk_size=500, threads=1)
    monkeypatch.chdir(tmp_path)
    manifest, why = _earlier_prepare(tmp_path / "prepared", [Path("-")], 500)
    assert manifest is None and "pipe" in why


def test_standard_input_from_a_file_read_partly_before_is_read_from_where_it_stands(tmp_path):
    """`{ head -n 2 >/dev/null; virnucpro prepare -; } < reads.fa`: the rest of the file is the input
    (it was refused as 'changed while it was read'); at its end, it is an empty input."""
    reads = tmp_path / "reads.fa"
    reads.write_text(">skipped\nATGAAACCC\n>kept\n" + "ATGGCGGCG" * 20 + "\n")
    with reads.open("rb") as stdin:
        stdin.seek(len(">skipped\nATGAAACCC\n"))
        done = virnucpro("prepare", "-", "--outdir", tmp_path / "rest", "--threads", "1", stdin=stdin)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _prepared_ids(tmp_path / "rest") == ["kept"]
    for past in (0, 1000):  # at its end, or past it
        with reads.open("rb") as stdin:
            stdin.seek(past, os.SEEK_END)
            done = virnucpro("prepare", "-", "--outdir", tmp_path / f"none{past}", "--threads", "1", stdin=stdin)
        assert done.returncode == 3 and "standard input ('-') is empty" in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("outer, inner", [("gzip", "gzip"), ("gzip", "bzip2"), ("bzip2", "xz")])
def test_a_file_compressed_twice_is_named_so(tmp_path, run_cli, outer, inner):
    """Not 'binary data ... damaged, download it again': the decompressed data is compressed again."""
    import bz2
    import lzma
    compress = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}
    (tmp_path / "twice").write_bytes(compress[outer](compress[inner](DNA.encode())))
    code, message = run_cli("prepare", tmp_path / "twice", "--outdir", tmp_path / "out")
    assert code == 3 and f"compressed twice: once decompressed, it is {inner}-compressed" in message, message


def test_text_that_starts_like_bzip2_is_no_file_compressed_twice(tmp_path, run_cli):
    (tmp_path / "odd.gz").write_bytes(gzip.compress(b"BZh9 not bzip2\x01\n"))
    code, message = run_cli("prepare", tmp_path / "odd.gz", "--outdir", tmp_path / "out")
    assert code == 3 and "holds binary data" in message, message


def test_models_and_classifier_named_in_latin1_are_used(tmp_path, tiny_models):
    """safetensors, tokenizers and torch took such names for damaged files (exit 4, 'not valid UTF-8'),
    and the suggested fix could not help: every model file is read, through `run` and `predict`."""
    import shutil
    models = tmp_path / os.fsdecode(b"mod\xe8les")
    shutil.copytree(tiny_models, models)
    (tmp_path / "a.fa").write_text(DNA)
    done = virnucpro("run", "a.fa", "--outdir", "out", "--models", models, "--device", "cpu", "--threads", "1",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for args in (["prepare", "a.fa", "--outdir", "prepared"],
                 ["embed", "prepared/shards/shard_00000.tsv", "--models", models, "--out", "e.h5", "--device", "cpu"]):
        done = virnucpro(*args, "--threads", "1", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.torch import save_file
    from virnucpro.classifier import load_classifier
    state = load_classifier(models / "500_model_tiny.pth").state_dict()
    classifier = tmp_path / os.fsdecode(b"cl\xe9.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "c.safetensors"))
    os.rename(tmp_path / "c.safetensors", classifier)
    done = virnucpro("predict", "--prepared", "prepared", "--embeddings", "e.h5", "--classifier", classifier,
                     "--models", models, "--outdir", "again", "--threads", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "again" / "prediction_results.txt").read_text() == \
        (tmp_path / "out" / "prediction_results.txt").read_text()


def test_two_copies_of_one_file_are_named_so_not_taken_for_mates(tmp_path, run_cli):
    """A reviewer's case: a copy of the input given beside it was said to look like paired-end mates,
    with commands that append /1 and /2 (each read then scored twice)."""
    (tmp_path / "a.fa").write_text(">a0\n" + "ACGT" * 100 + "\n>a1\n" + "GGCA" * 90 + "\n")
    (tmp_path / "copy.fa").write_bytes((tmp_path / "a.fa").read_bytes())
    code, message = run_cli("prepare", tmp_path / "a.fa", tmp_path / "copy.fa", "--outdir", tmp_path / "p")
    said = " ".join(message.split())
    assert code == 3 and "has the same content as" in said and "give" in said and "/1" not in said, message


@pytest.mark.parametrize("command, work", [("prepare", ".virnucpro-partial"), ("run", ".virnucpro-work/prepared")])
def test_an_input_inside_the_command_s_own_work_folder_is_refused_and_kept(tmp_path, run_cli, tiny_models, command,
                                                                           work):
    """A reviewer's case: an input named like a file the command writes in its work folder was
    removed there before it was read."""
    out = tmp_path / "out"
    (out / work).mkdir(parents=True)
    reads = out / work / "chunks.tsv"
    reads.write_text(">a0\n" + "ACGT" * 100 + "\n")
    extra = ("--models", tiny_models, "--device", "cpu") if command == "run" else ()
    code, message = run_cli(command, reads, "--outdir", out, *extra)
    assert code == 3 and "the folder this command keeps its work in" in " ".join(message.split()), message
    assert reads.read_text().startswith(">a0")


# --- ids ended by a Unicode blank ------------------------------------------------------------------

@pytest.mark.parametrize("blank", ["\u00a0", "\u3000", "\u2009"])
@pytest.mark.parametrize("kind", ["fasta", "fastq"])
def test_an_id_ended_by_a_unicode_blank_is_cut_there_with_one_warning(tmp_path, run_cli, blank, kind):
    """A hostile reviewer's case: `>a<NBSP>x` is id 'a' (Biopython's split, so the original's) with no
    word, where samtools and seqkit read 'a<NBSP>x'; and two such mates were refused as duplicates
    with an awk fix that splits on ASCII blanks only, refused again. One warning per input names the
    character and a sed that keeps the whole name; the ids are still the original's."""
    seq = "ATGAAACCCGGGTTTTAA" * 3
    names = [f"r{i}{blank}d{i}" for i in range(3)]
    text = ("".join(f">{name}\n{seq}\n" for name in names) if kind == "fasta"
            else "".join(f"@{name}\n{seq}\n+\n{'I' * len(seq)}\n" for name in names))
    path = tmp_path / f"in.{'fa' if kind == 'fasta' else 'fq'}"
    path.write_text(text, encoding="utf-8")
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "out")
    assert code == 0, message
    assert [row.split("\t")[0] for row in (tmp_path / "out" / fmt.SEQUENCES).read_text().splitlines()[1:]] == \
        ["r0", "r1", "r2"]
    assert message.count(f"U+{ord(blank):04X}") == 1 and "line 1" in message, message
    escaped = "".join(f"\\x{byte:02x}" for byte in blank.encode())
    assert f"sed 's/{escaped}/_/g'" in message, message
    fixed = subprocess.run(["sed", f"s/{escaped}/_/g", str(path)], capture_output=True, check=True).stdout
    path.write_bytes(fixed)
    code, message = run_cli("prepare", path, "--outdir", tmp_path / "fixed")
    assert code == 0 and "U+" not in message, message
    assert (tmp_path / "fixed" / fmt.SEQUENCES).read_text().splitlines()[1].startswith(f"r0_d0\t"), message


def test_ordinary_blanks_end_an_id_without_a_warning(tmp_path, run_cli):
    (tmp_path / "in.fa").write_text(">a x\nATGAAACCCGGG\n>b\ty\nATGAAACCCGGG\n")
    code, message = run_cli("prepare", tmp_path / "in.fa", "--outdir", tmp_path / "out")
    assert code == 0 and "warning" not in message, message
    rows = [line.split("\t") for line in (tmp_path / "out" / fmt.SEQUENCES).read_text().splitlines()]
    assert [row[0] for row in rows[1:]] == ["a", "b"] and {len(row) for row in rows} == {len(rows[0])}, rows


def test_the_blank_warning_is_given_once_for_the_first_such_id_whatever_the_workers(tmp_path, run_cli):
    """A review of the fix: prepare's forked workers each warned once, the first shown not the first
    in the file. Their notes now come back with their results and prepare warns once, in input order."""
    seq = "ATGAAACCCGGGTTTTAAGGCC"
    lines = [f">r{i}{' ' if i < 20000 else chr(0xa0)}d\n{seq}\n" for i in range(80000)]
    (tmp_path / "in.fa").write_text("".join(lines), encoding="utf-8")
    code, message = run_cli("prepare", tmp_path / "in.fa", "--outdir", tmp_path / "out", "--threads", "2")
    assert code == 0, message
    assert message.count("U+00A0") == 1 and "line 40001:" in message, message


@pytest.mark.parametrize(("header", "rid", "where"), [("seqA\u00a0", "seqA", "ends at"),
                                                       ("\u3000seqB", "seqB", "starts after"),
                                                       (" \u2009seqC desc", "seqC", "starts after")])
def test_a_unicode_blank_before_or_after_the_whole_id_is_warned_of_too(tmp_path, run_cli, header, rid, where):
    (tmp_path / "in.fa").write_text(f">{header}\nATGAAACCCGGG\n", encoding="utf-8")
    code, message = run_cli("prepare", tmp_path / "in.fa", "--outdir", tmp_path / "out")
    assert code == 0, message
    assert f"the id '{rid}' {where} U+" in message, message


# --- the original VirNucPro's command shape: `prediction.py in.fa 500 500_model.pth` -------------------

def test_the_originals_length_argument_as_an_input_points_to_chunk_size(tmp_path):
    (tmp_path / "in.fa").write_text(DNA)
    done = virnucpro("run", tmp_path / "in.fa", "500", "--outdir", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 3 and "input file not found: 500" in done.stderr, done.stderr
    assert "here it is --chunk-size 500" in done.stderr, done.stderr


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_saved_torch_model_given_as_reads_points_to_classifier(tmp_path, zipped):
    """A ZIP, the hint said to unzip it and stream a FASTQ from inside; in torch's legacy format, that the
    file was damaged: wrong for a model."""
    import torch

    torch.save({"weight": torch.zeros(2)}, tmp_path / "500_model.pth", _use_new_zipfile_serialization=zipped)
    done = virnucpro("prepare", tmp_path / "500_model.pth", "--outdir", tmp_path / "out")
    assert done.returncode == 3 and "is a PyTorch file" in done.stderr and "--classifier FILE" in done.stderr, \
        done.stderr
