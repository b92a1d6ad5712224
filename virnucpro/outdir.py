"""Output folders: one command at a time, and only folders (and files) virnucpro wrote.

Every command that writes a folder holds an exclusive lock on it for its whole life:
- `flock` on `FOLDER/.virnucpro.lock`, released by the kernel when the process ends, so even a
  SIGKILL leaves no stale lock;
- where the file system does not support `flock` (some NFS/Lustre mounts), an exclusive lock file
  `FOLDER/.virnucpro.lock.pid` created with O_EXCL, holding pid, host, start time, boot id and PID
  namespace, and touched every minute; it is taken over when its process is gone (same host, boot
  and PID namespace: the pid can be checked) or it was not touched for ten minutes (anywhere else,
  another container on this host included).
A command that is refused, or fails before publishing anything, removes the lock file again when it
created it (a folder is left as the command found it); `HeldLock.remove_if_created` says why that is
safe against a process about to lock the same file.

A folder is written only when it is absent, empty, or holds the marker `FOLDER/.virnucpro.json`
of the same kind of output (run, prepare, predict). `embed --out FILE` locks `.FILE.lock` beside
the file the same way. The marker lists every file published with its
size and modification time; a file at a name about to be written that the marker does not list
with those values is someone else's, and the command refuses (exit 3) rather than replace it: when
it starts, and again when it publishes (a new name is taken with a rename that refuses an existing
target, so a file that appears meanwhile is never replaced). The
marker is written under a temporary name, synced, renamed over the old one and the rename synced: a
crash or power loss leaves the old marker or the new one, never a torn one. A damaged marker (from an
older virnucpro, or edited) is refused with the command that replaces it by one claiming no file,
which keeps the folder's unfinished work and adopts nothing; one this user may not read is refused
as unreadable, never called damaged (it may be sound). Stop signals wait while finished files move
in (`OutputFolder.publish`): a stop then ends the command once the whole new set is in place. The
set's last name (`run_info.json`, a prepare's `manifest.json`) marks it complete: it goes first and
lands last, after everything that moves in (or goes) with it, so even a kill never leaves it beside
files of another set.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from virnucpro import __version__
from virnucpro.errors import (shell_word, BadInputError, OutputWriteError, check_stop, name_limit, naming, not_a_folder,
                              open_file_limit, output_errors, outputs_in_place, printable, refused_name,
                              stop_signals_deferred, storage_errno, storage_failure)
from virnucpro.errors import resolved as resolved_path

LOCK_NAME = ".virnucpro.lock"
FALLBACK_LOCK_NAME = ".virnucpro.lock.pid"
MARKER_NAME = ".virnucpro.json"
MARKER_TMP_NAME = MARKER_NAME + ".tmp"  # left behind by a kill between writing and renaming the marker
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0
LOCK_ATTEMPTS = 10  # a lock file removed under us this often in a row: give up as busy
HOLDER_READS = 20  # a refused command waits up to 1 s for the holder's details (`_read_holder`)
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
OURS = {LOCK_NAME, FALLBACK_LOCK_NAME, MARKER_NAME, MARKER_TMP_NAME}
DAMAGED = "?"  # the kind of a marker that cannot be read (see `OutputFolder._damaged`)
UNREADABLE = "!"  # the kind of a marker this user may not read (see `OutputFolder._unreadable`)
NO_DIRECTORY_SYNC = {errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EISDIR, errno.EACCES}
_held: set[Path] = set()  # folders and files this process holds (its own outputs may nest inside)
# opening a name of ours never follows a link, nor waits on a FIFO (a regular file ignores O_NONBLOCK)
NO_FOLLOW = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
# the longest name derived from an output file's NAME beside it is its temporary `.NAME.XXXXXXXX.tmp`
# (h5shard; mkstemp's 8 random letters); the lock `.NAME.lock` and `NAME.ckpt` are shorter
DERIVED_NAME_EXTRA = len("..XXXXXXXX.tmp")
NOT_OPENABLE = {errno.ELOOP, errno.EISDIR, errno.ENXIO}  # a link (O_NOFOLLOW), a folder, a socket or FIFO
TEMPORARY_TAG = "abcdefghijklmnopqrstuvwxyz0123456789_"  # the letters of a temporary's 8-letter tag
TEMPORARY_NAME_ATTEMPTS = 100  # random tags taken in a row before giving up (tempfile's is 10,000)
CREATE_ATTEMPTS = 3  # a temporary name of ours taken again, this often in a row, just after we removed it
WALKED_MAX = 10_000  # files a refusal lists at most from a folder without a record (a home folder, say)


# --- names of ours holding something else --------------------------------------------------------

def _kind_of(path: Path) -> str:
    """What is at `path`, in words, for a refusal."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "gone"
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file"))
    return next((text for test, text in kinds if test(mode)), "a device")


def not_ours(path: Path, what: str) -> BadInputError:
    """Exit 3 for a name virnucpro writes that holds something it did not write (a link, a FIFO, a
    folder): writing through it or replacing it would change someone else's file."""
    return BadInputError(f"{path} is {_kind_of(path)}, not {what}: virnucpro never writes through or replaces "
                         "what it did not write", "move it away, then rerun")


def is_regular(path: Path) -> bool:
    """Whether `path` itself (never a link's target) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def refuse_unless_regular(path: Path, what: str) -> None:
    """Exit 3 when `path` exists as anything but a regular file (a link, even a dangling one, included)."""
    if os.path.lexists(path) and not is_regular(path):
        raise not_ours(path, what)


def create_exclusive(path: Path, what: str) -> int:
    """A new file at `path` opened for writing, created exclusively and never through a link (mode
    from the umask). A regular file already there is a temporary of ours a kill left (the caller
    holds the folder and the name is ours): it is replaced; anything else is refused (exit 3)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW
    for _attempt in range(CREATE_ATTEMPTS):
        try:
            return os.open(path, flags, 0o666)
        except FileExistsError:
            refuse_unless_regular(path, what)
            with suppress(FileNotFoundError):
                path.unlink()
    raise not_ours(path, what)


# --- the lock ------------------------------------------------------------------------------------

