"""bin/virnucpro_summary.py: every input record accounted for, a damaged predict folder or summary row is
exit 5 with one message (never a traceback, never "yes"), ids with `"` read and written as plain text."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from virnucpro import prepared as fmt
from virnucpro.embed import embed
from virnucpro.predict import predict
from virnucpro.prepare import prepare
from permission_helpers import unprivileged

SCRIPT = Path(__file__).resolve().parent.parent / "bin" / "virnucpro_summary.py"
EXIT_INCONSISTENT = 5

# ids with `"` (a quoted-field opener at the start of one), a multi-chunk ORF-rich record, a record
# whose chunk has no ORF (a stop codon in all six frames) and an empty record
QUOTED_FASTA = (
    '>q"uoted" id with a description (prepare refuses an id starting with a quote)\n' + "GCT" * 400 + "\n"
    '>seqD"x\n' + "GCA" * 100 + "\n"
    '>no"orf\n' + "TAGCTAATTAGCTAA" * 20 + "\n"
    '>empty"one\n'
    '>plain\n' + "GCTGCA" * 30 + "\n"
)


def predicted(prepared: Path, models: Path, folder: Path) -> Path:
    """A real `virnucpro predict` folder of `prepared`, embedded with the tiny models."""
    shards = []
    for shard in fmt.load_manifest(prepared)["shards"]:
        out = folder / Path(shard["file"]).with_suffix(".h5").name
        embed(prepared / shard["file"], out, models=models, device="cpu")
        shards.append(out)
    return predict(prepared, shards, folder / "predicted", models=models)


@pytest.fixture(scope="module")
def golden_predicted(tmp_path_factory, golden_prepared, tiny_models) -> Path:
    return predicted(golden_prepared, tiny_models, tmp_path_factory.mktemp("summary-golden"))


@pytest.fixture(scope="module")
def quoted_predicted(tmp_path_factory, tiny_models) -> Path:
    folder = tmp_path_factory.mktemp("summary-quoted")
    (folder / "quoted.fa").write_text(QUOTED_FASTA)
    prepare([folder / "quoted.fa"], folder / "prepared", chunk_size=500)
    return predicted(folder / "prepared", tiny_models, folder)


@pytest.fixture
def golden_copy(golden_predicted, tmp_path) -> Path:
    """A copy of the good predict folder that one test may damage."""
    return Path(shutil.copytree(golden_predicted, tmp_path / "sample"))


def summary(*args: object) -> subprocess.CompletedProcess:
    """The script run as the pipeline runs it: a separate Python process."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 5 with a message naming the problem, and no traceback."""
    assert result.returncode == EXIT_INCONSISTENT, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def plain_rows(path: Path) -> list[dict[str, str]]:
    """A tab-separated table read with no quoting rules at all (comment lines skipped)."""
    lines = [line for line in path.read_text().split("\n") if line and not line.startswith("#")]
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == len(header) for row in rows)
    return [dict(zip(header, row)) for row in rows]


def edit_cell(path: Path, column: str, value: str, where: Callable[[dict], bool] = lambda row: True) -> dict:
    """Set `column` to `value` in the first row of a table `where` holds; returns that row as it was."""
    lines = path.read_text().split("\n")
    header = lines[0].split("\t")
    for number, line in enumerate(lines[1:], start=1):
        fields = line.split("\t")
        row = dict(zip(header, fields))
        if line and where(row):
            fields[header.index(column)] = value
            lines[number] = "\t".join(fields)
            path.write_text("\n".join(lines))
            return row
    raise AssertionError(f"no row of {path} to edit")


def row_of(folder: Path, out: Path, sample: str = "s1") -> dict[str, str]:
    result = summary("row", folder, "--sample", sample, "--out", out)
    assert result.returncode == 0, result.stderr
    (row,) = plain_rows(out)
    return row


# --- ids with a `"` -------------------------------------------------------------------------------

