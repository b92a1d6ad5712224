"""Real small file systems for storage tests: a tmpfs mounted where the test says, when this machine
lets us mount one (root), else the test is skipped."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def tmpfs(point: Path, size: str, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "256k"; room for `inodes` files and folders, its root one of them, when
    given) mounted at `point` (made if needed) while the block runs."""
    point.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes is not None else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True)


def remount_read_only(point: Path) -> None:
    """Make the tmpfs at `point` read-only (a shared cluster folder, a file system gone read-only)."""
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


@contextmanager
def exfat(point: Path, image: Path) -> Iterator[Path]:
    """An exFAT file system (case-insensitive, through FUSE: each spelling of a name gets its own
    inode) mounted at `point` while the block runs; skipped where exfatprogs and exfat-fuse are not
    installed or this user cannot mount."""
    point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    try:
        made = subprocess.run(["mkfs.exfat", str(image)], capture_output=True)
        loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mkfs.exfat or losetup here (packages exfatprogs, mount)")
    if made.returncode != 0 or loop.returncode != 0:
        pytest.skip("cannot make a loop device here (needs root)")
    device = loop.stdout.strip()
    try:
        mounted = subprocess.run(["mount.exfat-fuse", device, str(point)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount exFAT through FUSE here: {mounted.stderr.decode(errors='replace').strip()}")
        try:
            yield point
        finally:
            subprocess.run(["umount", "-l", str(point)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