def _holder() -> dict:
    """Who holds a lock: enough for a user to find the process, and for another command to tell
    whether it can check that pid (`_pid_checkable`)."""
    return {"pid": os.getpid(), "user": _user_name(os.geteuid()), "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), **_namespace()}


def _namespace() -> dict:
    """This boot of this host and this process's PID namespace, each None where unreadable (no
    /proc): containers on one host may share its hostname but not its PIDs, and after a reboot a
    pid names another process."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        boot_id = None
    try:
        here = os.stat("/proc/self/ns/pid")
        pid_ns = f"{here.st_dev}:{here.st_ino}"
    except OSError:
        pid_ns = None
    return {"boot_id": boot_id, "pid_ns": pid_ns}


def _pid_checkable(holder: dict) -> bool:
    """Whether the holder's pid means the same process to this one: the same host, boot and PID
    namespace, each known. Otherwise (another host, another container on this host, a lock file
    of an older virnucpro without these fields) only the lock file's heartbeat age tells."""
    pid = holder.get("pid")
    if type(pid) is not int or pid <= 0 or holder.get("host") != socket.gethostname():
        return False
    here = _namespace()
    return all(here[key] is not None and holder.get(key) == here[key] for key in here)


def _holder_text(raw: str) -> str:
    """The holder a lock file names, in words, for a refusal; what cannot be checked from here is
    not claimed: a pid of another host, boot or PID namespace is named as recorded, never as a
    process of this one (pid 1 of a container is not init here)."""
    holder = _holder_of(raw)
    try:
        pid, host, started = holder["pid"], holder["host"], holder["started"]
        user = f" of {holder['user']}" if isinstance(holder.get("user"), str) else ""  # older files name none
        text = printable(f"pid {pid}{user} on {host}, started {started}")
        text = text if len(text) <= 300 else text[:297] + "..."  # the file may be forged, and huge
    except (KeyError, TypeError):
        return "another process (its details are unreadable)"
    why = _unchecked_why(holder)
    if why is not None:
        return (f"the lock file names {text}; {why}, so this process cannot check whether it still runs "
                "or is an earlier holder that has ended")
    if _alive(holder["pid"]):
        return text
    # a holder that may only read the lock file (another user's, in a shared folder) cannot
    # write its details: the file still names an earlier one
    return f"another process; the lock file still names an earlier holder that has ended ({text})"


def _unchecked_why(holder: dict) -> str | None:
    """Why the holder's pid cannot be checked from this process, in words; None when it can
    (`_pid_checkable`)."""
    if _pid_checkable(holder):
        return None
    here = _namespace()
    reasons = (
        (type(holder.get("pid")) is not int or holder["pid"] <= 0, "its pid is not a process number"),
        (holder.get("host") != socket.gethostname(), "that is another host"),
        (None in here.values(), "this system shows no boot id or PID namespace (no /proc)"),
        (not {"boot_id", "pid_ns"} <= holder.keys(), "an older virnucpro wrote it, without a PID namespace"),
        (None in (holder.get("boot_id"), holder.get("pid_ns")), "it was written where no PID namespace could be read"),
        (holder.get("boot_id") != here["boot_id"], "that was another boot of that host, or another host of that name"),
    )
    return next((why for test, why in reasons if test), "that is another PID namespace (container) on that host")


def _alive(pid: object) -> bool:
    """Whether a process of this host has that pid (one of another user counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's: alive
    return True


MARKER_LIMIT = 16 * 2**20  # bytes: a marker names the files of one output folder, far less than this


def _read_regular_all(path: Path) -> str:
    """The whole text of a marker, a regular file never read through a link or from a FIFO (OSError);
    one larger than MARKER_LIMIT is no marker of ours (ValueError), and is never read into memory."""
    fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = handle.read(MARKER_LIMIT + 1)
        if len(data) > MARKER_LIMIT:
            raise ValueError(f"{path} is larger than {MARKER_LIMIT} bytes")
        return data.decode()


def _holder_of(raw: str) -> dict | None:
    """The holder a lock file names; None when it is not a JSON object (being written, or its
    writer died before writing it)."""
    try:
        holder = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    return holder if isinstance(holder, dict) else None


class FolderBusy(BadInputError):
    """The folder or file is held by another virnucpro command (exit 3 unless the caller waits)."""


def _busy(folder: Path, what: str, holder: str) -> FolderBusy:
    return FolderBusy(f"{what} {folder} is in use by another virnucpro command ({holder})",
                      f"wait for it to finish, or choose another {'folder' if folder.is_dir() else 'file'}")


def _busy_by_age(lock: Path, subject: Path, what: str) -> FolderBusy:
    """The refusal for a fallback lock file that is not stale. When its holder's pid cannot be
    checked (only the file's age decides: another host, boot or PID namespace, an older virnucpro's
    file, no /proc), a dead holder blocks until the lock expires: the fix says when, and which file
    to remove if no virnucpro command uses the folder any more."""
    raw = _read_text_or_empty(lock)
    busy = _busy(subject, what, _holder_text(raw))
    holder = _holder_of(raw)
    if holder is None or not _pid_checkable(holder):
        busy.hint = _unreadable_hint(lock) or _expiry_hint(lock, subject)
    return busy


def _unreadable_hint(lock: Path) -> str | None:
    """The fix for a lock file this user cannot read (another user's, 0600): it never expires by age
    here (`_is_stale` cannot tell it from one being written), so only its owner can end it; None
    when it can be read."""
    try:
        _read_regular(lock)
        return None
    except FileNotFoundError:
        return None
    except OSError:
        try:
            owner = f"it belongs to uid {lock.lstat().st_uid}"
        except OSError:
            owner = "removed meanwhile"
        return (f"this user cannot read {shell_word(str(lock))} ({owner}), so it does not expire by age here: "
                "ask its owner to remove it once no virnucpro command uses the folder, or choose another folder")


def _expiry_hint(lock: Path, subject: Path) -> str:
    """The fix for a fallback lock only its age decides: when it expires (its last heartbeat plus
    STALE_SECONDS, UTC), and the lock file a user may remove once its holder is known to be gone."""
    try:
        last = lock.lstat().st_mtime
        expires = datetime.fromtimestamp(last + STALE_SECONDS, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except OSError:  # removed meanwhile
        expires = f"{STALE_SECONDS / 60:.0f} minutes after its last heartbeat"
    return (f"its pid cannot be checked from here, so its lock expires at {expires} unless its heartbeat "
            f"(every {HEARTBEAT_SECONDS:.0f} s while it runs) renews it: wait for it, or, if no virnucpro command "
            f"uses {subject} any more (on any host or container), remove {shell_word(str(lock))} and rerun; "
            "or choose another folder")


def make_folder(folder: Path, what: str, made: list[Path] | None = None) -> None:
    """Create the output folder `what` (an option, in words) and its parents: a file in its place or
    an impossible path is exit 3 naming it, a storage failure (permission denied, a full disk) exit 10
    as for any output. An empty folder on the path removed by another command meanwhile (a finished
    embed removing its checkpoint folder) is created again. Each folder this call creates is added
    to `made`, top down, so that a command that fails can remove them again (`remove_made_folders`)."""
    for _attempt in range(LOCK_ATTEMPTS):
        try:
            with output_errors(folder):
                _make_each(folder, made if made is not None else [])
            return
        except (FileNotFoundError, FileExistsError) as exc:  # removed, or a file in the way
            problem = exc
            if os.path.lexists(folder) and not folder.is_dir():
                raise _not_a_folder(folder, what) from None
            _refuse_name(exc, folder)
        except OSError as exc:  # not a storage failure: e.g. a parent is a file
            _refuse_name(exc, folder)
            problem = exc
            break
    raise _blocking_part(folder, what) or BadInputError(f"cannot create {what} {folder}: {problem.strerror}",
                                                        "choose a writable location")


def _blocking_part(folder: Path, what: str) -> BadInputError | None:
    """Exit 3 naming the part of `folder`'s path that is no folder (a file, or a link to a missing
    path) when one is: "choose a writable location" sent users to look for a permission."""
    for part in (*reversed(folder.parents), folder):
        try:
            if os.path.islink(part) and not os.path.exists(part):
                return BadInputError(f"cannot create {what} {folder}: {part} on its way is a symbolic link to a "
                                     f"missing path ({os.readlink(part)})", "create the folder it points to, or choose another path")
            if os.path.exists(part) and not stat.S_ISDIR(os.stat(part).st_mode):
                return BadInputError(f"cannot create {what} {folder}: {part} on its way is a file, not a folder",
                                     "choose another path")
        except OSError:
            return None
    return None


def _make_each(folder: Path, made: list[Path]) -> None:
    """`mkdir -p folder`, one folder at a time, adding those this call created to `made` (one another
    command creates meanwhile is not ours); FileExistsError when `folder` is not a folder."""
    missing = []
    part = folder
    while _absent(part) and part.parent != part:
        missing.append(part)
        part = part.parent
    for part in reversed(missing):
        try:
            part.mkdir()
        except FileExistsError:
            if part.is_dir():
                continue
            raise
        made.append(part)
    if not stat.S_ISDIR(os.stat(folder).st_mode):  # a storage failure (a dropped mount) raised as it is
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(folder))


def _absent(path: Path) -> bool:
    """Whether nothing is at `path` (a file above it counts: mkdir then says "Not a directory"); any
    other failure to look counts as present, for the mkdir or stat after to report."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        pass
    return False


def _not_a_folder(folder: Path, what: str) -> BadInputError:
    """Exit 3 for an output folder path taken by something else: a file or a link to one
    (`not_a_folder`), or a device, FIFO or socket, or a link to one, said as what it is (/dev/null,
    /dev/stdin were called "a file")."""
    try:
        mode = os.stat(folder).st_mode  # through a link: what it leads to
    except OSError:
        mode = stat.S_IFREG
    if stat.S_ISREG(mode):
        return not_a_folder(folder, what)
    target = Path(os.path.realpath(folder))
    shown = f"{_kind_of(target)} (a special file)" if target == folder.absolute() else \
        f"a link to {target}, {_kind_of(target)} (a special file)"
    return BadInputError(f"{what} {folder} is {shown}, not a folder", "choose a directory path")


def remove_made_folders(made: list[Path]) -> None:
    """Remove the folders a failed command created (`make_folder`'s `made`), deepest first, once
    released, each only while empty: the first one that is not (another command has started to use
    it, or kept a file there) stops the removal, keeping it and the folders above it."""
    for folder in reversed(list(dict.fromkeys(made))):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def _refuse_name(exc: OSError, path: Path) -> None:
    """Exit 3 when `exc` is the file system refusing a character of the new name (`refused_name`)."""
    refused = refused_name(exc, path)
    if refused is not None:
        raise refused from None


def _try_flock(fd: int, subject: Path, what: str) -> bool:
    """True when this process now holds the flock; False when the file system cannot flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        raise _busy(subject, what, _holder_text(_read_holder(fd))) from None
    except OSError as exc:
        if exc.errno in NO_FLOCK:
            return False
        raise


def _read_holder(fd: int) -> str:
    """The holder's details from a lock file held by another process. Its holder creates the file
    empty and writes them just after taking the lock: a refusal in that instant waits for them
    (briefly; a holder that died before writing them is "unreadable")."""
    for _attempt in range(HOLDER_READS):
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if _holder_of(raw) is not None:
            break
        time.sleep(0.05)
    return raw


def _write_holder(fd: int, **extra: str) -> None:
    """Write this process's details into the lock file it holds: over the old ones, then cut to
    length, so the file never reads empty to a refused command (`_read_holder`). A lock file this
    user may only read (another user of a shared folder created it) locks as well; it keeps the
    details it has, as does one with other names (hard links: a `cp -al` backup), which writing
    would change too."""
    if os.fstat(fd).st_nlink > 1:
        return
    data = (json.dumps({**_holder(), **extra}) + "\n").encode()
    try:  # padded over the old details: stopped before the cut, the file still reads as one holder's
        os.pwrite(fd, data.ljust(os.fstat(fd).st_size), 0)
        if os.fstat(fd).st_size != len(data):  # some FUSE file systems refuse any ftruncate (EPERM)
            os.ftruncate(fd, len(data))
    except OSError as exc:
        if exc.errno != errno.EBADF:  # opened read-only
            raise


def _remove_leftover_temporary(fd: int, subject: Path) -> None:
    """The temporary file the previous holder of this lock recorded as being written beside `subject`
    (created exclusively, so ours) and never renamed: it was killed. Called holding the lock."""
    holder = _holder_of(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    name = holder.get("temporary") if holder else None
    if isinstance(name, str) and name.startswith(f".{subject.name}.") and name.endswith(".tmp") and "/" not in name:
        if is_regular(subject.parent / name):  # a link or FIFO at that name is not the file we wrote
            with suppress(OSError):
                (subject.parent / name).unlink()


class _Heartbeat(threading.Thread):
    """Touches the fallback lock file every minute, so other hosts can tell it is alive."""

    def __init__(self, path: Path):
        super().__init__(daemon=True, name="virnucpro-lock-heartbeat")
        self.path = path
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path, follow_symlinks=False)
            except OSError:
                return


def _is_stale(path: Path) -> bool:
    """A fallback lock whose process is gone, or that nobody touched for ten minutes.

    The pid is asked only when it means the same process here (`_pid_checkable`): a holder in
    another container on this host (same hostname, own PID namespace) may run with a pid that does
    not exist here, or be gone with one that does. Everywhere else only the age tells, which is safe
    for any live holder, an older virnucpro's included: its heartbeat touches the file every
    HEARTBEAT_SECONDS, so it never gets STALE_SECONDS old."""
    try:
        age = time.time() - path.lstat().st_mtime
        holder = _holder_of(_read_regular(path))
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if holder is not None and _pid_checkable(holder):
        return not _alive(holder["pid"])
    return age > STALE_SECONDS  # unreadable (being written, or its writer was killed first) included


def _read_regular(path: Path, limit: int = 4096) -> str:
    """The text of a small regular file of ours (its first `limit` bytes), never read through a link or
    from a FIFO (OSError)."""
    fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.pread(fd, limit, 0).decode("utf-8", "replace")
    finally:
        os.close(fd)


@contextmanager
def exclusive_file_lock(lock: Path, subject: Path, what: str) -> Iterator[None]:
    """The lock for file systems without flock: a file created with O_EXCL (never through a link),
    removed at the end while it is still the file this command created."""
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644)
            break
        except FileExistsError:
            refuse_unless_regular(lock, "a virnucpro lock file")  # a dangling link looks stale: never take it
            if not _is_stale(lock):
                raise _busy_by_age(lock, subject, what) from None
            stale = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
            try:
                os.rename(lock, stale)  # one taker wins the rename; the others see the new lock
                stale.unlink()
            except FileNotFoundError:
                pass
    else:
        raise _busy(subject, what, "a lock that keeps being taken")
    try:
        with output_errors(lock):
            _write_holder(fd)
    except BaseException:  # a full disk: the lock file this command just created goes again
        _unlink_if_same(lock, fd)
        os.close(fd)
        raise
    heartbeat = _Heartbeat(lock)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stopped.set()
        _unlink_if_same(lock, fd)  # kept open until then: its inode cannot be reused for another file
        os.close(fd)


def _read_text_or_empty(path: Path) -> str:
    try:
        return _read_regular(path)
    except OSError:
        return ""


def _names_same_file(path: Path, fd: int) -> bool:
    """Whether `path` itself still names the file open as `fd` (its holder may have removed it)."""
    try:
        return os.path.samestat(os.lstat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _unlink_if_same(path: Path, fd: int) -> None:
    """Remove `path` while it still names the file open as `fd`, which this command created (a holder
    on another host may have taken over a lock that looked stale meanwhile); gone already, or not
    ours to remove, it is left as it is."""
    with suppress(OSError):
        if _names_same_file(path, fd):
            path.unlink()


class HeldLock:
    """The lock file a command holds, and whether this command created it."""

    def __init__(self, path: Path, fd: int, created: bool, flocked: bool = True):
        self.path, self.fd, self.created, self.flocked = path, fd, created, flocked

    def note_temporary(self, temporary: Path) -> None:
        """Record in the lock file the temporary file this holder is writing beside the subject: if it
        is killed before renaming it, the next holder removes it (`_remove_leftover_temporary`)."""
        if self.flocked:
            _write_holder(self.fd, temporary=temporary.name)

    def remove_if_created(self) -> None:
        """Remove the lock file when this command created it; call it while still holding the lock,
        as the last change this command makes in the folder.

        Why it is safe: only a holder ever removes a lock file, so while we hold it the path still
        names our file. A process that opened that file before the unlink gets its flock only once we
        close it, then sees that the path no longer names the file it locked and starts over on the
        path (`_open_and_flock`): two processes never both hold the folder. Without flock (O_EXCL
        fallback) this file locks nothing; the `.pid` file that does stays held until the block
        ends. What remains: a virnucpro older than that check could work on a folder a newer one
        took over at the same moment; and a command that found the folder just created by another
        one can see it vanish before its own open when that other one fails at once and removes
        the folder it created (`claim`): the command then fails on the missing folder.
        """
        if self.created:
            self.remove()

    def remove(self) -> None:
        """Remove the lock file, still held, when the path names it (see `remove_if_created`); one
        gone already, or not ours to remove, is left: the folder keeps an (unheld) lock file."""
        _unlink_if_same(self.path, self.fd)


def _open_lock_file(lock: Path) -> tuple[int, bool] | None:
    """(fd, whether this call created the file): the lock file opened, created when absent (its mode
    from the umask, as every file we write, but readable by all: whoever may enter the folder must
    be able to flock it, even after a member of a shared folder under umask 077 created it; it
    names only a process); None when its holder removed it between our two opens. Never through a
    link, and only a regular file: a link, FIFO or folder at the name is refused (exit 3), its
    target untouched. A storage failure is raised for the caller's `output_errors` (exit 10), and
    FileNotFoundError when the folder is gone (`_folder_gone`); any other failure is exit 3 naming
    the lock file (/proc refuses new files with ENOENT)."""
    try:
        fd, created = _create_or_open_lock(lock)
        if fd is None:
            return None
    except OSError as exc:
        _refuse_name(exc, lock)  # a name the file system refuses (`:` on NTFS or exFAT)
        if storage_errno(exc) is not None or _folder_gone(exc, lock) or open_file_limit(exc):
            raise  # the CLI names the limit on open files and its fix: no folder to blame
        raise lock_not_created(lock, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise not_ours(lock, "a virnucpro lock file")
    return fd, created


def _create_or_open_lock(lock: Path) -> tuple[int | None, bool]:
    """(fd, created) of the lock file, created when absent (see `_open_lock_file`); fd None when its
    holder removed it between our two opens."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o666)
    except FileExistsError:
        return _open_existing_lock(lock), False
    with suppress(OSError):  # best effort: some file systems (CIFS, FUSE) refuse modes; it still locks
        os.fchmod(fd, file_mode() | 0o444)
    return fd, True


def _folder_gone(exc: OSError, lock: Path) -> bool:
    """Whether `exc` is the lock file's folder missing (removed by another command meanwhile: a folder
    lock makes it again, `_enter_folder_lock`), not a file system refusing the new file in it."""
    return isinstance(exc, FileNotFoundError) and not lock.parent.is_dir()


def lock_not_created(lock: Path, exc: OSError) -> BadInputError:
    """Exit 3 for a lock file that cannot be made where the user put the output (a folder removed
    meanwhile, a file on the path, /proc), naming it."""
    folder = lock.parent
    why = f"its folder {folder} is gone" if _folder_gone(exc, lock) else exc.strerror or str(exc)
    return BadInputError(f"cannot create the lock file {printable(str(lock))}: {why}",
                         "choose an output location in a folder you can write")


def _open_existing_lock(lock: Path) -> int | None:
    """The existing lock file opened (None when gone meanwhile); one this user may not write (another
    user's, in a shared folder) is opened read-only: flock needs no more."""
    try:
        try:
            return os.open(lock, os.O_RDWR | NO_FOLLOW)
        except PermissionError:
            return os.open(lock, os.O_RDONLY | NO_FOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in NOT_OPENABLE:
            raise not_ours(lock, "a virnucpro lock file") from None
        raise


def on_disk_spelling(path: Path) -> Path:
    """`path` with each part that exists spelled as its folder lists it. On a case-insensitive file
    system `out` and `OUT` name one folder, but some (exFAT through FUSE) give each spelling its own
    inode, and flocks taken through two spellings then do not see each other: locks go through this
    one spelling. Unchanged (and cheap: one lstat a part) where no part has another spelling."""
    path = Path(path)
    folder = Path(path.anchor) if path.is_absolute() else Path()
    changed = False
    for name in path.parts[1:] if path.is_absolute() else path.parts:
        listed = _listed_spelling(folder, name)
        changed = changed or listed != name
        folder = folder / listed
    return folder if changed else path


def _listed_spelling(folder: Path, name: str) -> str:
    """How `folder` lists the entry that `name` finds: `name` itself, unless the file system matched it
    to an entry spelled in other case (tried only where the name with its case swapped finds one)."""
    swapped = name.swapcase()
    if swapped == name or not (os.path.lexists(folder / swapped) and os.path.lexists(folder / name)):
        return name
    try:
        with os.scandir(folder) as entries:
            listed = [entry.name for entry in entries if entry.name.casefold() == name.casefold()]
    except OSError:
        return name
    return listed[0] if name not in listed and len(listed) == 1 else name


def _open_and_flock(lock: Path, subject: Path, what: str) -> tuple[Path, int, bool, bool]:
    """(lock, fd, created, flocked): the lock file, as its folder spells it (`on_disk_spelling`),
    opened and flocked, or flocked False where the file system has no flock. A file removed by its
    holder, or made under another spelling, before we got the flock is dropped for the file now at
    the path (see HeldLock.remove_if_created)."""
    for _attempt in range(LOCK_ATTEMPTS):
        lock = on_disk_spelling(lock)
        with output_errors(lock):
            opened = _open_lock_file(lock)
        if opened is None:
            continue
        fd, created = opened
        try:
            flocked = _try_flock(fd, subject, what)
            if not flocked or _names_same_file(on_disk_spelling(lock), fd):
                return lock, fd, created, flocked
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise _busy(subject, what, "a lock file that keeps being replaced")


@contextmanager
def _hold(lock: Path, subject: Path, what: str) -> Iterator[HeldLock]:
    """Hold `subject` exclusively through the lock file `lock`: flock, else the O_EXCL fallback. A
    stop while the lock file is made waits until its removal on failure is arranged: a stop landing
    in between left a lock file (and so the folder the command made) behind."""
    deferred = ExitStack()
    deferred.enter_context(stop_signals_deferred())
    try:
        lock, fd, created, flocked = _open_and_flock(lock, subject, what)
    except BaseException:
        deferred.close()  # a stop that arrived meanwhile is the answer, else this error
        raise
    try:
        with ExitStack() as held:
            with _lock_file_taken_back_on_failure(lock, fd, created), output_errors(lock):
                deferred.close()  # a stop deferred above is raised here, and the lock file made goes
                if not created and flocked:
                    _refuse_unless_a_lock_file(lock, fd)
                _require_writable(lock.parent)
                if flocked:
                    _remove_leftover_temporary(fd, subject)
                    _write_holder(fd)
                else:
                    held.enter_context(exclusive_file_lock(lock.with_name(lock.name + ".pid"), subject, what))
                held.enter_context(_registered(subject))
            yield HeldLock(lock, fd, created, flocked)
    finally:
        os.close(fd)


def _refuse_unless_a_lock_file(lock: Path, fd: int) -> None:
    """Exit 3 for a file at a lock file's name that no virnucpro command wrote: one holds a holder's
    details (a JSON object with its pid; after it, the end of longer ones its writer, stopped, did not
    cut), or nothing (its writer died before writing them; zeros after a crash). Read with the flock
    held, so no holder is writing it; a user's `.virnucpro.lock` was overwritten."""
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip("\x00 \t\r\n")
    try:  # a holder's details, then what a longer earlier holder's left when its writer was stopped
        holder = json.JSONDecoder().raw_decode(text)[0] if text else {"pid": None}
    except ValueError:
        holder = None
    if not (isinstance(holder, dict) and "pid" in holder):
        raise BadInputError(f"{lock} is a file that holds other data, not a virnucpro lock file: virnucpro never "
                            "writes through or replaces what it did not write", "move it away, then rerun")


@contextmanager
def _lock_file_taken_back_on_failure(lock: Path, fd: int, created: bool) -> Iterator[None]:
    """While a lock is being taken (its holder's details written: a full disk fails there), a failure
    removes the lock file this command created, still held (see `HeldLock.remove_if_created`), so that
    a command that fails before any work leaves the folder as it found it."""
    try:
        yield
    except BaseException:
        if created:
            _unlink_if_same(lock, fd)
        raise


def _require_writable(folder: Path) -> None:
    """Exit 10 at once when this user cannot create files in `folder`, which it has just locked (an
    existing lock file locks read-only): another user's folder in a shared one, a read-only mount.
    Otherwise found at the first write, maybe an hour of embedding later."""
    if os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return
    info = os.stat(folder)
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        raise storage_failure(OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder)), folder)
    raise OutputWriteError(f"cannot write into {folder}: permission denied (the folder is {_user_name(info.st_uid)}'s, "
                           f"mode {stat.filemode(info.st_mode)})",
                           "run as its owner, have them let your group write it (chmod g+w), or choose another folder")


