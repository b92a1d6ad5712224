"""One place knows the predict output tables (virnucpro/calls.py): their names, columns, call names,
frame labels and chunk ids, and the rules that fill them. predict and the run summary
(bin/virnucpro_summary.py) use those very objects, so the writer and the checker cannot drift apart."""

from __future__ import annotations

import ast
import importlib.util
import signal
import sys
from pathlib import Path

import pytest

from virnucpro import calls, errors, predict
from virnucpro.calls import (CHUNK_COLUMNS, FRAMES, SEQUENCE_COLUMNS, ChunkScore, SequenceTally, chunk_cells,
                             chunk_id_of, header_line, orf_chunk_id, orf_label, row_line)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bin" / "virnucpro_summary.py"
SHARED = ("RESULTS", "HIGHEST", "CHUNKS", "SEQUENCES", "RUN_INFO", "RESULT_COLUMNS", "HIGHEST_COLUMNS",
          "CHUNK_COLUMNS", "SEQUENCE_COLUMNS", "SEQUENCE_CALLS", "CHUNK_CALLS", "FRAMES")


@pytest.fixture(scope="module")
def summary_script():
    """bin/virnucpro_summary.py loaded as a module (listed in sys.modules while loading: its dataclasses
    look their module up there)."""
    spec = importlib.util.spec_from_file_location("virnucpro_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


# --- the writer and the checker share one description ----------------------------------------------

@pytest.mark.parametrize("name", SHARED)
def test_the_summary_checks_the_tables_predict_writes_by_the_same_definitions(summary_script, name):
    assert getattr(summary_script, name) is getattr(calls, name)


def test_predict_writes_the_tables_calls_names():
    assert predict.OUTPUTS[:4] == (calls.RESULTS, calls.HIGHEST, calls.CHUNKS, calls.SEQUENCES)
    assert predict.RUN_INFO is calls.RUN_INFO
    assert predict.CHUNK_COLUMNS is CHUNK_COLUMNS and predict.SEQUENCE_COLUMNS is SEQUENCE_COLUMNS


def _format_literals() -> set:
    """The values that only calls.py may spell out: file names, header lines and the tuples."""
    names = {getattr(calls, name) for name in SHARED}
    headers = {header_line(getattr(calls, name)) for name in SHARED if name.endswith("_COLUMNS")}
    return names | headers | {header.rstrip("\n") for header in headers}


@pytest.mark.parametrize("path", ["virnucpro/predict.py", "virnucpro/report.py", "bin/virnucpro_summary.py"])
def test_no_other_module_spells_out_a_table_format(path):
    """A literal file name, header, column tuple, call tuple or frame tuple outside calls.py would be a
    second description of the format; so would a chunk id built by hand or an id cut at a fixed width."""
    tree = ast.parse((ROOT / path).read_text())
    literals = _format_literals()
    found = [ast.unparse(node) for node in ast.walk(tree)
             if isinstance(node, (ast.Constant, ast.Tuple)) and _literal(node) in literals]
    found += [ast.unparse(node) for node in ast.walk(tree)
              if isinstance(node, ast.JoinedStr) and "_chunk_" in ast.unparse(node)]
    found += [ast.unparse(node) for node in ast.walk(tree)
              if isinstance(node, ast.Subscript) and ast.unparse(node.slice) == ":-2"]
    assert not found, f"{path} describes the predict tables itself: {found}"


def _literal(node: ast.AST) -> object:
    """The value of a literal node, or None when it is not a literal (or not hashable)."""
    try:
        value = ast.literal_eval(node)
        hash(value)
    except (ValueError, TypeError, SyntaxError):
        return None
    return value


def test_the_summary_uses_the_exit_codes_and_stop_signals_of_errors(summary_script):
    assert summary_script.STOP_SIGNALS is errors.STOP_SIGNALS
    assert summary_script.ExitCode is errors.ExitCode
    assert not [name for name in vars(summary_script) if name.startswith("EXIT_")]
    assert signal.SIGTERM in summary_script.STOP_SIGNALS


# --- the rules, each written once ------------------------------------------------------------------

def test_orf_label_is_virus_only_above_others():
    assert orf_label(0.7, 0.3) == "virus"
    assert orf_label(0.3, 0.7) == "others"
    assert orf_label(0.5, 0.5) == "others"  # torch.max keeps the first class on ties


def test_chunk_cells_without_orf_and_with_a_best_orf():
    assert chunk_cells(None) == {"best_orf": "NA", "max_score_virus": "NA", "call": "no_orf"}
    tie = ChunkScore("s_chunk_1", "s_chunk_1R2", 0.5, 0.5)
    assert chunk_cells(tie) == {"best_orf": "s_chunk_1R2", "max_score_virus": "0.5", "call": "virus"}
    lower = ChunkScore("s_chunk_1", "s_chunk_1F1", 0.25, 0.75)
    assert chunk_cells(lower)["call"] == "others"


def test_chunk_ids_and_the_frame_label_that_ends_an_orf_id():
    assert chunk_id_of("seq F1", 3) == "seq F1_chunk_3"
    for frame in FRAMES:
        assert orf_chunk_id(chunk_id_of("a_R1", 12) + frame) == "a_R1_chunk_12"
    assert orf_chunk_id("a_chunk_1") is None
    assert orf_chunk_id("a_chunk_1F7") is None


def test_chunk_scores_refuse_an_orf_id_without_a_frame_label():
    """Cutting two characters would have made a chunk 'a_chunk_' of it."""
    with pytest.raises(ValueError, match="frame label"):
        list(predict.chunk_scores([("a_chunk_1F1", 0.9, 0.1), ("a_chunk_12", 0.9, 0.1)]))
    scores = list(predict.chunk_scores([("a_chunk_1F1", 0.2, 0.8), ("a_chunk_1R3", 0.9, 0.1),
                                        ("a_chunk_2F2", 0.1, 0.9)]))
    assert [(s.chunk_id, s.best_orf, s.call) for s in scores] == [("a_chunk_1", "a_chunk_1R3", "virus"),
                                                                  ("a_chunk_2", "a_chunk_2F2", "others")]


# --- rows follow their header -----------------------------------------------------------------------

def test_orf_rows_follow_the_column_tuple():
    line = calls.result_line("s_chunk_1F1", "virus", "0.25", "0.75")
    assert dict(zip(calls.RESULT_COLUMNS, line.rstrip("\n").split("\t"), strict=True)) == {
        "Sequence_ID": "s_chunk_1F1", "Prediction": "virus", "score1": "0.25", "score2": "0.75"}


def test_sequence_rows_follow_the_column_tuple(monkeypatch):
    tally = SequenceTally()
    tally.add(ChunkScore("s_chunk_1", "s_chunk_1F1", 0.75, 0.25))
    tally.add(None)
    seq = {"sequence_id": "s", "length": "600", "n_chunks": "2", "n_orfs": "1", "status": "ok"}
    line = predict.sequence_line(seq, tally, "virus")
    assert line == row_line(SEQUENCE_COLUMNS, dict(zip(SEQUENCE_COLUMNS, line.rstrip("\n").split("\t"))))
    assert dict(zip(SEQUENCE_COLUMNS, line.rstrip("\n").split("\t"))) == {
        "sequence_id": "s", "length": "600", "n_chunks": "2", "n_chunks_virus": "1", "n_chunks_no_orf": "1",
        "fraction_virus": "1", "max_score_virus": "0.75", "mean_score_virus": "0.75", "call": "virus"}
    monkeypatch.setattr(predict, "SEQUENCE_COLUMNS", SEQUENCE_COLUMNS[::-1])
    assert predict.sequence_line(seq, tally, "virus").rstrip("\n").split("\t") == line.rstrip("\n").split("\t")[::-1]


def test_chunk_rows_follow_the_column_tuple(monkeypatch):
    row = {"chunk_id": "s_chunk_1", "sequence_id": "s", "start": "0", "length": "300", "n_orfs": "2"}
    scored = predict._chunk_row(row, ChunkScore("s_chunk_1", "s_chunk_1F2", 0.125, 0.5))
    assert dict(zip(CHUNK_COLUMNS, scored.rstrip("\n").split("\t"))) == {
        **row, "best_orf": "s_chunk_1F2", "max_score_virus": "0.125", "call": "others"}
    assert predict._chunk_row(row, None).endswith("\t2\tNA\tNA\tno_orf\n")
    monkeypatch.setattr(predict, "CHUNK_COLUMNS", CHUNK_COLUMNS[::-1])
    reversed_line = predict._chunk_row(row, ChunkScore("s_chunk_1", "s_chunk_1F2", 0.125, 0.5))
    assert reversed_line.rstrip("\n").split("\t") == scored.rstrip("\n").split("\t")[::-1]


@pytest.mark.parametrize("path", ["virnucpro/prepare.py", "virnucpro/prepared.py"])
def test_prepare_builds_chunk_ids_and_frame_labels_from_calls(path):
    """prepare writes the chunk and ORF ids every later stage parses: by calls.py's rules, not its own."""
    tree = ast.parse((ROOT / path).read_text())
    found = [ast.unparse(node) for node in ast.walk(tree)
             if isinstance(node, ast.JoinedStr) and "_chunk_" in ast.unparse(node)]
    found += [ast.unparse(node) for node in ast.walk(tree)
              if isinstance(node, ast.Tuple) and _literal(node) == calls.FRAMES]
    assert not found, f"{path} spells out chunk ids or frame labels itself: {found}"
