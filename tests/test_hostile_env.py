"""A hostile environment around the command: a reader that closes its pipe early (`| head -1`), no
writable temporary folder, a current folder deleted under the shell, a nonsense COLUMNS. Each
ends the command with its own exit code and one clear message, never a silent exit 1 or a traceback,
and a closed pipe never costs the work."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import console, crash

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example.fa"
TIMEOUT = 180
COMMAND = [sys.executable, "-m", "virnucpro"]
# as users run it: stdout block-buffered in a pipe, so that a dead one also fails the flush at exit
USER_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}


def _read_one_line_then_close(args: list[str], stream: str, **kwargs) -> tuple[int, bytes, str]:
    """Run `virnucpro ARGS` with `stream` ('stdout' or 'stderr') into a pipe that is closed after its
    first line; returns (exit code, that line, what the other stream said)."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    child = subprocess.Popen(COMMAND + args, **pipes, env=USER_ENV, **kwargs)
    watched = getattr(child, stream)
    first = watched.readline()
    watched.close()
    other = child.stderr if stream == "stdout" else child.stdout
    said = other.read().decode(errors="replace")
    return child.wait(timeout=TIMEOUT), first, said


def _into_a_closed_pipe(args: list[str], **kwargs) -> int:
    """Run `virnucpro ARGS` with stdout and stderr into a pipe whose reader is gone before it starts
    (every write fails, deterministically); returns the exit code."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(COMMAND + args, stdout=write_end, stderr=write_end, timeout=TIMEOUT,
                              env=USER_ENV, **kwargs).returncode
    finally:
        os.close(write_end)


# 1. a closed pipe loses the messages, never the command -------------------------------------------

def test_a_run_whose_stderr_reader_left_still_finishes_and_keeps_its_outputs(tiny_models, tmp_path):
    out = tmp_path / "out"
    code, first, said = _read_one_line_then_close(
        ["run", str(EXAMPLE), "--models", str(tiny_models), "--outdir", str(out), "--device", "cpu"], "stderr")
    assert first, "the command said nothing at all"
    assert code == 0, said
    assert (out / "prediction_results.txt").is_file() and (out / "run_info.json").is_file()


def test_help_into_a_pipe_closed_after_one_line_exits_0():
    code, first, said = _read_one_line_then_close(["run", "--help"], "stdout")
    assert first.endswith(b"\n")  # help starts with a blank line: the rest meets a closed pipe
    assert code == 0, said
    assert "Traceback" not in said and "Exception ignored" not in said


def test_models_check_into_a_pipe_closed_after_one_line_exits_0(tiny_models):
    code, first, said = _read_one_line_then_close(["models", "check", str(tiny_models)], "stderr")
    assert b"models directory" in first
    assert code == 0, said


@pytest.mark.parametrize("args, expected", [
    (["--help"], 0), (["run", "--help"], 0), (["--version"], 0),
    (["run"], 2), (["run", "/nonexistent/missing.fa", "--outdir", "x"], 3),
], ids=["help", "run-help", "version", "usage", "bad-input"])
def test_a_reader_gone_before_anything_is_written_changes_no_exit_code(args, expected, tmp_path):
    assert _into_a_closed_pipe(args, cwd=tmp_path) == expected


def _dead_pipe_file() -> io.TextIOWrapper:
    """A text stream on a pipe whose reader is closed: every flush raises BrokenPipeError."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return os.fdopen(write_end, "w")


def test_a_progress_bar_and_messages_on_a_dead_pipe_raise_nothing(monkeypatch):
    from rich.console import Console

    stream = _dead_pipe_file()
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(console, "err", Console(file=stream, force_terminal=True, width=100, soft_wrap=True))
    monkeypatch.setattr(console, "draws_a_bar", lambda: True)  # a pipe gets log lines: the bar is forced here
    with console.Progress("embed", total=10) as progress:  # the bar's own thread writes too
        assert progress._bar is not None
        progress.advance(5)
        console.info("still going")
        console.error("an error message nobody can read")
        progress.advance(5)
    console.warn("after the bar")
    stream.write("x" * 100_000)  # the dead pipe now points to /dev/null: Python's exit flush passes
    stream.close()


