"""The embedding shard (HDF5, CONTRACTS.md): the one place that writes and reads it.

Written under a temporary name, verified (row count, ids in order, finite values) and renamed, so a
file with the final name is always complete. Opened with HDF5 file locking off (Lustre/GPFS).
HDF5 writes through a Python file object that keeps the first storage error (disk full, quota, I/O)
to itself: the library, whose error paths on a failed write or close can crash the process, only
ever sees writes that succeed, and the writer reports the error (exit 10) after a clean close.
The file is sealed: its first 512 bytes (an HDF5 user block, which HDF5 tools skip) hold the sha256
and size of the rest, checked before the HDF5 library parses any of it, since some damaged headers
crash that library outright (a segmentation fault no Python code can report).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from virnucpro import __version__
from virnucpro.errors import (shell_word, BadInputError, InconsistentInputsError, NumericalError, OutputWriteError, VirnucproError,
                              access_hint, denied_folder, folder_refused, link_loop, name_too_long, open_file_limit,
                              note_inodes, other_format,
                              stop_signals_deferred, storage_error, storage_failure, storage_hint,
                              storage_read_failure)
from virnucpro.outdir import new_temporary_file, rename_new
from virnucpro.prepared import NOT_REGULAR, SHA256_TEXT, SHARD_MAGIC, open_regular, shown

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of an HDF5 file without a user block
FORMAT_VERSION = 3  # 2: the sha256 of each vector dataset is stored and checked by every full read; 3: sealed
ROWS_PER_WRITE = 8192
VECTORS = ("dnabert_s", "esm2")
CHECKSUMS = tuple(f"sha256_{name}" for name in VECTORS)  # of the float32 little-endian rows, in order
ATTRIBUTES = ("format_version", "virnucpro_version", "shard_index", "shard_of", "shard_sha256", "chunk_size",
              "models", "precision", "device", "created", *CHECKSUMS)
PRECISIONS = ("fp32", "fp16", "bf16")  # what `embed --precision` resolves to
DEVICES = ("cpu", "cuda")  # what `embed --device` resolves to
# an entry of the attribute `settings` (embed's `MadeBy`): a value that batched some of the vectors
SETTING_ENTRY = re.compile(r"(?:(?:dnabert_s|esm2):token_budget|checkpoint_every|threads)=[1-9][0-9]*"
                           r"|(?:torch|cpu_isa|gpu)=[0-9A-Za-z._+-]{1,80}|unknown")
UNKNOWN_DEVICE = "unknown"  # also the settings entry of vectors computed by a virnucpro that did not record them  # vectors of a checkpoint part that does not record its device (an older virnucpro)
# what h5py raises on a damaged file, depending on where the damage is (a header, an attribute, a name)
DAMAGED = (OSError, RuntimeError, TypeError, ValueError, KeyError)
REEMBED_HINT = "the file was edited or damaged: rerun `virnucpro embed` for this shard"
# a sealed file whose bytes changed since: embed does not replace it (it may hold a user's additions)
CHANGED_HINT = ("any rewrite counts, the vectors unchanged or not (h5py in append mode, h5repack, an attribute "
                "added): give the file as embed wrote it (a byte copy: cp, rsync) and keep your own data in a file "
                "of its own; if it was damaged, move it away and rerun `virnucpro embed` for this shard")
# embed replaces only a file that starts with its seal (`is_sealed_shard`): one without it must go first
UNSEALED_HINT = ("if it is an embedding file cut short (or one of an older virnucpro), delete it, then rerun "
                 "`virnucpro embed` for this shard (embed replaces only files that start with its seal); "
                 "otherwise give the .h5 files written by `virnucpro embed`")


def _h5py():
    import h5py
    return h5py


@dataclass(frozen=True)
class Seal:
    """A shard's seal as checked, the identity of the file then (device, inode, size, modification and
    change times), and the vector checksums it held (set by `read_info`): a later open that finds the
    same identity need not hash the file again, and the vectors it reads are checked against those
    checksums, not against what the file says by then."""

    block: bytes
    identity: tuple[int, ...]
    vectors: tuple[tuple[str, str], ...] = ()


@contextmanager
def open_h5(path: Path, seal: Seal | None = None):
    """A shard opened for reading once its seal holds (see `_sealed`)."""
    with _sealed(path, seal) as (handle, _, _):
        yield handle


@contextmanager
def _sealed(path: Path, seal: Seal | None = None):
    """(HDF5 handle, Seal) of a shard whose seal holds. HDF5 reads the very file object whose seal was
    checked, so a file put in its place meanwhile is never parsed; with `seal` (from `read_info`) the
    file must also be the one read then, not another sealed file renamed over it."""
    with _open_regular(path) as raw:
        found = _rechecked(path, raw, seal)
        if seal is not None and found.block != seal.block:
            raise InconsistentInputsError(f"{path} was replaced by another file while virnucpro read it",
                                          "rerun once nothing else writes that file")
        raw.seek(0)
        with _h5py().File(raw, "r") as handle:
            yield handle, found, raw


def _rechecked(path: Path, raw, seal: Seal | None) -> Seal:
    """The open file's Seal: `seal` itself when the file looks unwritten since it was taken (same inode,
    size and times), else hashed again. A write through a shared memory map (or on a file system with
    coarse times) may leave the times as they were: what matters, the vectors, is then still checked
    against the checksums the hashed file held (`iter_rows`), and the ids against the prepare shard."""
    identity = _identity(raw)
    if seal is not None and identity == seal.identity and raw.read(SEAL_BYTES) == seal.block:
        return seal
    return Seal(_checked_seal(path, raw), identity)


def _identity(raw) -> tuple[int, ...]:
    found = os.fstat(raw.fileno())
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns


SEAL_BYTES = 512  # the HDF5 user block: the smallest HDF5 allows
SEAL_MAGIC = b"virnucpro embedding shard seal 1\n"
READ_BYTES = 1 << 20


def seal_file(path: Path) -> None:
    """Write the seal of a shard file whose HDF5 part is complete: the sha256 and size of the bytes
    after the user block, in the user block."""
    with open(path, "r+b") as handle:
        block = _seal_block(handle)
        handle.seek(0)
        handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())


def is_sealed_shard(path: Path) -> bool:
    """Whether `path` starts with the seal `embed` writes (intact or not): a file virnucpro wrote."""
    try:
        with _open_regular(path) as handle:
            return handle.read(len(SEAL_MAGIC)) == SEAL_MAGIC
    except (OSError, BadInputError):
        return False


def seal_holds(path: Path) -> bool:
    """Whether a sealed file's bytes are still exactly those `embed` sealed (False: edited or damaged)."""
    try:
        check_seal(path)
    except InconsistentInputsError:
        return False
    return True


