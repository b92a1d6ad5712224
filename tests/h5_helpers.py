"""Editing embedding shards by hand in tests, behind the seal `embed` writes."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from virnucpro import h5shard


@contextmanager
def edited_shard(path: Path, mode: str = "a"):
    """An embedding shard opened with h5py to edit ("a") or to write by hand ("w", with the user block
    the seal needs), sealed again afterwards: the edit then reaches the checks behind the seal, as an
    edit by a program that reseals would."""
    import h5py

    options = {"userblock_size": h5shard.SEAL_BYTES} if mode == "w" else {}
    with h5py.File(path, mode, locking=False, **options) as handle:
        yield handle
    h5shard.seal_file(path)
