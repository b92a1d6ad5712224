"""Output folders: one command at a time, and only folders (and files) virnucpro wrote.

Every command that writes a folder holds an exclusive lock on it for its whole life:
- `flock` on `FOLDER/.virnucpro.lock`, released by the kernel when the process ends, so even a
  SIGKILL leaves no stale lock;
- where the file system does not support `flock` (some NFS/Lustre mounts), an exclusive lock file
  `FOLDER/.virnucpro.lock.pid` created with O_EXCL, holding pid, host and start time and touched
  every minute; it is taken over when its process is gone (same host) or it was not touched for
  ten minutes (another host).

A folder is written only when it is absent, empty, or holds the marker `FOLDER/.virnucpro.json`
of the same kind of output (run, prepare, predict). `embed --out FILE` locks `.FILE.lock` beside
the file the same way. The marker lists every file published with its
size and modification time; a file at a name about to be written that the marker does not list
with those values is someone else's, and the command refuses (exit 3) rather than replace it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from virnucpro import __version__
from virnucpro.errors import BadInputError, check_stop, output_errors

LOCK_NAME = ".virnucpro.lock"
FALLBACK_LOCK_NAME = ".virnucpro.lock.pid"
MARKER_NAME = ".virnucpro.json"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
OURS = {LOCK_NAME, FALLBACK_LOCK_NAME, MARKER_NAME}
_held: set[Path] = set()  # folders and files this process holds (its own outputs may nest inside)


# --- the lock ------------------------------------------------------------------------------------

def _holder() -> dict:
    """Who holds a lock: enough for a user to find the process."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _holder_text(raw: str) -> str:
    try:
        holder = json.loads(raw)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process (its details are unreadable)"


def _busy(folder: Path, what: str, holder: str) -> BadInputError:
    return BadInputError(f"{what} {folder} is in use by another virnucpro command ({holder})",
                         "wait for it to finish, or choose another folder")


def _make_folder(folder: Path, what: str) -> None:
    """Create the folder (and parents); a file in its place or an impossible path is exit 3."""
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"{what} {folder} is a file", "choose a directory path")
    try:
        with output_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # not a storage failure: e.g. a parent is a file
        raise BadInputError(f"cannot create {what} {folder}: {exc.strerror}",
                            "choose a writable location") from None