def _user_name(uid: int) -> str:
    """The login name of `uid`, else the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"user {uid}"


@contextmanager
def _registered(subject: Path) -> Iterator[None]:
    """Remember, while held, that this process holds `subject` (its own outputs may nest inside)."""
    key = resolved_path(subject, "the output folder")
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)


def file_mode() -> int:
    """The mode a plain `open()` would give a new file (mkstemp would give 0600: unreadable to
    the other users of a shared models directory)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (/proc, since 4.7): setting
    it to 0 and back, the only other way, gives a file another thread creates meanwhile mode 0666."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: `data` under a temporary name beside it, renamed into place
    (see `replaced_atomically`). A link at `path` is replaced, never written through; callers that
    must not replace one check first."""
    with replaced_atomically(path) as temporary:
        with naming(path), open(temporary, "wb", opener=lambda name, flags: os.open(name, flags | NO_FOLLOW)) as handle:
            handle.write(data)


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A new temporary file beside `path` (`.NAME.XXXXXXXX.tmp`, created exclusively) for the block to
    write by name (a library that writes a file, say), renamed over `path` when the block ends: first
    synced, with the mode a plain `open()` gives (`file_mode`), then the rename synced, so a crash or
    power loss leaves the old file or the new one, never a torn one. A block that fails leaves nothing."""
    temporary = None
    try:
        with stop_signals_deferred():  # a stop between making the file and knowing its name would leave it
            temporary = _new_temporary(path)
        yield temporary
        _sync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def _new_temporary(path: Path) -> Path:
    """A new empty file `.NAME.XXXXXXXX.tmp` beside `path`, created exclusively (`new_temporary_file`)."""
    fd, name = new_temporary_file(path)
    os.close(fd)
    return name