def check_seal(path: Path) -> bytes:
    """The file's bytes are exactly those `embed` sealed (exit 5 otherwise); returns the seal."""
    with _open_regular(path) as handle:
        return _checked_seal(path, handle)


def _checked_seal(path: Path, handle) -> bytes:
    """The seal of the open file once every byte after it matches, read block by block (exit 5)."""
    handle.seek(0)
    block = handle.read(SEAL_BYTES)
    if not block.startswith(SEAL_MAGIC):
        _refuse_prepare_shard(path, block)
        _refuse_other_format(path, block)
        what = "it is empty" if not block else ("it does not start with the seal virnucpro embed writes "
                                                "(cut short, or written by another program or an older "
                                                "virnucpro)")
        raise InconsistentInputsError(f"{path} is not a valid virnucpro embedding shard: {what}", UNSEALED_HINT)
    if block != _seal_block(handle):
        raise InconsistentInputsError(f"{path} changed after embed wrote it (its sha256 or size differs from "
                                      "the seal embed wrote in its first bytes)", CHANGED_HINT)
    return block


def _refuse_other_format(path: Path, head: bytes) -> None:
    """Exit 5 naming the format of an embedding file another virnucpro version wrote: a seal of another
    version (a newer virnucpro's), or an HDF5 file from its first byte (before files were sealed,
    format 3) whose version attribute is not this one's. A file that does not read so is left to the
    caller's refusal (cut short, or not ours)."""
    if head.startswith(SEAL_MAGIC[:SEAL_MAGIC.rindex(b" ") + 1]):
        end = head.find(b"\n")  # none: no whole seal line (cut short), the caller's refusal
        version = head[SEAL_MAGIC.rindex(b" ") + 1:end] if end >= 0 else b""
        reads = int(SEAL_MAGIC.split()[-1])
        if version.isdigit() and version.isascii() and int(version) != reads:
            raise other_format(path, "seal ", int(version), reads, "rerun `virnucpro embed`")
    if head.startswith(HDF5_SIGNATURE):
        found = _unsealed_format_version(path)
        if found is not None and found != FORMAT_VERSION:
            raise other_format(path, "", found, FORMAT_VERSION, "rerun `virnucpro embed`")


def _unsealed_format_version(path: Path) -> int | None:
    """The whole-number format_version attribute of an unsealed HDF5 file, or None."""
    try:
        with _h5py().File(path, "r") as handle:
            attribute = handle.attrs.get_id("format_version") if "format_version" in handle.attrs else None
            if attribute is None or attribute.shape != () or attribute.get_storage_size() > 8:
                return None  # no whole number: never read (an array of strings naming one long one cost gigabytes)
            found = handle.attrs["format_version"]
    except Exception:  # noqa: BLE001 - damaged or not ours: the caller's refusal says so
        return None
    return int(found) if isinstance(found, (int, np.integer)) and not isinstance(found, bool) else None


def _refuse_prepare_shard(path: Path, head: bytes) -> None:
    """Exit 5 naming a prepare shard given where its embedding belongs (never the hint to delete it)."""
    if head.startswith(SHARD_MAGIC.encode()):
        raise InconsistentInputsError(f"{path} is a shard written by `virnucpro prepare`, not its embedding",
                                      "give the .h5 file `virnucpro embed` wrote from it")


def _open_regular(path: Path):
    """`path` opened for reading when it is a regular file (`prepared.open_regular`); a FIFO or device
    is exit 3 at once (opening a FIFO without a writer would wait forever, and a pipe cannot be read
    twice)."""
    try:
        return open_regular(path)
    except OSError as exc:
        if exc.strerror != NOT_REGULAR:
            raise
    raise BadInputError(f"embedding shard {path} is not a regular file (a pipe, FIFO or device)",
                        "give the .h5 file written by `virnucpro embed`")


