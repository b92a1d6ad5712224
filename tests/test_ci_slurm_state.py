""".ci/slurm.sh refuses a state folder with a blank before it touches anything: slurm.conf cannot
hold such a path, and SLURM's own parse error named neither the variable nor the fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parents[1] / ".ci" / "slurm.sh"


@pytest.mark.parametrize("command", ["up", "down", "status"])
@pytest.mark.parametrize("name", ["st ate", "st\tate", "st#ate"])
def test_a_state_folder_with_a_blank_is_refused_naming_the_variable(tmp_path, command, name):
    """'#' starts a comment in slurm.conf: the path would be cut there."""
    state = tmp_path / name / "slurm"
    env = {**os.environ, "VIRNUCPRO_SLURM_STATE": str(state)}
    done = subprocess.run(["bash", str(SLURM), command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"VIRNUCPRO_SLURM_STATE='{state}' holds a blank or '#'" in done.stderr and "without blanks" in done.stderr
    assert not state.parent.exists()
