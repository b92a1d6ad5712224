"""Progress as the user sees it: on a terminal (a bar that never outlives an error), in a log
(periodic lines), with unknown totals, resumed work and work that completes in steps."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys

import pytest
from rich.console import Console

from virnucpro import console


@pytest.fixture
def screen(monkeypatch):
    """console.err as a terminal (or a log, with `screen(False)`), its output kept."""
    def make(terminal: bool = True, term: str = "xterm") -> io.StringIO:
        out = io.StringIO()
        monkeypatch.setenv("TERM", term)
        monkeypatch.setattr(console, "err", Console(file=out, force_terminal=terminal, width=100, highlight=False,
                                                    soft_wrap=True))
        return out
    return make


def log_lines(progress: console.Progress, out: io.StringIO, *steps) -> list[str]:
    for n, counters in steps:
        progress.advance(n, **counters)
    progress.close()
    return [line for line in out.getvalue().splitlines() if line.strip()]


def test_an_error_stops_the_bar_and_gives_the_cursor_back(screen):
    out = screen()
    progress = console.Progress("embed", total=100)
    progress.advance(10)
    assert "\x1b[?25l" in out.getvalue()  # the bar hid the cursor
    console.error("it failed")
    text = out.getvalue()
    assert text.rstrip().endswith("it failed") and "\x1b[?25h" in text
    assert text.rfind("\x1b[?25h") < text.rfind("it failed")
    progress.advance(10)  # a late update after the error draws nothing
    assert out.getvalue() == text


@pytest.mark.parametrize("width", [60, 55])
def test_a_narrow_terminal_narrows_the_bar_before_it_cuts_the_eta(monkeypatch, width):
    """At 60 columns the fixed 20-column bar left no room for "ETA" beside embed's label."""
    out = io.StringIO()
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(console, "err", Console(file=out, force_terminal=True, width=width, highlight=False))
    progress = console.Progress("embed shard 1/1", total=6_277)
    progress.advance(2_500)
    progress.close()
    last = [line for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).replace("\r", "\n").splitlines()
            if "2,500/6,277" in line][-1]
    assert "2,500/6,277 records, ETA " in last and len(last) <= width, last


def test_a_dumb_terminal_gets_log_lines(screen):
    out = screen(term="dumb")
    lines = log_lines(console.Progress("embed", total=100, every_seconds=0), out, (5, {}), (5, {}))
    assert [re.sub(r"\(.*\)", "()", line) for line in lines] == ["virnucpro embed: 5/100 records, ETA 0:00 ()",
                                                                "virnucpro embed: 10/100 records, ETA 0:00 ()"]


def test_an_unknown_total_shows_no_total_and_no_eta(screen):
    out = screen(terminal=False)
    lines = log_lines(console.Progress("prepare", total=None, unit="input bytes", every_seconds=0), out,
                      (2_500_000, {}))
    assert len(lines) == 1 and lines[0].startswith("virnucpro prepare: 2.5 MB input (") and "ETA" not in lines[0]
    assert "/0" not in lines[0] and "-" not in lines[0]


