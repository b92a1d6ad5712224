"""Where the messages go must not decide how a command ends (a streams review): an ASCII locale's
`--help`, a log that cannot be written, a terminal that stopped reading."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mount_helpers import tmpfs
from virnucpro.errors import ExitCode

CLI = [sys.executable, "-m", "virnucpro"]


@pytest.mark.parametrize("command", ["run", "prepare", "embed", "predict"])
@pytest.mark.parametrize("locale", [{"LC_ALL": "C"}, {"LC_ALL": "POSIX"}, {"PYTHONIOENCODING": "ascii:surrogateescape"}],
                         ids=["C", "POSIX", "ascii-surrogateescape"])
def test_help_under_an_ascii_locale_is_no_bug_report(command, locale, tmp_path):
    """Under an ASCII locale stdout's errors are surrogateescape, which cannot write the help's `…`:
    `--help` ended as a bug report (exit 1) with a traceback."""
    env = {**os.environ, "PYTHONUTF8": "0", "TMPDIR": str(tmp_path), "COLUMNS": "60", **locale}  # narrow: cut with `…`
    done = subprocess.run(CLI + [command, "--help"], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert b"Usage" in done.stdout and b"\\u2026" in done.stdout, done.stdout  # the character, escaped
    assert not list(tmp_path.glob("virnucpro-crash-*")), "a bug report was saved"


def test_a_name_that_is_not_utf8_still_reaches_an_ascii_stream_as_its_bytes(tmp_path):
    """The escapes that replace what ASCII lacks leave a surrogate-escaped byte as that byte."""
    from virnucpro.entry import ESCAPES, _tolerant_standard_streams

    _tolerant_standard_streams()  # registers the handler (the streams of pytest have none to change)
    assert "a\udcff…".encode("ascii", ESCAPES) == b"a\xff\\u2026"


def _unwritable_stderr(kind: str, tmp_path):
    """A descriptor for stderr that fails every write: read-only (EBADF), or a file on a full disk."""
    if kind == "read-only":
        (tmp_path / "ro").write_text("")
        return open(tmp_path / "ro", "rb")
    return open(tmp_path / "disk" / "log", "ab")


@pytest.mark.parametrize("kind", ["read-only", "full disk"])
@pytest.mark.parametrize("args, code", [(["bogus"], ExitCode.USAGE), (["prepare", "--chunk-size", "7", "x.fa", "-o", "o"],
                                                                       ExitCode.USAGE),
                                        (["prepare", "missing.fa", "-o", "o"], ExitCode.BAD_INPUT)],
                         ids=["unknown-command", "bad-option", "missing-input"])
def test_a_log_that_cannot_be_written_leaves_the_exit_code_as_it_is(kind, args, code, tmp_path):
    """typer's usage errors met the failing stderr and ended as exit 10 ("the disk is full") or as a
    bug report (exit 1, EBADF from a wrapper script's `2>&-`): the log's failure is not the command's."""
    with tmpfs(tmp_path / "disk", "64k"):
        (tmp_path / "disk" / "filler").write_bytes(b"\0" * 4096 * 15)  # the log's first page fits, no more
        with _unwritable_stderr(kind, tmp_path) as stderr:
            if kind == "full disk":
                stderr.write(b"x" * 4096)
                stderr.flush()
            done = subprocess.run(CLI + args, stderr=stderr, stdout=subprocess.DEVNULL, cwd=tmp_path, timeout=120,
                                  env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == code
    assert not list(tmp_path.glob("virnucpro-crash-*")), "a bug report was saved"


def test_a_last_message_nobody_reads_does_not_hold_the_ended_command(tmp_path):
    """A streams review's case: on a terminal that had stopped reading (Ctrl-S), a stopped command
    wrote its last message and waited for ever (its later stop signals ignored). Here stderr is a
    full pipe nobody reads: the command still ends, with its own code, soon after its report."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    started = time.monotonic()
    try:
        done = subprocess.run(CLI + ["prepare", "missing.fa", "-o", "o"], stderr=write_end, stdout=subprocess.DEVNULL,
                              cwd=tmp_path, timeout=120)
    finally:
        os.close(write_end)
        os.close(read_end)
    assert done.returncode == ExitCode.BAD_INPUT and time.monotonic() - started < 60  # else: the timeout