def _seal_block(handle) -> bytes:
    """The user block that seals the open file as it is now: the sha256 and size of everything after
    the user block, zero-padded."""
    handle.seek(SEAL_BYTES)
    digest, size = hashlib.sha256(), 0
    for data in iter(lambda: handle.read(READ_BYTES), b""):
        digest.update(data)
        size += len(data)
    return (SEAL_MAGIC + f"sha256 {digest.hexdigest()}\nbytes {size}\n".encode()).ljust(SEAL_BYTES, b"\0")


REFERENCE_ATTENTION = "dnabert_s:reference,esm2:reference"  # files written before the attribute existed


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
    tiny: bool = False
    attention: str = REFERENCE_ATTENTION  # 'role:path,...': the paths the writing process computed with
    settings: tuple[str, ...] = ()  # the settings that batched its vectors ("unknown": an older virnucpro wrote it)
    seal: Seal | None = None  # the file's seal when read: later reads must find the same file
    virnucpro_version: str = ""  # the virnucpro that wrote it


FileState = tuple[int, int, int, int]  # device, inode, size, modification time (ns)


def file_state(path: Path) -> FileState | None:
    """What tells the file at `path` now from another, read without opening it (device, inode, size,
    modification time; of a link itself, never its target); None when nothing is there."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns


def write_shard(path: Path, ids: Sequence[str], rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                widths: tuple[int, int], attrs: dict, on_temporary: Callable[[Path], None] = lambda tmp: None,
                replacing: FileState | None = None) -> None:
    """Write ids and vectors (fetched block by block from `rows(start, stop)`) atomically to `path`;
    a storage failure is exit 10 naming `path`, with the temporary file removed. `on_temporary` is
    told the temporary file's name first (the lock of `path` records it, for a kill). `replacing`:
    the `file_state` of the shard the caller found at `path` and may replace (None: nothing was
    there); any other file there by the end is never replaced (exit 3, see `_move_into_place`). The
    clean-up knows the temporary file from the moment it exists: a stop signal is held back until its
    name is recorded (`stop_signals_deferred`)."""
    temporary = _Temporary()
    try:
        with stop_signals_deferred():
            raw, temporary.path = _new_temporary(path)
        on_temporary(temporary.path)
        _write_through_file(raw, path, lambda handle, failed: _write_rows(handle, ids, rows, widths, attrs, failed))
        _seal_written(temporary.path, path)
        verify_shard(temporary.path, ids, written=path)
        _move_into_place(temporary.path, path, replacing)
    except BaseException:
        temporary.remove()  # an interrupted, failed or refused write leaves no output-like file
        raise


@dataclass
class _Temporary:
    """The temporary file a shard is written to, once it exists (None before)."""

    path: Path | None = None

    def remove(self) -> None:
        """Delete it, if it was made (a write that failed or was stopped leaves nothing)."""
        if self.path is not None:
            with suppress(OSError):
                self.path.unlink(missing_ok=True)


def _move_into_place(tmp: Path, path: Path, replacing: FileState | None) -> None:
    """Rename the finished `tmp` to `path`, looking again at what is there: the caller checked `path`
    when it started, maybe hours ago. The shard it found (`replacing`) is replaced while it is still
    that file, still starting with the seal (not hashed again: a shard is gigabytes); a free name is
    taken with a rename that refuses an existing target (`rename_new`); a file that appeared or took
    the shard's place meanwhile is exit 3, never replaced. What remains: a file put in the shard's
    place between that look and `os.replace` (microseconds) would be replaced."""
    now = file_state(path)
    if now is not None and now == replacing and is_sealed_shard(path):
        os.replace(tmp, path)
    elif now is not None:
        raise _written_meanwhile(path, "changed" if replacing is not None else "appeared")
    else:
        _take_free_name(tmp, path)  # also when the shard found was deleted meanwhile: nothing is lost


def _take_free_name(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`, which nothing may hold (a file that appears there now: exit 3)."""
    try:
        rename_new(tmp, path)
    except FileExistsError:
        raise _written_meanwhile(path, "appeared") from None


def _written_meanwhile(path: Path, what: str) -> BadInputError:
    """Exit 3 for a file that `what` ('appeared', 'changed') at `path` while virnucpro wrote its shard."""
    found = ("it is no longer the virnucpro embedding file found there when embed started" if what == "changed"
             else "at the name of the embedding file it was about to write")
    return BadInputError(f"{path} {what} while virnucpro ran ({found}): virnucpro never replaces files it did not "
                         "write", "move it away, then rerun (the embedding work is kept in checkpoints: the rerun "
                         "only writes the file)")


