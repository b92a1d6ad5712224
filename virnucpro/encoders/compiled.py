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

import functools
import logging
import os
import stat
from pathlib import Path
from typing import Callable

TORCH_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"  # torch's own setting; triton's cache lives inside it
CACHE_LOGGER = "torch._inductor.codecache"  # where torch reports a cache entry it cannot load


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
    """Drops torch's warning about a compile-cache entry it cannot load (a traceback on stderr per
    entry; torch then compiles the graph again, which is all the user needs to know) and says it
    once per process as one virnucpro warning."""

    def __init__(self):
        super().__init__()
        self.warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "unable to load" not in record.getMessage():
            return True
        if not self.warned:
            self.warned = True
            from virnucpro.console import warn

            warn(f"compile cache {cache_in_use()}: an entry could not be read (damaged, or written by another "
                 f"torch version); ignored, the kernels are compiled again")
        return False


def quiet_unreadable_cache() -> None:
    """Put `_UnreadableCacheEntries` on torch's cache logger (once per process)."""
    logger = logging.getLogger(CACHE_LOGGER)
    if not any(isinstance(existing, _UnreadableCacheEntries) for existing in logger.filters):
        logger.addFilter(_UnreadableCacheEntries())


def default_cache() -> Path | None:
    """This user's cache folder for compiled kernels ($XDG_CACHE_HOME, else ~/.cache), its first
    folder named with the user id: under Apptainer the image's XDG_CACHE_HOME (/tmp) is shared by
    every user of a node, and each gets a folder of their own there. None for a user without a home
    (as in some containers)."""
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except (RuntimeError, KeyError):
        return None
    return Path(base) / f"virnucpro-{os.geteuid()}" / "torch-compile"


def use_cache(folder: Path | None = None) -> Path:
    """Point torch's compile cache at `folder` (default: the user's own TORCHINDUCTOR_CACHE_DIR,
    used as it is, else `default_cache()`, made private and used by its real path). A folder that
    cannot be written, or a default one another user could write to (compiled kernels are code the
    task runs), is one warning and torch's default (a per-user temporary folder); one in a virnucpro
    output is refused (exit 3). Returns the folder in use."""
    if folder is None and os.environ.get(TORCH_CACHE_VARIABLE):
        return Path(os.environ[TORCH_CACHE_VARIABLE])
    chosen = Path(folder).expanduser().absolute() if folder is not None else default_cache()
    if chosen is None:
        return _torch_default()
    from virnucpro.outdir import refuse_nesting

    refuse_nesting(chosen, "--compile-cache", itself=True, held_too=True)
    problem = _writable(chosen) if folder is not None else _private(chosen)
    if problem:
        fallback = _torch_default()
        _warn_once(f"{problem}; using {fallback} (compiled kernels will not outlive this machine's "
                   f"temporary folder)")
        return fallback
    if folder is None:
        chosen = Path(os.path.realpath(chosen))  # checked there: a link changed later cannot move it
    os.environ[TORCH_CACHE_VARIABLE] = str(chosen)
    return chosen


def _writable(folder: Path) -> str | None:
    """Create a folder the user named; why it cannot be written, or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return None
    except OSError:
        pass
    return f"cannot write the compile cache {folder}"


def _private(folder: Path) -> str | None:
    """Create the default cache folder, private, after checking the folders above it that exist
    (nothing is created in another user's folder); why it cannot be used (not writable, or
    writable by someone else), or None."""
    existing = next(part for part in (folder, *folder.parents) if os.path.lexists(part))
    if not os.path.isdir(existing):
        return f"cannot write the compile cache {folder} ({existing} is not a folder)"
    reason = _not_private(Path(os.path.realpath(existing)))
    if reason is None:
        failed = _create_private(folder)
        if failed or not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot write the compile cache {folder}" + (f" ({failed})" if failed else "")
        reason = _not_private(Path(os.path.realpath(folder)))  # what was created, or made meanwhile
    return f"the compile cache {folder} could hold kernels another user put there ({reason})" if reason else None


def _create_private(folder: Path) -> str | None:
    """Create the missing folders of `folder` with mode 0700 (the XDG spec's mode for a cache):
    what this user creates is theirs alone. Why that failed, or None."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for part in reversed(missing):
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            continue  # made meanwhile (this user's other task, or someone else): checked after
        except OSError as error:
            return f"cannot create {part}: {error.strerror}"
    return None


def _not_private(folder: Path) -> str | None:
    """Why a user other than this one (or root) could put files into `folder` (a real path), or None.
    It and each folder above it, up to the user's home or a root-owned sticky folder (like /tmp,
    where nobody else may rename what is ours), must belong to this user or root and be writable
    by neither group nor others (lstat: a link met here was swapped in after the path was resolved)."""
    uid, home = os.geteuid(), _home()
    for part in (folder, *folder.parents):
        try:
            info = os.lstat(part)
        except OSError as error:
            return f"{part}: {error.strerror}"
        if part != folder and _trusted_top(part, info, uid, home):
            return None
        if not stat.S_ISDIR(info.st_mode):
            return f"{part} is not a folder"
        if info.st_uid not in (uid, 0):
            return f"{part} belongs to uid {info.st_uid}"
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{part} can be written by group or others"
    return None


def _trusted_top(part: Path, info: os.stat_result, uid: int, home: Path | None) -> bool:
    """Whether the check may stop at `part`: the user's own home (who can write there can change
    the user's shell start-up anyway), or a root-owned sticky folder (others cannot rename or remove
    the user's folders in it)."""
    if part == home and info.st_uid in (uid, 0):
        return True
    return info.st_uid == 0 and stat.S_ISDIR(info.st_mode) and bool(info.st_mode & stat.S_ISVTX)


def _home() -> Path | None:
    """The user's home by its real path, or None without one."""
    try:
        return Path(os.path.realpath(Path.home()))
    except (RuntimeError, KeyError):
        return None


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """One warning per message and process (the cache is settled at every model load)."""
    from virnucpro.console import warn

    warn(message)


def _torch_default() -> Path:
    """torch's own default compile cache, chosen by torch."""
    os.environ.pop(TORCH_CACHE_VARIABLE, None)
    return Path(cache_in_use())


def cache_in_use() -> str:
    """The folder torch's compile cache writes to now."""
    try:  # torch's own answer (its default is a per-user temporary folder)
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return cache_dir()
    except (ImportError, OSError):
        return os.environ.get(TORCH_CACHE_VARIABLE, "torch's default")
