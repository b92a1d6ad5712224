"""Running a command that obeys file permissions, as tests run as root in CI."""

from __future__ import annotations

import os
import shutil

import pytest


def unprivileged() -> list[str]:
    """A command prefix that runs without root's permission bypass (none needed as another user);
    skips the test where root cannot drop it (no setpriv)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: file permissions are not enforced")
    caps = "-dac_override,-dac_read_search,-fowner"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
