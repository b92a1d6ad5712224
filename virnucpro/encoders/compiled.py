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
    """The per-user cache folder for compiled kernels ($XDG_CACHE_HOME, else ~/.cache); None for a
    user without a home (as in some containers)."""
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except (RuntimeError, KeyError):
        return None
    return Path(base) / "virnucpro" / "torch-compile"


def use_cache(folder: Path | None = None) -> Path:
    """Point torch's compile cache at `folder` (default: the user's own TORCHINDUCTOR_CACHE_DIR,
    used as it is, else `default_cache()`). A folder that cannot be written is one warning and
    torch's default (a per-user temporary folder); one in a virnucpro output is refused (exit 3).
    Returns the folder in use."""
    if folder is None and os.environ.get(TORCH_CACHE_VARIABLE):
        return Path(os.environ[TORCH_CACHE_VARIABLE])
    chosen = Path(folder).expanduser().absolute() if folder is not None else default_cache()
    if chosen is None:
        return _torch_default()
    from virnucpro.outdir import refuse_nesting

    refuse_nesting(chosen, "--compile-cache", itself=True, held_too=True)
    try:
        chosen.mkdir(parents=True, exist_ok=True)
        writable = os.access(chosen, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:
        from virnucpro.console import warn

        fallback = _torch_default()
        warn(f"cannot write the compile cache {chosen}; using {fallback} (compiled kernels will not "
             f"outlive this machine's temporary folder)")
        return fallback
    os.environ[TORCH_CACHE_VARIABLE] = str(chosen)
    return chosen


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