class _StorageGuard:
    """The file object HDF5 writes through. The first OSError is kept in `error` and the file goes on
    in memory from there (a copy of what reached the disk, then what HDF5 writes until the caller stops
    and closes): HDF5 reads back what it wrote, so writes cannot simply be dropped, and it must never
    see a failure. The caller then deletes the file."""

    def __init__(self, raw):
        self.raw = raw
        self.target = raw
        self.error: OSError | None = None

    def _call(self, operation: Callable):
        if self.error is None:
            position = self.raw.tell()
            try:
                return operation(self.raw)
            except OSError as exc:
                self._continue_in_memory(exc, position)
        return operation(self.target)

    def _continue_in_memory(self, exc: OSError, position: int) -> None:
        self.error = exc
        self.target = io.BytesIO()
        with suppress(OSError):
            self.raw.seek(0)
            shutil.copyfileobj(self.raw, self.target)
        self.target.seek(position)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        return self._call(lambda handle: _write_all(handle, view))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._call(lambda handle: handle.seek(offset, whence))

    def tell(self) -> int:
        return self._call(lambda handle: handle.tell())

    def read(self, size: int = -1) -> bytes:
        return self._call(lambda handle: handle.read(size))

    def truncate(self, size: int | None = None) -> int:
        return self._call(lambda handle: handle.truncate(size))

    def flush(self) -> None:
        self._call(lambda handle: handle.flush())

    def close(self) -> None:
        """Close the disk file (an error its close reports counts too); the memory copy is dropped."""
        self._call(lambda handle: handle.close())
        with suppress(OSError):
            self.raw.close()


def _write_all(handle, view: memoryview) -> int:
    """Write the whole buffer (an unbuffered file may write only part of it per call)."""
    done = 0
    while done < len(view):
        done += handle.write(view[done:])
    return done


def _new_temporary(path: Path) -> tuple[io.FileIO, Path]:
    """A new file beside `path` (`.NAME.XXXXXXXX.tmp`), created exclusively: an existing file or a
    symbolic link of that name is never opened, so nothing we did not write is overwritten."""
    try:
        fd, name = new_temporary_file(path)
    except OSError as exc:
        raise _write_failed(path, exc) from None
    return io.FileIO(fd, "wb+"), name  # the FileIO owns the file from here: closed however the rest fails


def _seal_written(tmp: Path, path: Path) -> None:
    """Seal the temporary file; a storage failure on the way is exit 10 naming `path`."""
    try:
        seal_file(tmp)
    except OSError as exc:
        raise _write_failed(path, exc) from None


def _write_through_file(raw: io.FileIO, path: Path, fill: Callable) -> None:
    """Write an HDF5 file through `raw` and `fill(handle, failed)` it (`failed()` tells it that a write
    has failed, so it can stop early); any storage error on the way is exit 10 naming `path`."""
    guard = _StorageGuard(raw)
    try:
        with _h5py().File(guard, "w", userblock_size=SEAL_BYTES) as handle:
            fill(handle, lambda: guard.error is not None)
    except Exception:
        if guard.error is None:
            raise  # not the storage: a fault of the data or of this code
    finally:
        guard.close()
    if guard.error is not None:
        raise _write_failed(path, guard.error) from None


def _write_failed(path: Path, exc: OSError) -> VirnucproError:
    """Exit 10 naming `path`, with the fix for what failed (`storage_hint`: a file-size limit, EFBIG, is
    raised, as prepare and predict say; a full disk is freed ...); a name too long is exit 3."""
    if name_too_long(exc):
        return storage_failure(exc, path)
    note_inodes(exc, path)
    meaning = storage_error(exc) or exc.strerror or str(exc)
    return OutputWriteError(f"cannot write {path}: {meaning}",
                            f"{storage_hint(exc)}, then rerun (finished embedding work is kept in checkpoints)")


def _write_rows(handle, ids: Sequence[str], rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                widths: tuple[int, int], attrs: dict, failed: Callable[[], bool]) -> None:
    """The shard's datasets and attributes; once a write has failed the rest of the vectors are skipped
    (the file is deleted), so they do not pile up in the in-memory copy."""
    h5py = _h5py()
    n = len(ids)
    handle.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
    dnabert = handle.create_dataset("dnabert_s", shape=(n, widths[0]), dtype="float32")
    esm = handle.create_dataset("esm2", shape=(n, widths[1]), dtype="float32")
    checksums = VectorChecksums()
    for start in range(0, n, ROWS_PER_WRITE):
        if failed():
            return
        stop = min(n, start + ROWS_PER_WRITE)
        nuc, prot = rows(start, stop)
        dnabert[start:stop] = nuc
        esm[start:stop] = prot
        checksums.add(nuc, prot)
    handle.attrs.update({
        **checksums.attributes(),
        "format_version": FORMAT_VERSION,
        "virnucpro_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{key: (json.dumps(value) if isinstance(value, dict) else value) for key, value in attrs.items()},
    })


def verify_shard(path: Path, ids: Sequence[str], written: Path | None = None) -> None:
    """Row count, ids in order and finite values, read back from disk. What differs from what was
    written is the storage's fault, exit 10 naming `written` (the output `path` becomes, default
    `path`); non-finite vectors are exit 9."""
    with _reading(path), open_h5(path) as handle:
        stored = _decoded(_dataset(path, handle, "ids")[:])
        if stored != list(ids):
            raise _corrupted_write(written or path, "ids read back differ from the shard's records")
        for name in VECTORS:
            data, digest = _dataset(path, handle, name), hashlib.sha256()
            if data.shape[0] != len(ids):
                raise _corrupted_write(written or path, f"{name} has {data.shape[0]} rows read back for "
                                                        f"{len(ids)} records written")
            for start in range(0, len(ids), ROWS_PER_WRITE):
                block = data[start:start + ROWS_PER_WRITE]
                if not np.isfinite(block).all():
                    row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise NumericalError(f"{written or path}: non-finite {name} vector for record {ids[row]}",
                                         "rerun embed with --precision fp32")
                digest.update(_row_bytes(block))
            if digest.hexdigest() != _text(path, dict(handle.attrs), f"sha256_{name}"):
                raise _corrupted_write(written or path, f"{name} vectors read back differ from those written")