# 2. the bug reporter without a temporary folder ---------------------------------------------------

def _no_temporary_folder(*args, **kwargs):
    raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/var/tmp']")


def test_the_bug_report_without_a_writable_temporary_folder_prints_its_traceback(monkeypatch, capsys):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the bug is raised from tests/: not a PYTHONPATH module's fault
    monkeypatch.setattr(crash.tempfile, "mkstemp", _no_temporary_folder)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        code = crash.report_bug(exc)
    err = capsys.readouterr().err
    assert code == 1
    assert "unexpected ValueError: boom" in err and "this is a bug in virnucpro" in err
    assert "Traceback" in err and 'raise ValueError("boom")' in err


def test_the_bug_report_on_a_full_disk_prints_its_traceback_and_leaves_no_file(monkeypatch, capsys, tmp_path):
    saved = tmp_path / "virnucpro-crash-x.txt"

    def full_disk(*args, **kwargs):
        saved.write_text("")
        return os.open("/dev/full", os.O_WRONLY), str(saved)

    monkeypatch.setattr(crash.tempfile, "mkstemp", full_disk)
    code = crash.report_bug(RuntimeError("lost"))
    err = capsys.readouterr().err
    assert code == 1 and "unexpected RuntimeError: lost" in err and "RuntimeError: lost" in err.split("\n", 2)[-1]
    assert not saved.exists(), "an empty, useless crash file was left behind"


