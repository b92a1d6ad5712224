"""The pipeline's task helpers in bin/ that find and check virnucpro: `require_virnucpro.sh` (every
task that runs virnucpro calls it first) and `torch_version.sh` (EMBED's version probe, run after
the task's work: it must never fail the task, nor run anything but a Python)."""

from __future__ import annotations

import os
import platform
import re
import shutil
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
    "#!{venv} \n",  # a blank after the program: the kernel ends the program there
    "#!{venv}\t-sP\n",  # a tab before the options
    "#! \t{venv}\n",  # blanks before the program
    "#!/usr/bin/env\tpython3\n",
    "#!/usr/bin/env python3 -u\n",
    "#!/bin/sh\n'''exec' \"{spaced}\" \"$0\" \"$@\"\n' '''\n",  # pip's launcher for a path with a space
])
def test_the_torch_of_virnucpro_s_own_interpreter_is_reported(tmp_path, pythons, first_lines):
    script = first_lines.format(venv=VENV_PYTHON, spaced=pythons / "python3")
    tools = executable(tmp_path / "tools" / "virnucpro", script + "import sys\n").parent
    done = run("torch_version.sh", f"{tools}:{pythons}:{SYSTEM}")
    assert (done.returncode, done.stdout.strip()) == (0, torch_version()), done.stderr


def test_pip_s_launcher_for_a_long_path_without_spaces_names_the_interpreter_unquoted(tmp_path):
    """A reviewer's case: an interpreter path over 127 characters without spaces is written
    unquoted after `''''exec' `; it was missed, and the PATH's python3 (none here: exit 127) ran."""
    deep = executable(tmp_path / ("d" * 60) / ("e" * 60) / "bin" / "python3", f'#!/bin/sh\nexec {VENV_PYTHON} "$@"\n')
    launcher = f"#!/bin/sh\n'''exec' {deep} \"$0\" \"$@\"\n' '''\nimport sys\n"
    tools = executable(tmp_path / "tools" / "virnucpro", launcher).parent
    done = run("torch_version.sh", f"{tools}:{SYSTEM}")  # its python3 has no torch: "unknown" if it ran
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
    done = run("torch_version.sh", SYSTEM)
    assert (done.stdout, done.stderr) == ("unknown\n", "")  # a version probe: nothing in the task's error log


def test_the_pipeline_s_own_version_passes(tmp_path):
    tools = executable(tmp_path / "virnucpro", f'#!/bin/sh\necho "virnucpro {__version__}"\n').parent
    done = run("require_virnucpro.sh", f"{tools}:{SYSTEM}", __version__)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("found, pipeline", [
    ("9.9.9", "nextflow run virnucpro/virnucpro -r 9.9.9)"),
    ("9.10.0dev", "nextflow run on the checkout virnucpro 9.10.0dev was installed from; -r main is only the latest"),
    ("9.10.0.dev2", "nextflow run on the checkout virnucpro 9.10.0.dev2 was installed from"),  # PEP 440's spelling
    (f"{__version__}1", f"nextflow run on the checkout virnucpro {__version__}1 was installed from"),  # no prefix match
])
def test_another_version_is_exit_5_naming_both_and_the_ways_out(tmp_path, found, pipeline):
    """The ways out work: virnucpro is not on PyPI (a `pip install virnucpro==X` would install
    whatever someone registered under that name); releases are tagged with their version as the
    docs write it, and a development version has no release: its pipeline is the checkout it was
    installed from (main may hold another development version by then)."""
    tools = executable(tmp_path / "virnucpro", f'#!/bin/sh\necho "virnucpro {found}"\n').parent
    done = run("require_virnucpro.sh", f"{tools}:{SYSTEM}", __version__)
    assert done.returncode == 5
    assert f"this pipeline runs virnucpro {__version__}, but the task found virnucpro {found} " \
           f"({tools / 'virnucpro'})" in done.stderr, done.stderr  # which of several installs it found
    assert "-profile docker" in done.stderr and pipeline in done.stderr, done.stderr
    assert f"`pip install .` in a checkout of the pipeline at {__version__}" in done.stderr, done.stderr
    assert "virnucpro==" not in done.stderr


def test_a_virnucpro_that_fails_to_say_its_version_ends_the_task_with_its_own_error(tmp_path):
    """A broken install: its own message and exit code, not a version mismatch with an empty version."""
    tools = executable(tmp_path / "virnucpro", "#!/bin/sh\necho 'virnucpro: broken install' >&2\nexit 3\n").parent
    done = run("require_virnucpro.sh", f"{tools}:{SYSTEM}", __version__)
    assert (done.returncode, done.stderr) == (3, "virnucpro: broken install\n")


def test_no_virnucpro_is_said_with_the_path_searched(tmp_path):
    done = run("require_virnucpro.sh", SYSTEM, __version__)
    assert done.returncode == 127 and f"no virnucpro on its PATH ({SYSTEM})" in done.stderr, done.stderr
    assert os.access(BIN / "require_virnucpro.sh", os.X_OK) and os.access(BIN / "torch_version.sh", os.X_OK)


# --------------------------------------------------------------------------------------------------
# virnucpro_python: the bin/ Python scripts and probes run by virnucpro's own interpreter
# --------------------------------------------------------------------------------------------------

MODULES = BIN.parent / "modules" / "local" / "virnucpro"
BIN_PYTHON_SCRIPTS = sorted(path.name for path in BIN.glob("*.py") if path.name != "container_init.py")


