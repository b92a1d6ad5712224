"""Real small file systems for storage tests: a tmpfs mounted where the test says, when this machine
lets us mount one (root), else the test is skipped."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def tmpfs(point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "256k") mounted at `point` (made if needed) while the block runs."""
    point.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True)


def remount_read_only(point: Path) -> None:
    """Make the tmpfs at `point` read-only (a shared cluster folder, a file system gone read-only)."""
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