def test_work_done_before_is_shown_but_not_counted_as_speed(screen, monkeypatch):
    clock = iter([0.0, 10.0, 10.0, 10.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    out = screen(terminal=False)
    lines = log_lines(console.Progress("download", total=100_000_000, unit="bytes", every_seconds=0,
                                       done=40_000_000), out, (10_000_000, {}))
    # 10 MB in 10 s: 1 MB/s, 50 MB left: 50 s (the 40 MB resumed were read by an earlier run)
    assert lines[0] == "virnucpro download: 50.0 MB/100.0 MB, ETA 0:50 (1.0 MB/s)"


def test_the_eta_can_follow_a_counter_that_moves_every_batch(screen, monkeypatch):
    clock = iter([0.0, 30.0, 30.0, 30.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    out = screen(terminal=False)
    lines = log_lines(console.Progress("embed", total=10_000, every_seconds=0, eta_by=("tokens", 4_000_000)),
                      out, (0, {"tokens": 1_000_000}))
    # no record finished yet (a checkpoint window is 2,000), but a quarter of the tokens: 90 s left
    assert lines[0].startswith("virnucpro embed: 0/10,000 records, ETA 1:30 (")


@pytest.mark.parametrize("seconds, shown", [(0, "0:00"), (59.6, "1:00"), (3725, "1:02:05"), (90061, "25:01:01")])
def test_durations_read_as_clock_times(seconds, shown):
    assert console.duration(seconds) == shown


def test_embed_progress_names_the_shard_and_follows_letters_for_its_eta(golden_prepared, tiny_models, tmp_path,
                                                                       recorded_progress):
    from virnucpro import embed as embed_module

    made = recorded_progress(embed_module)
    shard = sorted((golden_prepared / "shards").glob("shard_*.tsv"))[0]
    embed_module.embed(shard, tmp_path / "e.h5", models=tiny_models, device="cpu")
    (progress,) = made
    assert progress.label.startswith("embed shard 1/") and progress.total == progress.done > 0
    counter, letters = progress.eta_by
    assert counter == "letters" and progress.extra["letters"] == letters > 0


def test_ids_and_paths_with_colon_words_are_printed_as_they_are(tmp_path):
    """A reviewer's case: rich turned `:x:` in a duplicate id into an emoji and `run:ok:v2` in a
    path into `run🆗v2`, so the message named a record and a folder that do not exist."""
    (tmp_path / "dup.fa").write_text(">NC_1:x:1\nACGT\n>NC_1:x:1\nACGT\n")
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", str(tmp_path / "dup.fa"), "--outdir",
                           str(tmp_path / "run:ok:v2")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "'NC_1:x:1'" in done.stderr, done.stderr
    (tmp_path / "one.fa").write_text(">a\n" + "ACGT" * 100 + "\n")
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", str(tmp_path / "one.fa"), "--outdir",
                           str(tmp_path / "run:ok:v2")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "run:ok:v2" in done.stderr.replace("\n", ""), done.stderr


def test_predict_shows_progress_of_its_checks_and_its_scoring(golden_prepared, golden_embeddings, tiny_models,
                                                             tmp_path, monkeypatch, recorded_progress):
    """predict printed nothing until its end (minutes of silence on millions of ORFs): its two passes
    over the ORFs, the checks and the scoring, each count up to every ORF of the sample."""
    from virnucpro import predict as predict_module
    from virnucpro import prepared as fmt

    made = recorded_progress(predict_module)
    monkeypatch.setattr(predict_module, "PROGRESS_ROWS", 7)  # several updates within a shard
    predict_module.predict(golden_prepared, golden_embeddings, tmp_path / "out", models=tiny_models)
    orfs = fmt.load_manifest(golden_prepared)["counts"]["orfs"]
    assert [p.label for p in made] == ["predict: checking", "predict: scoring"]
    assert all(p.unit == "ORFs" and p.total == p.done == orfs for p in made), [(p.total, p.done) for p in made]


def test_hashing_a_large_model_file_shows_progress_and_a_small_one_nothing(screen, monkeypatch, tmp_path):
    """`models check` hashed ESM-2's gigabytes with one line, then minutes of silence on slow storage."""
    from virnucpro.models import store

    monkeypatch.setattr(store, "HASH_PROGRESS_BYTES", 2_000_000)
    monkeypatch.setattr(store, "HASH_CHUNK_BYTES", 500_000)
    (tmp_path / "big.pt").write_bytes(b"x" * 3_000_000)
    (tmp_path / "small.pt").write_bytes(b"x" * 1_000_000)
    out = screen()
    assert store.sha256_file(tmp_path / "small.pt") == hashlib.sha256(b"x" * 1_000_000).hexdigest()
    assert out.getvalue() == ""
    assert store.sha256_file(tmp_path / "big.pt") == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert "sha256 big.pt" in out.getvalue() and "3.0 MB/3.0 MB" in out.getvalue(), out.getvalue()
    assert "\x1b[?25h" in out.getvalue()  # the bar closed: the cursor given back
