"""A Python installation that lacks a package virnucpro needs (`pip install --no-deps`, a partial
environment), or holds a compiled package built for another numpy, is a usage error (exit 2) whose
fix names the package and the pip command: not a bug report, not a traceback, and not blamed on the
user's files. Each case runs the real console entry in a subprocess with the package made unimportable
(`sys.modules[name] = None`, or a stand-in package on sys.path that fails as a mismatched build does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import entry

MISMATCH = "numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, got 88"


def _virnucpro(tmp_path: Path, args: list[str], prelude: str = "", pythonpath: Path | None = None
               ) -> subprocess.CompletedProcess:
    """`virnucpro ARGS` through the console entry after `prelude` (Python run first), with its own
    temporary folder (where a bug report would be saved), and PYTHONPATH only when given."""
    script = f"import sys\n{prelude}\nfrom virnucpro.entry import main\nsys.argv = ['virnucpro', *{args!r}]\nmain()\n"
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def _assert_installation_fault(done: subprocess.CompletedProcess, tmp_path: Path, *expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "bug" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 2, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    assert not list((tmp_path / "tmp").glob("virnucpro-crash-*")), "no bug report is saved"


@pytest.mark.parametrize("module, requirement", [("typer", "'typer>=0.16'"), ("rich", "'rich>=13.8'")])
def test_a_missing_package_of_the_command_line_is_named_with_its_pip_command(tmp_path, module, requirement):
    done = _virnucpro(tmp_path, ["--version"], f"sys.modules[{module!r}] = None")
    _assert_installation_fault(done, tmp_path, f"the Python package {module}, which virnucpro needs, is not installed",
                               f"fix: {sys.executable} -m pip install {requirement}")


def test_a_missing_numpy_stops_prepare_before_it_writes_anything(tmp_path):
    (tmp_path / "a.fa").write_text(">a\nACGTACGTAAATGA\n")
    done = _virnucpro(tmp_path, ["prepare", "a.fa", "--outdir", "out"], "sys.modules['numpy'] = None")
    _assert_installation_fault(done, tmp_path, "the Python package numpy", "-m pip install 'numpy>=1.24'")
    assert not (tmp_path / "out").exists()


def test_a_missing_torch_is_named_when_a_command_needs_it(tmp_path):
    done = _virnucpro(tmp_path, ["models", "tiny", "m"], "sys.modules['torch'] = None")
    _assert_installation_fault(done, tmp_path, "the Python package torch", "-m pip install 'torch>=2.6'")


def test_fair_esm_is_named_by_its_distribution_not_its_module(tmp_path):
    done = _virnucpro(tmp_path, ["models", "tiny", "m"], "sys.modules['esm'] = None")
    _assert_installation_fault(done, tmp_path, "the Python package fair-esm", "-m pip install 'fair-esm>=2.0.0'")


def test_a_module_no_requirement_names_asks_for_the_dependencies(tmp_path):
    """typing_extensions comes with torch: virnucpro declares no requirement on it, so the fix is the
    whole set."""
    done = _virnucpro(tmp_path, ["models", "tiny", "m"], "sys.modules['typing_extensions'] = None")
    _assert_installation_fault(done, tmp_path, "the Python module typing_extensions is not installed",
                               "install virnucpro with its dependencies (not with --no-deps)")


def test_a_missing_part_of_an_installed_package_asks_to_reinstall_it():
    import numpy  # noqa: F401 - installed: only its part is missing

    message = entry.installation_fault(ModuleNotFoundError("No module named 'numpy.linalg'", name="numpy.linalg"))
    assert "the installed numpy lacks its module numpy.linalg" in message
    assert "-m pip install --force-reinstall 'numpy>=1.24'" in message


def test_virnucpro_running_uninstalled_names_the_package_without_a_version(monkeypatch):
    from importlib import metadata

    def uninstalled(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "requires", uninstalled)
    message = entry.installation_fault(ModuleNotFoundError("No module named 'h5py'", name="h5py"))
    assert "the Python module h5py is not installed" in message


def test_other_failures_are_no_installation_fault():
    assert entry.installation_fault(ModuleNotFoundError("No module named 'virnucpro.gone'", name="virnucpro.gone")) is None
    assert entry.installation_fault(ValueError("a value of the user's")) is None
    assert entry.installation_fault(ModuleNotFoundError("no name given")) is None


def test_an_import_error_of_a_name_is_no_missing_package():
    """`cannot import name x from torch`: torch is installed (another version lacks x): not said missing."""
    assert entry.installation_fault(ImportError("cannot import name 'x' from 'torch'", name="torch")) is None


def test_a_missing_module_met_while_handling_another_error_is_found():
    try:
        try:
            raise ModuleNotFoundError("No module named 'safetensors'", name="safetensors")
        except ImportError:
            raise RuntimeError("loading the model failed")  # noqa: B904 - an implicit chain, as libraries raise
    except RuntimeError as outer:
        assert "the Python package safetensors" in entry.installation_fault(outer)


def test_a_chained_missing_module_is_found_behind_the_error_raised_from_it():
    try:
        try:
            raise ModuleNotFoundError("No module named 'safetensors'", name="safetensors")
        except ImportError as exc:
            raise RuntimeError("loading the model failed") from exc
    except RuntimeError as outer:
        assert "the Python package safetensors" in entry.installation_fault(outer)


def _mismatched_h5py(tmp_path: Path, folder: str = "site-packages") -> Path:
    """A folder holding an h5py that fails to load as one built for numpy 1 fails under numpy 2 (named
    as installed packages' folders are: site-packages, or dist-packages under Debian's Python)."""
    package = tmp_path / "env" / folder / "h5py"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ValueError({MISMATCH!r})\n")
    return package.parent


@pytest.mark.parametrize("folder", ["site-packages", "dist-packages"])
def test_an_h5py_built_for_another_numpy_is_no_damaged_shard(tmp_path, small_sample, folder):
    import numpy

    prepared, shard = small_sample
    first = f"sys.path.insert(0, {str(_mismatched_h5py(tmp_path, folder))!r})"
    done = _virnucpro(tmp_path, ["predict", "--prepared", str(prepared), "--embeddings", str(shard),
                                 "--outdir", "out"], first)
    _assert_installation_fault(done, tmp_path, f"h5py was built for another numpy than the installed numpy "
                               f"{numpy.__version__} (", f"fix: {sys.executable} -m pip install --upgrade h5py")
    assert "cannot be read" not in done.stderr


def test_a_mismatched_module_that_pythonpath_put_first_is_said_to_come_from_there(tmp_path, small_sample):
    """The module's folder is the fault (unset PYTHONPATH), not its build: the same h5py, from PYTHONPATH."""
    prepared, shard = small_sample
    done = _virnucpro(tmp_path, ["predict", "--prepared", str(prepared), "--embeddings", str(shard),
                                 "--outdir", "out"], pythonpath=_mismatched_h5py(tmp_path))
    assert done.returncode == 2 and "which PYTHONPATH=" in done.stderr and "unset PYTHONPATH" in done.stderr, done.stderr
    assert "pip install" not in done.stderr, done.stderr


