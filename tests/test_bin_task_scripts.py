"""The pipeline's task helpers in bin/ that find and check virnucpro: `require_virnucpro.sh` (every
task that runs virnucpro calls it first) and `torch_version.sh` (EMBED's version probe, run after
the task's work: it must never fail the task, nor run anything but a Python)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import __version__

BIN = Path(__file__).resolve().parents[1] / "bin"
VENV_PYTHON = Path(sys.executable)
SYSTEM = "/usr/bin:/bin"


def run(script: str, path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(BIN / script), *args], capture_output=True, text=True,
                          env={"PATH": path}, timeout=120)


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def torch_version() -> str:
    import torch
    return torch.__version__


@pytest.fixture
def pythons(tmp_path) -> Path:
    """A folder whose path has a space, holding `python3`: this interpreter (with torch)."""
    executable(tmp_path / "py thon" / "python3", f'#!/bin/sh\nexec {VENV_PYTHON} "$@"\n')
    return tmp_path / "py thon"


@pytest.mark.parametrize("first_lines", [
    "#!{venv}\n",  # pip's script for an interpreter path without spaces
    "#!/usr/bin/env python3\n",  # python3 found on the PATH (here: the one with torch)
    "#!{venv}\r\n",  # written on Windows
    "#!{venv} -sP\n",  # with options, as Fedora's packages write it
    "#!/usr/bin/env python3 -u\n",
    "#!/bin/sh\n'''exec' \"{spaced}\" \"$0\" \"$@\"\n' '''\n",  # pip's launcher for a path with a space
])
def test_the_torch_of_virnucpro_s_own_interpreter_is_reported(tmp_path, pythons, first_lines):
    script = first_lines.format(venv=VENV_PYTHON, spaced=pythons / "python3")
    tools = executable(tmp_path / "tools" / "virnucpro", script + "import sys\n").parent
    done = run("torch_version.sh", f"{tools}:{pythons}:{SYSTEM}")
    assert (done.returncode, done.stdout.strip()) == (0, torch_version()), done.stderr


@pytest.mark.parametrize("first_lines", ["#!/bin/sh\nexec /opt/virnucpro/bin/virnucpro \"$@\"\n", "#!/bin/bash\n",
                                         "#!/usr/bin/perl\n", ""])
def test_anything_else_is_unknown_and_only_a_python_is_ever_run(tmp_path, first_lines):
    """A wrapper script: `sh -c 'import torch; ...'` would run ImageMagick's `import` (a screen grab
    that waits for a click) where it is installed; nothing named otherwise than python* is run."""
    marker = tmp_path / "ran"
    tools = executable(tmp_path / "tools" / "virnucpro", first_lines).parent
    executable(tools / "import", f"#!/bin/sh\ntouch {marker}\n")
    for name in ("sh", "bash", "perl"):
        executable(tools / name, f"#!/bin/sh\ntouch {marker}\n")
    done = run("torch_version.sh", f"{tools}:{SYSTEM}")
    assert (done.returncode, done.stdout.strip()) == (0, "unknown") and not marker.exists()


def test_no_virnucpro_at_all_is_unknown(tmp_path):
    assert run("torch_version.sh", SYSTEM).stdout.strip() == "unknown"


def test_the_pipeline_s_own_version_passes(tmp_path):
    tools = executable(tmp_path / "virnucpro", f'#!/bin/sh\necho "virnucpro {__version__}"\n').parent
    done = run("require_virnucpro.sh", f"{tools}:{SYSTEM}", __version__)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("found, pipeline", [
    ("9.9.9", "nextflow run virnucpro/virnucpro -r 9.9.9)"),
    ("9.10.0dev", "nextflow run on the checkout virnucpro 9.10.0dev was installed from; -r main is only the latest")])
def test_another_version_is_exit_5_naming_both_and_the_ways_out(tmp_path, found, pipeline):
    """The ways out work: virnucpro is not on PyPI (a `pip install virnucpro==X` would install
    whatever someone registered under that name); releases are tagged with their version as the
    docs write it, and a development version has no release: its pipeline is the checkout it was
    installed from (main may hold another development version by then)."""
    tools = executable(tmp_path / "virnucpro", f'#!/bin/sh\necho "virnucpro {found}"\n').parent
    done = run("require_virnucpro.sh", f"{tools}:{SYSTEM}", __version__)
    assert done.returncode == 5
    assert f"this pipeline runs virnucpro {__version__}, but the task found virnucpro {found}" in done.stderr
    assert "-profile docker" in done.stderr and pipeline in done.stderr, done.stderr
    assert f"`pip install .` in a checkout of the pipeline at {__version__}" in done.stderr, done.stderr
    assert "virnucpro==" not in done.stderr


def test_no_virnucpro_is_said_with_the_path_searched(tmp_path):
    done = run("require_virnucpro.sh", SYSTEM, __version__)
    assert done.returncode == 127 and f"no virnucpro on its PATH ({SYSTEM})" in done.stderr, done.stderr
    assert os.access(BIN / "require_virnucpro.sh", os.X_OK) and os.access(BIN / "torch_version.sh", os.X_OK)