def test_ids_with_quotes_reconcile_and_merge_as_plain_text(golden_predicted, quoted_predicted, tmp_path):
    counts = fmt.load_manifest(quoted_predicted.parent / "prepared")["counts"]
    quoted = row_of(quoted_predicted, tmp_path / "q.tsv", sample='quo"ted')
    assert quoted["sample"] == 'quo"ted' and quoted["reconciled"] == "yes"
    assert (quoted["input_records"], quoted["sequences"]) == ("5", "5")
    assert quoted["sequences_empty"] == "1" and int(quoted["sequences_no_orf"]) >= 1
    assert (int(quoted["chunks"]), int(quoted["orfs"])) == (counts["chunks"], counts["orfs"])
    row_of(golden_predicted, tmp_path / "g.tsv", sample="golden")
    result = summary("merge", tmp_path / "q.tsv", tmp_path / "g.tsv", "--out", tmp_path / "all.tsv",
                     "--mqc", tmp_path / "mqc.tsv")
    assert result.returncode == 0, result.stderr
    for table in ("all.tsv", "mqc.tsv"):
        assert [row["sample"] for row in plain_rows(tmp_path / table)] == ["golden", 'quo"ted']
    golden = plain_rows(tmp_path / "all.tsv")[0]
    assert (golden["sequences"], golden["chunks"], golden["orfs"]) == ("300", "588", "356")


# --- a damaged predict folder: exit 5, never "yes" ---------------------------------------------------

def _second_id_replaced_by_first(folder: Path) -> None:
    first = plain_rows(folder / "sequences.tsv")[0]["sequence_id"]
    edit_cell(folder / "sequences.tsv", "sequence_id", first, lambda row: row["sequence_id"] != first)


def _cut_short(name: str, drop: int) -> Callable[[Path], None]:
    """The table without its last `drop` characters (the final line break and some of the last cell)."""
    def cut(folder: Path) -> None:
        text = (folder / name).read_text()
        (folder / name).write_text(text[:-drop])
    return cut


def _highest(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / "prediction_results_highestscore.csv").write_text(text)


def _appended(name: str, pick: Callable[[list[str]], str]) -> Callable[[Path], None]:
    """The table with one of its own rows (`pick` of its lines after the header) written again at its end."""
    def append(folder: Path) -> None:
        lines = (folder / name).read_text().splitlines(keepends=True)
        (folder / name).write_text("".join(lines) + pick(lines[1:]))
    return append


def _next_orf_replaced_by_its_predecessor(folder: Path) -> None:
    """A chunk's first ORF row written again in place of its second: one ORF twice, one lost, n_orfs kept."""
    path = folder / "prediction_results.txt"
    lines = path.read_text().splitlines(keepends=True)
    chunk = [line.split("\t")[0][:-2] for line in lines]  # an ORF id is its chunk's id and a 2-letter frame
    n = next(n for n in range(1, len(lines) - 1) if chunk[n] == chunk[n + 1])
    lines[n + 1] = lines[n]
    path.write_text("".join(lines))