def test_the_mismatch_names_the_package_in_words_when_no_installed_file_raised_it():
    message = entry.installation_fault(ImportError("numpy.core.multiarray failed to import"))
    assert message.startswith("a compiled package was built for another numpy")
    assert "upgrade the package the traceback names" in message


def test_a_bug_report_goes_to_the_temporary_folder_the_user_named_or_nowhere(tmp_path, monkeypatch, capsys):
    """A TMPDIR that cannot be used is said, with the traceback on stderr: the report is not put in
    the system's temporary folder behind the user's back."""
    from virnucpro import crash

    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert crash.report_bug(RuntimeError("something of virnucpro's own")) == 1
    err = capsys.readouterr().err
    assert "it could not be saved" in err and f"TMPDIR={tmp_path / 'missing'}" in err, err
    assert "the traceback below" in err and "saved in" not in err, err


def test_a_bug_report_is_saved_even_when_the_temporary_folder_module_cannot_load(tmp_path, monkeypatch, capsys):
    from virnucpro import crash

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setitem(sys.modules, "virnucpro.encoders.compiled", None)
    code = crash.report_bug(RuntimeError("something of virnucpro's own"))
    assert code == 1
    saved = list(tmp_path.glob("virnucpro-crash-*.txt"))
    assert len(saved) == 1 and "something of virnucpro's own" in saved[0].read_text()
    assert str(saved[0]) in capsys.readouterr().err


def test_the_docs_list_the_installation_faults_as_usage_errors():
    """README's exit-code table lists a package that is not installed among the usage errors."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| 2 |"))
    assert "not installed" in row and "another numpy" in row