def wrapper(path: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """bin/virnucpro_python ARGS, started as a task starts it (by its path: bin/ is on the task's PATH)."""
    return subprocess.run([str(BIN / "virnucpro_python"), *args], capture_output=True, text=True,
                          env={"PATH": path}, cwd=cwd, timeout=120)


@pytest.fixture
def pipx_path(tmp_path) -> str:
    """A task's PATH where virnucpro is installed pipx-style: a link to its script (whose first line
    names its own interpreter) and the pipeline's bin/, and no python, python3 or any python* at all."""
    links = tmp_path / "links"
    links.mkdir()
    (links / "virnucpro").symlink_to(VENV_PYTHON.parent / "virnucpro")
    path = f"{links}:{BIN}"
    assert not any(shutil.which(name, path=path) for name in ("python", "python3", f"python3.{sys.version_info[1]}"))
    return path


def module_lines(pattern: str) -> list[str]:
    """The lines of the virnucpro modules that match `pattern`, stripped."""
    return [line.strip() for module in sorted(MODULES.glob("*/main.nf")) for line in module.read_text().splitlines()
            if re.search(pattern, line)]


def test_every_module_runs_the_bin_python_scripts_and_probes_through_virnucpro_python():
    """A `#!/usr/bin/env python3` script run by its name needs a python3 on the task's PATH (none in a
    pipx-style install: EMBED failed 127 after PREPARE; RHEL 8's 3.6 cannot read the scripts)."""
    assert BIN_PYTHON_SCRIPTS == ["gpu_slot.py", "pinned_models.py", "virnucpro_summary.py"]
    calls = module_lines(r"\b(%s)\b" % "|".join(map(re.escape, BIN_PYTHON_SCRIPTS)))
    runs = [line for line in calls if not line.startswith("//")]
    assert len(runs) == 6 and all(re.match(r"virnucpro_python (gpu_slot|pinned_models|virnucpro_summary)\.py ", line)
                                  for line in runs), runs
    probes = module_lines(r"eval\('[^']*python")
    assert probes and all("eval('virnucpro_python -c " in line for line in probes), probes


def test_the_bin_python_scripts_and_probes_run_on_a_path_without_any_python(tmp_path, pipx_path):
    slot = wrapper(pipx_path, "gpu_slot.py", "--lock-dir", str(tmp_path / "slots"), "--device", "auto", "--",
                   "virnucpro", "--version", cwd=tmp_path)
    assert (slot.returncode, slot.stdout.strip()) == (0, f"virnucpro {__version__}"), slot.stderr
    (tmp_path / "rows").mkdir()
    (tmp_path / "ids.txt").write_text("sample_a\n")
    merged = wrapper(pipx_path, "virnucpro_summary.py", "merge", "rows", "--samples-from", "ids.txt",
                     "--out", "summary.tsv", "--mqc", "mqc.tsv", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert "sample_a" in (tmp_path / "summary.tsv").read_text() and (tmp_path / "mqc.tsv").is_file()
    pinned = wrapper(pipx_path, "pinned_models.py", "--pins", "{}", "--models", str(tmp_path), cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr  # virnucpro's own Python, which imports virnucpro
    (probe,) = [re.search(r"eval\('([^']*)'\)", line).group(1) for line in module_lines(r"eval\('[^']*python")]
    version = subprocess.run(["/bin/bash", "-c", probe], capture_output=True, text=True, env={"PATH": pipx_path},
                             timeout=120)
    assert (version.returncode, version.stdout.strip()) == (0, platform.python_version()), version.stderr
    torch = subprocess.run([str(BIN / "torch_version.sh")], capture_output=True, text=True,
                           env={"PATH": pipx_path}, timeout=120)
    assert torch.stdout.strip() == torch_version(), torch.stderr


@pytest.mark.parametrize("first_lines, said", [
    (None, "no virnucpro on the PATH"),
    ("#!/bin/bash\nexec /opt/virnucpro/bin/virnucpro \"$@\"\n", "is not a Python script"),
    ("#!/usr/bin/env python3\n", "runs the python3 of the PATH, and the PATH has none"),
    ("#!/opt/gone/bin/python3\n", "/opt/gone/bin/python3, which cannot be run"),
])
def test_virnucpro_python_without_a_python_to_run_says_so_in_one_line_and_exits_127(tmp_path, first_lines, said):
    tools = tmp_path / "tools"
    tools.mkdir()
    if first_lines is not None:
        executable(tools / "virnucpro", first_lines)
    done = wrapper(f"{tools}:{BIN}", "-c", "print('ran')")
    assert (done.returncode, done.stdout) == (127, ""), done
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("virnucpro_python: error: ") and "fix:" in done.stderr, done.stderr


def test_a_virnucpro_wrapper_script_leaves_the_paths_python3(tmp_path):
    """A site's launcher (`exec` into an environment or a container) names no Python: the PATH's
    python3 runs the bin scripts, as before virnucpro_python."""
    tools = tmp_path / "tools"
    tools.mkdir()
    executable(tools / "virnucpro", "#!/bin/bash\nexec /opt/virnucpro/bin/virnucpro \"$@\"\n")
    (tools / "python3").symlink_to(sys.executable)
    done = wrapper(f"{tools}:{BIN}", "-c", "print('ran')")
    assert (done.returncode, done.stdout) == (0, "ran\n"), done
