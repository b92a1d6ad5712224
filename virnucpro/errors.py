"""The exit-code table of CONTRACTS.md and the errors that carry those codes.

Every user-facing failure is raised as a `VirnucproError` subclass; the CLI prints its one-line
message and exits with its code. Nextflow's retry rules use the same numbers.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Iterator


class ExitCode(IntEnum):
    """Process exit codes shared by the CLI and the Nextflow configuration."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    BAD_INPUT = 3
    MODELS = 4
    INCONSISTENT = 5
    INTERRUPTED = 6
    GPU_OOM = 7
    DEVICE = 8
    NUMERICAL = 9
    OUTPUT_WRITE = 10
    # not in CONTRACTS.md's table: the status the kernel gives a process its out-of-memory killer
    # ended (128 + SIGKILL), which the Nextflow configuration retries with more memory
    OUT_OF_MEMORY = 137


class VirnucproError(Exception):
    """A failure the user can act on: one message, one exit code, no traceback."""

    code: ExitCode = ExitCode.UNEXPECTED
    multiline = False  # True: each line of the message is one problem (`models check`'s list)

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        """The message and its hint as printed: what they quote (a file name with a line break or a
        terminal escape in it) is escaped, so that it can neither forge a `fix:` line nor reach the
        terminal raw."""
        lines = self.message.split("\n") if self.multiline else [self.message]
        text = "\n".join(printable(line) for line in lines)
        return text if not self.hint else f"{text}\n  fix: {printable(self.hint)}"

    def __reduce__(self):
        # keep the hint when the error crosses a process boundary (prepare's workers)
        return (self.__class__, (self.message, self.hint))


class UsageError(VirnucproError):
    """A usage error found after parsing (exit 2): an option the inputs make necessary is missing, or
    a value only checkable once used (a models path, say) cannot work."""

    code = ExitCode.USAGE


class BadInputError(VirnucproError):
    """Input file missing, unreadable, not FASTA/FASTQ, duplicate ids, protein given as DNA."""

    code = ExitCode.BAD_INPUT


class ModelsError(VirnucproError):
    """Models missing, not downloadable (offline) or failing their checksum."""

    code = ExitCode.MODELS


class InconsistentInputsError(VirnucproError):
    """Files from different stages do not belong together (models, chunk size, missing shard)."""

    code = ExitCode.INCONSISTENT


class InterruptedByUser(VirnucproError):
    """A signal arrived; a checkpoint was saved and a rerun resumes."""

    code = ExitCode.INTERRUPTED


class StoppedWithOutputsInPlace(InterruptedByUser):
    """A stop that arrived while a finished set of outputs moved into `folder`: the move went on to
    its end, so the outputs there are complete and nothing needs a rerun."""

    def __init__(self, message: str, hint: str | None = None, folder: Path | None = None):
        super().__init__(message, hint)
        self.folder = folder

    def __reduce__(self):
        return (self.__class__, (self.message, self.hint, self.folder))


class StoppedWithNothingKept(InterruptedByUser):
    """A stop that left nothing a rerun resumes from (prepare keeps no checkpoints, and its unfinished
    output is removed): the rerun starts again."""


class GpuOutOfMemory(VirnucproError):
    """One sequence alone does not fit in GPU memory."""

    code = ExitCode.GPU_OOM


class DeviceError(VirnucproError):
    """CUDA or other device failure (including `--device cuda` without a GPU)."""

    code = ExitCode.DEVICE


class NumericalError(VirnucproError):
    """NaN or Inf in embeddings or scores."""

    code = ExitCode.NUMERICAL


class OutputWriteError(VirnucproError):
    """An output could not be written: disk full, quota, read-only file system, I/O error."""

    code = ExitCode.OUTPUT_WRITE
    lack_of_space = False  # a full disk, inode table or quota (`storage_failure`): freeing space fixes it


class HostOutOfMemory(VirnucproError):
    """The machine's memory (or the process's limit) ran out, here or in a prepare worker the
    out-of-memory killer ended: exit 137, as if the kernel had killed this process, so that a
    pipeline retries it with more memory."""

    code = ExitCode.OUT_OF_MEMORY


def errno_codes(*names: str) -> frozenset[int]:
    """The error numbers named, those this system has: EREMOTEIO is Linux's alone, and a name macOS
    lacks, read from the errno module at import, stopped every command there with a traceback."""
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


