"""Checkpoint test helpers: waiting for an embed subprocess's parts, reading its HDF5, crafting parts."""

from __future__ import annotations

import hashlib
import io
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from virnucpro import h5shard


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


def read_h5(path: Path):
    """(ids, DNABERT-S rows, ESM-2 rows, attributes) of an embedding shard."""
    with h5shard.open_h5(path) as handle:
        ids = [v.decode() for v in handle["ids"][:]]
        return ids, handle["dnabert_s"][:], handle["esm2"][:], dict(handle.attrs)


def npz_bytes(members: dict[str, np.ndarray | bytes]) -> bytes:
    """An .npz archive as np.savez lays it out; a `bytes` member is stored as given (a forged .npy)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, member in members.items():
            if not isinstance(member, bytes):
                npy = io.BytesIO()
                np.lib.format.write_array(npy, np.asanyarray(member), allow_pickle=True)
                member = npy.getvalue()
            archive.writestr(f"{name}.npy", member)
    return buffer.getvalue()


def part_name(number: int, content: bytes) -> str:
    """The file name embed gives a part with these bytes: its number and the sha256 of its bytes."""
    return f"part_{number:05d}.{hashlib.sha256(content).hexdigest()}.npz"
