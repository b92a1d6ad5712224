"""Review 17: a typer or rich put first by PYTHONPATH is named (exit 2), and the "cannot reach" hint
of a download names every role that command downloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from store_fixtures import closed_port_url  # noqa: E402

from virnucpro.errors import ExitCode, ModelsError  # noqa: E402
from virnucpro.models import download as dl  # noqa: E402
from virnucpro.models import pins as model_pins  # noqa: E402

FAILING = 'raise ImportError("boom")\n'


def _virnucpro(args: list[str], pythonpath: Path, launcher: list[str] | None = None
               ) -> subprocess.CompletedProcess:
    """A real `python -m virnucpro ARGS` (or `launcher ARGS`) with PYTHONPATH set to `pythonpath`."""
    command = (launcher or [sys.executable, "-m", "virnucpro"]) + args
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(pythonpath)))


def _run_args(tmp_path: Path) -> list[str]:
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    return ["run", str(tmp_path / "r.fa"), "--outdir", str(tmp_path / "out"), "--models", str(tmp_path / "m")]


@pytest.mark.parametrize("text", [FAILING, "", "x = (\n"], ids=["import-error", "empty", "syntax-error"])
@pytest.mark.parametrize("module", ["typer", "rich"])
@pytest.mark.parametrize("command", ["version", "run"])
def test_typer_or_rich_put_first_by_pythonpath_is_named_with_exit_2(tmp_path, module, text, command):
    """cli.py imports typer and rich as it loads, before its handler exists: a stray one on
    PYTHONPATH was a bare traceback and exit 1, where numpy, torch or h5py is named with exit 2."""
    pp = tmp_path / "pp"
    pp.mkdir()
    (pp / f"{module}.py").write_text(text)
    args = ["--version"] if command == "version" else _run_args(tmp_path)
    done = _virnucpro(args, pp)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"in {pp / (module + '.py')}, which PYTHONPATH={pp} put before virnucpro's own packages" in done.stderr
    assert "unset PYTHONPATH" in done.stderr
    assert "Traceback" not in done.stderr and "bug" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_typer_that_pythonpath_did_not_put_first_stays_a_bug_not_exit_2(tmp_path):
    """Only a module from PYTHONPATH is the user's to fix: a broken typer found elsewhere (here put
    on sys.path by the launcher) is no usage error, while PYTHONPATH names a harmless folder."""
    pp, other = tmp_path / "pp", tmp_path / "other"
    pp.mkdir()
    (pp / "harmless.py").write_text("")
    other.mkdir()
    (other / "typer.py").write_text(FAILING)
    launcher = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(other)!r}); "
                                      "from virnucpro.entry import main; main()"]
    done = _virnucpro(["--version"], pp, launcher)
    assert done.returncode == ExitCode.UNEXPECTED, done.stderr
    assert "ImportError: boom" in done.stderr
    assert "put before virnucpro's own packages" not in done.stderr


def test_an_unbroken_pythonpath_still_runs(tmp_path):
    """A PYTHONPATH folder that shadows nothing changes nothing."""
    (tmp_path / "pp").mkdir()
    (tmp_path / "pp" / "harmless.py").write_text("")
    done = _virnucpro(["--version"], tmp_path / "pp")
    assert done.returncode == 0, done.stderr


# ---- the "cannot reach" hint names every role the command downloads ------------------------

@pytest.fixture
def unreachable_sources(monkeypatch):
    """The sources of all four roles on a port where nothing listens, tried once without waiting."""
    import dataclasses

    monkeypatch.setattr(dl, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(dl, "ATTEMPTS", 1)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    base = closed_port_url()
    table = {role: dataclasses.replace(source, source=base, files=tuple(
        dataclasses.replace(spec, base=base, sha256=spec.sha256 or "0" * 64) for spec in source.files))
        for role, source in model_pins.SOURCES.items()}
    monkeypatch.setattr(model_pins, "SOURCES", table)


def _hint(error: ModelsError) -> str:
    assert error.code == ExitCode.MODELS and "cannot reach 127.0.0.1" in error.message, str(error)
    return error.hint or ""


def test_download_of_every_role_offline_hints_at_every_role(tmp_path, unreachable_sources):
    """`models download --dest DIR` offline said `... --only esm2`: following it left three roles out."""
    with pytest.raises(ModelsError) as info:
        dl.download(dest=tmp_path / "m")
    hint = _hint(info.value)
    assert f"virnucpro models download --dest {tmp_path / 'm'}`" in hint and "--only" not in hint


def test_download_of_one_role_offline_hints_at_that_role(tmp_path, unreachable_sources):
    with pytest.raises(ModelsError) as info:
        dl.download(dest=tmp_path / "m", only="classifier_500")
    assert f"virnucpro models download --dest {tmp_path / 'm'} --only classifier_500`" in _hint(info.value)


def test_run_missing_several_models_offline_hints_at_all_of_them(tmp_path, unreachable_sources, run_cli):
    """`run --models EMPTY` (three roles missing) said `--only dnabert_s`."""
    (tmp_path / "m").mkdir()
    code, err = run_cli(*_run_args(tmp_path))
    assert code == ExitCode.MODELS, err
    assert "cannot reach 127.0.0.1" in err
    assert f"virnucpro models download --dest {tmp_path / 'm'}`" in err and "--only" not in err


def test_ensure_of_one_missing_role_offline_hints_at_that_role(tmp_path, unreachable_sources):
    """One role to download (what `run` needs of a folder missing only it): `--only` it completes the folder."""
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelsError) as info:
        dl.ensure(tmp_path / "m", roles=["classifier_300"])
    assert f"virnucpro models download --dest {tmp_path / 'm'} --only classifier_300`" in _hint(info.value)
