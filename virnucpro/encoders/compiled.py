"""The fast path's elementwise work, fused by torch.compile (issue 10, point 2).

Each encoder layer splits its fast path around the attention kernel: `attention_inputs` (norm,
q/k/v projection, fp32 rotary for ESM-2) and `after_attention` (output projection, residual, norm,
MLP). `fused(function)` compiles one of those once per process with dynamic shapes: every layer of
a model and every batch length reuse one graph (its guards are on dtype and device, not on the
layer or the token count), and the matrix products stay cuBLAS calls with the bias, GELU, rotary,
residual and LayerNorm work fused around them. The attention kernel itself stays outside.

Compiled kernels are cached in a folder (`use_cache`), so the next task on any machine that sees
it loads them instead of compiling again. An entry torch cannot read there (damaged, or written by
another torch) is ignored and compiled again: one virnucpro warning (`quiet_unreadable_cache`), not
torch's traceback per entry.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable

from virnucpro.errors import OutputWriteError, UsageError, home_expanded, shell_word

TORCH_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"  # torch's own setting; triton's cache lives inside it
CACHE_LOGGER = "torch._inductor.codecache"  # where torch reports a cache entry it cannot load or write
CACHE_LOGGERS = (CACHE_LOGGER, "torch._functorch._aot_autograd.autograd_cache")


def wanted(requested: bool | None, device) -> bool:
    """Whether the fast path should be compiled: as asked, else (None) only on a GPU, where the
    compile time (tens of seconds, once per cache) buys fused kernels."""
    if requested is not None:
        return requested
    import torch

    return torch.device(device).type == "cuda"


@functools.lru_cache(maxsize=None)
def fused(function: Callable) -> Callable:
    """`function` compiled once per process with dynamic shapes (no recompile per batch length)."""
    import torch

    quiet_unreadable_cache()
    return torch.compile(function, dynamic=True)


class _UnreadableCacheEntries(logging.Filter):
    """Drops torch's warnings about a compile-cache entry it cannot load or write (a traceback on
    stderr per entry; torch compiles the graph again, or keeps what it compiled in this process
    only, which is all the user needs to know) and says each once per process as one virnucpro
    warning."""

    SAID = {"unable to load": "an entry could not be read (damaged, or written by another torch version); "
                              "ignored, the kernels are compiled again",
            "unable to write": "an entry could not be written (a full disk or quota?); this run uses the "
                               "kernels it compiled, later runs compile them again",
            "unable to serialize": "an entry could not be written (a full disk or quota?); this run uses the "
                                   "kernels it compiled, later runs compile them again"}

    def __init__(self):
        super().__init__()
        self.warned: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        said = next((text for key, text in self.SAID.items() if key in message), None)
        if said is None:
            return True
        if said not in self.warned:
            self.warned.add(said)
            from virnucpro.console import warn

            warn(f"compile cache {cache_in_use()}: {said}")
        return False


def quiet_unreadable_cache() -> None:
    """Put `_UnreadableCacheEntries` on torch's cache loggers (once per process)."""
    said = _UnreadableCacheEntries()
    for name in CACHE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _UnreadableCacheEntries) for existing in logger.filters):
            logger.addFilter(said)