def _try_flock(fd: int, subject: Path, what: str) -> bool:
    """True when this process now holds the flock; False when the file system cannot flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        raise _busy(subject, what, _holder_text(holder)) from None
    except OSError as exc:
        if exc.errno in NO_FLOCK:
            return False
        raise


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)


class _Heartbeat(threading.Thread):
    """Touches the fallback lock file every minute, so other hosts can tell it is alive."""

    def __init__(self, path: Path):
        super().__init__(daemon=True, name="virnucpro-lock-heartbeat")
        self.path = path
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return


def _is_stale(path: Path) -> bool:
    """A fallback lock whose process is gone (same host) or that nobody touched for ten minutes."""
    try:
        holder = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False  # being written right now
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False
    return age > STALE_SECONDS


@contextmanager
def exclusive_file_lock(lock: Path, subject: Path, what: str) -> Iterator[None]:
    """The lock for file systems without flock: a file created with O_EXCL, removed at the end."""
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            break
        except FileExistsError:
            if not _is_stale(lock):
                raise _busy(subject, what, _holder_text(lock.read_text(errors="replace"))) from None
            stale = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
            try:
                os.rename(lock, stale)  # one taker wins the rename; the others see the new lock
                stale.unlink()
            except FileNotFoundError:
                pass
    else:
        raise _busy(subject, what, "a lock that keeps being taken")
    _write_holder(fd)
    os.close(fd)
    heartbeat = _Heartbeat(lock)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stopped.set()
        lock.unlink(missing_ok=True)


@contextmanager
def _hold(lock: Path, subject: Path, what: str) -> Iterator[None]:
    """Hold `subject` exclusively through the lock file `lock`: flock, else the O_EXCL fallback."""
    with output_errors(lock):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if _try_flock(fd, subject, what):
            _write_holder(fd)
            held = nullcontext()
        else:
            held = exclusive_file_lock(lock.with_name(lock.name + ".pid"), subject, what)
        with held, _registered(subject):
            yield
    finally:
        os.close(fd)


@contextmanager
def _registered(subject: Path) -> Iterator[None]:
    """Remember, while held, that this process holds `subject` (its own outputs may nest inside)."""
    key = subject.resolve()
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)


def file_mode() -> int:
    """The mode a plain `open()` would give a new file (mkstemp would give 0600: unreadable to
    the other users of a shared models directory)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Create `folder` if needed and hold it exclusively while the block runs (exit 3 when busy)."""
    folder = Path(folder)
    _make_folder(folder, what)
    with _hold(folder / LOCK_NAME, folder, what):
        yield


@contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """Hold one output file exclusively (through `.NAME.lock` beside it) while the block runs."""
    path = Path(path)
    with _hold(path.with_name(f".{path.name}.lock"), path, what):
        yield


# --- nesting -------------------------------------------------------------------------------------

def _marker_kind(folder: Path) -> str | None:
    """The kind written in a folder's marker; '?' for an unreadable marker; None without one."""
    path = folder / MARKER_NAME
    if not path.exists():
        return None
    try:
        kind = json.loads(path.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return "?"
    return kind if isinstance(kind, str) else "?"


def refuse_nesting(target: Path, what: str, itself: bool = False, held_too: bool = False) -> None:
    """An output inside another virnucpro output (or, with `itself`, one) is refused (exit 3), unless
    this process holds that one (`run` writes its stages inside its own folder) and `held_too` is
    not set (a cache, which must outlive the command, may not go into its own output either)."""
    resolved = Path(target).resolve()
    for parent in ([resolved] if itself else []) + list(resolved.parents):
        if parent in _held and not held_too:
            return
        kind = _marker_kind(parent)
        if kind is not None or parent in _held:
            where = "is" if parent == resolved else f"is inside {parent},"
            output = "this command's own output" if parent in _held else f"a virnucpro '{kind}' output"
            raise BadInputError(f"{what} {target} {where} {output}: writing there would change that "
                                "output (or one still being written)", "choose a folder outside it")


# --- ownership -----------------------------------------------------------------------------------

def _signature(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _files_under(folder: Path, names: Iterable[str]) -> Iterator[str]:
    """Relative paths of the regular files (and other non-folders) at or under `names`."""
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            for root, dirs, files in os.walk(path):
                linked = [d for d in dirs if (Path(root) / d).is_symlink()]  # never written through
                for file in files + linked:
                    yield (Path(root) / file).relative_to(folder).as_posix()
        elif path.exists() or path.is_symlink():
            yield name


class OutputFolder:
    """A locked output folder of one kind; `publish` moves finished files in and records them."""

    def __init__(self, folder: Path, kind: str, names: Iterable[str], what: str = "--outdir"):
        self.folder, self.kind, self.what = Path(folder), kind, what
        self.names = tuple(names)  # the top-level entries this kind of output consists of
        self.recorded: dict[str, list[int]] = {}

    def check(self) -> None:
        """Refuse (exit 3) a folder holding anything this command could replace but did not write."""
        self._refuse_other_kind()
        marker = self._read_marker()
        entries = sorted(p.name for p in self.folder.iterdir() if p.name not in OURS)
        if marker is None:
            if entries:
                    raise self._foreign(next(_files_under(self.folder, entries), entries[0]),
                                    "which virnucpro did not write (the folder is neither empty nor a virnucpro output)")
            return
        self.recorded = dict(marker["files"])
        for rel, signature in marker.get("publishing", {}).items():  # moved in by a publish cut short
            if _signature_or_none(self.folder / rel) == signature:
                self.recorded[rel] = signature
        for rel in _files_under(self.folder, self.names):
            if self.recorded.get(rel) != _signature_or_none(self.folder / rel):
                raise self._foreign(rel, "which virnucpro did not write (or which changed since it did)")

    def _read_marker(self) -> dict | None:
        path = self.folder / MARKER_NAME
        if not path.exists():
            return None
        try:
            marker = json.loads(path.read_text())
            valid = (isinstance(marker, dict) and self._valid_files(marker.get("files"))
                     and self._valid_files(marker.get("publishing", {})))
        except (OSError, ValueError):
            valid = False
        if not valid:
            raise BadInputError(f"{path} is damaged, so virnucpro cannot tell which files in "
                                f"{self.folder} it wrote", "choose another folder")
        return marker

    def _refuse_other_kind(self) -> None:
        kind = _marker_kind(self.folder)
        if kind is not None and kind != self.kind:
            raise BadInputError(f"{self.what} {self.folder} holds a virnucpro '{kind}' output, not a "
                                f"'{self.kind}' output: writing there would replace its files",
                                "choose another folder")

    def _valid_files(self, files: object) -> bool:
        """A marker's map of our files to their signatures."""
        return isinstance(files, dict) and all(self._is_own_path(rel) and _is_signature(signature)
                                               for rel, signature in files.items())

    def _is_own_path(self, rel: object) -> bool:
        """A marker entry names a file under one of this kind's entries, never outside the folder."""
        if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
            return False
        parts = rel.split("/")
        return parts[0] in self.names and all(part not in ("", ".", "..") for part in parts)

    def _foreign(self, rel: str, why: str) -> BadInputError:
        return BadInputError(f"{self.what} {self.folder} holds {rel}, {why}; virnucpro never "
                             "replaces files it did not write", "move that file, or choose another folder")

    def publish(self, staging: Path, names: Iterable[str]) -> None:
        """Move finished entries from `staging` into the folder, replacing only our own earlier
        files; entries of the earlier output that the new one lacks are removed."""
        check_stop()  # a stop that arrived in a place that swallowed its exception ends here
        names = list(names)
        for rel in list(self.recorded):
            if rel.split("/", 1)[0] in names and not (staging / rel).exists():
                self._drop(rel)
        if (self.folder / names[-1]).is_file():  # the last name marks a complete set: gone until it is
            self._drop(names[-1])
        # the files about to move in are ours from before the first move: a publish cut short by a
        # signal or a full disk leaves a folder its rerun recognises
        self._write_marker(publishing={rel: _signature(staging / rel) for rel in _files_under(staging, names)})
        for name in names:
            target = self.folder / name
            if target.is_dir() and not target.is_symlink():
                _merge_folder(staging / name, target)
            else:
                os.replace(staging / name, target)
            for rel in _files_under(self.folder, [name]):
                self.recorded[rel] = _signature(self.folder / rel)
        self._write_marker()

    def discard(self, names: Iterable[str]) -> None:
        """Remove our earlier files under `names` (an output this run does not make again)."""
        names = set(names)
        for rel in [rel for rel in self.recorded if rel.split("/", 1)[0] in names]:
            self._drop(rel)
        self._write_marker()

    def _drop(self, rel: str) -> None:
        (self.folder / rel).unlink(missing_ok=True)
        self.recorded.pop(rel, None)

    def _write_marker(self, publishing: dict[str, list[int]] | None = None) -> None:
        path = self.folder / MARKER_NAME
        tmp = path.with_name(path.name + ".tmp")
        data = {"kind": self.kind, "virnucpro_version": __version__, "files": dict(sorted(self.recorded.items()))}
        if publishing:
            data["publishing"] = dict(sorted(publishing.items()))
        with output_errors(path):
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, path)


def _is_signature(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))