def _corrupted_write(path: Path, what: str) -> OutputWriteError:
    """A file that does not read back as written: an I/O fault of the storage (exit 10), naming it."""
    return OutputWriteError(f"cannot write {path}: {what} (the disk or file system corrupted the write)",
                            "check the storage for I/O errors or choose another output location, then rerun")


def _folder_hint(path: Path) -> str:
    """What to give instead of a folder among the embedding files: embed's checkpoint folder
    (`<out>.ckpt`) holds none of them."""
    if path.name.endswith(".ckpt"):
        return ("it is embed's checkpoint folder, which holds no embedding file: leave it out "
                f"(e.g. --embeddings {shell_word(str(path.parent))}/*.h5)")
    return f"give the files in it: {shell_word(str(path))}/*.h5"


def shard_files(paths: Sequence[Path]) -> list[Path]:
    """The embedding files given: a file as it is, a folder as the `.h5` files directly in it in name
    order (hidden ones left out: embed's temporary files). A folder passes a sample of any number of
    shards, where a glob passes the system's limit on a command line (about 50,000 names)."""
    files: list[Path] = []
    for path in map(Path, paths):
        try:
            expand = path.is_dir() and not path.name.endswith(".ckpt")  # embed's checkpoint folder: refused
            found = sorted(p for p in path.iterdir() if _named_as_shard(p)) if expand else [path]
        except PermissionError:
            if denied_folder(path) is None and os.path.isdir(path):  # the folder itself: listed, then entered
                raise BadInputError(f"cannot read embedding folder {path}: permission denied",
                                    access_hint(path, "rx", "make the folder readable and searchable")) from None
            raise _permission_denied(path) from None
        if not found:
            raise BadInputError(f"embedding folder {path} holds no .h5 file",
                                "give the folder `virnucpro embed --out` wrote the sample's shards into")
        files += found
    return files


def _named_as_shard(path: Path) -> bool:
    """An entry of a folder of shards that is read as one: a visible `.h5` (any case) that is no folder
    (a folder is not looked into, as with a glob)."""
    return path.suffix.lower() == ".h5" and not path.name.startswith(".") and not path.is_dir()


def read_info(path: Path) -> EmbeddingShardInfo:
    """The shard's attributes after checking its layout; a file that is not a sound shard is exit 5."""
    path = Path(path)
    _h5py()  # outside the check: h5py failing to load (built for another numpy) is no fault of the file
    try:
        if path.is_dir():  # raises PermissionError when a folder on the way cannot be entered
            raise BadInputError(f"embedding shard {path} is a directory", _folder_hint(path))
        with _sealed(path) as (handle, seal, raw):
            records, widths = _check_datasets(path, handle)
            _check_id_lengths(path, handle["ids"], raw)
            attrs = _read_attributes(path, handle)
    except FileNotFoundError:
        raise BadInputError(f"embedding shard not found: {path}", "check the path") from None
    except PermissionError:  # the file's mode, not its content: bad input like an unreadable FASTA
        raise _permission_denied(path) from None
    except DAMAGED as exc:
        _refuse_storage_failure(path, exc)
        if getattr(exc, "errno", None) == errno.ELOOP:
            raise link_loop(path, "embedding shard") from None
        if getattr(exc, "errno", None) == errno.ENOTDIR:  # the path given is wrong, not the file
            raise BadInputError(f"embedding shard {path} cannot be reached: a part of its path is a file, not a "
                                "folder", "check the path") from None
        if open_file_limit(exc) or getattr(exc, "errno", None) == errno.ENAMETOOLONG:
            raise  # no fault of the file: the CLI names the limit or the name
        raise InconsistentInputsError(f"{path} cannot be read as an HDF5 embedding shard ({exc})",
                                      "give the .h5 files written by `virnucpro embed`") from None
    info = _shard_info(path, attrs, records, widths)
    return replace(info, seal=replace(seal, vectors=tuple((name, _text(path, attrs, name)) for name in CHECKSUMS)))


def _permission_denied(path: Path) -> BadInputError:
    """Exit 3 for an embedding shard this user may not read: the file's own mode, or a folder on its
    path that cannot be entered (then the fix is on that folder, not the file)."""
    folder = denied_folder(path)
    if folder is not None:
        return folder_refused(path, folder, BadInputError, "embedding shard ")
    return BadInputError(f"cannot read embedding shard {path}: permission denied", access_hint(path, "r"))


def malformed(path: Path, what: str) -> InconsistentInputsError:
    """An embedding shard that is not as `embed` writes it (exit 5), naming the file and the fault."""
    return InconsistentInputsError(f"{path} is not a valid virnucpro embedding shard: {what}", REEMBED_HINT)