# errors of the storage an output goes to, not of virnucpro or its inputs
STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EIO: "an I/O error occurred",
                  errno.EFBIG: "a file grew past the largest size allowed (the file-size limit, `ulimit -f`, "
                                 "or the file system's own)", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied",
                  errno.ENAMETOOLONG: "a file name or path is too long for the file system",
                  errno.ENOTCONN: "the storage went away (its mount dropped: \"Transport endpoint is not "
                                  "connected\", a FUSE, sshfs or gcsfuse mount whose connection or process ended)",
                  errno.ESTALE: "the storage went away under this command (\"Stale file handle\": the NFS "
                                "server lost or replaced the file or folder)"}
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # what freeing space (bytes, or inodes) fixes
STORAGE_WENT_AWAY_HINT = ("mount the storage again (or wait until the server is back), then rerun the same command: "
                          "it resumes from the work already saved")
STORAGE_HINTS = {errno.ENOSPC: "free space on that file system (`df -h` shows it) or choose another output location",
                 errno.EDQUOT: "free space within your quota (`quota -s` shows it) or choose another output location",
                 errno.EROFS: "choose an output location on a writable file system",
                 errno.EIO: "check the storage (`dmesg` may say more) or choose another output location",
                 errno.EFBIG: "raise the file-size limit (`ulimit -f unlimited`) or choose another output location",
                 errno.ENAMETOOLONG: "choose a shorter name or a shallower folder",
                 errno.ENOTCONN: STORAGE_WENT_AWAY_HINT, errno.ESTALE: STORAGE_WENT_AWAY_HINT}
NO_INODES = "no free inodes are left on the file system (it has space, but no room for another file: see `df -i`)"
NO_INODES_HINT = "remove files there (many small ones free the most inodes) or choose another output location"
NAME_MAX_DEFAULT = 255  # the longest file name most file systems allow, when one does not say
PATH_MAX_DEFAULT = 4096  # Linux's limit on a path given to the kernel, its final NUL included


class ProcessLimitError(VirnucproError):
    """A limit this process runs under (open files; processes and threads) stopped it. Exit 10, the
    code of the other limit of this kind, the file-size limit (`ulimit -f`, docs/contracts.md): a
    retry under the same limits fails the same way, so pipelines do not retry it; not 137, which
    they retry with more memory (and more CPUs: more threads), nor 1, which says it is a bug."""

    code = ExitCode.OUTPUT_WRITE


THREAD_LIMIT = ("cannot start another thread or process: this process reached its limit on processes and "
                "threads (`ulimit -u`, or a container's or job's pids limit)")
THREAD_LIMIT_HINT = ("raise the limit (`ulimit -u`; `docker run --pids-limit`) or, if --threads was more than 1, "
                     "use fewer threads (--threads 1 starts the fewest), then rerun (embed and run resume from their "
                     "checkpoints)")
OPEN_FILE_LIMITS = {
    errno.EMFILE: ("this process reached its limit on open files (`ulimit -n`)",
                   "raise it (`ulimit -n 4096`; in a container or job, its nofile limit), then rerun"),
    errno.ENFILE: ("the system's table of open files is full (its limit, fs.file-max, is for every process "
                   "together)", "close files other programs hold open or raise fs.file-max, then rerun"),
}


def is_panic(exc: BaseException) -> bool:
    """Whether `exc` is a panic of a library's Rust code (tokenizers' thread pool, say): pyo3 raises it
    as `pyo3_runtime.PanicException`, a BaseException whose module cannot be imported by name."""
    return any(kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"
               for kind in type(exc).__mro__)


def process_limit(exc: BaseException) -> ProcessLimitError | None:
    """The error naming the limit of this process that `exc` (or an exception it wraps) ran into:
    open files (EMFILE, ENFILE), or processes and threads (a thread or a fork refused); else None."""
    seen = 0
    while exc is not None and seen < 10:
        code = open_files_errno(exc)
        if code is not None:
            what, hint = OPEN_FILE_LIMITS[code]
            where = f"cannot open {printable(os.fsdecode(exc.filename))}: " if exc.filename else ""
            return ProcessLimitError(f"{where}{what}", hint)
        if _thread_refused(exc):
            return ProcessLimitError(f"{THREAD_LIMIT} ({type(exc).__name__}: {str(exc)[:200]})", THREAD_LIMIT_HINT)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def open_files_errno(exc: BaseException) -> int | None:
    """EMFILE or ENFILE when `exc` is an OSError reporting it (HDF5 puts the errno in its text only)."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in OPEN_FILE_LIMITS:
        return exc.errno
    return open_files_limit_in_text(str(exc))


def open_files_limit_in_text(text: str) -> int | None:
    """EMFILE or ENFILE when a library's message names one of them; ENFILE's words ("... in system")
    are looked for first, as they hold EMFILE's."""
    for code in sorted(OPEN_FILE_LIMITS, key=lambda code: -len(os.strerror(code))):
        if os.strerror(code) in text:
            return code
    return None


