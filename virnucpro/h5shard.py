"""The embedding shard (HDF5, CONTRACTS.md): the one place that writes and reads it.

Written under a temporary name, verified (row count, ids in order, finite values) and renamed, so a
file with the final name is always complete. Opened with HDF5 file locking off (Lustre/GPFS).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from virnucpro import __version__
from virnucpro.errors import BadInputError, NumericalError

FORMAT_VERSION = 1
ROWS_PER_WRITE = 8192


def _h5py():
    import h5py
    return h5py


def open_h5(path: Path, mode: str = "r"):
    """h5py File with HDF5 file locking off (parallel file systems reject or hang on it)."""
    return _h5py().File(path, mode, locking=False)


@dataclass(frozen=True)
class EmbeddingShardInfo:
    """The attributes predict needs to check that shards belong together."""

    path: Path
    shard_index: int
    shard_of: int
    shard_sha256: str
    chunk_size: int
    models: dict
    precision: str
    device: str
    records: int
    widths: tuple[int, int]


def write_shard(path: Path, ids: Sequence[str], rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                widths: tuple[int, int], attrs: dict) -> None:
    """Write ids and vectors (fetched block by block from `rows(start, stop)`) atomically to `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_rows(tmp, ids, rows, widths, attrs)
        verify_shard(tmp, ids)
    except BaseException:
        tmp.unlink(missing_ok=True)  # an interrupted or failed write leaves nothing that looks like output
        raise
    os.replace(tmp, path)


def _write_rows(tmp: Path, ids: Sequence[str], rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                widths: tuple[int, int], attrs: dict) -> None:
    h5py = _h5py()
    n = len(ids)
    with open_h5(tmp, "w") as handle:
        handle.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        dnabert = handle.create_dataset("dnabert_s", shape=(n, widths[0]), dtype="float32")
        esm = handle.create_dataset("esm2", shape=(n, widths[1]), dtype="float32")
        for start in range(0, n, ROWS_PER_WRITE):
            stop = min(n, start + ROWS_PER_WRITE)
            nuc, prot = rows(start, stop)
            dnabert[start:stop] = nuc
            esm[start:stop] = prot
        handle.attrs.update({
            "format_version": FORMAT_VERSION,
            "virnucpro_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{key: (json.dumps(value) if isinstance(value, dict) else value) for key, value in attrs.items()},
        })


def verify_shard(path: Path, ids: Sequence[str]) -> None:
    """Row count, ids in order and finite values, read back from disk."""
    with open_h5(path) as handle:
        stored = [value.decode("utf-8") if isinstance(value, bytes) else value for value in handle["ids"][:]]
        if stored != list(ids):
            raise NumericalError(f"{path}: ids read back differ from the shard's records",
                                 "the disk or file system corrupted the write; rerun")
        for name in ("dnabert_s", "esm2"):
            data = handle[name]
            if data.shape[0] != len(ids):
                raise NumericalError(f"{path}: {name} has {data.shape[0]} rows for {len(ids)} records",
                                     "rerun embed")
            for start in range(0, len(ids), ROWS_PER_WRITE):
                block = data[start:start + ROWS_PER_WRITE]
                if not np.isfinite(block).all():
                    row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise NumericalError(f"{path}: non-finite {name} vector for record {ids[row]}",
                                         "rerun embed with --precision fp32")


def read_info(path: Path) -> EmbeddingShardInfo:
    """The shard's attributes; a file that is not our HDF5 shard is a bad input naming it."""
    try:
        with open_h5(path) as handle:
            attrs = dict(handle.attrs)
            records = handle["ids"].shape[0]
            widths = (handle["dnabert_s"].shape[1], handle["esm2"].shape[1])
    except FileNotFoundError:
        raise BadInputError(f"embedding shard not found: {path}", "check the path") from None
    except (OSError, KeyError) as exc:
        raise BadInputError(f"{path} is not a virnucpro embedding shard ({exc})",
                            "give the .h5 files written by `virnucpro embed`") from None
    try:
        return EmbeddingShardInfo(
            path=Path(path), shard_index=int(attrs["shard_index"]), shard_of=int(attrs["shard_of"]),
            shard_sha256=str(attrs["shard_sha256"]), chunk_size=int(attrs["chunk_size"]),
            models=json.loads(attrs["models"]), precision=str(attrs["precision"]),
            device=str(attrs["device"]), records=records, widths=widths)
    except KeyError as exc:
        raise BadInputError(f"{path} lacks the attribute {exc} of a virnucpro embedding shard",
                            "rerun `virnucpro embed` for this shard") from None


def iter_rows(path: Path, block: int = ROWS_PER_WRITE) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, features) blocks in shard order; features = DNABERT-S then ESM-2, as the original merges."""
    with open_h5(path) as handle:
        n = handle["ids"].shape[0]
        for start in range(0, n, block):
            ids = [v.decode("utf-8") if isinstance(v, bytes) else v for v in handle["ids"][start:start + block]]
            features = np.concatenate([handle["dnabert_s"][start:start + block],
                                       handle["esm2"][start:start + block]], axis=1)
            yield ids, features