def _dataset(path: Path, handle, name: str):
    """The dataset `/name`, stored in this file: a soft or external link (which could lead to another
    file) is refused, as embed writes none."""
    h5py = _h5py()
    link = handle.get(name, getlink=True)
    if link is not None and not isinstance(link, h5py.HardLink):
        raise malformed(path, f"/{name} is a {type(link).__name__} (to another object or file), which embed "
                              "never writes")
    item = handle.get(name)
    if not isinstance(item, h5py.Dataset):
        raise malformed(path, f"/{name} is {'missing' if item is None else 'not a dataset'}")
    return item


def _kind(data) -> str:
    text = "strings" if _h5py().check_string_dtype(data.dtype) else str(data.dtype)
    return f"{text} of shape {data.shape}"


MAX_WIDTH = 8192  # a vector width far above any model's (DNABERT-S 768, ESM-2 3B 2560): bounds a block's memory
MAX_ID_BYTES = 1024  # a fixed-length id string (embed writes variable-length ones, stored in the file)
VLEN_FILE_BYTES = 16  # a variable-length element as HDF5 stores it in the dataset (length + heap id)
ATTRIBUTE_MAX_BYTES = 1 << 20  # the attributes embed writes are a few hundred bytes


def _check_datasets(path: Path, handle) -> tuple[int, tuple[int, int]]:
    """Rows and widths, once /ids is 1-D text and each vector set is (rows, width) float32, every
    one stored as embed stores it (see `_check_storage`)."""
    ids = _dataset(path, handle, "ids")
    text = _h5py().check_string_dtype(ids.dtype)
    if ids.ndim != 1 or text is None:
        raise malformed(path, f"/ids must be a 1-D array of strings, found {_kind(ids)}")
    if text.length is not None and text.length > MAX_ID_BYTES:
        raise malformed(path, f"/ids holds strings of {text.length:,} bytes each (at most {MAX_ID_BYTES:,})")
    _check_storage(path, ids, "ids", VLEN_FILE_BYTES if text.length is None else text.length)
    widths = []
    for name in VECTORS:
        data = _dataset(path, handle, name)
        if data.ndim != 2 or data.dtype != np.float32 or not 0 < data.shape[1] <= MAX_WIDTH:
            raise malformed(path, f"/{name} must be a 2-D float32 array of 1 to {MAX_WIDTH} columns, "
                                  f"found {_kind(data)}")
        if data.shape[0] != ids.shape[0]:
            raise malformed(path, f"/{name} has {data.shape[0]:,} rows but /ids has {ids.shape[0]:,}")
        _check_storage(path, data, name, 4 * data.shape[1])
        widths.append(data.shape[1])
    return ids.shape[0], (widths[0], widths[1])


VLEN_ROW = np.dtype([("length", "<u4"), ("collection", "<u8"), ("index", "<u4")])  # a stored /ids row
VLEN_ID_MAX_BYTES = (1 << 18) + 64  # an ORF id prepare writes: a header's id (64 Ki characters) and its suffix
VLEN_ROWS_PER_READ = 1 << 16


def _check_id_lengths(path: Path, ids, raw) -> None:
    """Each variable-length id no longer than prepare writes one, and all of them together no more than
    the file holds (embed stores each id once): 3,000 rows naming one 1 MB string made a 2 MB shard
    cost gigabytes once read. The lengths come from the stored rows themselves, before any id is read."""
    if _h5py().check_string_dtype(ids.dtype).length is not None or not ids.shape[0]:
        return  # fixed-length ids are bounded by MAX_ID_BYTES
    total, size = 0, os.fstat(raw.fileno()).st_size
    raw.seek(ids.id.get_offset())
    for start in range(0, ids.shape[0], VLEN_ROWS_PER_READ):
        wanted = min(VLEN_ROWS_PER_READ, ids.shape[0] - start) * VLEN_ROW.itemsize
        block = raw.read(wanted)
        if len(block) != wanted:
            raise malformed(path, "/ids is cut short")
        lengths = np.frombuffer(block, dtype=VLEN_ROW)["length"].astype(np.int64)
        total += int(lengths.sum())
        if int(lengths.max()) > VLEN_ID_MAX_BYTES or total > size:
            raise malformed(path, f"/ids names strings longer than the file could hold once each (an id of "
                                  f"{int(lengths.max()):,} bytes; {total:,} bytes by row {start + len(lengths):,} "
                                  f"of a {size:,}-byte file): embed never writes that")


def _check_storage(path: Path, data, name: str, row_bytes: int) -> None:
    """The dataset's rows are all stored in this file, contiguously, as embed writes them: chunked,
    compressed, compact, external and virtual storage are refused, and so are rows declared but not
    stored (read as fill values, they could make a few kB cost gigabytes of memory or hours)."""
    plist = data.id.get_create_plist()
    if data.is_virtual or plist.get_external_count() or plist.get_layout() != _h5py().h5d.CONTIGUOUS:
        raise malformed(path, f"/{name} is stored {_layout(data, plist)}, which embed never writes")
    declared, stored = data.shape[0] * row_bytes, data.id.get_storage_size()
    if stored != declared:
        raise malformed(path, f"/{name} declares {data.shape[0]:,} rows ({declared:,} bytes) but stores "
                              f"{stored:,} bytes")


def _layout(data, plist) -> str:
    """How a dataset is stored, for a message."""
    if data.is_virtual:
        return "as a virtual dataset (its rows in other files)"
    if plist.get_external_count():
        return "in external raw files"
    return {0: "compact", 2: "in chunks", 3: "as a virtual dataset"}.get(plist.get_layout(), "in an unknown layout")