def _thread_refused(exc: BaseException) -> bool:
    """Whether `exc` says a thread or a process could not start: Python's "can't start new thread", a
    fork or clone failing with EAGAIN (no file named), a Rust thread pool's panic naming either."""
    text = str(exc)
    if isinstance(exc, RuntimeError):
        return "can't start new thread" in text
    if isinstance(exc, OSError):  # not a non-blocking call that would wait (BlockingIOError: EAGAIN too)
        return exc.errno == errno.EAGAIN and exc.filename is None and not isinstance(exc, BlockingIOError)
    return is_panic(exc) and (os.strerror(errno.EAGAIN) in text or "thread" in text.lower())


def open_file_limit(exc: BaseException) -> bool:
    """Whether `exc` is this process's limit on open files (or the system's) being reached: no file is
    to blame, so readers let the error go on unchanged to the CLI, which names the limit and its fix
    (`process_limit`), where it would read as a damaged file."""
    return open_files_errno(exc) is not None


def printable(text: str) -> str:
    """`text` with unprintable characters (line breaks, escapes) written as escapes, for one-line
    messages that quote what a file holds."""
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(character: str) -> str:
    """An unprintable character as an escape: a byte of a file name that is not UTF-8 (Python's
    surrogate escape) as the byte, \\xff, the way `ls -b` and bash's $'...' write it."""
    if "\udc80" <= character <= "\udcff":
        return f"\\x{ord(character) - 0xdc00:02x}"
    return ascii(character)[1:-1]


def shell_word(text: str) -> str:
    """`text` as one word a shell reads back as the same bytes, for the commands a message suggests:
    shlex.quote's (any POSIX shell), or $'...' where it holds a file name's bytes that are not UTF-8
    (surrogate escapes) or control characters, which shlex would pass through as they are (bash,
    zsh and ksh read $'...'; dash, Debian's sh, does not)."""
    if all(c.isprintable() for c in text):
        return shlex.quote(text)
    escaped = (chr(b) if 32 <= b < 127 and chr(b) not in "'\\" else f"\\x{b:02x}" for b in os.fsencode(text))
    return "$'" + "".join(escaped) + "'"


# how the storage fails a read (a disk's I/O error, a network file system gone or timing out): an input
# that cannot be read so is no damaged file, and no output to write elsewhere
READ_STORAGE_ERRNOS = errno_codes("EIO", "EREMOTEIO", "ESTALE", "ENOTCONN", "ETIMEDOUT", "EHOSTDOWN", "ENXIO",
                                  "ENODEV", "EAGAIN", "ECONNRESET", "ENOLINK")
READ_STORAGE_HINT = ("the storage failed to read it (see `dmesg`, or the state of the network file system): "
                     "rerun once it reads again")


def os_cause(exc: BaseException) -> OSError | None:
    """The failed system call behind `exc`: itself, or the OSError a library turned into its own error
    (zipfile's "File is not a zip file" for a read that failed); None when there is none."""
    for candidate in (exc, exc.__context__):
        if isinstance(candidate, OSError) and candidate.errno is not None:
            return candidate
    return None


def storage_read_failure(path: Path, exc: BaseException) -> BadInputError | None:
    """Exit 3 for an input that the storage failed to read (READ_STORAGE_ERRNOS, in HDF5's text too),
    naming it; None for any other failure."""
    cause = os_cause(exc)
    code = cause.errno if cause is not None and cause.errno in READ_STORAGE_ERRNOS else next(
        (code for code in READ_STORAGE_ERRNOS if f"errno = {code}," in str(exc)), None)
    if code is None:
        return None
    hint = STORAGE_WENT_AWAY_HINT if code in (errno.ENOTCONN, errno.ESTALE) else READ_STORAGE_HINT
    return BadInputError(f"cannot read {path}: {STORAGE_ERRNOS.get(code) or os.strerror(code)}", hint)