def new_temporary_file(path: Path, within: Path | None = None) -> tuple[int, Path]:
    """A new file `.NAME.XXXXXXXX.tmp` beside `path` (or in the folder `within`), created exclusively,
    never through a link, open for reading and writing. Its mode is a plain `open()`'s: the umask's,
    or under a default ACL the ACL's (mkstemp's 0600, or a chmod after it, would set the ACL mask to
    nothing and lock the group out of a shared folder)."""
    folder = Path(within or path.parent)
    for _attempt in range(TEMPORARY_NAME_ATTEMPTS):
        name = folder / f".{path.name}.{''.join(secrets.choice(TEMPORARY_TAG) for _ in range(8))}.tmp"
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no temporary name left unused", str(folder))


def _sync_file(path: Path) -> None:
    """Wait until the regular file at `path` is on disk; never through a link. Its mode stays the one
    it was created with (`new_temporary_file`)."""
    fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def folder_lock(folder: Path, what: str, made: list[Path] | None = None) -> Iterator[HeldLock]:
    """Create `folder` if needed and hold it exclusively while the block runs (exit 3 when busy); the
    folders created are added to `made` (see `make_folder`)."""
    folder = Path(folder)
    with ExitStack() as stack:
        yield _enter_folder_lock(stack, folder, what, made)