def _read_attributes(path: Path, handle) -> dict:
    try:
        _check_attribute_sizes(path, handle)
        attrs = _attributes_one_by_one(path, handle)
    except DAMAGED as exc:
        _refuse_storage_failure(path, exc)
        if open_file_limit(exc):
            raise
        raise malformed(path, f"its attributes cannot be read ({exc})") from None
    missing = [name for name in ATTRIBUTES if name not in attrs]
    if missing:
        raise malformed(path, f"the attribute(s) {', '.join(missing)} are missing")
    return attrs


def _check_attribute_sizes(path: Path, handle) -> None:
    """Every attribute is one small value, as embed writes them, before any is read (its data is
    allocated whole; an array of strings all naming one long string cost gigabytes, counted 16 bytes each)."""
    for name in handle.attrs:
        if handle.attrs.get_id(name).shape != ():
            raise malformed(path, f"attribute {shown(name)} is an array of shape {handle.attrs.get_id(name).shape} "
                                  "(embed writes single values)")
        size = handle.attrs.get_id(name).get_storage_size()
        if size > ATTRIBUTE_MAX_BYTES:
            raise malformed(path, f"attribute {shown(name)} holds {size:,} bytes (embed writes at most "
                                  f"{ATTRIBUTE_MAX_BYTES:,})")


def _attributes_one_by_one(path: Path, handle) -> dict:
    """Every attribute read, refused at once when they come to more than embed ever writes: a
    variable-length string counts 16 bytes before it is read, and many attributes naming one long
    string in the file made a 30 MB shard cost gigabytes once all were read."""
    attrs, total = {}, 0
    for name in handle.attrs:
        value = handle.attrs[name]
        total += len(value) if isinstance(value, (str, bytes)) else getattr(value, "nbytes", 0)
        if total > ATTRIBUTE_MAX_BYTES:
            raise malformed(path, f"its attributes hold more than {ATTRIBUTE_MAX_BYTES:,} bytes by attribute "
                                  f"{shown(name)} (embed writes a few hundred)")
        attrs[name] = value
    return attrs


def _shard_info(path: Path, attrs: dict, records: int, widths: tuple[int, int]) -> EmbeddingShardInfo:
    """Every attribute typed and in range, or exit 5 naming it."""
    version = _whole(path, attrs, "format_version", 0)
    if version != FORMAT_VERSION:
        raise other_format(path, "", version, FORMAT_VERSION, "rerun `virnucpro embed`")
    index, of = _whole(path, attrs, "shard_index", 0), _whole(path, attrs, "shard_of", 1)
    if index >= of:
        raise malformed(path, f"attribute shard_index {index} is not below shard_of {of}")
    for name in ("shard_sha256", *CHECKSUMS):
        value = _text(path, attrs, name)
        if not SHA256_TEXT.fullmatch(value):
            raise malformed(path, f"attribute {name} must be 64 hexadecimal digits, found {value[:70]!r}")
    digest = _text(path, attrs, "shard_sha256")
    for name in ("virnucpro_version", "created"):
        _text(path, attrs, name)
    tiny = attrs.get("tiny", False)
    if not isinstance(tiny, (bool, np.bool_)):
        raise malformed(path, f"attribute tiny must be true or false, found {_shown(tiny)}")
    attention = _text(path, attrs, "attention") if "attention" in attrs else REFERENCE_ATTENTION
    settings = _settings(path, attrs)
    return EmbeddingShardInfo(path=path, shard_index=index, shard_of=of, shard_sha256=digest,
                              chunk_size=_whole(path, attrs, "chunk_size", 1), models=_models(path, attrs),
                              precision=_choice(path, attrs, "precision", PRECISIONS),
                              device=_devices(path, attrs),
                              records=records, widths=widths, tiny=bool(tiny), attention=attention, settings=settings,
                              virnucpro_version=_text(path, attrs, "virnucpro_version"))


def _settings(path: Path, attrs: dict) -> tuple[str, ...]:
    """The attribute `settings` as its entries ('unknown' when absent: an older virnucpro wrote the file)."""
    text = _text(path, attrs, "settings") if "settings" in attrs else UNKNOWN_DEVICE
    entries = tuple(text.split(",")) if text else ()
    wrong = [entry for entry in entries if not SETTING_ENTRY.fullmatch(entry)]
    if wrong:
        raise malformed(path, f"attribute settings holds {shown(wrong[0][:60])}, not 'name=value' of a setting "
                              "embed records")
    return entries


def settings_in_order(entries) -> list[str]:
    """Settings entries by name, then by value as a number (a token budget of 512 before 4096; whole
    numbers compared as digits, so a number of any length sorts)."""
    def order(entry: str) -> tuple[str, int, str]:
        name, _, value = entry.partition("=")
        return name, len(value), value

    return sorted(entries, key=order)


def _shown(value: object) -> str:
    """An attribute value as Python would write it (numpy scalars and arrays as plain values)."""
    return shown(value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value)


def _whole(path: Path, attrs: dict, name: str, minimum: int) -> int:
    value = attrs[name]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise malformed(path, f"attribute {name} must be a whole number >= {minimum}, found {_shown(value)}")
    return int(value)