def storage_errno(exc: BaseException) -> int | None:
    """The errno of STORAGE_ERRNOS that `exc` reports, if any (HDF5 gives it in its text only)."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in STORAGE_ERRNOS:
        return exc.errno
    text = str(exc)
    for code in STORAGE_ERRNOS:
        if f"errno = {code}," in text or os.strerror(code) in text:
            return code
    return None


def storage_error(exc: BaseException) -> str | None:
    """What went wrong with the storage, when `exc` is a storage failure (HDF5 reports errno in text);
    a full inode table when `note_inodes` found one."""
    code = storage_errno(exc)
    if code is None:
        return None
    return NO_INODES if getattr(exc, "no_inodes", False) else STORAGE_ERRNOS[code]


@contextmanager
def output_errors(path: Path) -> Iterator[None]:
    """Inside the block, a storage failure becomes exit 10 naming `path` (or the file it hit); a name
    too long for the file system is exit 3 (see `storage_failure`)."""
    try:
        yield
    except OSError as exc:
        if storage_errno(exc) is None:
            raise
        raise storage_failure(exc, path) from None


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Inside the block, a storage failure without a file name gets `path` (a failed write, flush or
    close names no file, and the error would otherwise name only the output folder), and a full disk
    is told from a full inode table while the files that took them are still there (`note_inodes`)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and storage_errno(exc) is not None:
            exc.filename = os.fspath(path)
        note_inodes(exc, path)
        raise


def note_inodes(exc: BaseException, path: Path) -> None:
    """Record on a "No space left on device" `exc` whether the file system had run out of inodes, not
    space, when it was met: a clean-up after it (the command's partial files removed) frees them, and
    a later look would call it a full disk, whose fix (freeing bytes) does not help."""
    if storage_errno(exc) == errno.ENOSPC and not hasattr(exc, "no_inodes"):
        exc.no_inodes = out_of_inodes(Path(os.fsdecode(exc.filename or path)))


class NamedFile:
    """An open output file whose failed writes, flushes and close name it (see `naming`)."""

    def __init__(self, handle, path: Path):
        self._handle, self.path = handle, Path(path)

    def write(self, data):
        with naming(self.path):
            return self._handle.write(data)

    def writelines(self, lines) -> None:
        with naming(self.path):
            self._handle.writelines(lines)

    def flush(self) -> None:
        with naming(self.path):
            self._handle.flush()

    def close(self) -> None:
        with naming(self.path):
            self._handle.close()

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self) -> "NamedFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_output(path: Path, mode: str, **kwargs) -> NamedFile:
    """`open(path, mode, **kwargs)` for an output file whose storage failures name it."""
    return NamedFile(open(path, mode, **kwargs), path)


def storage_failure(exc: OSError, path: Path) -> VirnucproError:
    """The error for the storage failure `exc` met writing into `path`: exit 10 (disk full, read-only,
    ...), except a name or path too long for the file system, which is the path the user chose, not
    the storage's state: exit 3 (docs/contracts.md), saying which limit it passes (the path may be
    one that is only read: the words fit both)."""
    if name_too_long(exc):
        return path_too_long(exc, path)
    note_inodes(exc, path)
    where = exc.filename or (f"into {path}" if os.path.isdir(path) else path)
    error = OutputWriteError(f"cannot write {where}: {storage_error(exc)}", storage_hint(exc))
    error.lack_of_space = storage_errno(exc) in SPACE_ERRNOS
    return error


def out_of_inodes(path: Path) -> bool:
    """Whether the file system holding `path` (or its nearest existing folder) has no free inode left
    while it has free space: "No space left on device" then means no room for another file, which
    freeing bytes does not fix. False when that cannot be told (no inode counts: btrfs says 0 files)."""
    for candidate in (path, *path.parents):
        try:
            info = os.statvfs(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return False
        return info.f_files > 0 and info.f_favail == 0 and info.f_bavail > 0
    return False


# characters the file systems of Windows refuse in names (NTFS mounted with windows_names, FAT, exFAT)
WINDOWS_FORBIDDEN = '<>:"\\|?*'


def refused_name(exc: OSError, path: Path) -> BadInputError | None:
    """Exit 3 for a new name the file system refuses for characters in it (the path the user chose,
    not the storage's state): NTFS under ntfs-3g's windows_names or vfat say EINVAL, exfat-fuse ENOENT
    with the folder there. None when `exc` is no such refusal (a folder on the path missing, say)."""
    target = Path(os.fsdecode(exc.filename)) if exc.filename else path
    chars = [c for i, c in enumerate(target.name) if (c in WINDOWS_FORBIDDEN or ord(c) < 32) and c not in target.name[:i]]
    if exc.errno not in (errno.EINVAL, errno.ENOENT) or not chars:
        return None
    if exc.errno == errno.ENOENT and not target.parent.is_dir():
        return None
    shown = " or ".join(map(repr, chars))
    return BadInputError(f"cannot create {printable(str(target))}: the file system of {printable(str(target.parent))} "
                         f"does not allow {shown} in names",
                         f"choose a name without {shown} (Windows file systems, NTFS, exFAT and FAT, refuse "
                         f"{' '.join(WINDOWS_FORBIDDEN)} in names)")


def path_too_long(exc: OSError, path: Path) -> BadInputError:
    """Exit 3 for a path (read or written) that the file system refuses as too long (ENAMETOOLONG)."""
    target = os.fsdecode(exc.filename) if exc.filename else str(path)
    return BadInputError(f"cannot use {target}: {too_long(target)}", STORAGE_HINTS[errno.ENAMETOOLONG])


def name_too_long(exc: BaseException) -> bool:
    """Whether `exc` says a file name or path is too long for the file system (exit 3, not 10)."""
    return storage_errno(exc) == errno.ENAMETOOLONG


def storage_hint(exc: OSError) -> str:
    """The fix for a storage failure: a raised file-size limit, a shorter name, or space, permissions,
    another place."""
    if getattr(exc, "no_inodes", False):
        return NO_INODES_HINT
    code = storage_errno(exc)
    if code in (errno.EACCES, errno.EPERM):
        return "fix the permissions or choose another output location"
    return STORAGE_HINTS.get(code, "check the storage (`dmesg` may say more), then rerun, or choose another output "
                                   "location")  # a failure no table names (EAGAIN): no permission to fix


def too_long(path: str) -> str:
    """Which limit `path` passes: a name in it longer than its file system allows, else the length of
    the whole path (PATH_MAX)."""
    encoded = os.fsencode(path)
    longest = max(len(name) for name in encoded.split(b"/"))
    limit = name_limit(Path(path).parent)
    if longest > limit:
        return f"the file name is too long for the file system ({longest} bytes; at most {limit})"
    if len(encoded) >= PATH_MAX_DEFAULT:
        return f"the path is too long for the file system ({len(encoded):,} bytes)"
    return f"{STORAGE_ERRNOS[errno.ENAMETOOLONG]} (this path or a name derived from it)"


def name_limit(folder: Path) -> int:
    """The longest file name, in bytes, the file system of `folder` (or of its nearest existing parent)
    allows; NAME_MAX_DEFAULT when it does not say."""
    for candidate in (folder, *folder.parents):
        try:
            limit = os.pathconf(candidate, "PC_NAME_MAX")
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError):
            break
        return limit if limit > 0 else NAME_MAX_DEFAULT
    return NAME_MAX_DEFAULT


# SIGHUP (the terminal closed, the ssh connection dropped) stops like SIGTERM, unless the command was
# started under nohup, which asks for it to be ignored (an ignored signal is inherited as ignored).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT) + (
    () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,))


_received: list[int] = []  # stop signals seen by `stop_signals_exit_interrupted`
_in_place: list[Path] = []  # the folder whose finished outputs all are in place (`outputs_in_place`)
_nothing_kept: list[bool] = []  # one entry per `stop_keeps_nothing` block the command is in


def _interrupted(signum: int) -> InterruptedByUser:
    """The stop's error: once the command's outputs all are in place, one saying so."""
    name = signal.Signals(signum).name
    if _in_place:
        return StoppedWithOutputsInPlace(f"{name} received once the finished outputs were in place in "
                                         f"{_in_place[0]}: stopped (they are complete)",
                                         "nothing to rerun: the outputs are complete", _in_place[0])
    if _nothing_kept:
        return StoppedWithNothingKept(f"{name} received: stopped (unfinished output removed; nothing to resume "
                                      "from)", "rerun the same command to start again")
    return InterruptedByUser(f"{name} received: stopped (unfinished output removed; "
                             "finished work and checkpoints kept)", "rerun the same command to resume")


@contextmanager
def stop_keeps_nothing() -> Iterator[None]:
    """Inside the block, a stop leaves nothing a rerun resumes from (prepare: no checkpoints, its
    unfinished output removed), and its message says so instead of promising a resume."""
    _nothing_kept.append(True)
    try:
        yield
    finally:
        _nothing_kept.pop()


def outputs_in_place(folder: Path | None) -> None:
    """Record that `folder`'s finished outputs all are in place (`OutputFolder.publish`): a stop from
    then on says so (`StoppedWithOutputsInPlace`). None: the record is forgotten (`run`'s inner
    prepare is whole, the run is not)."""
    _in_place[:] = [folder] if folder is not None else []


def stop_received(keeping_nothing: bool = False) -> InterruptedByUser:
    """The command's stop as when no outputs were in place, for a caller that turns a narrower stop
    (`StoppedWithOutputsInPlace` of an inner stage) into the command's own; `keeping_nothing`: the
    caller removed all it wrote, so the stop says nothing is left to resume from."""
    outputs_in_place(None)
    signum = _received[0] if _received else signal.SIGTERM
    if not keeping_nothing:
        return _interrupted(signum)
    with stop_keeps_nothing():
        return _interrupted(signum)


def check_stop() -> None:
    """Raise the stop again at a safe point: an exception raised by a signal handler inside a
    callback the interpreter guards (at-fork hooks, __del__) or a library's own `except` is
    swallowed, never lost here."""
    if _received:
        raise _interrupted(_received[0])


def stop_arrived() -> bool:
    """Whether a stop signal reached the running command, whatever error the code it landed in
    then raised (a library may turn our stop into its own error)."""
    return bool(_received)


def stop_inside(exc: BaseException) -> "VirnucproError | None":
    """The VirnucproError (a stop signal's, say) that `exc` wraps, if any: torch.compile wraps
    whatever its compiler meets, an exception our signal handler raised there included."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, VirnucproError):
            return exc
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
        seen += 1
    return None


@contextmanager
def stop_signals_exit_interrupted(exiting: bool = False) -> Iterator[None]:
    """While a command runs, a stop signal raises `InterruptedByUser` (exit 6) at once.

    The embedding loop installs its own handlers that finish the batch in flight and save a
    checkpoint first; outside it (imports, model loading, writing) nothing is left to save. Once a
    stop has arrived, the command ends with exit 6 however it ends (a library may swallow the
    exception or turn it into one of its own), and later stop signals are ignored from then on,
    through the interpreter's shutdown too: the process is already on its way out. `exiting` (the
    console script, whose process ends with the command) keeps them ignored after a command that
    finished as well, so a stop during the interpreter's shutdown cannot turn it into exit 143.
    """
    _received.clear()
    outputs_in_place(None)
    previous = {sig: signal.signal(sig, _stop_now) for sig in STOP_SIGNALS}
    unraisable, sys.unraisablehook = sys.unraisablehook, _quiet_about_stops(sys.unraisablehook)
    try:
        # the console script holds stop signals back while it loads (virnucpro.entry): one that
        # arrived meanwhile is handled here
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        yield
    except InterruptedByUser:
        raise
    except BaseException:
        check_stop()  # whatever ended the command after a stop, the stop is the answer
        raise
    else:
        check_stop()
    finally:
        sys.unraisablehook = unraisable
        if exiting:
            ignore_stop_signals()
        elif not _received:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        _received.clear()  # the stop belongs to this command only (its handlers stay ignoring)
        outputs_in_place(None)


def _stop_now(signum, _frame) -> None:
    """The handler of `stop_signals_exit_interrupted`: the stop raised at once (unless deferred)."""
    ignore_stop_signals()  # a second signal must not interrupt the clean-up of the first
    _received.append(signum)
    if not _deferring:  # else raised when the deferring block ends (`stop_signals_deferred`)
        raise _interrupted(signum)


def _quiet_about_stops(hook):
    """`hook`, but silent about a stop raised where the interpreter prints and swallows exceptions
    (a __del__, a weakref or import-lock callback): its traceback came before the stop's one
    message; the stop is recorded and raised again at the next `check_stop`."""
    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, InterruptedByUser):
            hook(unraisable)
    return quiet


def ignore_stop_signals() -> None:
    """Stop signals are ignored from here on."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def note_stop(signum: int) -> None:
    """A stop signal handled elsewhere (the embedding loop's handler) counts for the command's exit."""
    _received.append(signum)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold stop signals back in this thread (they stay pending) while processes are forked: a signal
    handled in the middle of a fork is lost in an at-fork hook or runs in the child's copy of our
    handler. The signal mask is put back as it was."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


_deferring: list[bool] = []  # one entry per `stop_signals_deferred` block the main thread is in


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Let no stop signal cut the block in two (moving a finished set of files in, creating a
    temporary file and keeping its name), and act on one that arrived meanwhile once it is done.

    Blocking them in this thread (`stop_signals_blocked`) is not enough: the kernel then hands a
    signal to another thread of the process (torch's, say), and Python runs the handler in the main
    thread all the same. So the command's handler only notes a stop while a block defers
    (`stop_signals_exit_interrupted`), and it is raised here when the block ends. Outside the main
    thread, where no handler runs, the block only holds them back in its own thread. Only a stop that
    arrived during the block is raised: the clean-up of one raised before (saving a cache in a
    `finally`) must not fail on it again."""
    if threading.current_thread() is not threading.main_thread():
        with stop_signals_blocked():
            yield
        return
    stops_before = len(_received)
    _deferring.append(True)
    try:
        with stop_signals_blocked():
            yield
    finally:
        _deferring.pop()
        if not _deferring and len(_received) > stops_before:
            check_stop()  # whatever ended the block, a stop that arrived meanwhile is the answer


def other_format(path: Path, what: str, found: object, reads: int, redo: str) -> InconsistentInputsError:
    """Exit 5 for a stage file of another format version than this virnucpro reads, saying which side
    is older and what to do: a newer file needs the virnucpro that wrote it; an older one is made
    again by `redo` with this version (in the pipeline, a -resume reused the older version's task)."""
    from virnucpro import __version__

    if isinstance(found, int) and found > reads:
        return InconsistentInputsError(
            f"{path} has {what}format_version {found}: a newer virnucpro wrote it; this one ({__version__}) "
            f"reads version {reads}", "use the virnucpro that wrote it (or a newer one)")
    return InconsistentInputsError(
        f"{path} has {what}format_version {found}: an older virnucpro wrote it; this one ({__version__}) "
        f"reads version {reads}", f"{redo} with this version (in the Nextflow pipeline: run it again "
                                  "without -resume, which reused a task of the older version)")


# --- paths as the user gave them ---------------------------------------------------------------------

def home_expanded(path: Path | str) -> Path:
    """`path` with a leading `~` or `~user` expanded as the shell would. A home that cannot be found
    (no such user; $HOME empty or relative: Python reads HOME='' as /, and a relative one would make
    the path depend on the current folder) leaves the path as it is, as the shell does, when its first
    part names something here (`~x.fa`, `~nosuchuser/out`); otherwise RuntimeError, which each caller
    says in its own terms, rather than a folder named `~...` made by mistake. Only the text's own
    first character counts: pathlib drops a leading `./`, so `./~x` would be taken for user x's home."""
    text = str(path)
    if not text.startswith("~"):
        return Path(path)
    try:
        if (text == "~" or text.startswith("~/")) and not os.path.isabs(os.environ.get("HOME", "/")):
            raise RuntimeError("HOME is not an absolute path")
        return Path(path).expanduser()
    except RuntimeError:  # no such user, or no home directory
        if os.path.lexists(text.split("/", 1)[0]):
            return Path(path).absolute()  # absolute: no later step takes it for a home
        raise


# --- inputs behind a folder that cannot be entered ----------------------------------------------------

def path_mode(path: Path, refused: type[VirnucproError] = BadInputError) -> int | None:
    """The mode of what is at `path` (links followed), None when nothing is: what `Path.exists`,
    `is_file` and `is_dir` ask of an input. Where a folder on its way cannot be entered, those raise
    PermissionError (Python 3.11), which the CLI takes for an output not written (exit 10); here it
    is `refused` naming that folder: BadInputError (exit 3) for an input, ModelsError for a models file."""
    try:
        return os.stat(path).st_mode
    except PermissionError:
        raise folder_refused(path, denied_folder(path) or Path(path).parent, refused) from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # as `Path.exists` answers False
            return None
        raise


def denied_folder(path: Path) -> Path | None:
    """The folder on the way to `path` that this user may not enter (search), looked for from the
    top down; None when every step can be looked up (the fault, if any, is the file's own mode). A
    link on the way is followed first: the folder at fault is on the way to where it leads."""
    path = Path(path)
    if os.path.realpath(path) != os.path.abspath(path):
        path = Path(os.path.realpath(path))
    for step in (*reversed(path.parents), path):
        try:
            os.stat(step)
        except PermissionError:
            return step.parent
        except OSError:
            return None
    return None


def folder_refused(path: Path, folder: Path, refused: type[VirnucproError], what: str = "") -> VirnucproError:
    """`refused` (the exit code of what `path` is) for a `path` that cannot be read because `folder`,
    on its way, cannot be entered: the file may be sound, the folder's mode is the fault."""
    return refused(f"cannot read {what}{path}: permission denied on its folder {folder}",
                   access_hint(folder, "rx", "make the folder searchable"))


def access_hint(path: Path, rights: str, wanted: str = "make it readable") -> str:
    """How this user gets `rights` ("r", "rx") on `path`: `chmod u+...` when it is theirs; else only
    its owner (or root) can change its mode, so the hint names the owner and what they can run."""
    try:
        owner = os.stat(path, follow_symlinks=False).st_uid
    except OSError:
        owner = None
    shown = shell_word(str(path))
    if owner is None or owner == os.geteuid():
        return f"{wanted} (chmod u+{rights} {shown}) and rerun"
    return (f"{wanted}: it belongs to {_user_name(owner)}, and only they (or root) can change it: "
            f"`chmod o+{rights} {shown}` (or g+{rights} for a group you share), or run as that user")


def _user_name(uid: int) -> str:
    """`name (uid N)`, or `uid N` for a uid with no account here (a container's)."""
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def resolved(path: Path, what: str) -> Path:
    """`path` absolute with every link followed. A loop of symbolic links on its way can never be
    followed: exit 3 naming it (Python 3.11's `resolve` raised RuntimeError, a crash report, and
    3.13's returns a path as if the loop were a missing folder: the kernel is asked instead)."""
    try:
        real = Path(path).resolve()
    except RuntimeError:
        raise link_loop(path, what) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_loop(path, what) from None
        raise
    if is_link_loop(path):
        raise link_loop(path, what)
    return real


def is_link_loop(path: Path) -> bool:
    """Whether following the links of `path` never ends (ELOOP), which `exists()` answers False as for a
    missing path."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def link_loop(path: Path, what: str, refused: type[VirnucproError] = BadInputError) -> VirnucproError:
    """`refused` for a path whose symbolic links lead back to themselves."""
    return refused(f"{what} {path} goes through a loop of symbolic links (they point at each other, "
                   "so no file or folder is ever reached)",
                   "point the link at a real folder or file (`ls -l` shows where each points), or choose another path")


def unopenable_file(path: Path, exc: OSError, what: str) -> VirnucproError:
    """Exit 3 for a file the user named (`what`: "input file", "shard") that cannot be opened, naming
    the fault and its own fix: a missing file or a link to a missing path, a file where a folder
    should be on its way, a folder on its way that cannot be entered, the file's own mode, a loop of
    links; any other reason as the system words it. One hint for all sent users the wrong way."""
    path = Path(path)
    if exc.errno == errno.ELOOP:
        return link_loop(path, what)
    if exc.errno in (errno.EACCES, errno.EPERM):
        folder = denied_folder(path)
        if folder is not None:
            return folder_refused(path, folder, BadInputError, f"{what} ")
        return BadInputError(f"cannot read {what} {path}: permission denied", access_hint(path, "r"))
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return BadInputError(f"{what} {path} is a symbolic link to a missing path ({os.readlink(path)})",
                             "point the link at the file, or give the file itself")
    if exc.errno == errno.ENOENT:
        length = what == "input file" and str(path) in ("300", "500")  # the original's command: `in.fa 500 500_model.pth`
        return BadInputError(f"{what} not found: {path}", "check the path" + (
            f" ({path} reads as the original VirNucPro's length argument: here it is --chunk-size {path})" if length else ""))
    if exc.errno == errno.ENOTDIR:
        return BadInputError(f"{what} {path} cannot be reached: a part of its path is a file, not a folder",
                             "check the path")
    return storage_read_failure(path, exc) or BadInputError(f"cannot read {what} {path}: {exc.strerror or exc}",
                                                            "give a regular file this user can read")


def not_a_folder(path: Path, option: str) -> BadInputError:
    """Exit 3 for a folder path taken by something else: a file, or a symbolic link to a missing path
    (which `mkdir` cannot follow; saying "a file" sent users looking for one) or in a loop."""
    if is_link_loop(path):
        return link_loop(path, option)
    if path.is_symlink() and not path.exists():
        return BadInputError(f"{option} {path} is a symbolic link to a missing path ({os.readlink(path)})",
                             "create the folder it points to, or choose another path")
    return BadInputError(f"{option} {path} is a file", "choose a directory path")
