"""Real small file systems for storage tests: a tmpfs mounted where the test says, when this machine
lets us mount one (root), else the test is skipped."""

from __future__ import annotations

import os
import shutil
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
def fuse_file_system(kind: str, tmp_path: Path) -> Iterator[Path]:
    """A fresh NTFS (ntfs-3g with windows_names: refuses `:?*` in names with EINVAL) or exFAT
    (exfat-fuse on a loop device: refuses `:` with ENOENT; case-insensitive, each spelling of a name
    its own inode) file system mounted while the block runs."""
    tools = {"ntfs": ["mkntfs", "ntfs-3g"], "exfat": ["mkfs.exfat", "mount.exfat-fuse", "losetup"]}[kind]
    if os.geteuid() != 0 or not Path("/dev/fuse").exists() or not all(map(shutil.which, tools)):
        pytest.skip(f"needs root, /dev/fuse and {', '.join(tools)}")
    image, point = tmp_path / f"{kind}.img", tmp_path / kind
    point.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(32 * 2**20)
    if kind == "ntfs":
        subprocess.run(["mkntfs", "-q", "-F", "-f", str(image)], check=True, capture_output=True)
        device, mount = None, ["ntfs-3g", "-o", "windows_names", str(image), str(point)]
    else:
        subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
        attached = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
        if attached.returncode != 0:
            pytest.skip(f"no loop device: {attached.stderr}")
        device = attached.stdout.strip()
        mount = ["mount.exfat-fuse", device, str(point)]
    try:
        mounted = subprocess.run(mount, capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount {kind} here: {mounted.stderr}")
        try:
            yield point
        finally:
            subprocess.run(["umount", "-l", str(point)], check=True)
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=True)
