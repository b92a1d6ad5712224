"""Waiting for an embed or run subprocess to reach its checkpoints, for kill-and-resume tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest


def wait_for_parts(folder: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Return once `count` checkpoint parts exist under `folder`; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(folder.glob("*/part_*.npz"))) >= count:
            return
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"the process ended (exit {process.returncode}) before {count} checkpoint parts "
                        f"existed: give it more windows\n{stderr}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no {count} checkpoint parts appeared in {timeout:.0f} s")