def _signature_or_none(path: Path) -> list[int] | None:
    try:
        return _signature(path)
    except OSError:
        return None


def _merge_folder(source: Path, target: Path) -> None:
    """Move every file of `source` into `target` (files of the same name replaced), then drop `source`."""
    for root, _dirs, files in os.walk(source):
        destination = target / Path(root).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for file in files:
            os.replace(Path(root) / file, destination / file)
    shutil.rmtree(source)


@contextmanager
def claim(folder: Path, kind: str, names: Iterable[str], what: str = "--outdir") -> Iterator[OutputFolder]:
    """Lock `folder`, check that it may be written, and hand out the `OutputFolder` to publish into.

    When the command fails before publishing anything into a folder it created, the folder goes
    again: a mistyped input leaves nothing behind.
    """
    folder = Path(folder)
    refuse_nesting(folder, what)
    created = not folder.exists()
    with folder_lock(folder, what):
        output = OutputFolder(folder, kind, names, what)
        output.check()
        output._write_marker()  # ours from the first moment: a rerun after a kill recognises it
        try:
            yield output
        except BaseException:
            if created and not output.recorded:
                _remove_if_only_bookkeeping(folder)
            raise


def _remove_if_only_bookkeeping(folder: Path) -> None:
    """Remove a folder this command created when it holds nothing but our lock and marker."""
    if any(p.name not in OURS for p in folder.iterdir()):
        return
    for name in OURS:
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something appeared meanwhile: leave it
