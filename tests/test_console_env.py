"""Bar or log lines follow what stderr really is: a log file gets log lines whatever FORCE_COLOR or
TTY_COMPATIBLE say (they ask for colours, not for a terminal), a real terminal gets the bar."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from test_progress_eta import _on_a_terminal

CURSOR = re.compile(r"\r|\x1b\[\?25[lh]|\x1b\[[0-9]*[ABCDGJK]")  # carriage returns, cursor moves, hide/show


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "in.fa"
    path.write_text("".join(f">r{i}\n" + "ATGAAACCCGGGTTTTAA" * 40 + "\n" for i in range(20)))
    return path


def _environment(**variables: str) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR")}
    return {**env, "TERM": "xterm", **variables}


@pytest.mark.parametrize("variables", [{"FORCE_COLOR": "1"}, {"FORCE_COLOR": ""}, {"TTY_COMPATIBLE": "1"},
                                       {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}],
                         ids=["FORCE_COLOR=1", "FORCE_COLOR-empty", "TTY_COMPATIBLE=1", "both"])
def test_stderr_in_a_file_gets_log_lines_whatever_the_colour_variables_say(variables, fasta, tmp_path):
    """A reviewer's case: FORCE_COLOR=1 wrote 111 KB of bar frames into a 40 s prepare's log."""
    log = tmp_path / "log"
    with open(log, "wb") as stderr:
        done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", str(fasta), "--outdir",
                               str(tmp_path / "out")], stderr=stderr, stdout=subprocess.DEVNULL,
                              env=_environment(**variables), timeout=300)
    said = log.read_text(encoding="utf-8", errors="replace")
    assert done.returncode == 0, said
    assert not CURSOR.search(said), repr(said)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", said)  # colours, which FORCE_COLOR asks for, may stay
    assert "prepare" in plain and plain.endswith("\n"), repr(said)


def test_a_real_terminal_still_gets_the_bar(fasta, tmp_path):
    code, said = _on_a_terminal([sys.executable, "-m", "virnucpro", "prepare", str(fasta), "--outdir",
                                 str(tmp_path / "out")], _environment())
    assert code == 0, said
    assert "\x1b[?25l" in said and "\x1b[?25h" in said, repr(said)  # the bar hid the cursor and gave it back


@pytest.mark.parametrize("variables", [{"TERM": "dumb"}, {"TTY_COMPATIBLE": "0"}],
                         ids=["TERM=dumb", "TTY_COMPATIBLE=0"])
def test_a_terminal_that_asks_for_no_bar_gets_log_lines(variables, fasta, tmp_path):
    code, said = _on_a_terminal([sys.executable, "-m", "virnucpro", "prepare", str(fasta), "--outdir",
                                 str(tmp_path / "out")], _environment(**variables))
    assert code == 0, said
    assert "\x1b[?25l" not in said, repr(said)