def _enter_folder_lock(stack: ExitStack, folder: Path, what: str, made: list[Path] | None) -> HeldLock:
    """The folder's lock entered on `stack`; the folder is created again when its last holder
    removed it between our mkdir and our open (a finished embed removing its checkpoint folder)."""
    for _attempt in range(LOCK_ATTEMPTS):
        make_folder(folder, what, made)
        try:
            return stack.enter_context(_hold(folder / LOCK_NAME, folder, what))
        except FileNotFoundError:
            continue
    raise _busy(folder, what, "a folder that keeps being removed")


def lock_holder(folder: Path) -> str | None:
    """Who holds the folder lock of `folder`, in words (see `_holder_text`), without taking it or
    writing anything (a command that only reads the folder says why its files are not all in place);
    None when nobody holds it. Where there is no flock, a fallback lock file tells: a regular file
    (never read through a link) that is not stale."""
    holder = _flock_holder(on_disk_spelling(Path(folder) / LOCK_NAME))
    fallback = Path(folder) / FALLBACK_LOCK_NAME
    if holder is None and is_regular(fallback) and not _is_stale(fallback):
        holder = _holder_text(_read_text_or_empty(fallback))
    return holder


def _flock_holder(lock: Path) -> str | None:
    """The holder named in the lock file `lock` while another process holds its flock; None when nobody
    does, there is no such file, or the file system has no flock (the fallback lock file tells)."""
    return _holder_text(_read_text_or_empty(lock)) if held_by_another(lock) else None


def held_by_another(path: Path, lock: Callable[[int, int], None] | None = None) -> bool | None:
    """Whether another process holds a lock on `path` (`lock`: fcntl.flock, or fcntl.lockf for the POSIX
    locks Java's FileChannel takes), tried with a shared one that is never waited for and dropped at
    once; None when the file cannot be opened (never through a link) or its file system has no such
    lock. A process's POSIX locks on a file go with any close of it: this one holds none."""
    lock = lock or fcntl.flock  # looked up at each call, not bound once
    try:
        fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
    except OSError:
        return None
    try:
        lock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        lock(fd, fcntl.LOCK_UN)
        return False
    except OSError as exc:
        return True if exc.errno in (errno.EAGAIN, errno.EACCES) else None
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path, what: str) -> Iterator[HeldLock]:
    """Hold one output file exclusively (through `.NAME.lock` beside it) while the block runs. Its
    folder, made by the caller, is made again when another command removed it meanwhile (a failed
    one taking back the empty folders it made: they may have been ours too)."""
    path = Path(path)
    check_derived_names(path, what)
    lock = path.with_name(f".{path.name}.lock")
    with ExitStack() as stack:
        yield _enter_file_lock(stack, lock, path, what)


def _enter_file_lock(stack: ExitStack, lock: Path, path: Path, what: str) -> HeldLock:
    """The file's lock entered on `stack`, its folder made again while it keeps being removed."""
    for _attempt in range(LOCK_ATTEMPTS):
        try:
            return stack.enter_context(_hold(lock, path, what))
        except FileNotFoundError:  # the folder of the file removed meanwhile
            make_folder(path.parent, f"the folder of {what}")
    raise _busy(path.parent, f"the folder of {what}", "a folder that keeps being removed")


def check_derived_names(path: Path, what: str) -> None:
    """Exit 3 at once for an output file name that fits the file system but the names derived from it
    beside it do not (see DERIVED_NAME_EXTRA): the lock failed as a bug, the temporary file only
    once all the work was done."""
    size, limit = len(os.fsencode(path.name)), name_limit(path.parent)
    if size + DERIVED_NAME_EXTRA > limit:
        raise BadInputError(f"{what} {path}: the file name is too long for the file system with the names "
                            f"virnucpro writes beside it ({size} bytes, `.NAME.XXXXXXXX.tmp` needs "
                            f"{size + DERIVED_NAME_EXTRA}; at most {limit})",
                            f"choose a name of at most {limit - DERIVED_NAME_EXTRA} bytes")


# --- nesting -------------------------------------------------------------------------------------

def marker_kind(folder: Path) -> str | None:
    """The kind written in a folder's marker (the command that wrote the folder: run, prepare,
    predict); DAMAGED for a marker that is no sound record, UNREADABLE for one this user may not
    read; None without one."""
    path = folder / MARKER_NAME
    if not os.path.lexists(path):
        return None
    try:
        kind = (_loaded_marker(path) or {}).get("kind")
    except PermissionError:
        return UNREADABLE
    return kind if isinstance(kind, str) else DAMAGED


def _loaded_marker(path: Path) -> dict | None:
    """The JSON object of a marker; None when it is not one (empty or cut short by a crash, or edited,
    or not a regular file: never read through a link or from a FIFO). PermissionError when this user
    may not read it: it may well be sound, so it is never called damaged."""
    try:
        marker = json.loads(_read_regular_all(path))
    except PermissionError:
        raise
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    return marker if isinstance(marker, dict) else None


def _output_text(kind: str) -> str:
    """How a message names a virnucpro output of `kind`."""
    if kind == DAMAGED:
        return f"a virnucpro output (its record of the files virnucpro wrote, {MARKER_NAME}, is damaged)"
    if kind == UNREADABLE:
        return (f"a virnucpro output (its record of the files virnucpro wrote, {MARKER_NAME}, cannot be read: "
                "permission denied)")
    return f"a virnucpro '{printable(str(kind))[:40]}' output"


def refuse_nesting(target: Path, what: str, itself: bool = False, held_too: bool = False) -> None:
    """An output inside another virnucpro output (or, with `itself`, one) is refused (exit 3), unless
    this process holds that one (`run` writes its stages inside its own folder) and `held_too` is
    not set (a cache, which must outlive the command, may not go into its own output either)."""
    resolved = resolved_path(target, what)
    for parent in ([resolved] if itself else []) + list(resolved.parents):
        if parent in _held and not held_too:
            return
        _refuse_running_pipelines_outdir(parent, resolved, target, what)
        kind = marker_kind(parent)
        if kind is not None or parent in _held:
            where = "is" if parent == resolved else f"is inside {parent},"
            output = "this command's own output" if parent in _held else _output_text(kind)
            raise BadInputError(f"{what} {target} {where} {output}: writing there would change that "
                                "output (or one still being written)", "choose a folder outside it")


PIPELINE_RUN_LOCK = Path("pipeline_info") / ".virnucpro-run.lock"  # main.nf's lock on its --outdir


def _refuse_running_pipelines_outdir(folder: Path, resolved: Path, target: Path, what: str) -> None:
    """Exit 3 for an output under `folder` while a run of the pipeline holds it as its --outdir (Java's
    lock: POSIX, not flock), outside the folders where the run's tasks write (its work folder, EMBED's
    in its checkpoint folder: its lock file names them): its publishing replaced what a command wrote
    into a sample's folder."""
    lock = folder / PIPELINE_RUN_LOCK
    if not is_regular(lock) or not held_by_another(lock, fcntl.lockf):
        return
    try:
        own = json.loads(_read_regular(lock, limit=1 << 16) or "{}").get("own_folders") or []
        own = [Path(path).resolve() for path in own if isinstance(path, str)]
    except (OSError, ValueError, AttributeError, TypeError):
        own = []
    if any(resolved.is_relative_to(path) for path in own if path.is_relative_to(folder) and path != folder):
        return  # inside a folder of the run's own tasks (never --outdir itself, nor one above it)
    raise BadInputError(f"{what} {target} is inside {folder}, the --outdir of a run of the pipeline still going "
                        f"(it holds {lock}): that run's publishing would replace what this command writes",
                        "wait for that run to end, or choose a folder outside it")


# --- ownership -----------------------------------------------------------------------------------

def _signature(path: Path) -> list[int]:
    """Size and modification time of `path` itself: a link put in place of our file never matches."""
    info = path.lstat()
    return [info.st_size, info.st_mtime_ns]


# the coarser steps some file systems keep times in: FAT 2 s, exFAT 10 ms, NTFS 100 ns (and 1 s, 1 ms, 1 us)
TIME_STEPS_NS = (2_000_000_000, 1_000_000_000, 10_000_000, 1_000_000, 1_000, 100)


def _matches(recorded: object, now: list[int] | None) -> bool:
    """`now` is the recorded file: the same size and the same time, as exactly as its file system keeps
    times (a `cp -a` or `mv` onto a FAT, exFAT or NTFS disk cuts the time down to its step). Never a
    later time: a change makes a file newer."""
    if now is None or not isinstance(recorded, list) or recorded[0] != now[0]:
        return False
    step = next((step for step in TIME_STEPS_NS if now[1] % step == 0), 1)
    return 0 <= recorded[1] - now[1] < step