def test_the_bug_report_in_a_container_prints_its_traceback_too(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the bug is raised from tests/: not a PYTHONPATH module's fault
    monkeypatch.setattr(crash, "CONTAINER_MARKERS", (str(tmp_path / ".dockerenv"),))
    (tmp_path / ".dockerenv").write_text("")
    monkeypatch.setattr(crash.tempfile, "tempdir", str(tmp_path))
    try:
        raise ValueError("inside")
    except ValueError as exc:
        code = crash.report_bug(exc)
    err = capsys.readouterr().err
    saved = list(tmp_path.glob("virnucpro-crash-*.txt"))
    assert code == 1 and len(saved) == 1 and 'raise ValueError("inside")' in saved[0].read_text()
    assert f"also saved in {saved[0]}, which goes when this container ends" in err
    assert "Traceback" in err and 'raise ValueError("inside")' in err


def test_the_bug_report_outside_a_container_only_names_the_saved_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(crash, "CONTAINER_MARKERS", (str(tmp_path / "no-marker"),))
    monkeypatch.setattr(crash.tempfile, "tempdir", str(tmp_path))
    code = crash.report_bug(ValueError("outside"))
    err = capsys.readouterr().err
    assert code == 1 and "saved in" in err and "Traceback" not in err


def test_a_bug_through_the_command_line_without_a_temporary_folder_is_exit_1(run_cli, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the bug is raised from tests/: not a PYTHONPATH module's fault
    from virnucpro.models import store

    monkeypatch.setattr(crash.tempfile, "mkstemp", _no_temporary_folder)
    monkeypatch.setattr(store, "check", lambda directory: 1 / 0)
    code, err = run_cli("models", "check")
    assert code == 1 and "unexpected ZeroDivisionError" in err and "Traceback" in err


# 3. a current folder deleted under the shell ------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["prepare", str(EXAMPLE), "--outdir", "rel"],
    ["models", "tiny", "rel"],
    ["run", str(EXAMPLE), "--outdir", "{tmp}/abs", "--device", "cpu"],
], ids=["prepare-relative", "tiny-relative", "run-absolute"])
def test_a_deleted_current_folder_is_one_message_and_exit_2(args, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    script = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    result = subprocess.run(["sh", "-c", script, "sh", str(gone), *COMMAND, *args], capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "current folder" in result.stderr and "deleted" in result.stderr and "cd " in result.stderr
    assert "Traceback" not in result.stderr and "oneMKL" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == []


# 4. a nonsense terminal width ---------------------------------------------------------------------

@pytest.mark.parametrize("columns", ["0", "5", "19", "-1", "wide", ""])
def test_a_nonsense_columns_still_shows_the_error(columns, tmp_path):
    env = {**os.environ, "COLUMNS": columns}
    result = subprocess.run(COMMAND + ["run", "missing.fa", "--outdir", "x"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 3
    assert "input file not found: missing.fa" in result.stderr


def test_a_zero_columns_still_shows_usage_errors_and_help(tmp_path):
    env = {**os.environ, "COLUMNS": "0"}
    usage = subprocess.run(COMMAND + ["run"], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=TIMEOUT)
    assert usage.returncode == 2 and "Missing argument" in usage.stderr
    shown = subprocess.run(COMMAND + ["run", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=TIMEOUT)
    assert shown.returncode == 0 and "--outdir" in shown.stdout


def test_a_sane_columns_is_kept(monkeypatch):
    monkeypatch.setenv("COLUMNS", "132")
    assert console.columns_from_environment() == 132
    for bad in ("0", "19", "x", "-5"):
        monkeypatch.setenv("COLUMNS", bad)
        assert console.columns_from_environment() is None


def test_a_huge_columns_does_not_pad_an_error_to_megabytes(tmp_path):
    """COLUMNS=10000000 padded one error line to 70 MB (and --help to 240 MB)."""
    env = {**os.environ, "COLUMNS": "10000000"}
    result = subprocess.run(COMMAND + ["run", "missing.fa", "--outdir", "x"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 3 and "input file not found: missing.fa" in result.stderr
    assert len(result.stderr) < 10_000, len(result.stderr)


def test_a_library_write_left_in_a_dead_stdout_does_not_change_the_exit_code(tiny_models):
    """Python flushes stdout once more at exit: a dead pipe there made the exit code 120."""
    script = ("import sys, virnucpro.entry\nsys.stdout.write('a library said this')\n"
              f"sys.argv = ['virnucpro', 'models', 'check', {str(tiny_models)!r}]\nvirnucpro.entry.main()\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-c", script], stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=TIMEOUT, env=USER_ENV)
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "virnucpro all models present" in result.stderr


@pytest.mark.parametrize("module", ["raise ImportError('numpy of another python')\n", "x = (\n"],
                         ids=["import-error", "syntax-error"])
def test_a_module_put_first_by_pythonpath_is_named_with_the_fix_not_called_our_bug(tmp_path, module):
    """A Nextflow task without a container inherits the launch shell's PYTHONPATH: another numpy
    failing to import was "unexpected ImportError ... this is a bug in virnucpro", with a traceback."""
    (tmp_path / "pp" / "numpy").mkdir(parents=True)
    (tmp_path / "pp" / "numpy" / "__init__.py").write_text(module)
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    done = subprocess.run([sys.executable, "-m", "virnucpro", "prepare", str(tmp_path / "r.fa"), "--outdir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path / "pp")))
    assert done.returncode == 2, done.stderr
    assert f"in {tmp_path / 'pp' / 'numpy' / '__init__.py'}, which PYTHONPATH={tmp_path / 'pp'} put before" in done.stderr
    assert "unset PYTHONPATH" in done.stderr and "bug" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("variable, value, torch_takes_it", [
    ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments=True", False),
    ("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128,garbage", False),
    ("PYTORCH_ALLOC_CONF", "a:[1,2", False),
    ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True,", True),
    ("PYTORCH_ALLOC_CONF", "roundup_power2_divisions:[256:1,512:2], backend:native", True)])
def test_allocator_settings_torch_aborts_on_are_one_message_and_exit_2(tiny_models, variable, value, torch_takes_it):
    """torch reads them at import and aborts (exit 134, a C++ stack) on one that does not parse,
    whatever the command; what it takes is left to it. Each verdict is torch's own, checked here."""
    env = {**os.environ, variable: value}
    torch_import = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert (torch_import.returncode == 0) == torch_takes_it, torch_import.stderr[-500:]
    done = subprocess.run([sys.executable, "-m", "virnucpro", "models", "check", str(tiny_models)], env=env,
                          capture_output=True, text=True, timeout=300)
    if torch_takes_it:
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        assert done.returncode == 2 and f"{variable}='{value}' is no list of key:value settings" in done.stderr
        assert "Traceback" not in done.stderr and "c10" not in done.stderr, done.stderr[-2000:]