def default_cache() -> Path | None:
    """This user's cache folder for compiled kernels ($XDG_CACHE_HOME when absolute, as the XDG spec
    says, else ~/.cache), its first folder named with the user id: under Apptainer the image's
    XDG_CACHE_HOME (/tmp) is shared by every user of a node, and each gets a folder of their own
    there. None for a user without an absolute home (as in some containers)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = _home()
        if home is None:
            return None
        base = home / ".cache"
    return Path(base) / f"virnucpro-{os.geteuid()}" / "torch-compile"


def settle_cache(folder: Path | None, compiling: bool) -> Path:
    """Settle torch's cache folder before any model is built: `use_cache(folder)` when kernels will
    be compiled; otherwise (unless the user set TORCHINDUCTOR_CACHE_DIR) a new empty folder of this
    process, as torch makes its cache folder even when nothing compiles (on some CPU model
    builds), and its default, /tmp/torchinductor_<user>, is a name any user of the machine can
    take first. Nothing is read from it, so it need not be private as a compile cache must."""
    folder = _named(folder) if folder is not None else None  # a usage error whether or not it is used
    if compiling or os.environ.get(TORCH_CACHE_VARIABLE):
        return use_cache(folder)
    os.environ[TORCH_CACHE_VARIABLE] = str(_scratch())
    return Path(os.environ[TORCH_CACHE_VARIABLE])


@functools.lru_cache(maxsize=None)
def _scratch() -> Path:
    """A new empty folder for this process, removed when it exits (exit 10 where none can be made)."""
    try:
        return _process_folder(SCRATCH_PREFIX)
    except OSError as error:  # no writable temporary folder at all
        raise OutputWriteError(f"no writable temporary folder for torch's cache: {error}",
                               "set TMPDIR to a folder of yours (in a container: docker run --tmpfs /tmp, "
                               "or -e TMPDIR=DIR)") from None


SYSTEM_TEMPORARY_FOLDERS = ("/tmp", "/var/tmp", "/usr/tmp")  # tempfile's candidates after TMPDIR, TEMP, TMP


def temporary_folder() -> Path:
    """tempfile's temporary folder, but never its silent last resort, the current folder: that is
    the user's data in a container (`docker run --read-only -w /data`), where torch's folders would
    be left after a kill. A current folder named in TMPDIR, TEMP or TMP is the user's choice. OSError
    (as tempfile's) when there is none."""
    found = os.path.abspath(tempfile.gettempdir())  # tempfile gives TMPDIR=. as "."
    variables = [(name, os.path.abspath(os.environ[name])) for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)]
    _refuse_passed_over(variables, found)
    named = [folder for _name, folder in variables]
    try:
        current = os.getcwd()
    except OSError:  # the current folder is gone: tempfile did not fall back to it
        return Path(found)
    if found != current or found in (*named, *SYSTEM_TEMPORARY_FOLDERS):
        return Path(found)
    tried = [*named, *SYSTEM_TEMPORARY_FOLDERS]
    raise FileNotFoundError(errno.ENOENT, f"No usable temporary directory found in {tried} (the current folder, "
                                          f"{found}, is not used for it)")


def _refuse_passed_over(variables: list[tuple[str, str]], found: str) -> None:
    """OSError when tempfile silently passed over the folder the first of TMPDIR, TEMP and TMP names
    (full, read-only, missing) for another: it was named for a reason (a job's scratch where /tmp is
    small), and what would go to /tmp instead could fill it or be left there."""
    if not variables or variables[0][1] == found:
        return
    name, folder = variables[0]
    try:
        fd, probe = tempfile.mkstemp(prefix=".virnucpro-probe-", dir=folder)
    except OSError as error:
        raise OSError(error.errno, f"{name}={folder} cannot be used: {error.strerror}") from None
    os.close(fd)  # usable again by now: tempfile's choice was made a moment ago
    os.unlink(probe)


SCRATCH_PREFIX, ONE_OFF_PREFIX = "virnucpro-torch-", "virnucpro-compile-"  # folders of one process each
OWNER_LOCK = ".virnucpro-owner.lock"  # in each, locked by its process for as long as that process lives
_owner_locks: list[int] = []  # the open lock files of this process's folders (closed by the kernel at exit)
# a folder of ours still without its owner lock this long after it last changed was made by a process
# killed in the instant between making it and locking it (no live process takes more than microseconds)
STRANDED_SECONDS = 24 * 3600