def _walk(folder: Path, strict: bool = True) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk, raising for a folder it cannot list (`strict`): os.walk skips one, and a publish then
    moved none of its files (and removed them), or a check found nothing to refuse, and said so
    nowhere. Not strict (naming a stranger's files in the way), one is skipped: named whole instead."""
    return os.walk(folder, onerror=_raise if strict else None)


def _raise(exc: OSError) -> None:
    raise exc


def _files_under(folder: Path, names: Iterable[str], strict: bool = True) -> Iterator[str]:
    """Relative paths of the regular files (and other non-folders) at or under `names`, and of empty
    folders: a folder where a file of ours was is no file of ours (publishing over it failed midway).
    `strict`: see `_walk`."""
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            for root, dirs, files in _walk(path, strict):
                linked = [d for d in dirs if (Path(root) / d).is_symlink()]  # never written through
                for file in files + linked:
                    yield (Path(root) / file).relative_to(folder).as_posix()
                if not dirs and not files:
                    yield Path(root).relative_to(folder).as_posix()
        elif path.exists() or path.is_symlink():
            yield name


def _shown(folder: Path, rel: str) -> str:
    """`rel` as a refusal names it: a folder (no link) with a trailing `/`, so that the fix can say so."""
    path = folder / rel
    return f"{rel}/" if path.is_dir() and not path.is_symlink() else rel


def _these(shown: list[str]) -> str:
    """How a fix names the entries of a refusal: files, folders (a trailing `/`), or both."""
    folders = sum(name.endswith("/") for name in shown)
    if len(shown) == 1:
        return "that folder" if folders else "that file"
    return {0: "those files", len(shown): "those folders"}.get(folders, "those files and folders")


def _with_folders(folders: list[str], count: int) -> str:
    """The folders to move together with the files a refusal names (see `OutputFolder._unrecorded_folders`)."""
    if not folders:
        return ""
    plural = "s" if len(folders) > 1 else ""
    return f", and the folder{plural} {_listed(folders)} with {'it' if count == 1 else 'them'}"


def _listed(names: list[str]) -> str:
    """The first ten of `names`, then how many more (at least: a walk stopped at WALKED_MAX)."""
    more = f"{'at least ' if len(names) >= WALKED_MAX else ''}{len(names) - 10:,} more"
    return ", ".join(map(printable, names[:10])) + (f" and {more}" if len(names) > 10 else "")


class OutputFolder:
    """A locked output folder of one kind; `publish` moves finished files in and records them."""

    def __init__(self, folder: Path, kind: str, names: Iterable[str], what: str = "--outdir"):
        self.folder, self.kind, self.what = Path(folder), kind, what
        self.names = tuple(names)  # the top-level entries this kind of output consists of
        self.recorded: dict[str, list[int]] = {}
        self.published = False  # whether this command has moved any output in yet
        self.cut_short = False  # whether the record says an earlier publish was cut short (`check`)
        self._along: list[tuple[Path | None, list[str]]] = []  # see `with_next_publish`

    def check(self) -> None:
        """Refuse (exit 3) a folder holding anything this command could replace but did not write."""
        marker = self._read_marker()
        entries = sorted(p.name for p in self.folder.iterdir() if p.name not in OURS)
        if marker is None:
            if entries:
                self._refuse_without_record(entries)
            return
        self.recorded = dict(marker["files"])
        for rel, signature in marker.get("publishing", {}).items():  # moved in by a publish cut short
            if _matches(signature, _signature_or_none(self.folder / rel)):
                self.recorded[rel] = signature
        self._refuse_unproven("which virnucpro did not write (or which changed since it did)",
                              written_by=marker.get("virnucpro_version"))
        self.cut_short = bool(marker.get("publishing"))

    def holds_a_whole_earlier_output(self) -> bool:
        """Whether the folder holds a whole earlier output, as `check` found it: its mark of a complete
        set recorded, no publish cut short, and every file recorded still there (`check` refused
        those there that are not as recorded)."""
        return (bool(self.names) and self.names[-1] in self.recorded and not self.cut_short
                and all(_signature_or_none(self.folder / rel) is not None for rel in self.recorded))

    def _refuse_without_record(self, entries: list[str]) -> None:
        """Refuse (exit 3) a folder without a record that is not empty, naming everything in the way at
        once. Unfinished work of virnucpro's (a `.virnucpro*` work folder) is offered the command that
        restores the record and keeps it; a finished output has nothing a record claiming no file keeps."""
        rels = self._entries_in_the_way(entries)
        lost_record = any(e.startswith(".virnucpro") for e in entries)
        why = (f"which virnucpro cannot prove it wrote: the folder holds virnucpro's work but not its record "
               f"of the files ({MARKER_NAME})" if lost_record else
               "which virnucpro did not write as this command's output (the folder is neither empty nor "
               "a virnucpro output of this command; files another command wrote, such as embedding files or "
               "models, are no exception)")
        raise self._foreign([_shown(self.folder, rel) for rel in rels], why, lost_record=lost_record,
                            holding=self._unrecorded_folders(rels))

    def _entries_in_the_way(self, entries: list[str]) -> list[str]:
        """A folder without a record is written only once empty: the files in it (and its empty
        folders), walked no further than WALKED_MAX (it may be a home folder), the user's others first,
        then those at names this command writes in the order it writes them, then hidden folders (work
        and staging folders: named whole, not file by file)."""
        hidden = [e for e in entries if e.startswith(".") and (self.folder / e).is_dir()
                  and not (self.folder / e).is_symlink()]
        ours = [name for name in self.names if name in entries]
        ordered = [e for e in entries if e not in ours and e not in hidden] + ours
        walked = list(islice(_files_under(self.folder, ordered, strict=False), WALKED_MAX))
        return (walked or ordered) + hidden  # `or`: gone meanwhile

    def _refuse_unproven(self, why: str, written_by: object = None) -> None:
        """Refuse (exit 3) when a file under this output's names is not the one recorded as ours:
        checked when the command starts and again when it publishes, hours later."""
        unproven = [rel for rel in _files_under(self.folder, self.names)
                    if not _matches(self.recorded.get(rel), _signature_or_none(self.folder / rel))
                    and not self._emptied_folder_of_ours(rel)]
        if unproven:  # all of them at once: after a lost record, one rerun per file was needed
            if all(self._only_retimed(rel) for rel in unproven):
                why += (": their sizes are as recorded, their times are not, as after a copy that does not keep "
                        "times (`cp -r`; `cp -a` keeps them)")
            raise self._foreign([_shown(self.folder, rel) for rel in unproven], why, written_by=written_by,
                                holding=self._unrecorded_folders(unproven))

    def _unrecorded_folders(self, rels: list[str]) -> list[str]:
        """The outermost folders (no link) holding files of `rels` under which the record names no file:
        moved without them, each would be left empty and refused in turn (`_emptied_folder_of_ours`
        accepts only a folder that held files recorded as ours), so the fix names them too."""
        folders: list[str] = []
        for rel in rels:
            parts = rel.split("/")
            holders = ("/".join(parts[:depth]) for depth in range(1, len(parts)))
            folder = next((f for f in holders if self._is_unrecorded_folder(f)), None)
            if folder is not None and f"{folder}/" not in folders:
                folders.append(f"{folder}/")
        return folders

    def _is_unrecorded_folder(self, rel: str) -> bool:
        path = self.folder / rel
        return (path.is_dir() and not path.is_symlink()
                and not any(name.startswith(f"{rel}/") for name in self.recorded))

    def _only_retimed(self, rel: str) -> bool:
        """A recorded file whose size is as recorded but whose modification time is not."""
        recorded, now = self.recorded.get(rel), _signature_or_none(self.folder / rel)
        return recorded is not None and now is not None and now[0] == recorded[0] and not _matches(recorded, now)

    def _emptied_folder_of_ours(self, rel: str) -> bool:
        """An empty folder, no link, that held files recorded as ours (the user deleted them): still ours."""
        path = self.folder / rel
        return (path.is_dir() and not path.is_symlink() and not any(path.iterdir())
                and any(name.startswith(f"{rel}/") for name in self.recorded))

    def _read_marker(self) -> dict | None:
        """The folder's marker, of this kind and sound (exit 3 otherwise); None without one."""
        path = self.folder / MARKER_NAME
        if not os.path.lexists(path):
            return None
        refuse_unless_regular(path, f"virnucpro's record of the files it wrote ({MARKER_NAME})")
        try:
            marker = _loaded_marker(path)
        except PermissionError:
            raise self._unreadable(path) from None
        if marker is None or not isinstance(marker.get("kind"), str):
            raise self._damaged(path)
        self._refuse_other_kind(marker["kind"])  # before the files: another kind lists other names
        if not (self._valid_files(marker.get("files")) and self._valid_files(marker.get("publishing", {}))):
            raise self._damaged(path)
        return marker

    def _damaged(self, path: Path) -> BadInputError:
        """A marker that cannot be read: a crash while an older virnucpro wrote it, or an edit. The fix
        keeps the folder's unfinished work: a record claiming no file adopts nothing, so every output
        file found at a name this command writes is still refused as not proven ours."""
        return BadInputError(f"{path}, virnucpro's record of the files it wrote in {self.folder}, is damaged "
                             "(empty or cut short by a crash, or edited), so virnucpro cannot tell which files "
                             "there it wrote", self._record_fix("to keep the work in that folder"))

    def _unreadable(self, path: Path) -> BadInputError:
        """A marker this user may not read (another user's, mode 0600, say): it may be sound, so the
        fix never replaces it; whoever may read it can work in the folder."""
        try:
            info = path.lstat()
            whose = f" (it is {_user_name(info.st_uid)}'s, mode {stat.filemode(info.st_mode)})"
        except OSError:
            whose = ""
        return BadInputError(f"cannot read {path}: permission denied{whose}, so virnucpro cannot tell which files "
                             f"in {self.folder} it wrote", "run the command as the user who wrote that folder, have "
                             "them let you read and write it, or choose another folder")

    def _record_fix(self, why: str) -> str:
        """The fix for a lost or damaged marker: the shell command that writes one claiming no file."""
        record = shell_word(json.dumps({"kind": self.kind, "files": {}}))
        return (f"{why}, replace the record with one that claims no file: echo {record} > "
                f"{shell_word(str(self.folder / MARKER_NAME))} ; then rerun: virnucpro keeps the work there (a `run` "
                "resumes from it) and refuses, naming it, any output file it can no longer prove it wrote (move "
                "those aside). Or choose another folder")

    def _refuse_other_kind(self, kind: str) -> None:
        if kind != self.kind:
            raise BadInputError(f"{self.what} {self.folder} holds {_output_text(kind)}, not a "
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

    def _foreign(self, rels: list[str], why: str, lost_record: bool = False, written_by: object = None,
                 holding: list[str] | None = None) -> BadInputError:
        """Files (and folders, named with a trailing `/`) this command would replace but cannot prove it
        wrote (the first ten named); `lost_record`: the folder holds virnucpro's unfinished work (a
        `.virnucpro*` folder), so the fix says how to restore its record and keep it; `written_by`: the version
        that wrote the folder's record, named when it is another one (whose work this version does not
        reuse); `holding`: folders to move with those files (see `_unrecorded_folders`)."""
        shown = _listed(rels)
        if isinstance(written_by, str) and written_by != __version__:
            return BadInputError(f"{self.what} {self.folder} was written by virnucpro {printable(written_by[:40])}, and this "
                                 f"is {__version__}: it cannot prove it wrote {shown}, and virnucpro never "
                                 "replaces files it did not write",
                                 "move that folder away or delete it (another version's work is not reused), "
                                 "or choose another folder")
        fix = f"move {_these(rels)}{_with_folders(holding or [], len(rels))}, or choose another folder"
        if lost_record:
            fix = (f"{fix}; if it is virnucpro's unfinished work whose record {MARKER_NAME} was lost (or never "
                   "written: the first 0.1.0 builds wrote none), "
                   + self._record_fix("to keep it"))
        return BadInputError(f"{self.what} {self.folder} holds {shown}, {why}; virnucpro never "
                             "replaces files it did not write", fix)

    def publish(self, staging: Path, names: Iterable[str]) -> None:
        """Move finished entries from `staging` into the folder, replacing only our own earlier
        files; entries of the earlier output that the new one lacks are removed. The last name marks
        a complete set: it lands last, after the entries that go with it (`with_next_publish`)."""
        check_stop()  # a stop that arrived in a place that swallowed its exception ends here
        names = list(names)
        self._refuse_unproven("which appeared or changed while this command ran (virnucpro did not write it)")
        moves = [(staging, name) for name in names[:-1]]
        moves += [(along, name) for along, along_names in self._along if along is not None for name in along_names]
        removed = [name for along, along_names in self._along if along is None for name in along_names]
        with stop_signals_deferred():  # renames only: a stop meanwhile would leave old and new files mixed
            self._move_in([*moves, (staging, names[-1])], removed)
            outputs_in_place(self.folder)  # a stop from here on (this one's end included) says they are complete
        self._along.clear()

    def with_next_publish(self, staging: Path | None, names: Iterable[str]) -> None:
        """Entries that move in from `staging` (with None: our earlier ones that are removed) together
        with the next `publish`, before its last name: `run`'s embeddings go with predict's files, so
        neither a stop nor a kill leaves one run's tables beside another run's embeddings."""
        self._along.append((staging, list(names)))

    def _move_in(self, moves: list[tuple[Path, str]], removed: list[str]) -> None:
        """`publish` once the folder is checked: the earlier set's files dropped, the mark of a complete
        set (the last name moved) first, then the files the new ones replace (a folder merges file by
        file), our stale ones and those under `removed`; the new ones moved in (each name from its
        folder), the mark last, and the record of them written. A kill midway leaves no table of the
        earlier set beside the new ones."""
        # the files about to move in are ours from before the first move: a publish cut short by a
        # signal, a kill or a full disk leaves a folder its rerun recognises. Recorded before anything
        # is dropped too: a record that cannot be written (a full disk) leaves the earlier set whole.
        self._write_marker(publishing={rel: _signature(source / rel) for source, name in moves
                                       for rel in _files_under(source, [name])})
        # checked once more right before the first drop: a refusal leaves the earlier set whole (`_drop`
        # and `_merge_folder` check each file again at its own moment)
        self._refuse_unproven("which appeared or changed while this command ran (virnucpro did not write it)")
        last = moves[-1][1]
        if (self.folder / last).is_file():  # the last name marks a complete set: gone until it is
            self._drop(last)
        earlier = set(self.recorded)
        stale = self._stale({name: source for source, name in moves}, removed)
        for rel in [name for _source, name in moves if name in earlier] + stale:
            self._drop(rel)
        self._remove_emptied_folders([rel for rel in stale if rel.split("/", 1)[0] in removed])
        self.published = True
        for source, name in moves:
            target = self.folder / name
            if target.is_dir() and not target.is_symlink():
                _merge_folder(source / name, target, self.recorded, name)
            elif name in earlier:  # the name of our own earlier file, dropped just above
                os.replace(source / name, target)
            else:
                _take_new_name(source / name, target)
            for rel in _files_under(self.folder, [name]):
                self.recorded[rel] = _signature(self.folder / rel)
        self._write_marker()

    def _stale(self, sources: dict[str, Path], removed: list[str]) -> list[str]:
        """Our recorded files that go: those under `removed`, and those under a name moved in from
        `sources` (name: the folder it comes from) that the new output lacks."""
        def goes(rel: str) -> bool:
            top = rel.split("/", 1)[0]
            return top in removed or (top in sources and not (sources[top] / rel).exists())

        return [rel for rel in self.recorded if goes(rel)]

    def _remove_emptied_folders(self, dropped: list[str]) -> None:
        """Remove the folders that held our `dropped` files once empty (an output this run does not make
        again): a later run would take an empty one for someone else's. Before the record drops those
        files: a kill meanwhile leaves an emptied folder the record still shows as ours."""
        for folder in sorted({parent for rel in dropped for parent in Path(rel).parents if parent != Path(".")},
                             key=lambda path: len(path.parts), reverse=True):
            with suppress(OSError):  # not empty (a file of someone else's is never removed), or gone
                (self.folder / folder).rmdir()

    def _drop(self, rel: str) -> None:
        """Remove our recorded file `rel`, unless it changed since publish checked the folder (exit 3)."""
        _refuse_changed_meanwhile(self.folder / rel, self.recorded.get(rel))
        (self.folder / rel).unlink(missing_ok=True)
        self.recorded.pop(rel, None)

    def _write_marker(self, publishing: dict[str, list[int]] | None = None) -> None:
        path = self.folder / MARKER_NAME
        tmp = path.with_name(MARKER_TMP_NAME)
        data = {"kind": self.kind, "virnucpro_version": __version__, "files": dict(sorted(self.recorded.items()))}
        if publishing:
            data["publishing"] = dict(sorted(publishing.items()))
        with output_errors(path), stop_signals_deferred():  # a stop meanwhile would leave the temporary
            _write_synced(tmp, (json.dumps(data, indent=1) + "\n").encode())
            _replace_with_ours(tmp, path)
            sync_folder(self.folder)  # the rename itself on disk: a power loss leaves the old or new marker


def _replace_with_ours(tmp: Path, path: Path) -> None:
    """Rename our temporary `tmp` over `path`. When the rename is refused (the marker of another user
    in a sticky folder, say) the temporary goes too, and the error names `path`, not the temporary:
    a temporary left there would block the folder's owner, who may not remove it either."""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _write_synced(path: Path, data: bytes) -> None:
    """Write `path` (created exclusively, never through a link) and wait until its bytes are on disk
    (before it is renamed over a marker: else a power loss can leave the new name pointing at an
    empty file)."""
    fd = create_exclusive(path, "virnucpro's temporary record")
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:  # a full disk, say: the file is ours (created exclusively), cut short
        path.unlink(missing_ok=True)
        raise


def sync_folder(folder: Path) -> None:
    """Wait until the folder's entries (a rename into it) are on disk; a no-op where the file system
    or platform cannot sync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in NO_DIRECTORY_SYNC:
            raise
    finally:
        os.close(fd)


def _is_signature(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))


def _signature_or_none(path: Path) -> list[int] | None:
    try:
        return _signature(path)
    except OSError:
        return None


def _merge_folder(source: Path, target: Path, ours: dict[str, list[int]], under: str) -> None:
    """Move every file of `source` into `target` (our own files of the same name replaced: `ours`
    records them by their path `under` the output folder), then drop `source`."""
    for root, _dirs, files in _walk(source):
        relative = Path(root).relative_to(source)
        destination = target / relative
        destination.mkdir(parents=True, exist_ok=True)
        for file in files:
            rel = (Path(under) / relative / file).as_posix()
            if rel in ours:
                _refuse_changed_meanwhile(destination / file, ours[rel])
                os.replace(Path(root) / file, destination / file)
            else:
                _take_new_name(Path(root) / file, destination / file)
    shutil.rmtree(source)


def _refuse_changed_meanwhile(path: Path, recorded: list[int] | None) -> None:
    """Refuse (exit 3) to remove or replace our earlier file at `path` when it is no longer as recorded:
    written over since publish checked the folder, it is someone else's now (and gone: nothing to do)."""
    now = _signature_or_none(path)
    if now is not None and not _matches(recorded, now):
        raise BadInputError(f"{path} changed while virnucpro ran, after it was checked: virnucpro never replaces "
                            "files it did not write", "move it away, then rerun")


def _take_new_name(source: Path, target: Path) -> None:
    """Rename `source` to `target`, which nothing may hold: a file that appeared there since the
    folder was checked is refused (FileExistsError, exit 3), never replaced."""
    try:
        rename_new(source, target)
    except FileExistsError:
        raise BadInputError(f"{target} appeared while virnucpro ran, at a name it was about to write: virnucpro "
                            "never replaces files it did not write", "move it away, then rerun") from None


def _load_renameat2():
    """libc's renameat2 (Linux 3.15+, glibc 2.28+), or None where the platform lacks it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_renameat2 = _load_renameat2()
AT_FDCWD, RENAME_NOREPLACE = -100, 1
NO_RENAMEAT2 = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}  # a file system or kernel without it


def rename_new(source: Path, target: Path) -> None:
    """Rename `source` (a file or folder) to `target`, raising FileExistsError when anything holds
    that name, atomically where the kernel and file system allow (renameat2 RENAME_NOREPLACE; else a
    hard link for a file), else by looking first (a short window a rename cannot close)."""
    if _renameat2 is not None:
        if _renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in NO_RENAMEAT2:
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    if not source.is_dir() or source.is_symlink():
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError:
            pass  # a file system without hard links
        else:
            os.unlink(source)
            return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


@contextmanager
def claim(folder: Path, kind: str, names: Iterable[str]) -> Iterator[OutputFolder]:
    """Lock `folder`, check that it may be written, and hand out the `OutputFolder` to publish into.

    When the command is refused or fails before publishing anything, it takes back what it added
    (see `_undone_unless_published`) and removes the folders it created, parents included, while
    empty (`remove_made_folders`): a mistyped input leaves nothing behind.
    """
    folder, what = Path(folder), "--outdir"
    refuse_nesting(folder, what)
    made: list[Path] = []
    try:
        with folder_lock(folder, what, made) as lock:
            output = OutputFolder(folder, kind, names, what)
            with _undone_unless_published(output, lock):
                output.check()
                output._write_marker()  # ours from the first moment: a rerun after a kill recognises it
                yield output
    except BaseException:
        remove_made_folders(made)
        raise


@contextmanager
def held_folder(folder: Path, what: str) -> Iterator[HeldLock]:
    """`folder_lock` for a command that writes files straight into `folder`: when the block fails
    with no file added (the folder holds the names it held, our bookkeeping aside: a user's folder
    too), the lock file it created goes, and so do the folders it created, while empty
    (`remove_made_folders`)."""
    folder = Path(folder)
    made: list[Path] = []
    try:
        with folder_lock(folder, what, made) as lock:
            found = _names_but_ours(folder)
            try:
                yield lock
            except BaseException:
                if found is not None and _names_but_ours(folder) == found:
                    lock.remove_if_created()
                raise
    except BaseException:
        remove_made_folders(made)
        raise


@contextmanager
def _undone_unless_published(output: OutputFolder, lock: HeldLock) -> Iterator[None]:
    """When the block fails before publishing, remove our new marker (if the folder holds nothing
    else) and then, last and while still held, the lock file this command created."""
    marker = output.folder / MARKER_NAME
    had_marker = marker.exists()
    try:
        yield
    except BaseException as exc:
        if not output.published:
            if not had_marker and _only_bookkeeping(output.folder):
                marker.unlink(missing_ok=True)
            lock.remove_if_created()
            _say_earlier_output_kept(output, exc)
        raise


def _say_earlier_output_kept(output: OutputFolder, exc: BaseException) -> None:
    """A write that failed before publishing (a full disk) left an earlier complete output of the
    folder as it was: its message says so, so that nobody reruns or deletes for fear of a half-set."""
    if isinstance(exc, OutputWriteError) and output.holds_a_whole_earlier_output():
        exc.message += f"; the earlier output in {output.folder} is as it was"


def _names_but_ours(folder: Path) -> set[str] | None:
    """The names in `folder` but our lock and marker files; None when it cannot be listed."""
    try:
        return {p.name for p in folder.iterdir()} - set(OURS)
    except OSError:
        return None


def _only_bookkeeping(folder: Path) -> bool:
    """Whether the folder holds nothing but our lock and marker files."""
    try:
        return all(p.name in OURS for p in folder.iterdir())
    except OSError:
        return False


# --- hidden work folders -------------------------------------------------------------------------

def check_work_folder(folder: Path, ours: re.Pattern, what: str) -> None:
    """Refuse (exit 3) a hidden work folder of ours that is a link or not a folder, or that holds an
    entry virnucpro never writes there (`ours` matches the relative paths it writes, folders too),
    naming it: work there would go elsewhere, and cleaning up would delete a user's file."""
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise not_ours(folder, f"{what}, a folder virnucpro makes")
    stray = next(_strays(folder, ours), None)
    if stray is not None:
        raise BadInputError(f"{what} {folder} holds {stray}, which virnucpro does not write there; virnucpro "
                            "never deletes files it did not write", "move it away, then rerun")


def fresh_work_folder(folder: Path, ours: re.Pattern, what: str) -> Path:
    """`folder` new and empty, made by this process: what an earlier command a kill interrupted left
    there is removed, a link or file at its name or a file virnucpro never writes there is refused
    (exit 3, see `check_work_folder`), and one put there meanwhile too, so everything in it from now
    on is this command's."""
    check_work_folder(folder, ours, what)
    remove_written(folder, ours)
    try:
        folder.mkdir()
    except FileExistsError:
        raise not_ours(folder, f"{what}, a folder virnucpro makes (it appeared meanwhile)") from None
    return folder


def _strays(folder: Path, ours: re.Pattern) -> Iterator[str]:
    """Relative paths under `folder` that are not a regular file or folder matching `ours` (links
    are listed, never followed)."""
    for root, dirs, files in _walk(folder):
        for name in sorted(dirs + files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            mode = os.lstat(path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or not ours.fullmatch(rel):
                yield rel
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]


def remove_written(folder: Path, ours: re.Pattern) -> None:
    """Delete what virnucpro wrote in a hidden work folder: the regular files whose relative path
    `ours` matches, then the folders left empty; anything else stays (with the folders holding it)."""
    if folder.is_symlink() or not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files + dirs:
            _remove_if_ours(Path(root) / name, folder, ours)
    with suppress(OSError):
        folder.rmdir()


def _remove_if_ours(path: Path, folder: Path, ours: re.Pattern) -> None:
    """Remove one entry of a work folder when it is a regular file or an empty folder matching `ours`."""
    if not ours.fullmatch(path.relative_to(folder).as_posix()):
        return
    with suppress(OSError):
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode):
            path.unlink()
        elif stat.S_ISDIR(mode):
            path.rmdir()


def work_pattern(*alternatives: str) -> re.Pattern:
    """One pattern of the relative paths virnucpro writes in a work folder (regular expressions)."""
    return re.compile("|".join(f"(?:{alternative})" for alternative in alternatives))
