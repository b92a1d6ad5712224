"""Shared test fixtures: where the reference data lives and how to call the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "data" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Outputs of the original VirNucPro code and of the DNABERT-S model code (known answers)."""
    assert REFERENCE.is_dir(), f"reference data missing at {REFERENCE}"
    return REFERENCE


@pytest.fixture
def run_cli(capsys):
    """Run `virnucpro ARGS` in-process; returns (exit code, stderr text)."""
    from virnucpro.cli import main

    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return int(exit_info.value.code or 0), captured.err + captured.out
    return run