def _text(path: Path, attrs: dict, name: str) -> str:
    value = attrs[name]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    elif isinstance(value, str):
        return value
    raise malformed(path, f"attribute {name} must be text, found {_shown(value)}")


def _choice(path: Path, attrs: dict, name: str, known: tuple[str, ...]) -> str:
    """A text attribute that `embed` writes from a fixed set of values."""
    value = _text(path, attrs, name)
    if value not in known:
        raise malformed(path, f"attribute {name} must be one of {', '.join(known)}, found {value[:70]!r}")
    return value


def _devices(path: Path, attrs: dict) -> str:
    """The `device` attribute: every device that computed the shard's vectors (resumed checkpoint
    parts included), '+'-joined in sorted order: 'cpu', 'cuda', 'cpu+cuda', 'cpu+unknown', ..."""
    value = _text(path, attrs, "device")
    names = value.split("+")
    if not set(names) <= {*DEVICES, UNKNOWN_DEVICE} or names != sorted(set(names)):
        raise malformed(path, f"attribute device must be {' or '.join(DEVICES)}, or several of {', '.join(DEVICES)}, "
                              f"{UNKNOWN_DEVICE} joined by '+' in sorted order, found {value[:70]!r}")
    return value


def _models(path: Path, attrs: dict) -> dict:
    """The `models` attribute: JSON of role -> {name, sha256}."""
    try:
        models = json.loads(_text(path, attrs, "models"))
    except (ValueError, RecursionError):
        models = None
    valid = isinstance(models, dict) and models and all(
        isinstance(model, dict) and isinstance(model.get("name"), str) and isinstance(model.get("sha256"), str)
        for model in models.values())
    if not valid:
        raise malformed(path, "attribute models must be JSON of role -> {name, sha256}, found "
                              f"{_shown(attrs['models'])}")
    return models


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A read that fails part-way (damaged file, undecodable id) is exit 5 naming the file; one the
    storage failed is exit 3 saying so (`_refuse_storage_failure`)."""
    try:
        yield
    except DAMAGED as exc:
        _refuse_storage_failure(path, exc)
        if open_file_limit(exc):
            raise
        raise InconsistentInputsError(f"{path} cannot be read to the end ({exc})", REEMBED_HINT) from None


def _refuse_storage_failure(path: Path, exc: BaseException) -> None:
    """Exit 3 for a shard that the storage failed to read (an I/O error, a network file system gone):
    calling it damaged sent users to compute its embeddings again."""
    failed = storage_read_failure(path, exc)
    if failed is not None:
        raise failed from None


def _decoded(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]


def iter_ids(path: Path, block: int | None = None, seal: Seal | None = None) -> Iterator[str]:
    """The ids of a shard one by one, read `block` (default ROWS_PER_WRITE) at a time (`seal`: see
    `open_h5`)."""
    block = block or ROWS_PER_WRITE
    with _reading(path), open_h5(path, seal) as handle:
        ids = _dataset(path, handle, "ids")
        for start in range(0, ids.shape[0], block):
            yield from _decoded(ids[start:start + block])


def iter_rows(path: Path, block: int = ROWS_PER_WRITE,
              seal: Seal | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, features) blocks in shard order; features = DNABERT-S then ESM-2, as the original merges.

    The vectors read are checked against the checksums embed stored (those `seal` holds, read when the
    file was hashed, else the file's): a changed value ends the read with exit 5 after the last block
    (the caller publishes nothing before the read is complete).
    """
    checksums = VectorChecksums()
    with _reading(path), open_h5(path, seal) as handle:
        id_data, nuc_data, prot_data = (_dataset(path, handle, name) for name in ("ids", *VECTORS))
        n = id_data.shape[0]
        expected = dict(seal.vectors) if seal is not None and seal.vectors else \
            {name: _text(path, dict(handle.attrs), name) for name in CHECKSUMS}
        for start in range(0, n, block):
            ids = _decoded(id_data[start:start + block])
            nuc, prot = nuc_data[start:start + block], prot_data[start:start + block]
            checksums.add(nuc, prot)
            yield ids, np.concatenate([nuc, prot], axis=1)
    changed = [name for name, value in checksums.attributes().items() if value != expected[name]]
    if changed:
        raise InconsistentInputsError(f"{path}: the {' and '.join(c[len('sha256_'):] for c in changed)} vectors "
                                      "changed after embed wrote them (their sha256 differs)", REEMBED_HINT)


class VectorChecksums:
    """sha256 of each vector dataset's rows, fed block by block as they are written or read."""

    def __init__(self):
        self.digests = {name: hashlib.sha256() for name in VECTORS}

    def add(self, *blocks: np.ndarray) -> None:
        """The next rows of each dataset, in VECTORS order."""
        for name, block in zip(VECTORS, blocks):
            self.digests[name].update(_row_bytes(block))

    def attributes(self) -> dict[str, str]:
        return {f"sha256_{name}": digest.hexdigest() for name, digest in self.digests.items()}


def _row_bytes(block: np.ndarray) -> memoryview:
    """Rows as the bytes the checksum covers: float32, little-endian, C order."""
    return memoryview(np.ascontiguousarray(block, dtype="<f4")).cast("B")