DAMAGE = {
    "sequence id duplicated, another lost": (_second_id_replaced_by_first, "listed a second time"),
    "sequence call MAYBE": (lambda f: edit_cell(f / "sequences.tsv", "call", "MAYBE"), "'MAYBE'"),
    "chunk call MAYBE": (lambda f: edit_cell(f / "chunks.tsv", "call", "MAYBE"), "'MAYBE'"),
    "chunk of a ghost sequence": (
        lambda f: edit_cell(f / "chunks.tsv", "sequence_id", "ghost", lambda r: r["chunk_id"].endswith("_2")),
        "'ghost'"),
    "n_chunks 9": (lambda f: edit_cell(f / "sequences.tsv", "n_chunks", "9"), "n_chunks 9"),
    "n_chunks_virus off by one": (
        lambda f: edit_cell(f / "sequences.tsv", "n_chunks_virus", "0", lambda r: r["call"] == "virus"),
        "n_chunks_virus"),
    "sequence called others against its chunks": (
        lambda f: edit_cell(f / "sequences.tsv", "call", "others", lambda r: r["call"] == "virus"),
        "call of"),
    "chunk called others against its ORFs": (
        lambda f: edit_cell(f / "chunks.tsv", "call", "others", lambda r: r["call"] == "virus"), "call of"),
    "ORF of a ghost chunk": (
        lambda f: edit_cell(f / "prediction_results.txt", "Sequence_ID", "ghost_chunk_1F1"), "'ghost_chunk_1F1'"),
    "last score cut short": (_cut_short("prediction_results.txt", 2), "line break: the file is cut short"),
    "last line break lost": (_cut_short("sequences.tsv", 1), "line break: the file is cut short"),
    "highest-score table emptied": (_highest(""), "prediction_results_highestscore.csv is empty"),
    "highest-score table without rows": (_highest("Modified_ID\tIs_Virus\n"), "lists 0 chunk(s) with Is_Virus True"),
    "highest-score chunk id not a chunk": (
        lambda f: edit_cell(f / "prediction_results_highestscore.csv", "Modified_ID", "read_000_chunk_1x"),
        "are not those of the chunks"),
    # rows the tables' own counts never reach: invented rows in published tables (a mutation review)
    "last ORF row repeated": (_appended("prediction_results.txt", lambda rows: rows[-1]),
                              "comes after the ORFs of every chunk"),
    "a chunk without ORF appended": (_appended("chunks.tsv", lambda rows: next(r for r in rows if "\tno_orf" in r)),
                                     "comes after the chunks of"),
    "ORF row repeated in place of the next": (_next_orf_replaced_by_its_predecessor, "expects an ORF of chunk"),
    "score not a number": (lambda f: edit_cell(f / "prediction_results.txt", "score2", "nan"),
                           "score2 must be a score between 0 and 1, found 'nan'"),
    "Prediction against its scores": (
        lambda f: edit_cell(f / "prediction_results.txt", "Prediction", "others", lambda r: r["Prediction"] == "virus"),
        "Prediction 'others' with score1"),
    "highest-score call flipped": (
        lambda f: edit_cell(f / "prediction_results_highestscore.csv", "Is_Virus", "False",
                            lambda r: r["Is_Virus"] == "True"), "Is_Virus"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_table_is_exit_5(golden_copy, tmp_path, damage):
    edit, words = DAMAGE[damage]
    edit(golden_copy)
    assert_refused(summary("row", golden_copy, "--sample", "s1", "--out", tmp_path / "s1.tsv"), words)


# the counts prepare recorded (run_info.json), each against the total of the tables it must equal
RECORDED_AGAINST_TABLES = {
    "sequences": "prepared sequences 301 != sequences.tsv rows 300",
    "empty_sequences": "prepared empty sequences {} != sequences called empty",
    "bases": "prepared bases {} != sequences.tsv lengths",
    "chunks": "prepared chunks 589 != chunks.tsv rows 588",
    "chunks_without_orf": "prepared chunks without ORF {} != chunks called no_orf",
    "orfs": "prepared ORFs 357 != prediction_results.txt rows 356",
    "input records": "input records 301 != sequences.tsv rows 300",
}


@pytest.mark.parametrize("count", RECORDED_AGAINST_TABLES)
def test_tables_that_agree_with_each_other_but_not_with_the_recorded_counts_do_not_reconcile(golden_copy, tmp_path,
                                                                                              count):
    """Tables consistent among themselves that lost (or gained) what prepare counted: "reconciled NO"
    naming both totals, exit 5 (no test made a count differ; each check could go unnoticed)."""
    info = json.loads((golden_copy / "run_info.json").read_text())
    owner, key = (info["inputs"][0], "records") if count == "input records" else (info["counts"], count)
    owner[key] += 1
    (golden_copy / "run_info.json").write_text(json.dumps(info))
    result = summary("row", golden_copy, "--sample", "s1", "--out", tmp_path / "s1.tsv")
    assert_refused(result, "sample s1 does not reconcile: " + RECORDED_AGAINST_TABLES[count].format(owner[key]))
    assert plain_rows(tmp_path / "s1.tsv")[0]["reconciled"].startswith("NO: ")


@pytest.mark.parametrize("name", ["run_info.json", "chunks.tsv", "prediction_results_highestscore.csv"])
def test_missing_file_is_one_message_and_exit_5(golden_copy, tmp_path, name):
    (golden_copy / name).unlink()
    assert_refused(summary("row", golden_copy, "--sample", "s1", "--out", tmp_path / "s1.tsv"), name, "missing")


def test_run_info_nested_too_deep_is_one_message_and_exit_5(golden_copy, tmp_path):
    (golden_copy / "run_info.json").write_text("[" * 200_000)
    assert_refused(summary("row", golden_copy, "--sample", "s1", "--out", tmp_path / "s1.tsv"), "run_info.json")


# --- what the script needs ----------------------------------------------------------------------------

def test_the_script_loads_no_heavy_module_and_runs_without_the_installed_package(golden_predicted, tmp_path):
    """It imports virnucpro.calls and virnucpro.errors only, both standard library only: nothing of
    torch or numpy is loaded, and without site-packages (`python -S`: the SUMMARY task's plain Python)
    it finds them in the project beside bin/."""
    probe = ("import importlib.util, sys\n"
             f"spec = importlib.util.spec_from_file_location('virnucpro_summary', {str(SCRIPT)!r})\n"
             "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module\n"
             "spec.loader.exec_module(module)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'h5py', 'typer')))\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert (loaded.returncode, loaded.stdout.strip()) == (0, "[]"), loaded.stderr
    plain = subprocess.run([sys.executable, "-S", str(SCRIPT), "row", golden_predicted, "--sample", "s1",
                            "--out", tmp_path / "s1.tsv"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert plain_rows(tmp_path / "s1.tsv")[0]["reconciled"] == "yes"


# --- merge adds up every row again --------------------------------------------------------------------

@pytest.fixture
def good_row(golden_predicted, tmp_path) -> Path:
    row_of(golden_predicted, tmp_path / "good.tsv")
    return tmp_path / "good.tsv"


def ids_file(tmp_path: Path, *ids: str) -> Path:
    """The run's sample ids, one per line, as the SUMMARY task writes them."""
    (tmp_path / "ids.txt").write_text("".join(f"{sample}\n" for sample in ids))
    return tmp_path / "ids.txt"


def merge(tmp_path: Path, *rows: Path) -> subprocess.CompletedProcess:
    return summary("merge", *rows, "--out", tmp_path / "all.tsv", "--mqc", tmp_path / "mqc.tsv")


def test_a_sample_of_the_run_without_a_row_is_listed_as_without_results(good_row, tmp_path):
    """A reviewer's case: errorStrategy 'ignore' let two of four samples fail; the summary listed the
    other two, each "reconciled yes", and the two lost ones nowhere."""
    result = summary("merge", good_row, "--samples-from", ids_file(tmp_path, "s1", "lost_a", "lost_b"), "--out",
                     tmp_path / "all.tsv", "--mqc", tmp_path / "mqc.tsv")
    assert result.returncode == 0, result.stderr
    rows = {row["sample"]: row for row in plain_rows(tmp_path / "all.tsv")}
    assert sorted(rows) == ["lost_a", "lost_b", "s1"] and rows["s1"]["reconciled"] == "yes"
    assert rows["lost_a"]["reconciled"].startswith("NO: no results") and rows["lost_a"]["orfs"] == ""
    assert "sample lost_b has no results" in result.stderr, result.stderr
    assert "3 samples, 1 reconcile, 2 without results" in result.stderr, result.stderr
    every_failed = summary("merge", "--samples-from", ids_file(tmp_path, "lost_a"), "--out", tmp_path / "none.tsv",
                           "--mqc", tmp_path / "m.tsv")
    assert every_failed.returncode == 0 and [row["sample"] for row in plain_rows(tmp_path / "none.tsv")] == ["lost_a"]


def test_a_row_of_a_sample_the_run_does_not_have_is_refused(good_row, tmp_path):
    assert_refused(summary("merge", good_row, "--samples-from", ids_file(tmp_path, "other"), "--out",
                           tmp_path / "all.tsv", "--mqc", tmp_path / "mqc.tsv"), "'s1'", "--samples-from does not list")


@pytest.mark.parametrize("ids, words", [(("s1", "lo\tst"), "line 2: a sample id holds a tab"),
                                        (("s1", "lost", "s1"), "'s1' more than once")], ids=["tab", "repeated"])
def test_a_malformed_or_repeated_sample_id_is_refused(good_row, tmp_path, ids, words):
    assert_refused(summary("merge", good_row, "--samples-from", ids_file(tmp_path, *ids), "--out",
                           tmp_path / "all.tsv", "--mqc", tmp_path / "mqc.tsv"), "ids.txt", words)


def test_empty_lines_a_byte_order_mark_and_hidden_files_among_the_rows_are_passed_over(good_row, tmp_path):
    """A reviewer's cases: a trailing blank line (`echo >>`), a BOM, a `.DS_Store` beside the rows."""
    (tmp_path / "ids.txt").write_text("\ufeffs1\n\nlost\n\n")
    folder = tmp_path / "rows"
    folder.mkdir()
    shutil.copy(good_row, folder / "s1.summary.tsv")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    result = summary("merge", folder, "--samples-from", tmp_path / "ids.txt", "--out", tmp_path / "all.tsv",
                     "--mqc", tmp_path / "mqc.tsv")
    assert result.returncode == 0, result.stderr
    assert [row["sample"] for row in plain_rows(tmp_path / "all.tsv")] == ["lost", "s1"]
    ids_folder = tmp_path / "ids"
    ids_folder.mkdir()
    assert_refused(summary("merge", folder, "--samples-from", ids_folder, "--out", tmp_path / "all.tsv", "--mqc",
                           tmp_path / "mqc.tsv"), "is not a regular file", "--samples-from")


def test_a_folder_of_rows_stands_for_every_row_in_it(good_row, tmp_path):
    """The SUMMARY task stages its rows in one folder: every file in it is read, none twice."""
    folder = tmp_path / "rows"
    folder.mkdir()
    for sample in ("s2", "s3"):
        row = plain_rows(good_row)[0] | {"sample": sample}
        (folder / f"{sample}.summary.tsv").write_text("\t".join(row) + "\n" + "\t".join(row.values()) + "\n")
    result = summary("merge", good_row, folder, "--samples-from", ids_file(tmp_path, "s1", "s2", "s3", "s4"),
                     "--out", tmp_path / "all.tsv", "--mqc", tmp_path / "mqc.tsv")
    assert result.returncode == 0, result.stderr
    rows = {row["sample"]: row["reconciled"] for row in plain_rows(tmp_path / "all.tsv")}
    assert rows == {"s1": "yes", "s2": "yes", "s3": "yes", "s4": rows["s4"]} and rows["s4"].startswith("NO: no results")


@pytest.mark.parametrize("column", ["sequences_virus", "chunks_no_orf", "input_records", "orfs"])
def test_merge_refuses_a_row_whose_counts_do_not_add_up(good_row, tmp_path, column):
    row = edit_cell(good_row, column, "0")
    assert row[column] != "0" and row["reconciled"] == "yes"
    assert_refused(merge(tmp_path, good_row), "sample s1 does not reconcile", column)
    assert plain_rows(tmp_path / "all.tsv")[0]["reconciled"].startswith("NO: ")


def test_merge_keeps_the_no_of_a_row_whose_counts_add_up(good_row, tmp_path):
    """A row's own `NO:` carries the checks its counts do not show (bases, recorded counts): merge
    keeps it and fails, even when every count of the row adds up (a mutation review)."""
    edit_cell(good_row, "reconciled", "NO: prepared bases 10 != sequences.tsv lengths 9")
    assert_refused(merge(tmp_path, good_row), "sample s1 does not reconcile: prepared bases 10")
    assert plain_rows(tmp_path / "all.tsv")[0]["reconciled"] == "NO: prepared bases 10 != sequences.tsv lengths 9"


def _two_samples_in_one_file(row_file: Path, tmp_path: Path) -> tuple[Path, ...]:
    lines = row_file.read_text().splitlines(keepends=True)
    (tmp_path / "two.tsv").write_text("".join(lines) + lines[1].replace("s1", "s2", 1))
    return (tmp_path / "two.tsv",)


def _a_count_that_is_not_a_number(row_file: Path, tmp_path: Path) -> tuple[Path, ...]:
    edit_cell(row_file, "orfs", "x")
    return (row_file,)


@pytest.mark.parametrize("rows, words", [
    (_two_samples_in_one_file, "holds more than one row (line 3)"),
    (lambda row_file, _: (row_file, row_file), "'s1' appear more than once"),
    (_a_count_that_is_not_a_number, "orfs must be a whole number, found 'x'"),
], ids=["two samples in one row file", "one row file twice", "a count not a number"])
def test_merge_refuses_rows_it_would_drop_repeat_or_misread(good_row, tmp_path, rows, words):
    assert_refused(merge(tmp_path, *rows(good_row, tmp_path)), words)
    assert not (tmp_path / "all.tsv").exists()


@pytest.mark.parametrize("keep_header, words", [(False, "is empty"), (True, "holds no sample row")],
                         ids=["empty", "header only"])
def test_merge_refuses_a_row_file_without_its_sample(good_row, tmp_path, keep_header, words):
    header = good_row.read_text().split("\n")[0] + "\n"
    (tmp_path / "lost.tsv").write_text(header if keep_header else "")
    assert_refused(merge(tmp_path, good_row, tmp_path / "lost.tsv"), "lost.tsv", words,
                   "rerun the PREDICT task that wrote it")


@pytest.mark.parametrize("drop, add, words", [
    ("reconciled", None, "lacks the column(s) reconciled"),
    ("orfs", None, "lacks the column(s) orfs"),
    (None, "notes", "unexpected column(s) 'notes'"),
], ids=["no reconciled", "no orfs", "extra column"])
def test_merge_names_a_missing_or_extra_column(good_row, tmp_path, drop, add, words):
    row = plain_rows(good_row)[0]
    row.pop(drop, None)
    if add:
        row[add] = "x"
    good_row.write_text("\t".join(row) + "\n" + "\t".join(row.values()) + "\n")
    assert_refused(merge(tmp_path, good_row), str(good_row), words)


# --- inputs that cannot be read: exit 5 naming them, never a failed write or a traceback ---------------

@pytest.mark.parametrize("content, words", [(None, "is missing"), (b"s1\n\xff\xfe\n", "cannot read")],
                         ids=["missing", "not UTF-8"])
def test_a_samples_from_file_that_cannot_be_read_is_exit_5_naming_it(good_row, tmp_path, content, words):
    """A missing one said "cannot write nonexistent.txt", exit 10; one not UTF-8 was a traceback, exit 1."""
    ids = tmp_path / "ids.txt"
    if content is not None:
        ids.write_bytes(content)
    result = summary("merge", good_row, "--samples-from", ids, "--out", tmp_path / "all.tsv", "--mqc",
                     tmp_path / "mqc.tsv")
    assert_refused(result, str(ids), words)
    assert "cannot write" not in result.stderr and not (tmp_path / "all.tsv").exists(), result.stderr


@pytest.mark.parametrize("given", ["the folder", "a row file in it"])
def test_rows_in_a_folder_that_cannot_be_entered_are_exit_5_naming_it(good_row, tmp_path, given):
    """A folder of rows (or a folder on a row file's way) at mode 000 said "cannot write", exit 10."""
    folder = tmp_path / "rows"
    folder.mkdir()
    shutil.copy(good_row, folder / "s1.summary.tsv")
    rows = folder if given == "the folder" else folder / "s1.summary.tsv"
    prefix = unprivileged()
    folder.chmod(0)
    try:
        result = subprocess.run([*prefix, sys.executable, str(SCRIPT), "merge", str(rows), "--out",
                                 str(tmp_path / "all.tsv"), "--mqc", str(tmp_path / "mqc.tsv")],
                                capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert_refused(result, f"cannot read {rows}")
    assert "cannot write" not in result.stderr, result.stderr


@pytest.mark.parametrize("value", [0, -500])
def test_a_chunk_size_that_is_not_positive_is_exit_5_naming_run_info(golden_copy, tmp_path, value):
    """0 was a ZeroDivisionError traceback (the chunks each sequence should have), exit 1."""
    info = json.loads((golden_copy / "run_info.json").read_text())
    (golden_copy / "run_info.json").write_text(json.dumps({**info, "chunk_size": value}))
    assert_refused(summary("row", golden_copy, "--sample", "s1", "--out", tmp_path / "s1.tsv"), "run_info.json",
                   "chunk_size")


def test_a_sample_id_starting_with_a_hash_is_refused_before_multiqc_reads_it_as_settings(golden_predicted, good_row, tmp_path):
    """A report review's case: a row of sample `# plot_type: 'bargraph'` began a line of the MultiQC
    table, which MultiQC read as its YAML header (it crashed and dropped the summary section; a name
    without a tab would have been taken as a setting)."""
    row = summary("row", golden_predicted, "--sample", "# plot_type: 'bargraph'", "--out", tmp_path / "r.tsv")
    assert row.returncode == 2 and "starts with '#'" in row.stderr and "Traceback" not in row.stderr, row.stderr
    assert not (tmp_path / "r.tsv").exists()
    ids = tmp_path / "ids.txt"
    ids.write_text("s1\n#x\n")
    result = summary("merge", good_row, "--samples-from", ids, "--out", tmp_path / "all.tsv", "--mqc", tmp_path / "mqc.tsv")
    assert_refused(result, f"{ids} line 2", "starts with '#'")


# --- what the pipeline recognises as its own in --outdir ------------------------------------------

PIPELINE_UTILS = Path(__file__).resolve().parent.parent / "subworkflows/local/utils_virnucpro_pipeline/main.nf"
VERSIONS_MODULE = PIPELINE_UTILS.parents[3] / "modules/local/virnucpro/versions/main.nf"
VERSIONS_YML = "virnucpro_software_mqc_versions.yml"


def _published_openings() -> dict[str, list[str]]:
    """publishedOpenings() of the pipeline's start-up checks, its Groovy strings read as Python's."""
    body = re.search(r"def publishedOpenings\(\) \{\n    return \[\n(.*?)\n    \]", PIPELINE_UTILS.read_text(), re.S).group(1)
    openings = {}
    for name, values in re.findall(r"'([\w.]+)': \[(.*)\],", body):
        openings[name] = [ast.literal_eval(value) for value in re.findall(r"'(?:[^'\\]|\\.)*'|\"[^\"]*\"", values)]
    return openings


def test_every_file_the_pipeline_publishes_begins_as_its_start_up_check_recognises_it(golden_predicted, tmp_path):
    """refuseForeignPublishTargets refuses a file at a result's name that does not begin as this
    virnucpro writes it: the openings it knows are checked against the writers themselves."""
    openings = _published_openings()
    assert set(openings) == {*(path.name for path in golden_predicted.iterdir() if not path.name.startswith(".")),
                             "virnucpro_summary.tsv", VERSIONS_YML}
    # the versions YAML (versionsToYaml, Groovy: checked on the engine) and the stub's
    assert openings[VERSIONS_YML] == ["VIRNUCPRO_", "Workflow:\n"] and "printf 'Workflow:\\\\n" in VERSIONS_MODULE.read_text()
    (tmp_path / "rows").mkdir()
    assert summary("row", golden_predicted, "--sample", "s1", "--out", tmp_path / "rows" / "s1.tsv").returncode == 0
    (tmp_path / "samples.txt").write_text("s1\n")
    merged = summary("merge", tmp_path / "rows", "--samples-from", tmp_path / "samples.txt",
                     "--out", tmp_path / "virnucpro_summary.tsv", "--mqc", tmp_path / "mqc.tsv")
    assert merged.returncode == 0, merged.stderr
    for path in [*golden_predicted.iterdir(), tmp_path / "virnucpro_summary.tsv"]:
        if not path.name.startswith("."):
            head = path.read_bytes()[:4096].decode("latin-1")
            assert any(head.startswith(opening) for opening in openings[path.name]), (path.name, head[:120])


def test_a_prepared_folder_holds_only_the_names_the_pipeline_recognises(golden_prepared):
    allowed = re.search(r"!\(name in \[('\.virnucpro\.json'[^\]]*)\]\)", PIPELINE_UTILS.read_text()).group(1)
    names = {path.name for path in golden_prepared.iterdir()}
    assert ".virnucpro.json" in names and names <= set(ast.literal_eval(f"[{allowed}]"))
    assert all(re.fullmatch(fmt.SHARD_PATTERN, path.name) for path in (golden_prepared / fmt.SHARD_DIR).iterdir())


# --- outputs that cannot be written: the file named, the fix for the cause, nothing half written ------

@pytest.mark.parametrize("where, code, fix", [("a folder", 10, "it is a folder: give a file path"),
                                              ("no folder", 10, "its folder does not exist"),
                                              ("a file on the way", 10, "a part of its path is a file")])
def test_an_out_that_cannot_be_written_names_it_and_the_fix_for_its_cause(good_row, tmp_path, where, code, fix):
    """A reviewer's case: every cause got "free space or choose a writable output folder", exit 10."""
    out = {"a folder": tmp_path, "no folder": tmp_path / "none" / "all.tsv",
           "a file on the way": good_row / "all.tsv"}[where]
    result = summary("merge", good_row, "--out", out, "--mqc", tmp_path / "mqc.tsv")
    assert result.returncode == code and f"cannot write {out}" in result.stderr and fix in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_full_disk_names_the_file_and_leaves_no_part_of_it(good_row, tmp_path):
    """It said "cannot write None" (a failed write names no file) and left an empty table behind."""
    from mount_helpers import tmpfs

    rows = tmp_path / "rows"
    rows.mkdir()
    for index in range(400):  # a table larger than the file system below
        shutil.copy(good_row, rows / f"s{index}.summary.tsv")
        edit_cell(rows / f"s{index}.summary.tsv", "sample", f"s{index}")
    with tmpfs(tmp_path / "full", "8k") as full:
        result = summary("merge", rows, "--out", full / "all.tsv", "--mqc", full / "mqc.tsv")
        assert result.returncode == 10, result.stderr
        assert f"cannot write {full / 'all.tsv'}: No space left on device" in result.stderr, result.stderr
        assert "free space" in result.stderr and not (full / "all.tsv").exists()


def test_a_full_disk_with_a_small_table_leaves_none_and_never_removes_what_was_there(good_row, tmp_path):
    """A review of the fix: a small table fails at its last flush (outside the write), and was left
    empty; and removing the table on failure must never remove a link or file that was there before."""
    from mount_helpers import tmpfs

    with tmpfs(tmp_path / "full", "4k") as full:
        (full / "filler").write_bytes(b"x" * 4096)
        result = summary("merge", good_row, "--out", full / "all.tsv", "--mqc", full / "mqc.tsv")
        assert result.returncode == 10 and f"cannot write {full / 'all.tsv'}" in result.stderr, result.stderr
        assert not (full / "all.tsv").exists()
        (full / "target.tsv").touch()
        (full / "link.tsv").symlink_to(full / "target.tsv")
        result = summary("merge", good_row, "--out", full / "link.tsv", "--mqc", tmp_path / "mqc.tsv")
        assert result.returncode == 10 and f"cannot write {full / 'link.tsv'}" in result.stderr, result.stderr
        assert (full / "link.tsv").is_symlink() and (full / "target.tsv").exists()