def _process_folder(prefix: str) -> Path:
    """A new folder in the temporary folder for this process alone, removed when it exits. It holds a
    lock file this process keeps locked, so that the next process removes it when a kill (SIGKILL,
    the out-of-memory killer) skipped the removal at exit (`_remove_abandoned_folders`)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=temporary_folder()))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    locks_work = _hold_owner_lock(folder)
    _remove_abandoned_folders(locks_work)
    return folder


def _hold_owner_lock(folder: Path) -> bool:
    """Lock `folder`'s owner lock for this process's life; whether it could. The lock file is made,
    locked and given `_owner_token` under another name, then renamed into place: no other process
    ever finds it free while this one lives. Where locks do not work no lock file is left, and the
    folder is then never taken for abandoned."""
    lock, fresh = folder / OWNER_LOCK, folder / f"{OWNER_LOCK}.new"
    try:
        handle = os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(handle, _owner_token(folder).encode())
        os.rename(fresh, lock)
    except OSError:
        os.close(handle)
        with contextlib.suppress(OSError):
            fresh.unlink()
        return False
    _owner_locks.append(handle)
    return True


def _owner_token(folder: Path) -> str:
    """What the owner lock of `folder` holds: this machine's name and the folder's own identity, so a
    copy of the folder (with its lock file) is never taken for one of ours, nor a folder another
    machine made where the temporary folder is shared (a lock there may hold on that machine only)."""
    info = os.lstat(folder)
    return f"{socket.gethostname()} {info.st_dev}:{info.st_ino}\n"


def _remove_abandoned_folders(locks_work: bool) -> None:
    """Remove this user's per-process folders in the temporary folder whose process was killed:
    their owner lock is free, or (where locks work) it was never put in place (`_stranded`). A
    folder that holds anything else without one (made by an older virnucpro, or where locks do not
    work), another user's, another machine's, a copy, or a link is left alone."""
    try:
        entries = os.scandir(temporary_folder())
    except OSError:
        return
    with entries:
        for entry in entries:
            if entry.name.startswith((SCRATCH_PREFIX, ONE_OFF_PREFIX)) and (
                    _abandoned(Path(entry.path)) or (locks_work and _stranded(Path(entry.path)))):
                shutil.rmtree(entry.path, ignore_errors=True)


def _stranded(folder: Path) -> bool:
    """Whether `folder` is a real folder of this user, unchanged for `STRANDED_SECONDS`, that holds
    nothing but (at most) an owner lock not yet renamed into place, which nobody holds: its process
    was killed between making the folder and locking it (`_hold_owner_lock`)."""
    try:
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or \
                time.time() - info.st_mtime < STRANDED_SECONDS:
            return False
        names = os.listdir(folder)
        if not set(names) <= {f"{OWNER_LOCK}.new"}:
            return False
        return not names or _free(folder / names[0])
    except OSError:
        return False


def _free(lock: Path, token: str | None = None) -> bool:
    """Whether the regular file `lock` (holding `token`, when given) can be locked now: nobody holds
    it. OSError when it cannot be opened."""
    handle = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode) or (
                token is not None and os.read(handle, 1024).decode(errors="replace") != token):
            return False
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held: its process lives
        return False
    finally:
        os.close(handle)


def _abandoned(folder: Path) -> bool:
    """Whether `folder` is a real folder of this user whose owner lock is a file that names this folder
    on this machine (`_owner_token`) and that nobody holds."""
    try:
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return False
        return _free(folder / OWNER_LOCK, _owner_token(folder))
    except OSError:
        return False


def use_cache(folder: Path | None = None) -> Path:
    """Point torch's compile cache at `folder` (default: the user's own TORCHINDUCTOR_CACHE_DIR,
    used as it is if it can be written (`_users_variable`), else `default_cache()`, used by the real
    path it was checked at and only if private: compiled kernels are code the task runs). A folder
    that cannot be written, or a default one another user could write to, is one warning and
    `_fallback()`; one in a virnucpro output is refused (exit 3). Returns the folder in use."""
    if folder is None and os.environ.get(TORCH_CACHE_VARIABLE):
        return _users_variable(Path(os.environ[TORCH_CACHE_VARIABLE]))
    chosen = _named(folder) if folder is not None else default_cache()
    problem = None
    if chosen is not None:
        from virnucpro.outdir import refuse_nesting

        refuse_nesting(chosen, "--compile-cache", itself=True, held_too=True)
        if folder is not None:
            problem = _writable(chosen)
        else:
            chosen, problem = _private(chosen)
    if chosen is None or problem:
        chosen = _fallback([problem] if problem else [])
        if problem:
            _warn_once(f"{problem}; using {chosen} instead (fix: give --compile-cache DIR, a folder of yours)")
    os.environ[TORCH_CACHE_VARIABLE] = str(chosen)
    return chosen


def _named(folder: Path | str) -> Path:
    """--compile-cache with `~`/`~user` expanded, made absolute; exit 2 when that home cannot be
    found or is not absolute (pathlib's RuntimeError was a traceback), as for --models."""
    text = str(folder)
    try:
        return home_expanded(folder).absolute()
    except RuntimeError:  # no such user, or no (absolute) home directory
        raise UsageError(f"--compile-cache {text!r}: the home directory of {text.split('/')[0]!r} cannot be "
                         "determined", "give the compile cache as an absolute path") from None


def _users_variable(folder: Path) -> Path:
    """The TORCHINDUCTOR_CACHE_DIR the user set, used as it is (their choice: no privacy check) when
    it is a folder that can be written, created if absent (`_writable`). Otherwise torch would fail
    on it with a traceback (a device, a file, a folder that cannot be made): one warning naming the
    variable, and `_fallback()` put in the variable, where torch reads it."""
    problem = _writable(folder)
    if problem is None:
        return folder
    problem = f"{problem} (from {TORCH_CACHE_VARIABLE})"
    chosen = _fallback([problem])
    _warn_once(f"{problem}; using {chosen} instead (fix: set {TORCH_CACHE_VARIABLE} to a folder of yours, "
               f"or unset {TORCH_CACHE_VARIABLE} and give --compile-cache DIR)")
    os.environ[TORCH_CACHE_VARIABLE] = str(chosen)
    return chosen


def _writable(folder: Path) -> str | None:
    """Create a folder the user named, the folders above it as any, itself private (0700): the
    pipeline names one in its checkpoint folder, which a group may share under umask 002, where a
    folder made as usual would let every member put kernels in it. One that exists is the user's
    choice, used as it is. Why it cannot be written, or None."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):  # a file torch cannot use either
            return None
    except OSError:
        pass
    return f"cannot write the compile cache {folder}"


def _private(folder: Path) -> tuple[Path | None, str | None]:
    """Create `folder` (each missing folder 0700), resolve it once, make it and its parent (the
    `virnucpro-<uid>` folder: both ours) 0700 and check that real path (`_not_private`): (the real
    path to use, None), or (None, why it cannot be used). Using the path that was checked means a
    link swapped afterwards cannot move the cache; 0700 means nobody else can even enter it, whatever
    modes torch gives the folders it makes inside."""
    missing = []
    part = folder
    while not os.path.lexists(part):
        missing.append(part)
        part = part.parent
    for part in reversed(missing):
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            continue  # made meanwhile: checked below with the rest
        except OSError as error:
            return None, f"cannot write the compile cache {folder} (cannot create {part}: {error.strerror})"
    real = Path(os.path.realpath(folder))
    for part in (real, real.parent):
        _close_to_others(part)
    reason = _not_private(real, own=2)
    if reason:
        return None, f"the compile cache {folder} could hold kernels another user put there ({reason})"
    return real, None


def _close_to_others(folder: Path) -> None:
    """Mode 0700 on a folder of this user's that others could enter (made with `mkdir -p`)."""
    try:
        info = os.lstat(folder)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.chmod(folder, 0o700)
    except OSError:
        pass  # judged as it is by `_not_private`


def _not_private(folder: Path, own: int) -> str | None:
    """Why a user other than this one could put files into the folder `folder` (a real path) or
    swap it, or None. Its `own` lowest folders (ours: the cache and its `virnucpro-<uid>`) must be
    this user's (or root's, outside a user namespace); every folder above, up to the user's home,
    this user's or root's; none writable by group or others, except that a sticky folder above
    them (like /tmp) may be writable by all: nobody else can rename or remove what is ours there.
    lstat: a link met here was swapped in after the path was resolved."""
    uid, home = os.geteuid(), _home()
    ours, above = frozenset({uid} if _namespace_root() else {uid, 0}), _trusted_owners()
    for level, part in enumerate((folder, *folder.parents)):
        try:
            info = os.lstat(part)
        except OSError as error:
            return f"{part}: {error.strerror}"
        writable = bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
        if level >= own and part == home and (info.st_uid == uid or (info.st_uid == 0 and not writable)):
            return None
        if not stat.S_ISDIR(info.st_mode):
            return f"{part} is not a folder"
        if info.st_uid not in (ours if level < own else above):
            return f"{part} belongs to uid {info.st_uid}"
        if writable and not (level >= own and info.st_mode & stat.S_ISVTX):
            fix = f" (fix: chmod go-w {shell_word(str(part))})" if info.st_uid == uid else ""
            return f"{part} can be written by group or others{fix}"
    return None


def _trusted_owners() -> frozenset:
    """This user, root, and in a user namespace the uid root's folders show as there."""
    return frozenset({os.geteuid(), 0, *_namespace_root()})


@functools.lru_cache(maxsize=None)
def _namespace_root() -> tuple[int, ...]:
    """In a user namespace (Apptainer without setuid, rootless containers), the overflow uid that
    root's folders show as there, which every unmapped owner shows as too: inside such a namespace
    they cannot be told apart. Empty outside one."""
    try:
        if Path("/proc/self/uid_map").read_text().split()[:3] != ["0", "0", "4294967295"]:
            return (int(Path("/proc/sys/kernel/overflowuid").read_text()),)
    except (OSError, ValueError):
        pass
    return ()


def _home() -> Path | None:
    """The user's home by its real path, or None without an absolute one (Python reads HOME='' as /)."""
    if not os.path.isabs(os.environ.get("HOME", "/")):
        return None
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        return None
    return Path(os.path.realpath(home)) if home.is_absolute() else None


def _fallback(refused: list[str]) -> Path:
    """Where kernels go when the default or named folder cannot be used (`refused`: why not): this
    user's private folder in the temporary folder (kept between runs on this machine), checked as
    the default is; else a new folder for this process alone, checked too. Never torch's own
    default, which nobody checks. None usable is exit 10 naming every folder tried and why."""
    try:
        temporary = temporary_folder()
    except OSError as error:  # no writable temporary folder at all
        raise _no_private_folder([*refused, str(error)]) from None
    kept, problem = _private(temporary / f"virnucpro-{os.geteuid()}" / "torch-compile")
    if kept is not None:
        return kept
    one_off, reason = _one_off()
    if one_off is None:  # the default and the kept fallback may be one folder (XDG_CACHE_HOME=$TMPDIR)
        raise _no_private_folder(list(dict.fromkeys([*refused, problem, reason])))
    return one_off


def _no_private_folder(reasons: list[str]) -> OutputWriteError:
    return OutputWriteError(f"no private folder for compiled GPU kernels: {'; '.join(reasons)}",
                            "set TMPDIR to a folder of yours (in a container: docker run --tmpfs /tmp), give "
                            "--compile-cache DIR, or add --no-compile")


@functools.lru_cache(maxsize=None)
def _one_off() -> tuple[Path | None, str | None]:
    """A new private (0700) compile cache for this process, removed when it exits: (the folder,
    None), or (None, why not) in a temporary folder where another user could swap it."""
    folder = Path(os.path.realpath(_process_folder(ONE_OFF_PREFIX)))
    reason = _not_private(folder, own=1)
    if reason:
        shutil.rmtree(folder, ignore_errors=True)
        return None, reason
    return folder, None


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """One warning per message and process (the cache is settled at every model load)."""
    from virnucpro.console import warn

    warn(message)


def cache_in_use() -> str:
    """The folder torch's compile cache writes to now."""
    try:  # torch's own answer (its default is a per-user temporary folder)
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return cache_dir()
    except (ImportError, OSError):
        return os.environ.get(TORCH_CACHE_VARIABLE, "torch's default")
