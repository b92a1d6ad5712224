"""The `embed` stage: one prepare shard in, one HDF5 embedding shard out, resumable mid-shard.

Work is laid out deterministically: records are taken in windows of `--checkpoint-every`; the
distinct nucleotide and protein sequences that first occur in a window are embedded in
length-grouped batches (each distinct sequence once per shard). Finished batches are saved as
atomic, checksummed part files under a key folder that names the inputs, models and precision, so a
rerun (Nextflow retry in a new work dir, or a person) recomputes only what is missing, with the
same batches, hence the same vectors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import secrets
import signal
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from virnucpro import __version__, h5shard
from virnucpro import prepared as fmt
from virnucpro.console import Progress, info, warn
from virnucpro.encoders import FAST_COMPILED, REFERENCE_COMPILED, check_finite, non_finite_hint
from virnucpro.errors import (os_cause, shell_word, OPEN_FILE_LIMITS, STOP_SIGNALS, BadInputError, DeviceError, GpuOutOfMemory,
                              InterruptedByUser, NumericalError, OutputWriteError, ProcessLimitError,
                              StoppedWithOutputsInPlace,
                              VirnucproError, check_stop, ignore_stop_signals, name_too_long, note_inodes, note_stop,
                              open_files_errno, output_errors, printable, resolved, stop_signals_deferred, storage_error,
                              storage_failure, storage_hint)
from virnucpro.models import store
from virnucpro.outdir import (OURS, FolderBusy, HeldLock, create_exclusive, file_lock, folder_lock,
                              held_by_another, is_regular, make_folder, not_ours, on_disk_spelling, refuse_nesting,
                              remove_made_folders)
from virnucpro.threads import limit_threads

ROLES = ("dnabert_s", "esm2")  # the order of the features, as the original concatenates them
ROLE_NAMES = {"dnabert_s": "DNABERT-S", "esm2": "ESM-2"}
CHECKPOINT_FORMAT = 2  # 2: each part names the key folder it was written in
CHECKPOINT_WAIT_SECONDS = 2.0  # how often a busy checkpoint folder is tried again
SHA256_HEX = "[0-9a-f]{64}"  # a checkpoint key folder's name
PART_NAME = re.compile(r"part_([0-9]+)\.([0-9a-f]{64})\.npz")
PART_TMP_NAME = re.compile(r"\.part_[0-9]+\.tmp\.npz")  # a part write a kill interrupted
IDENTITY_TMP_NAME = re.compile(r"\.identity\.[0-9a-f]{8}\.tmp")
PART_TMP_WHAT = "a checkpoint part virnucpro is writing"
WAITING_PREFIX = ".waiting."  # the note of an embed waiting for a busy checkpoint folder
IDENTITY_NAME = ".identity.json"  # a key folder's checkpoint_identity, to say why another embed passes it by
WAITING_FRESH_SECONDS = 60.0  # without flock: a note not renewed for this long is a waiter that died
PART_KEY = "key"  # the member naming a part's key folder, so a part moved to another folder is refused
KEY_DTYPE = np.dtype("<U64")  # the key: a sha256 in hex
UNRECORDED_PART_ARRAYS = sorted([f"{PART_KEY}.npy", *(f"{role}_{kind}.npy" for role in ROLES
                                                          for kind in ("index", "vectors"))])  # older parts
RECORD_ARRAYS = ("attention", "device", "settings")  # what computed a part, and how it was batched (MadeBy)
PART_ARRAYS = sorted([*UNRECORDED_PART_ARRAYS, *(f"{name}.npy" for name in RECORD_ARRAYS)])
UNSET_PART_ARRAYS = sorted(set(PART_ARRAYS) - {"settings.npy"})  # parts of an older virnucpro: no settings
RECORD_CHARACTERS = 256  # longest record text accepted (a record holds a few 'role:path' entries)
SETTINGS_CHARACTERS = 65536  # longest settings text of a part (a few entries; any whole number the CLI takes)
UNKNOWN = h5shard.UNKNOWN_DEVICE  # the device and paths of a part written without a record (an older virnucpro)
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
DEFAULT_TOKEN_BUDGET = {"cpu": 4096, "cuda": 65536}
# how reading a part fails when its bytes are to blame: every other failed system call (the process's
# limits, its permissions, the storage) keeps the part and stops the command
NOT_A_READ_FAILURE = (None, errno.ENOENT)  # no system call's errno; the part gone meanwhile
PARTS_KEPT = "then rerun: the checkpoint parts are kept and the rerun resumes from them"


# --- device and precision ------------------------------------------------------------------------

def resolve_device(requested: str):
    """`auto`: first visible GPU else CPU (with a warning); `cuda` without a GPU fails at once."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown --device {requested}", "use auto, cpu or cuda")
    has_gpu = torch.cuda.is_available()
    apple = _apple_gpu(torch) and not has_gpu
    if requested == "cuda" and not has_gpu:
        raise DeviceError(f"--device cuda was requested but no {'CUDA ' if apple else ''}GPU is visible to this "
                          f"process{' (virnucpro does not use Apple GPUs, MPS)' if apple else ''}",
                          "use --device cpu" if apple else
                          "check CUDA_VISIBLE_DEVICES / the job's GPU request, or use --device cpu")
    if requested == "auto" and not has_gpu:
        warn(f"no {'CUDA ' if apple else ''}GPU visible: embedding on the CPU (slow for real models; "
             f"{'virnucpro does not use Apple GPUs (MPS); use a CUDA' if apple else 'use a'} GPU for real data)")
    return torch.device("cuda" if requested != "cpu" and has_gpu else "cpu")


def _apple_gpu(torch) -> bool:
    """Whether torch sees an Apple GPU (MPS), which virnucpro does not use: said, not left to wonder about."""
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_precision(requested: str, device) -> str:
    """`auto`: fp32 on CPU, fp16 on GPU (ESM-2 was trained in fp16)."""
    if requested not in ("auto", "fp32", "fp16", "bf16"):
        raise DeviceError(f"unknown --precision {requested}", "use auto, fp32, fp16 or bf16")
    if requested == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return requested


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


# --- distinct sequences ---------------------------------------------------------------------------

@dataclass
class Distinct:
    """Distinct sequences of one role in order of first occurrence, and each record's index into them."""

    sequences: list[str] = field(default_factory=list)
    of_record: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    first_seen_before: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    first_record: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def of(cls, values: Sequence[str]) -> "Distinct":
        index: dict[str, int] = {}
        of_record = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            of_record[i] = index.setdefault(value, len(index))
        # first_seen_before[r] = number of distinct sequences first seen in records [0, r)
        new = np.zeros(len(values) + 1, dtype=np.int64)
        first_record = np.unique(of_record, return_index=True)[1]  # in distinct order
        if len(values):
            firsts = np.zeros(len(values), dtype=bool)
            firsts[first_record] = True
            new[1:] = np.cumsum(firsts)
        return cls(list(index), of_record, new, first_record)

    def new_in(self, start: int, stop: int) -> range:
        """Distinct indices first seen in records [start, stop): always a contiguous range."""
        return range(int(self.first_seen_before[start]), int(self.first_seen_before[stop]))


# --- who computed the vectors -------------------------------------------------------------------

@dataclass
class MadeBy:
    """Which devices and attention paths computed some vectors, and the settings that batched them:
    one checkpoint part's, this process's, or a shard's (the union of its restored parts' and this
    process's). The HDF5 attributes `device` ('cpu', 'cuda', 'cpu+cuda'), `attention` ('role:path,...',
    one entry per role and path) and `settings` ('role:token_budget=N,checkpoint_every=N,threads=N,
    torch=V,cpu_isa=ISA or gpu=NAME', every value that batched or computed some of them: a resume with
    other settings shows both) are its texts;
    'unknown' stands for a part written without a record."""

    devices: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    settings: set[str] = field(default_factory=set)

    def note(self, device: str, role: str, path: str, settings: Sequence[str] = ()) -> None:
        """Vectors of `role` computed on `device` by `path`, batched with `settings`."""
        self.devices.add(device)
        self.paths.add(f"{role}:{path}")
        self.settings.update(settings)

    def add(self, other: "MadeBy") -> None:
        """Take in what computed `other`'s vectors too."""
        self.devices |= other.devices
        self.paths |= other.paths
        self.settings |= other.settings

    def device_text(self) -> str:
        return "+".join(sorted(self.devices))

    def attention_text(self) -> str:
        return ",".join(sorted(self.paths))

    def settings_text(self) -> str:
        return ",".join(h5shard.settings_in_order(self.settings))


ATTENTION_ENTRY = re.compile(f"({'|'.join(ROLES)}):(reference|fast|{re.escape(FAST_COMPILED)}|{re.escape(REFERENCE_COMPILED)})")


def _hardware_setting(device) -> str:
    """The settings entry of the hardware that computes: the CPU's instruction set torch uses
    (`cpu_isa=AVX512`, another on an AVX2 node) or the GPU's name (`gpu=NVIDIA_H100_80GB_HBM3`)."""
    import torch

    if device.type == "cuda":
        try:
            name = torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError):  # no driver to ask: embed itself says so when it computes
            name = "unknown"
        return f"gpu={_setting_value(name)}"
    return f"cpu_isa={_setting_value(torch.backends.cpu.get_cpu_capability())}"


def _setting_value(text: str) -> str:
    """`text` as a settings value: letters, digits and `._+-`, anything else an underscore."""
    return re.sub(r"[^0-9A-Za-z._+-]", "_", text)[:80] or "_"


# --- checkpoints ------------------------------------------------------------------------------------

def checkpoint_identity(shard_sha256: str, models: dict, precision: str) -> dict:
    """What a checkpoint's vectors depend on: the shard, the models, the precision and the virnucpro
    that computed them (another version's encoders may compute them otherwise)."""
    return {"format": CHECKPOINT_FORMAT, "version": __version__, "shard": shard_sha256, "precision": precision,
            "models": {role: models[role]["sha256"] for role in ROLES}}


def checkpoint_key(identity: dict) -> str:
    """The key folder's name: a checkpoint of anything but this identity is never used."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class DamagedPart(Exception):
    """What is wrong with a checkpoint part: it is then ignored, removed and its vectors recomputed."""


class CheckpointStore:
    """Part files `part_NNNNN.<sha256>.npz` under the key folder, each written atomically.

    A part holds its key (the folder's name), per role distinct-sequence indices and their
    vectors, and the record of the device and attention paths that computed them (`MadeBy`; a part
    of an older virnucpro has none: used, and said 'unknown'). Its file name carries the sha256 of its bytes, so a damaged part is detected; every part
    is also checked completely before use (its key, arrays, dtypes, shapes, index range and
    uniqueness, finite values), so a part copied from another key folder or a malformed one is never
    trusted either: it is reported, ignored and its vectors recomputed. The checks catch accidents,
    not forgery: vectors edited on purpose and saved under their new sha256 pass (the checkpoint
    folder is trusted as the output folder is). A part that cannot be read at
    all (the limit on open files, its permissions, an I/O error) is no damage: the command stops,
    every part kept (see `_read_part`). A part that cannot be written ends the command (exit 10) at
    the next `raise_failed` or `flush`, the parts before it kept.
    """

    def __init__(self, folder: Path, parent_is_ours: bool = True, wait: bool = True, identity: dict | None = None):
        self.folder = folder
        self.key = folder.name
        self.identity = identity  # written beside the first part (IDENTITY_NAME)
        # the default `<out>.ckpt` is removed once empty; never a --checkpoint-dir (the user named it)
        self.parent_is_ours = parent_is_ours
        _refuse_linked_folders(folder, parent_is_ours)
        self.writer = _started_writer()  # part writes stay off the compute path
        self._lock = ExitStack()  # flock, or the O_EXCL fallback where the file system has no flock
        made: list[Path] = []  # the folders the lock created: gone again when it cannot be taken (a full disk)
        try:
            self.held = (self._hold_when_free(folder, made) if wait
                         else self._lock.enter_context(folder_lock(folder, "the checkpoint folder", made)))
        except BaseException:
            self.writer.shutdown(wait=False)
            remove_made_folders(made)
            raise
        self.next_part = 0
        self.pending = []

    def _hold_when_free(self, folder: Path, made: list[Path]) -> HeldLock:
        """Lock the folder, waiting while another embed of the same shard, models and precision
        holds it (a task resumed while its first attempt still runs, say): once that one ends, what
        it saved is resumed here; a waiting note, kept fresh, asks it to leave its parts even when it
        finishes the shard. A stop signal ends the wait (exit 6)."""
        note = _WaitingNote(folder)
        try:
            while True:
                try:
                    return self._lock.enter_context(folder_lock(folder, "the checkpoint folder", made))
                except FolderBusy as busy:
                    if not note.posted:
                        info(f"{busy.message}: waiting for it to end, then resuming from its checkpoints")
                    note.post()
                    time.sleep(CHECKPOINT_WAIT_SECONDS)
        finally:
            note.withdraw()

    def load(self, sizes: dict[str, int], widths: dict[str, int]) -> Iterator["Part"]:
        """The sound parts for `sizes` distinct sequences of `widths`, one at a time: a resumed shard's
        parts hold as many vectors as the shard's arrays they are copied into, so holding them all
        at once doubled embed's memory."""
        found = self.folder.glob("part_*.npz")
        paths = sorted((path for path in found if PART_NAME.fullmatch(path.name)), key=_part_order)
        _note_foreign_files(self.folder, "left as they are, never read as parts", say=warn, like="part_*.npz")
        numbers = [int(PART_NAME.fullmatch(path.name).group(1)) for path in paths]
        self.next_part = max(numbers, default=-1) + 1
        return self._sound_parts(paths, sizes, widths)

    def _sound_parts(self, paths: list[Path], sizes: dict[str, int], widths: dict[str, int]) -> Iterator["Part"]:
        """Each part read and checked in turn; a damaged one is discarded, and one holding a distinct
        sequence that an earlier kept part holds too (parts of two runs of the same key copied into
        one folder) is set aside: both are sound, computed from the same shard, models and
        precision, and the earlier ones are kept whole."""
        holders = {role: np.full(sizes[role], -1, dtype=np.int64) for role in ROLES}  # kept part per sequence
        for number, path in enumerate(paths):
            try:
                part = _read_part(path, self.key, sizes, widths)
            except DamagedPart as problem:
                _discard(path, str(problem))
                continue
            earlier = _earlier_holder(part, holders)
            if earlier is not None:
                _set_aside(path, paths[earlier])
                continue
            for role in ROLES:
                holders[role][part.vectors[role][0]] = number
            yield part

    def save(self, vectors: dict[str, tuple[list[int], list[np.ndarray]]], made: MadeBy | None = None) -> None:
        """Queue one part of these vectors for the writer thread, with the record of what computed
        them (`made`; embed always gives it, a part without one reads back as 'unknown')."""
        number = self.next_part
        self.next_part += 1
        arrays = {PART_KEY: np.array(self.key, dtype=KEY_DTYPE)}
        if made is not None:
            arrays.update(attention=np.array(made.attention_text()), device=np.array(made.device_text()),
                          settings=np.array(made.settings_text()))
        for role in ROLES:
            indices, blocks = vectors[role]
            arrays[f"{role}_index"] = np.asarray(indices, dtype=np.int64)
            arrays[f"{role}_vectors"] = (np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32))
        self.pending.append(self.writer.submit(self._write, number, arrays))

    def _write(self, number: int, arrays: dict) -> None:
        """Write one part atomically (in the writer thread); a failure is an OutputWriteError naming it.
        The temporary file is created exclusively, never through a link (`create_exclusive`)."""
        tmp = self.folder / f".part_{number:05d}.tmp.npz"
        try:
            self._write_identity()
            with open(tmp, "wb", opener=lambda path, _flags: create_exclusive(Path(path), PART_TMP_WHAT)) as handle:
                _write_npz(handle, arrays)
            digest = fmt.sha256_of(tmp)
            os.replace(tmp, self.folder / f"part_{number:05d}.{digest}.npz")
        except OSError as exc:
            # the file that failed: the part's, or the folder's identity written first (`_write_identity`)
            failed = Path(os.fsdecode(exc.filename)) if exc.filename else tmp
            note_inodes(exc, failed)  # before the file goes: it may have taken the last inode
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise self._write_failed(exc, failed) from None

    def _write_failed(self, exc: OSError, failed: Path) -> VirnucproError:
        """The error of a checkpoint file that could not be written, naming it."""
        if name_too_long(exc):
            return storage_failure(exc, failed)
        what = "checkpoint identity file" if failed.name.startswith(".identity.") else "checkpoint part"
        if open_files_errno(exc) is not None:
            return _open_files_limit(exc, f"cannot write {what} {failed}")
        kept = "; a rerun resumes from the parts already written" if any(self.folder.glob("part_*.npz")) else ""
        return OutputWriteError(f"cannot write {what} {failed}: {storage_error(exc) or exc.strerror or exc}",
                                f"{storage_hint(exc)}{kept}")

    def _write_identity(self) -> None:
        """The folder's identity, once, beside its parts (never through a link: created exclusively); a
        failure removes its temporary file and names it."""
        path = self.folder / IDENTITY_NAME
        if self.identity is None or os.path.lexists(path):
            return
        tmp = self.folder / f".identity.{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8",
                      opener=lambda name, _flags: create_exclusive(Path(name), PART_TMP_WHAT)) as handle:
                json.dump(self.identity, handle, sort_keys=True)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            exc.filename = exc.filename or str(tmp)
            raise

    def raise_failed(self) -> None:
        """Raise the failure of a part write that has finished, without waiting for those still running."""
        running = []
        for future in self.pending:
            if future.done():
                future.result()
            else:
                running.append(future)
        self.pending = running

    def flush(self) -> None:
        """Wait for every queued part; raise the failure of any."""
        while self.pending:
            self.pending.pop(0).result()

    def close(self) -> None:
        """Let the queued writes end, then release the folder; a write failure was raised by
        `raise_failed`/`flush` already, or the command is failing for another reason. A folder that
        holds no part (the command failed before its first: while the models loaded, say) has
        nothing to resume from: removed as `remove` does, unless an embed waits for it."""
        self.writer.shutdown(wait=True)
        if self._holds_a_part() or _live_waiters(self.folder):
            self._lock.close()
        else:
            self._delete_and_release()

    def remove(self) -> None:
        """The shard is written: delete its parts and the folder, still holding it, so an embed that
        takes it next finds no half-deleted folder; the parts stay for an embed waiting for them
        (see `_hold_when_free`), and files virnucpro did not write stay too."""
        self.writer.shutdown(wait=True)
        if _live_waiters(self.folder):
            info(f"checkpoints in {self.folder} kept for the embed of the same shard waiting for them")
            self._lock.close()
        else:
            self._delete_and_release()
        if self.parent_is_ours:
            _note_other_checkpoints(self.folder)

    def _holds_a_part(self) -> bool:
        """Whether a part is in the folder; one that cannot be listed (the open-files limit) is
        taken to hold one: kept, and the command's own failure is the one reported."""
        try:
            return any(PART_NAME.fullmatch(path.name) for path in self.folder.iterdir())
        except FileNotFoundError:
            return False
        except OSError:
            return True

    def _delete_and_release(self) -> None:
        """Delete our files, then the lock file while still holding it, release it, and remove the
        folder (and the default `<out>.ckpt` above it) when nothing else is left in them."""
        _delete_own_files(self.folder)
        self.held.remove()
        self._lock.close()
        for folder in [self.folder] + ([self.folder.parent] if self.parent_is_ours else []):
            with contextlib.suppress(OSError):
                folder.rmdir()
        _note_foreign_files(self.folder, "left as they are, and the folder with them")


def _note_other_checkpoints(own: Path) -> None:
    """Say what stays in the default `<out>.ckpt` beside the key folder `own` once its shard is
    written (`own` itself may stay, holding a file virnucpro did not write): checkpoints of the same
    output for another shard, models or precision (GBs at real widths), which only that embed run
    again would use. Never deleted here: they may be hours of work."""
    parent = own.parent
    with contextlib.suppress(OSError):  # gone, or unreadable: nothing to say
        others = [key for key in parent.iterdir() if key.name != own.name
                  and re.fullmatch(SHA256_HEX, key.name) and key.is_dir() and not key.is_symlink()]
        if others:
            size = sum(part.stat().st_size for key in others for part in key.iterdir() if PART_NAME.fullmatch(part.name))
            older = sum(1 for key in others if not _identity_of(key))  # recording none: before versioned keys
            info(f"{parent} still holds checkpoints of {len(others)} other embed(s) into this output (another "
                 f"shard, models, precision or virnucpro version; {size / 1e6:,.1f} MB), used only if that embed "
                 "runs again with the same virnucpro" + (f" ({older} of them by a virnucpro older than {__version__}, "
                                                          "which no later one uses)" if older else "")
                 + ": delete the folder when none will")


def _note_foreign_files(folder: Path, outcome: str, say=info, like: str = "*") -> None:
    """One note (or warning: `say`) naming the files matching `like` in a checkpoint key folder that
    virnucpro did not write (a `part_mine.npz`, a backup `part_00001.npz`, notes): never read, replaced
    or deleted (`outcome` says what that means here). Nothing is said when there are none, or no folder."""
    try:
        foreign = sorted(path.name for path in folder.glob(like) if not _written_by_us(path.name))
    except OSError:  # gone (an empty folder removed), or unreadable: nothing to say
        return
    if foreign:
        shown = ", ".join(printable(name) for name in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        say(f"checkpoint folder {folder} holds {len(foreign)} file(s) virnucpro did not write ({shown}; "
            f"its parts are named part_<number>.<sha256>.npz): {outcome}")


def _written_by_us(name: str) -> bool:
    """Whether `name` is one virnucpro gives a file in a checkpoint key folder."""
    return bool(PART_NAME.fullmatch(name) or PART_TMP_NAME.fullmatch(name) or IDENTITY_TMP_NAME.fullmatch(name)
                or name == IDENTITY_NAME or name in OURS or name.startswith(WAITING_PREFIX))


def _started_writer() -> ThreadPoolExecutor:
    """The checkpoint writer with its one thread already running. A limit on threads (`ulimit -u`, a
    pids limit) then stops embed here, before the models load, not at the first checkpoint, an hour of
    computed vectors later, which it would lose; the thread, once started, serves every part."""
    writer = ThreadPoolExecutor(max_workers=1)
    try:
        writer.submit(int).result()
    except BaseException:
        writer.shutdown(wait=False)
        raise
    return writer


def _refuse_linked_folders(folder: Path, parent_is_ours: bool) -> None:
    """Exit 3 for a key folder (or the default `<out>.ckpt` above it) that is a link: the parts would
    be written, and later deleted, wherever it points."""
    for path in [folder] + ([folder.parent] if parent_is_ours else []):
        if path.is_symlink():
            raise not_ours(path, "a checkpoint folder virnucpro makes")


class _WaitingNote:
    """The note an embed waiting for a busy checkpoint folder leaves in it, so that the holder, should
    it finish the shard, leaves its parts. The waiter holds a flock on its note while it lives (the
    kernel drops it however the waiter dies); where the file system has no flock, the note's time,
    renewed at every try, tells instead."""

    def __init__(self, folder: Path):
        self.path = folder / f"{WAITING_PREFIX}{os.getpid()}.{secrets.token_hex(4)}"
        self.fd: int | None = None
        self.posted = False

    def post(self) -> None:
        """Create the note (once) or renew its time; a failure only leaves the holder unaware."""
        self.posted = True
        with contextlib.suppress(OSError):
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                with contextlib.suppress(OSError):
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.utime(self.path, follow_symlinks=False)

    def withdraw(self) -> None:
        """Remove the note: the wait is over, however it ended."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None


def _live_waiters(folder: Path) -> bool:
    """Whether an embed is waiting for this folder; the notes of waiters that died are removed."""
    alive = False
    for note in folder.glob(f"{WAITING_PREFIX}*"):
        if not is_regular(note):
            continue  # not a note an embed wrote (a link, a FIFO): left alone
        if _waiter_alive(note):
            alive = True
        else:
            with contextlib.suppress(OSError):
                note.unlink()
    return alive


def _waiter_alive(note: Path) -> bool:
    """A note still flocked by its waiter; without flock, one renewed lately."""
    held = held_by_another(note)
    if held is not None:
        return held
    try:  # no flock on this file system (or the note is gone)
        return time.time() - note.lstat().st_mtime < WAITING_FRESH_SECONDS
    except OSError:
        return False


def _delete_own_files(folder: Path) -> None:
    """Delete the part files and unfinished part writes in a checkpoint folder; nothing else (a link
    or FIFO at such a name is not one virnucpro wrote). Best effort: the parts are deleted once
    their work is in a finished output or worth nothing, so one that cannot be is a warning naming it."""
    kept: list[str] = []
    with contextlib.suppress(FileNotFoundError):  # a folder removed by hand meanwhile
        for path in list(folder.iterdir()):
            if (PART_NAME.fullmatch(path.name) or PART_TMP_NAME.fullmatch(path.name) or path.name == IDENTITY_NAME
                    or IDENTITY_TMP_NAME.fullmatch(path.name)) and is_regular(path):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    kept.append(f"{path.name} ({exc.strerror or exc})")
    if kept:
        warn(f"could not delete {len(kept)} checkpoint file(s) in {folder}: {', '.join(kept[:3])}"
             f"{' ...' if len(kept) > 3 else ''}; the work they hold is done: delete them when you can")


@dataclass
class Part:
    """A sound checkpoint part: per role (distinct indices, vectors), and what computed them."""

    vectors: dict[str, tuple[np.ndarray, np.ndarray]]
    made: MadeBy


def _discard(path: Path, problem: str) -> None:
    """Report a damaged part and remove it, so it is recomputed; a link, FIFO or folder in its place is
    not a file virnucpro wrote: left alone."""
    warn(f"checkpoint part {printable(path.name)} is damaged ({problem}): ignoring it; its vectors are "
         "recomputed")
    if is_regular(path):
        path.unlink(missing_ok=True)


def _write_npz(handle, arrays: dict[str, np.ndarray]) -> None:
    """The arrays as an uncompressed .npz (what `np.savez` writes), the archive closed even when a
    write fails: numpy before 2.2 left it open, and its clean-up later printed a traceback."""
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _read_part(path: Path, key: str, sizes: dict[str, int], widths: dict[str, int]) -> Part:
    """One part, named as `PART_NAME` (`load` reads no other), checked completely: checksum, key, then
    each role's arrays (raises DamagedPart). A part that cannot be read (a failed system call: a limit
    of the process, its permissions, the storage) is no damaged part: the command stops
    (`_unreadable_part`) and every part stays for the rerun."""
    match = PART_NAME.fullmatch(path.name)
    try:
        if path.is_symlink() or not path.is_file():
            raise DamagedPart("it is not a regular file")
        if fmt.sha256_of(path) != match.group(2):
            raise DamagedPart("checksum mismatch")
        with zipfile.ZipFile(path) as archive:
            names = _check_array_names(archive.namelist())
            _check_key(archive, key)
            vectors = {role: _read_role(archive, role, sizes[role], widths[role]) for role in ROLES}
            return Part(vectors, _unrecorded(vectors) if names == UNRECORDED_PART_ARRAYS
                        else _read_record(archive, vectors, names == PART_ARRAYS))
    except (DamagedPart, VirnucproError, MemoryError):
        raise  # a stop signal landing meanwhile (InterruptedByUser), or memory running out, is no damage to the part
    except Exception as exc:  # whatever these bytes make the reader fail on, they are not a sound part
        cause = os_cause(exc)  # but a failed read is no damage (zipfile calls one "not a zip file")
        if cause is not None and cause.errno not in NOT_A_READ_FAILURE:
            raise _unreadable_part(path, cause) from None
        raise DamagedPart(f"not a readable .npz archive: {type(exc).__name__}: {exc}") from None


def _unreadable_part(path: Path, exc: OSError) -> BaseException:
    """What stops embed when a part cannot be read for a reason other than its bytes: the limit on
    open files (exit 10, `_open_files_limit`), memory (`exc` itself: the CLI says so, exit 137), its
    permissions or the storage (exit 10 naming the part); never a reason to discard it."""
    if open_files_errno(exc) is not None:
        return _open_files_limit(exc, f"cannot read checkpoint part {path}")
    if exc.errno == errno.ENOMEM:
        return exc
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OutputWriteError(f"cannot read checkpoint part {path}: permission denied",
                                f"make it readable (chmod u+r; its folders u+rx), {PARTS_KEPT}")
    return OutputWriteError(f"cannot read checkpoint part {path}: {storage_error(exc) or exc.strerror or exc}",
                            f"check the storage (its I/O errors, a network file system that went away), {PARTS_KEPT}; "
                            "if the storage cannot read this part again (a bad sector), delete it: the rerun "
                            "computes its records again")


def _open_files_limit(exc: OSError, failed: str) -> ProcessLimitError:
    """Exit 10 for a checkpoint part that `failed` ('cannot write checkpoint part X') because the
    process (or the system) reached its limit on open files: the limit and how to raise it."""
    what, hint = OPEN_FILE_LIMITS[open_files_errno(exc)]
    return ProcessLimitError(f"{failed}: {what}", f"{hint} (embed resumes from the checkpoint parts already written)")


def _check_array_names(names: list[str]) -> list[str]:
    """Exactly the arrays embed writes, each once (without the record: a part of an older
    virnucpro); returns which of the two sets it is."""
    if sorted(names) in (PART_ARRAYS, UNSET_PART_ARRAYS, UNRECORDED_PART_ARRAYS):
        return sorted(names)
    recorded = any(f"{name}.npy" in names for name in RECORD_ARRAYS)
    expected = PART_ARRAYS if recorded else UNRECORDED_PART_ARRAYS
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected)) or ["one named twice"]
    found = f"missing array {', '.join(missing)}" if missing else f"unexpected array {', '.join(unexpected)}"
    raise DamagedPart(found.replace(".npy", ""))


def _check_key(archive: zipfile.ZipFile, key: str) -> None:
    """The part names the key folder it is read from: a part of another shard, models or precision
    (copied or moved here) is refused however sound its own bytes are."""
    with archive.open(f"{PART_KEY}.npy") as member:
        shape, fortran, dtype = _read_npy_header(member, PART_KEY)
        if dtype != KEY_DTYPE:
            raise DamagedPart(f"{PART_KEY} has dtype {dtype}, not {KEY_DTYPE} (a sha256 in hex)")
        if shape != ():
            raise DamagedPart(f"{PART_KEY} has shape {shape}, not () (one string)")
        found = _read_npy_data(member, PART_KEY, shape, fortran, dtype).item()
    if found != key:
        raise DamagedPart(f"it belongs to another checkpoint: key {printable(found[:16])}..., not this folder's "
                          f"{key[:16]}...; a part of another shard, models or precision")


def _read_record(archive: zipfile.ZipFile, vectors: dict, with_settings: bool) -> MadeBy:
    """The part's record of the device and attention paths that computed it, checked: known names
    only, and a path for every role it holds vectors of; its settings, 'unknown' when it holds none
    (an older virnucpro)."""
    device, attention = (_read_text(archive, name) for name in ("device", "attention"))
    made = MadeBy(set(device.split("+")), set(attention.split(",")),
                  _read_settings(archive) if with_settings else {UNKNOWN})
    if not made.devices <= set(h5shard.DEVICES):
        raise DamagedPart(f"its record names the device {ascii(device[:40])}, not {' or '.join(h5shard.DEVICES)}")
    unknown = sorted(path for path in made.paths if not ATTENTION_ENTRY.fullmatch(path))
    if unknown:
        raise DamagedPart(f"its record names an unknown attention path {ascii(unknown[0][:40])}")
    named = {path.split(":")[0] for path in made.paths}
    for role, (indices, _) in vectors.items():
        if len(indices) and role not in named:
            raise DamagedPart(f"its record names no attention path for its {role} vectors")
    return made


def _read_settings(archive: zipfile.ZipFile) -> set[str]:
    """The part's settings entries, checked: known names with positive whole values only."""
    text = _read_text(archive, "settings", SETTINGS_CHARACTERS)
    entries = set(text.split(",")) if text else set()
    wrong = sorted(entry for entry in entries if not h5shard.SETTING_ENTRY.fullmatch(entry))
    if wrong:
        raise DamagedPart(f"its record names an unknown setting {ascii(wrong[0][:40])}")
    return entries


def _unrecorded(vectors: dict) -> MadeBy:
    """What computed a part of an older virnucpro, which does not say: 'unknown' for its roles."""
    paths = {f"{role}:{UNKNOWN}" for role, (indices, _) in vectors.items() if len(indices)}
    return MadeBy({UNKNOWN} if paths else set(), paths, {UNKNOWN} if paths else set())


def _read_text(archive: zipfile.ZipFile, name: str, most: int = RECORD_CHARACTERS) -> str:
    """A one-string member of at most `most` characters (refused by its header first)."""
    with archive.open(f"{name}.npy") as member:
        shape, fortran, dtype = _read_npy_header(member, name)
        if dtype.kind != "U" or dtype.itemsize > 4 * most:
            raise DamagedPart(f"{name} has dtype {dtype}, not text of at most {most} characters")
        if shape != ():
            raise DamagedPart(f"{name} has shape {shape}, not () (one string)")
        return str(_read_npy_data(member, name, shape, fortran, dtype).item())


def _read_role(archive: zipfile.ZipFile, role: str, size: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A role's indices and vectors, each refused by its header before its data is read, then checked."""
    name = f"{role}_index"
    with archive.open(f"{name}.npy") as member:
        shape, fortran, dtype = _read_npy_header(member, name)
        if dtype.kind not in "iu":
            raise DamagedPart(f"{name} has dtype {dtype}, not an integer type")
        if len(shape) != 1 or shape[0] > size:
            raise DamagedPart(f"{name} has shape {shape}, not one row of at most {size} indices")
        indices = _read_npy_data(member, name, shape, fortran, dtype)
    name = f"{role}_vectors"
    with archive.open(f"{name}.npy") as member:
        shape, fortran, dtype = _read_npy_header(member, name)
        if dtype != np.float32:
            raise DamagedPart(f"{name} has dtype {dtype}, not float32")
        if shape == (0, 0) and not len(indices):
            shape = (0, width)  # a role without vectors, as `save` writes it
        if shape != (len(indices), width):
            raise DamagedPart(f"{name} has shape {shape}, not {(len(indices), width)}")
        vectors = _read_npy_data(member, name, shape, fortran, dtype)
    _check_values(role, indices, vectors, size)
    return indices, vectors


def _read_npy_header(member, name: str) -> tuple[tuple, bool, np.dtype]:
    """(shape, Fortran order, dtype) of one .npy member; objects are refused here, never unpickled."""
    version = np.lib.format.read_magic(member)
    if version not in NPY_HEADER_READERS:
        raise DamagedPart(f"{name} is in .npy format {version}, which embed does not write")
    shape, fortran, dtype = NPY_HEADER_READERS[version](member)
    if dtype.hasobject:
        raise DamagedPart(f"{name} holds Python objects (dtype object), refused unread")
    return shape, fortran, dtype


def _read_npy_data(member, name: str, shape: tuple, fortran: bool, dtype: np.dtype) -> np.ndarray:
    """The array data after a checked header: exactly as many bytes as the shape needs."""
    expected = math.prod(shape) * dtype.itemsize
    data = member.read(expected + 1)
    if len(data) > expected:
        raise DamagedPart(f"{name} holds more than the {expected} bytes of data its shape needs")
    if len(data) < expected:
        raise DamagedPart(f"{name} holds {len(data)} bytes of data, not the {expected} its shape needs")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _check_values(role: str, indices: np.ndarray, vectors: np.ndarray, size: int) -> None:
    """Indices in [0, size), each once; vectors finite."""
    outside = indices[(indices < 0) | (indices >= size)]
    if len(outside):
        raise DamagedPart(f"{role}_index holds {outside[0]}, outside [0, {size})")
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise DamagedPart(f"{role}_index repeats {values[counts > 1][0]}")
    if not np.isfinite(vectors).all():
        raise DamagedPart(f"{role}_vectors holds NaN or infinite values")


def _part_order(path: Path) -> tuple[int, str]:
    """Parts by their number (then name): the order they were written in."""
    match = PART_NAME.fullmatch(path.name)
    return (int(match.group(1)) if match else -1, path.name)


def _earlier_holder(part: Part, holders: dict[str, np.ndarray]) -> int | None:
    """The number of the kept part holding the first distinct sequence that `part` holds too (the
    smallest such index of the first role with one); None when it holds only new ones."""
    for role in ROLES:
        indices = np.sort(part.vectors[role][0])
        held = holders[role][indices]
        if (held >= 0).any():
            return int(held[np.flatnonzero(held >= 0)[0]])
    return None


def _set_aside(path: Path, earlier: Path) -> None:
    """Drop a sound part whose sequences an earlier part holds too (see `CheckpointStore._sound_parts`)."""
    info(f"checkpoint part {printable(path.name)} holds sequences that {printable(earlier.name)} holds too (parts "
         "of two runs in one folder): using the earlier part; the other's remaining sequences are computed again")
    if is_regular(path):
        path.unlink(missing_ok=True)


# --- signals -------------------------------------------------------------------------------------------

class StopRequest:
    """Turns a stop signal (errors.STOP_SIGNALS) into a flag checked between batches (the batch in flight
    finishes).

    A stop that arrived before (and that a library swallowed) ends the command here, before any
    batch; after a stop, stop signals stay ignored while the command winds down.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        check_stop()
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signal_name is None:
            note_stop(signum)
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        if self.signal_name is not None:
            ignore_stop_signals()
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- the computation -----------------------------------------------------------------------------

class Embedder:
    """Runs both encoders over the distinct sequences of a shard, batch by batch, with OOM halving.

    On a GPU, once an encoder's `forward` has returned its vectors on the device, every later batch
    is launched by `collate` (the layout thread): its vectors are copied without blocking into
    pinned host memory and an event marks them ready. `run` then only waits for a finished batch
    while the next one is already queued behind it, so the GPU never idles on the loop's host work.
    On the CPU each batch is computed in `run`, as it always was.
    """

    @dataclass
    class InFlight:
        """A launched batch: its vectors (host memory, ready once `ready` has passed) or its error."""

        vectors: object = None
        ready: object = None
        error: BaseException | None = None
        path: str = ""  # the attention path that computed it (after a fallback, the one that ran)

    def __init__(self, encoders: dict, token_budget: int, device, checkpoint_every: int | None = None):
        import torch

        self.encoders, self.device = encoders, device
        self.asked_budget = token_budget  # plans the first batches; halved ones may still run after an OOM
        # what batches and computes the vectors besides the token budget (the record of each part,
        # `MadeBy.settings`): threads, the torch and the hardware, which all move the last digits
        self.batching = [f"threads={torch.get_num_threads()}", f"torch={_setting_value(torch.__version__)}",
                         _hardware_setting(device)]
        if checkpoint_every is not None:
            self.batching.append(f"checkpoint_every={checkpoint_every}")
        self.token_budget = {role: token_budget for role in encoders}  # halved per model on OOM
        self.overlap = {role: False for role in encoders}  # launch in `collate` (vectors stay on the GPU)
        # one launch at a time: the layout thread's launch of the next batch never computes beside
        # this thread's (the halves of a batch that ran out of memory would share what just ran out)
        self.launching = threading.RLock()
        self.made = MadeBy()  # the device and paths that computed this process's batches
        self.unsaved_made = MadeBy()  # the same, since the last checkpoint part
        self.real_tokens = 0
        self.padded_tokens = 0
        # seconds the compute loop stood waiting, by what for: the GPU's result of a batch, the layout
        # (and, once overlapping, the launch) of the next batch, the tokens of the next work item
        self.waited = {"gpu": 0.0, "layout": 0.0, "tokens": 0.0}

    def made_by(self, restored: MadeBy | None = None) -> MadeBy:
        """What computed a shard's vectors: its `restored` checkpoint parts and this process; when
        neither computed any (an empty shard), the loaded paths on this device."""
        made = MadeBy()
        made.add(restored or MadeBy())
        made.add(self.made)
        if not made.paths:
            for role, encoder in self.encoders.items():
                made.note(self.device.type, role, encoder.path, self._settings(role))
        return made

    def take_unsaved_made(self) -> MadeBy:
        """What computed the batches since the last call (the record of the checkpoint part saved now)."""
        made, self.unsaved_made = self.unsaved_made, MadeBy()
        return made

    def _note(self, role: str, path: str) -> None:
        """One batch of `role` computed by `path` on this device."""
        for made in (self.made, self.unsaved_made):
            made.note(self.device.type, role, path, self._settings(role))

    def _settings(self, role: str) -> list[str]:
        """The settings that batch `role` now: the token budget asked for and, once the GPU ran out of
        memory, the halved one too (batches planned with either may run from then on)."""
        budgets = {self.asked_budget, self.token_budget[role]}
        return [*(f"{role}:token_budget={budget}" for budget in budgets), *self.batching]

    def batches(self, role: str, tokens: dict, indices: range) -> list[list[int]]:
        from virnucpro.encoders.batching import plan_batches

        local = plan_batches([len(tokens[i]) for i in indices], self.token_budget[role])
        return [[indices[j] for j in batch] for batch in local]

    def collate(self, role: str, tokens: dict, batch: list[int]):
        """Host-side layout of a batch (runs in the prefetch thread); launched too once overlapping."""
        collated = self.encoders[role].collate([tokens[i] for i in batch])
        if not self.overlap[role]:
            return collated
        try:
            return self._launch(role, collated)
        except Exception as exc:  # raised again by `run`, which handles out-of-memory and CUDA failures
            return Embedder.InFlight(error=exc)

    def _launch(self, role: str, collated) -> "Embedder.InFlight":
        """Start a batch; vectors left on the GPU are copied to pinned memory without blocking."""
        import torch

        with self.launching, torch.inference_mode():
            vectors = self.encoders[role].forward(collated)
            path = self.encoders[role].path  # after a fallback, the one that ran
            if vectors.device.type != "cuda":
                return Embedder.InFlight(vectors, path=path)
            host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
            host.copy_(vectors, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        return Embedder.InFlight(host, ready, path=path)

    def _finish(self, role: str, flight: "Embedder.InFlight"):
        """The vectors of a launched batch, once its copy to the host has finished."""
        if flight.error is not None:
            raise flight.error
        if flight.ready is not None:
            started = time.perf_counter()
            flight.ready.synchronize()
            self.waited["gpu"] += time.perf_counter() - started
            self.overlap[role] = True
        return flight.vectors

    def run(self, role: str, tokens: dict, batch: list[int], collated=None) -> np.ndarray:
        """Pooled vectors of one batch; on GPU out-of-memory, halve it (exit 7 only for one sequence)."""
        import torch

        try:
            if collated is None:
                collated = self.collate(role, tokens, batch)
            flight = collated if isinstance(collated, Embedder.InFlight) else self._launch(role, collated)
            vectors = self._finish(role, flight)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise GpuOutOfMemory(f"{role}: one sequence of {len(tokens[batch[0]])} tokens does not fit "
                                     "in GPU memory", "use a GPU with more memory, or --device cpu") from None
            if self.device.type == "cuda":
                with self.launching:  # what the failed batch held goes back before the halves run
                    torch.cuda.synchronize(self.device)
                    torch.cuda.empty_cache()
            # later batches are planned with half of what failed (batches already planned with the
            # old budget shrink the budget no further than that)
            failed = len(batch) * max(len(tokens[i]) for i in batch)
            self.token_budget[role] = max(1, min(self.token_budget[role], failed // 2))
            warn(f"{role}: GPU out of memory on a batch of {len(batch)}; halving (token budget now "
                 f"{self.token_budget[role]})")
            half = len(batch) // 2
            return np.concatenate([self.run(role, tokens, batch[:half]), self.run(role, tokens, batch[half:])])
        except RuntimeError as exc:
            if self.device.type == "cuda" and is_device_failure(exc):
                raise DeviceError(f"{role}: CUDA failure: {first_line(exc)}",
                                  "check the GPU (nvidia-smi); a rerun resumes from the last checkpoint") from None
            raise
        self._note(role, flight.path)
        lengths = [len(tokens[i]) for i in batch]
        self.real_tokens += sum(lengths)
        self.padded_tokens += len(batch) * max(lengths)
        return vectors.numpy().astype(np.float32, copy=False)


@dataclass(frozen=True)
class Compiling:
    """Whether the GPU fast path is compiled (None: on a GPU) and where compiled kernels are cached
    (None: the user cache folder); see virnucpro.encoders.compiled."""

    enabled: bool | None = None
    cache: Path | None = None


@functools.lru_cache(maxsize=1)
def _load_encoders_cached(dnabert_s: Path, esm2: Path, identity: str, device, precision: str,
                          compiling: Compiling) -> dict:
    """Both encoders, loaded once per process; `identity` (the models' checksums) is only the cache key."""
    from virnucpro.encoders.dnabert_s import DnabertSEncoder
    from virnucpro.encoders.esm2 import Esm2Encoder

    check_stop()  # a stop during torch's first import is only noted (torch catches every Exception there)
    settle_torch_cache(device, compiling)
    dtype = torch_dtype(precision)
    info(f"loading DNABERT-S and ESM-2 ({precision} on {device})")
    started = time.perf_counter()
    with gpu_failures_at_load(device):
        dnabert = DnabertSEncoder(dnabert_s, device, dtype, compile=compiling.enabled)
        check_stop()  # and one a library swallowed while it loaded: ESM-2's load takes tens of seconds
        halfway = time.perf_counter()
        esm = Esm2Encoder(esm2, device, dtype, compile=compiling.enabled)
    check_stop()
    info(f"models loaded in {time.perf_counter() - started:,.1f}s (DNABERT-S {halfway - started:,.1f}s, "
         f"ESM-2 {time.perf_counter() - halfway:,.1f}s, self-checks and compiling included)")
    return {"dnabert_s": dnabert, "esm2": esm}


def is_device_failure(exc: BaseException) -> bool:
    """A failure of the GPU, its driver or its libraries (CUDA, cuDNN, cuBLAS), not of our input or code."""
    import torch

    return (isinstance(exc, getattr(torch, "AcceleratorError", ()))
            or any(word in str(exc) for word in ("CUDA", "cuDNN", "CUDNN", "cuBLAS", "CUBLAS")))


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (torch's CUDA errors run to a dozen lines of advice)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextmanager
def gpu_failures_at_load(device):
    """Moving the models to a GPU, reading ESM-2's fp16 copy onto it and the load-time self-checks
    fail as the batches do: out of memory exit 7, a CUDA failure exit 8 (not a crash report)."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise GpuOutOfMemory(f"loading the models: GPU out of memory ({first_line(exc)})",
                             "free the GPU (nvidia-smi shows what holds it), use a GPU with more memory, "
                             "or --device cpu") from None
    except RuntimeError as exc:
        if torch.device(device).type == "cuda" and is_device_failure(exc):
            raise DeviceError(f"loading the models: CUDA failure: {first_line(exc)}",
                              "check the GPU (nvidia-smi) and that this torch build supports it "
                              "(torch.cuda.get_arch_list())") from None
        raise


def settle_torch_cache(device, compiling: Compiling) -> Path:
    """Settle torch's cache folder for embedding on `device` (`compiled.settle_cache`; on a GPU
    FlexAttention compiles either way where a fast path uses it). Called at start-up too (`run`, `embed`), so a
    missing temporary folder is exit 10 before any work, not after hours of prepare."""
    import torch

    from virnucpro.encoders import compiled

    return compiled.settle_cache(compiling.cache,
                                 compiled.wanted(compiling.enabled, device) or torch.device(device).type == "cuda")


def _load_encoders(model_set, device, precision: str, compiling: Compiling = Compiling()) -> dict:
    """Both encoders; kept loaded across the shards of one process (`run`), keyed by model checksums
    (the compile cache is settled once, with them)."""
    identity = json.dumps(model_set.identity(ROLES), sort_keys=True)
    return _load_encoders_cached(model_set.dnabert_s, model_set.esm2, identity, device, precision, compiling)


def embedding_widths(model_set, device, precision: str, compiling: Compiling = Compiling()) -> tuple[int, int]:
    """Feature widths (DNABERT-S, ESM-2) of these models; loads them, kept for the embed that follows."""
    encoders = _load_encoders(model_set, device, precision, compiling)
    return encoders["dnabert_s"].width, encoders["esm2"].width


def embed(shard: Path, out: Path, models: Path | None = None, checkpoint_dir: Path | None = None,
          device: str = "auto", precision: str = "auto", token_budget: int | None = None,
          checkpoint_every: int = 2000, checkpoint_seconds: float = 600.0, threads: int | None = None,
          model_set=None, compiling: Compiling = Compiling(), reported_as: str | None = None) -> Path:
    """Embed one prepare shard into `out` (HDF5); resumes from checkpoints of the same inputs.

    `out` is locked while this runs (a second embed to it exits 3), and an existing `out` is
    replaced only when it is a virnucpro embedding file. The lock file, when this call made it, is
    removed at the end however it ends: nothing of ours is left beside `out` but `out` itself.
    `reported_as`: what the closing line says of `out` in place of `-> out`, for a caller that moves
    or deletes it (`run`: where the user will find it, or that it is intermediate).
    """
    shard, out = Path(shard), Path(out)
    shard_meta = fmt.shard_info(shard)
    fmt.check_against_its_manifest(shard_meta)
    _refuse_folders_over_out(out, {"--checkpoint-dir": checkpoint_dir, "--compile-cache": compiling.cache})
    refuse_nesting(out, "--out")
    if checkpoint_dir is not None:
        refuse_nesting(Path(checkpoint_dir), "--checkpoint-dir", itself=True)
    else:
        _refuse_default_checkpoints_in_an_output(out)
    asked = _Settings(models, checkpoint_dir, device, precision, token_budget, checkpoint_every, checkpoint_seconds,
                      threads, model_set, compiling, reported_as)
    with _folders_taken_back_on_failure(out.parent):
        _check_output(shard, out)
        return _embed_held(shard, shard_meta, out, asked)


def _refuse_default_checkpoints_in_an_output(out: Path) -> None:
    """Exit 3 when `<out>.ckpt`, where checkpoints go without --checkpoint-dir, is another virnucpro
    output: parts written there would change it."""
    try:
        refuse_nesting(_default_checkpoints(out), f"the checkpoint folder of --out {out}:", itself=True)
    except BadInputError as exc:
        raise BadInputError(exc.message, "give --checkpoint-dir a folder outside it, or choose another --out") from None


def _refuse_folders_over_out(out: Path, folders: dict[str, Path | None]) -> None:
    """Exit 3 at start-up for a folder embed writes (`folders`: option -> path) that is `--out`, its lock
    file `.OUT.lock`, or a folder inside `--out`: it would be made at that name, and the finished
    shard then refused after all the work. Compared as real paths (links followed). A folder that
    holds `--out` (`--checkpoint-dir . --out a.h5`) is fine: the checkpoint keys are folders of their own."""
    target = Path(os.path.realpath(out))
    taken = {target: "", target.with_name(f".{target.name}.lock"): "the lock file beside "}
    for option, folder in folders.items():
        if folder is None:
            continue
        real = Path(os.path.realpath(os.path.expanduser(folder)))
        for name, what in taken.items():
            if real == name or name in real.parents:
                where = "names" if real == name else "is inside"
                raise BadInputError(f"{option} {folder} {where} {what}--out {out}: embed writes that path "
                                    "itself, so the folder would clash with it (the finished shard refused after "
                                    "all the work)",
                                    f"give {option} a folder of its own, outside {out}" + (
                                        f" (the default, {_default_checkpoints(out)}, is one)"
                                        if option == "--checkpoint-dir" else ""))


@dataclass(frozen=True)
class _Settings:
    """The options of one `embed` call, as given (see `embed`), handed down to where they are used."""

    models: Path | None
    checkpoint_dir: Path | None
    device: str
    precision: str
    token_budget: int | None
    checkpoint_every: int
    checkpoint_seconds: float
    threads: int | None
    model_set: object
    compiling: Compiling
    reported_as: str | None = None


@contextmanager
def _folders_taken_back_on_failure(folder: Path) -> Iterator[None]:
    """The folders of `folder`'s path that `--out` makes are removed again, deepest first, when the
    command fails while they are empty (a mistyped --models leaves no empty folders behind)."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        yield
    except BaseException:
        for made in missing:
            with suppress(OSError):
                made.rmdir()  # refuses a folder that holds anything: checkpoints, someone's file
        raise


def _embed_held(shard: Path, shard_meta, out: Path, asked: _Settings) -> Path:
    """`embed` from the moment `out`'s folder exists: `out` locked, checked, embedded."""
    with file_lock(out, "--out") as lock, output_errors(out):
        try:
            held = _HeldOut(lock, h5shard.file_state(out))  # taken first: a file put there after the check differs
            _check_replaceable(out)
            return _embed_locked(shard, shard_meta, out, asked, held)
        finally:
            lock.remove()  # ours to remove while held, also when a killed embed left it


@dataclass(frozen=True)
class _HeldOut:
    """`--out` as this embed holds it: its lock, and the `h5shard.file_state` of the file found there
    when embed started (None: none), the only file the finished shard may replace (the lock keeps
    other embeds away, not other programs: the move looks again, see `h5shard.write_shard`)."""

    lock: HeldLock
    found: h5shard.FileState | None


def _embed_locked(shard: Path, shard_meta, out: Path, asked: _Settings, held: _HeldOut) -> Path:
    """`embed` once `out` is `held` by this process."""
    records = fmt.shard_records_as_hashed(shard, shard_meta.sha256)
    ids = [record[0] for record in records]
    model_set = asked.model_set or store.locate(asked.models, roles=ROLES)
    torch_device, precision = _device_and_precision(asked)
    if asked.threads is not None:  # a library caller's count; the CLI's (set before torch loaded) again, unchanged
        limit_threads(asked.threads)
    identity = model_set.identity(ROLES)
    checkpoint = checkpoint_identity(shard_meta.sha256, identity, precision)
    folder = Path(asked.checkpoint_dir or _default_checkpoints(out)) / checkpoint_key(checkpoint)
    if _kept_as_written(out, shard_meta, ids, identity, precision):
        _discard_leftover(folder, asked.checkpoint_dir is None)
        return out
    if not ids:
        return _write_empty(out, shard, shard_meta, model_set, precision, MadeBy({torch_device.type}), asked, held)
    settle_torch_cache(torch_device, asked.compiling)  # before checkpoints are made or models read
    _say_checkpoints_passed_by(folder, checkpoint, _default_checkpoints(out) / folder.name)
    checkpoints = CheckpointStore(folder, asked.checkpoint_dir is None, identity=checkpoint)
    try:
        encoders = _load_encoders(model_set, torch_device, precision, asked.compiling)
        distinct, known, done = _vector_tables(records, {role: encoders[role].width for role in ROLES})
        restored = _restore(checkpoints, known, done)
        _log_resume(ids, distinct, done)
        embedder = Embedder(encoders, asked.token_budget or DEFAULT_TOKEN_BUDGET[torch_device.type], torch_device,
                            asked.checkpoint_every)
        label = f"embed shard {shard_meta.index + 1}/{shard_meta.of}"
        _compute(embedder, distinct, known, done, checkpoints, ids, asked.checkpoint_every, asked.checkpoint_seconds,
                 label)
        store.refuse_changed_since_verified([model_set.dnabert_s, model_set.esm2])  # memory-mapped weights
        _write(out, ids, distinct, known,
               _attributes(shard_meta, identity, model_set.tiny, precision, embedder.made_by(restored)), held)
    except BaseException:
        checkpoints.close()
        raise
    _remove_after_writing(checkpoints, out, final=asked.reported_as is None)
    info(f"embedded {len(ids):,} records of {shard.name} {asked.reported_as or f'-> {out}'}")
    return out


def _vector_tables(records: list, widths: dict[str, int]) -> tuple[dict, dict, dict]:
    """Per role: the distinct sequences of the shard's `records` (id, nucleotide, protein), a zeroed
    vector for each (`widths` wide) and whether it is computed yet (none is)."""
    distinct = {"dnabert_s": Distinct.of([r[1] for r in records]), "esm2": Distinct.of([r[2] for r in records])}
    known = {role: np.zeros((len(distinct[role].sequences), widths[role]), np.float32) for role in ROLES}
    done = {role: np.zeros(len(distinct[role].sequences), bool) for role in ROLES}
    return distinct, known, done


def _write_empty(out: Path, shard: Path, shard_meta, model_set, precision: str, made: MadeBy, asked: _Settings,
                 held: "_HeldOut") -> Path:
    """A shard without records (a sample with no ORF) written as (0, width) sets, no model loaded: the
    widths come from the models' settings (`unloaded_widths`); `made` names the device and no path,
    as nothing computed a vector."""
    identity = model_set.identity(ROLES)
    distinct, known, _ = _vector_tables([], dict(zip(ROLES, unloaded_widths(model_set))))
    _write(out, [], distinct, known, _attributes(shard_meta, identity, model_set.tiny, precision, made), held)
    info(f"embedded 0 records of {shard.name} (no ORF: no model loaded) {asked.reported_as or f'-> {out}'}")
    return out


def unloaded_widths(model_set) -> tuple[int, int]:
    """Feature widths (DNABERT-S, ESM-2) from the models' settings (DNABERT-S's config.json, ESM-2's
    checkpoint settings, its weights mapped, not read), checked as loading checks them: what an empty
    shard's datasets and the classifier check need, without loading billions of parameters for it."""
    from virnucpro.encoders import dnabert_s, esm2

    return dnabert_s.configured_width(model_set.dnabert_s), esm2.configured_width(model_set.esm2)


def _remove_after_writing(checkpoints: "CheckpointStore", out: Path, final: bool) -> None:
    """The checkpoints of the shard just written removed, a stop held back until that is done (cut,
    it left a half-deleted folder and its lock). Such a stop then says the shard is complete when
    `out` is the command's own result (`final`; `run`'s embeddings are not yet its outputs)."""
    try:
        with stop_signals_deferred():
            checkpoints.remove()
    except InterruptedByUser as stop:
        if not final or isinstance(stop, StoppedWithOutputsInPlace):
            raise
        raise StoppedWithOutputsInPlace(f"{stop.message.split(':', 1)[0]} once {out} was written: stopped "
                                        "(it is complete)", "nothing to rerun: the shard is embedded",
                                        out.parent) from None


def _device_and_precision(asked: _Settings) -> tuple:
    """The torch device and the precision `asked` resolve to."""
    torch_device = resolve_device(asked.device)
    return torch_device, resolve_precision(asked.precision, torch_device)


def _default_checkpoints(out: Path) -> Path:
    """Where embed keeps its checkpoints without --checkpoint-dir: `<out>.ckpt` beside the output."""
    return out.with_name(out.name + ".ckpt")


def _say_checkpoints_passed_by(folder: Path, identity: dict, default: Path) -> None:
    """Say, before computing, which checkpoints of this very shard this embed will not resume from,
    and why (otherwise hours of GPU work would be recomputed without a word): those in the folder
    beside `folder` made with another precision, models or virnucpro, and those of this very
    identity in the default folder `default` when --checkpoint-dir names another one. A key folder
    of a virnucpro older than the version in the key records no identity: found by its old key."""
    if os.path.realpath(default) != os.path.realpath(folder) and _holds_parts(default):
        info(f"{default} holds checkpoints of this shard with these models and precision, but --checkpoint-dir names "
             f"{folder.parent}: they are not used (move the folder {default} into {folder.parent} to resume from them)")
    unversioned = folder.parent / checkpoint_key({key: value for key, value in identity.items() if key != "version"})
    if _holds_parts(unversioned):
        info(f"{unversioned} holds checkpoints of this shard written by a virnucpro older than {__version__} (before "
             "checkpoints named their version): not used, as vectors of another version are never mixed in; no "
             "virnucpro from this one on will use them: delete that folder to free its space")
    with contextlib.suppress(OSError):  # gone, or unreadable: nothing to say
        for other in sorted(folder.parent.iterdir()):
            found = _identity_of(other)
            if other.name != folder.name and found.get("shard") == identity["shard"] and _holds_parts(other):
                info(f"{other} holds checkpoints of this shard made with {_differences(found, identity)}")


def _holds_parts(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return folder.is_dir() and not folder.is_symlink() and any(PART_NAME.fullmatch(p.name) for p in folder.iterdir())
    return False


def _identity_of(folder: Path) -> dict:
    """The identity a key folder records (IDENTITY_NAME); {} when it records none readable."""
    path = folder / IDENTITY_NAME
    try:
        if re.fullmatch(SHA256_HEX, folder.name) and is_regular(path) and path.stat().st_size < 65536:
            found = json.loads(path.read_text(encoding="utf-8"))
            return found if isinstance(found, dict) else {}
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested past Python's limit
        pass
    return {}


def _differences(found: dict, wanted: dict) -> str:
    """What `found` was made with that `wanted` is not, in words naming the option that chooses it,
    and the way to resume from it where there is one."""
    said = []
    if found.get("precision") != wanted["precision"]:
        said.append(f"--precision {printable(str(found.get('precision')))} (this run: {wanted['precision']})")
    models = found.get("models") if isinstance(found.get("models"), dict) else {}
    other = [role for role in ROLES if models.get(role) != wanted["models"][role]]
    if other:
        said.append(f"other {' and '.join(ROLE_NAMES[role] for role in other)} weights")
    if found.get("version") != wanted["version"]:
        said.append(f"virnucpro {printable(str(found.get('version')))} (this is {wanted['version']}: vectors of "
                    "another version are never mixed in)")
    if found.get("format") != wanted["format"] and not said:
        said.append("another checkpoint format")
    text = "; ".join(said) or "other settings"
    if said and said[0].startswith("--precision") and len(said) == 1:
        text += f": not used; give --precision {printable(str(found.get('precision')))} to resume from them"
    else:
        text += ": not used"
    return text


def _kept_as_written(out: Path, shard_meta, ids: list[str], identity: dict, precision: str) -> bool:
    """Whether `out` already holds this very shard (see `already_embedded`): then it is kept, said so;
    an embedding file there that is not this one is said to be replaced, and why."""
    if not already_embedded(out, shard_meta, ids, identity, precision):
        _say_why_replaced(out, shard_meta, identity, precision)
        return False
    info(f"{out} already holds these {len(ids):,} records embedded with these models ({precision}), read back "
         "sound: kept (an earlier attempt finished it; delete it to compute again)")
    return True


def _say_why_replaced(out: Path, shard_meta, identity: dict, precision: str) -> None:
    """A note when `out` holds an embedding file that this embed replaces: why (another virnucpro
    version, another shard, other models or precision, rows that do not read back sound)."""
    if not out.is_file():
        return
    try:
        found = h5shard.read_info(out)
    except InterruptedByUser:
        raise
    except (VirnucproError, OSError):
        info(f"replacing {out} (an embedding file that cannot be read back sound)")
        return
    if found.virnucpro_version != __version__:
        info(f"{out} was written by virnucpro {printable(str(found.virnucpro_version))}, not this {__version__}: "
             "embedding it again (another version's vectors are never taken as this one's)")
        return
    shard = _shard_differences(found, shard_meta)
    made = ([] if store.model_checksums(found.models) == store.model_checksums(identity) else ["other models"]) + (
        [] if found.precision == precision else [f"precision {printable(str(found.precision))}, not {precision}"])
    what = "another shard" if shard else "this shard"
    why = "; ".join(shard + made) or "its rows do not read back sound"
    info(f"replacing {out} (an embedding of {what}: {why})")


def _shard_differences(found, shard_meta) -> list[str]:
    """How the shard an embedding file was made from differs from `shard_meta` (empty: the same)."""
    differences = []
    if (found.shard_index, found.shard_of) != (shard_meta.index, shard_meta.of):
        differences.append(f"shard index {found.shard_index} (of {found.shard_of}), "
                           f"not {shard_meta.index} (of {shard_meta.of})")
    if found.chunk_size != shard_meta.chunk_size:
        differences.append(f"chunk size {found.chunk_size}, not {shard_meta.chunk_size}")
    if found.shard_sha256 != shard_meta.sha256:
        differences.append(f"shard sha256 {found.shard_sha256[:12]}..., not {shard_meta.sha256[:12]}...")
    return differences


def _discard_leftover(folder: Path, parent_is_ours: bool) -> None:
    """The parts of a shard whose output is already written (a kill landed between the two), unless
    another embed holds or waits for them, or may resume from them: checkpoints are keyed by shard,
    models and precision, not by output, so in a --checkpoint-dir shared by several outputs they
    may be a killed embed's into another output (kept, and said). The default `<out>.ckpt` left empty
    (a kill between the key folder's removal and its own) is removed too."""
    if not folder.is_dir():
        if parent_is_ours:
            with contextlib.suppress(OSError):  # absent, or holding other checkpoints: left as it is
                folder.parent.rmdir()
        return
    if not parent_is_ours:
        with contextlib.suppress(OSError):
            if any(PART_NAME.fullmatch(path.name) for path in folder.iterdir()):
                info(f"{folder} holds checkpoints of this shard (same models and precision), not needed by this "
                     "output: kept, as an embed of the shard into another output may resume from them; delete "
                     "the folder when none will")
        return
    with contextlib.suppress(FolderBusy):
        CheckpointStore(folder, parent_is_ours, wait=False).remove()


def _attributes(shard_meta, identity: dict, tiny: bool, precision: str, made: MadeBy) -> dict:
    """The HDF5 shard's attributes: what it was made from (`identity`: the models' identity, as the
    checkpoints are keyed) and how, for predict's cross-checks; `device` and `attention` name
    everything that computed its vectors (restored parts included)."""
    return {"shard_index": shard_meta.index, "shard_of": shard_meta.of, "shard_sha256": shard_meta.sha256,
            "chunk_size": shard_meta.chunk_size, "models": identity, "precision": precision,
            "device": made.device_text(), "tiny": bool(tiny), "attention": made.attention_text(),
            "settings": made.settings_text()}


def already_embedded(out: Path, shard_meta, ids: list[str], identity: dict, precision: str) -> bool:
    """Whether `out` is this shard embedded by these models at this precision, by this virnucpro (as
    its checkpoints, another version's vectors are never taken as this one's), every row read back
    sound (ids in order, finite vectors matching their checksums): the work of an earlier attempt
    (a Nextflow task resumed in its work folder after its orphan finished, a rerun `run`)."""
    if not out.is_file():
        return False
    try:
        found = h5shard.read_info(out)
        wanted = (shard_meta.sha256, shard_meta.index, shard_meta.of, shard_meta.chunk_size,
                  store.model_checksums(identity), precision, __version__)
        if (found.shard_sha256, found.shard_index, found.shard_of, found.chunk_size, store.model_checksums(found.models),
                found.precision, found.virnucpro_version) != wanted:
            return False
        h5shard.verify_shard(out, ids)
    except InterruptedByUser:
        raise  # a stop while the file is read back says nothing about the file
    except (VirnucproError, OSError):
        return False
    return True


def _write(out: Path, ids: list[str], distinct: dict, known: dict, attrs: dict, held: _HeldOut) -> None:
    """The HDF5 shard: one row per record, each from the vector of its distinct sequence. The lock
    of `out` names the temporary file while it is written: a rerun after a kill removes it. Only the
    file found at `out` when embed started is replaced; one written there since is refused (exit 3,
    the checkpoints kept for the rerun)."""
    def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return tuple(known[role][distinct[role].of_record[start:stop]] for role in ROLES)

    h5shard.write_shard(out, ids, rows, tuple(known[role].shape[1] for role in ROLES), attrs,
                        held.lock.note_temporary, replacing=held.found)


def _check_output(shard: Path, out: Path) -> None:
    """`--out` must be a new or replaceable file beside a writable directory, never the shard itself."""
    if resolved(out, "--out") == resolved(shard, "the shard"):
        raise BadInputError(f"--out {out} is the input shard: writing it would destroy the shard",
                            f"write the embeddings to another file, e.g. {shard.with_suffix('.h5').name}")
    if out.is_dir():
        raise BadInputError(f"--out {out} is a directory", f"give a file name, e.g. {shell_word(str(out / 'shard.h5'))}")
    make_folder(out.parent, "the directory of --out")


def _check_replaceable(out: Path) -> None:
    """An existing `--out` is replaced only when virnucpro wrote it as it is (it starts with embed's seal,
    which still holds: a kept shard a user added a dataset to was replaced, the dataset lost)."""
    if out.is_symlink():
        raise BadInputError(f"--out {out} is a symbolic link: writing would replace the link, which virnucpro "
                            "did not write", "give the path of a new file, or of the link's target")
    if out.exists() and not out.is_file():
        raise BadInputError(f"--out {out} is not a regular file (a pipe, FIFO or device): virnucpro writes its "
                            "embedding file under a temporary name and renames it", "give the path of a file")
    listed = on_disk_spelling(out).name
    if out.exists() and listed != out.name:
        raise BadInputError(f"--out {out} finds the file {printable(listed)}: this file system does not tell names "
                            "apart by case, and writing would replace a file named otherwise than asked (maybe "
                            "the embedding of another shard)",
                            f"give --out {shell_word(str(out.with_name(listed)))} to mean that file, or choose a "
                            "name that differs in more than case")
    if out.exists() and not h5shard.is_sealed_shard(out):
        raise BadInputError(f"--out {out} exists and does not start with the seal virnucpro embed writes (another "
                            "program's file, or an embedding file of another virnucpro format: before format "
                            "3, or a newer one): virnucpro replaces only files it can tell it wrote",
                            "move it away, delete it if it is an older virnucpro's output (it is embedded "
                            "again), or choose another --out")
    if out.exists() and not h5shard.seal_holds(out):
        raise BadInputError(f"--out {out} was written by virnucpro embed but changed since (its bytes differ from its "
                            "seal: edited, e.g. a dataset or attribute added, rewritten by h5repack, or damaged): "
                            "virnucpro replaces only files as it wrote them",
                            "move it away (what was added stays in it) or delete it, then rerun; or choose another --out")


def _restore(checkpoints: CheckpointStore, known: dict, done: dict) -> MadeBy:
    """Take the vectors of every sound checkpoint part as known; what computed them."""
    sizes = {role: len(done[role]) for role in ROLES}
    widths = {role: known[role].shape[1] for role in ROLES}
    made = MadeBy()
    for part in checkpoints.load(sizes, widths):
        made.add(part.made)
        for role, (indices, vectors) in part.vectors.items():
            known[role][indices] = vectors
            done[role][indices] = True
    _say_unrecorded(made, checkpoints.folder)
    return made


def _say_unrecorded(made: MadeBy, folder: Path) -> None:
    """One warning when restored parts (of an older virnucpro) do not record what computed them."""
    if UNKNOWN in made.devices:
        warn(f"some checkpoint parts in {folder} do not record which device and attention path "
             f"computed them (written by an older virnucpro): the shard's attributes say '{UNKNOWN}' for them")
    elif UNKNOWN in made.settings:
        warn(f"some checkpoint parts in {folder} do not record the settings that batched them (written by an "
             f"older virnucpro): the shard's attribute settings says '{UNKNOWN}' for them")


def _covered_records(distinct: dict, done: dict, n_records: int) -> int:
    """Length of the record prefix whose vectors are all known."""
    covered = n_records
    for role in ROLES:
        missing = np.flatnonzero(~done[role][distinct[role].of_record]) if n_records else []
        if len(missing):
            covered = min(covered, int(missing[0]))
    return covered


def _log_resume(ids: list[str], distinct: dict, done: dict) -> None:
    if not any(d.any() for d in done.values()):
        return
    at = _covered_records(distinct, done, len(ids))
    info(f"resuming from checkpoint at record {at:,} of {len(ids):,} (distinct sequences already "
         f"embedded: {_embedded_counts(done)})")


def _embedded_counts(done: dict) -> str:
    """'512/12,041 dnabert_s, 0/12,041 esm2': each model's distinct sequences embedded so far (a
    window's records count as complete only once both models have embedded them)."""
    return ", ".join(f"{int(done[r].sum()):,}/{len(done[r]):,} {r}" for r in ROLES)


def _work_items(distinct: dict, done: dict, n_records: int, checkpoint_every: int):
    """(window end, role, distinct indices) still to do, window by window, DNABERT-S first."""
    for start in range(0, n_records, checkpoint_every):
        stop = min(n_records, start + checkpoint_every)
        for role in ROLES:
            indices = distinct[role].new_in(start, stop)
            if not done[role][indices.start:indices.stop].all():
                yield stop, role, indices


def _compute(embedder: Embedder, distinct: dict, known: dict, done: dict, checkpoints: CheckpointStore,
             record_ids: list[str], checkpoint_every: int, checkpoint_seconds: float, label: str = "embed") -> None:
    """Embed every missing distinct sequence, window by window, saving parts as it goes.

    The batches of every work item form one stream: tokenization of the next work item and the
    host-side layout (on a GPU also the launch) of the next batch run in background threads while
    the current batch computes, across window and model boundaries too, so the GPU's queue never
    runs dry between work items. A non-finite vector stops the run before it can reach a
    checkpoint (exit 9).
    """
    work = _ShardWork(embedder, distinct, known, done, checkpoints, record_ids, checkpoint_seconds, label)
    items = list(_work_items(distinct, done, len(record_ids), checkpoint_every))
    with StopRequest() as stop, ThreadPoolExecutor(max_workers=1) as ahead, \
            ThreadPoolExecutor(max_workers=1) as layouts:
        tokenized = _prefetched(ahead, work.tokenize, items, embedder.waited, "tokens")
        for step, collated in _prefetched(layouts, work.collate, work.steps(items, tokenized), embedder.waited,
                                          "layout"):
            work.embed_batch(step.role, step.tokens, step.batch, collated)
            checkpoints.raise_failed()  # a failed part write stops the compute at once (exit 10)
            work.stop_if_requested(stop)
            if step.closes_window:
                work.close_window(step.window_end)
            elif time.monotonic() - work.last_save >= checkpoint_seconds:
                work.save()
    work.save()  # nothing left unsaved when every window closed, as each does: a safety net
    checkpoints.flush()  # a part that could not be written ends the command before the output is written
    _refuse_uncomputed(done)
    work.report()


def _refuse_uncomputed(done: dict) -> None:
    """Every distinct sequence has its vector, computed or restored, before the shard is written: a
    row left at zero by a bug would be scored as a real result. A bug report, the checkpoints kept."""
    for role, flags in done.items():
        if not flags.all():
            raise RuntimeError(f"{int((~flags).sum()):,} {role} vectors were never computed (a bug: the shard "
                               "is not written)")


_END = object()


def _prefetched(pool: ThreadPoolExecutor, function, items, waited: dict | None = None, key: str = ""):
    """Yield (item, function(item)) in order, the next item's result computing in `pool` meanwhile
    (`items` may be a generator: it is advanced one item ahead); the seconds spent waiting for a
    result are added to `waited[key]`."""
    upcoming = iter(items)
    item = next(upcoming, _END)
    running = pool.submit(function, item) if item is not _END else None
    while item is not _END:
        started = time.perf_counter()
        result = running.result()
        if waited is not None:
            waited[key] += time.perf_counter() - started
        try:
            following = next(upcoming, _END)
        except Exception:
            yield item, result  # the item in hand first (its window closes and is saved), then the error
            raise
        if following is not _END:
            running = pool.submit(function, following)
        yield item, result
        item = following


@dataclass(frozen=True)
class _Step:
    """One batch of the stream: its model, the tokens of its work item, its distinct indices, and
    whether it is the last batch of its window (whose part is saved once it is computed)."""

    role: str
    tokens: dict
    batch: list
    window_end: int
    closes_window: bool


def _no_vectors() -> dict[str, tuple[list[int], list[np.ndarray]]]:
    """Per role: distinct indices and the blocks of their vectors, none yet."""
    return {role: ([], []) for role in ROLES}


def _waits(embedder: Embedder) -> str:
    """On a GPU, where the compute loop's time went while it waited: a loop that mostly waits for
    the GPU keeps it fed; one that waits for layouts or tokens is bound by its host work."""
    if embedder.device.type != "cuda":
        return ""
    waited = embedder.waited
    return (f"; the loop waited {waited['gpu']:,.1f}s for the GPU, {waited['layout']:,.1f}s for batch layouts "
            f"and launches, {waited['tokens']:,.1f}s for tokens")


class _ShardWork:
    """One shard's embedding under way: the vectors known, those not yet saved, progress and counts."""

    def __init__(self, embedder: Embedder, distinct: dict, known: dict, done: dict, checkpoints: CheckpointStore,
                 record_ids: list[str], checkpoint_seconds: float, label: str = "embed"):
        self.embedder, self.distinct, self.known, self.done = embedder, distinct, known, done
        self.checkpoints, self.record_ids, self.checkpoint_seconds = checkpoints, record_ids, checkpoint_seconds
        self.covered = _covered_records(distinct, done, len(record_ids))
        # records count when their window is complete; distinct sequences, their letters and tokens
        # count per batch; restored records are no speed. The ETA follows the letters left, the bases
        # and the residues each at their own model's pace: a protein letter costs ESM-2 far more
        letters = {role: sum(len(distinct[role].sequences[i]) for i in np.flatnonzero(~done[role])) for role in ROLES}
        self.progress = Progress(label, total=len(record_ids), unit="records", done=self.covered,
                                 eta_by=("letters", sum(letters.values())), eta_parts=letters)
        self.unsaved = _no_vectors()
        self.last_save = time.monotonic()
        self.computed = {role: 0 for role in ROLES}

    def tokenize(self, item) -> dict:
        """Tokens of a work item's distinct sequences by distinct index (runs in the look-ahead thread)."""
        _, role, indices = item
        sequences = [self.distinct[role].sequences[i] for i in indices]
        return dict(zip(indices, self.embedder.encoders[role].tokenize(sequences)))

    def steps(self, items: list, tokenized) -> Iterator[_Step]:
        """The batches still missing a vector, work item after work item (`tokenized` yields each
        item of `items` with its tokens), each item planned when the stream reaches it; what is left
        of an item is planned again once an out-of-memory halving lowered its model's token budget."""
        for number, (item, tokens) in enumerate(tokenized):
            window_end, role, indices = item
            closes = number + 1 == len(items) or items[number + 1][0] != window_end
            budget, batches, taken = self.embedder.token_budget[role], self._missing(role, tokens, indices), 0
            while taken < len(batches):
                if self.embedder.token_budget[role] < budget:
                    budget = self.embedder.token_budget[role]
                    batches = batches[:taken] + self._missing(role, tokens, [i for b in batches[taken:] for i in b])
                taken += 1
                yield _Step(role, tokens, batches[taken - 1], window_end, closes and taken == len(batches))

    def _missing(self, role: str, tokens: dict, indices) -> list[list[int]]:
        """The batches of `indices` planned with the current token budget, less those all computed."""
        return [b for b in self.embedder.batches(role, tokens, indices) if not self.done[role][b].all()]

    def collate(self, step: _Step):
        """Lay out (on a GPU, once overlapping, launch) one step's batch: runs in the layout thread."""
        return self.embedder.collate(step.role, step.tokens, step.batch)

    def _ids(self, role: str, batch: list[int]) -> list[str]:
        """The record id of each distinct sequence of `batch` (the first record that has it)."""
        return [self.record_ids[self.distinct[role].first_record[i]] for i in batch]

    def _refuse_non_finite_alone(self, role: str, tokens: dict, batch: list[int], vectors) -> None:
        """NumericalError naming the sequences of `batch` whose vectors are non-finite when each is
        embedded alone: a NaN of one sequence reaches those packed beside it (a masked attention
        weight of 0 times NaN is NaN), which the error must not blame. When none is, the batch is
        named as a whole: only packed together do they give NaN/Inf (padding, the models)."""
        rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(batch) == 1:
            return
        alone = [batch[k] for k in rows if not np.isfinite(self.embedder.run(role, tokens, [batch[k]])).all()]
        hint = non_finite_hint(self.embedder.encoders[role].dtype)
        if not alone:
            raise NumericalError(f"non-finite embeddings (NaN/Inf) for {len(rows)} of the {len(batch)} sequences of "
                                 f"one {role} batch (records {', '.join(self._ids(role, [batch[k] for k in rows[:3]]))}"
                                 f"{', ...' if len(rows) > 3 else ''}), yet each is finite embedded alone: none of "
                                 "them is at fault, the batch as a whole (its padding, or the models) is", hint=hint)
        names = self._ids(role, alone)
        raise NumericalError(f"non-finite embedding (NaN/Inf) for record {names[0]}"
                             + (f" and {len(names) - 1} more" if len(names) > 1 else "")
                             + f" (each embedded alone; {len(rows)} of {len(batch)} vectors of its batch affected)",
                             hint=hint)

    def embed_batch(self, role: str, tokens: dict, batch: list[int], collated) -> None:
        """Compute one batch, refuse non-finite vectors, keep those not known yet."""
        vectors = self.embedder.run(role, tokens, batch, collated)
        try:
            check_finite(vectors, self._ids(role, batch), self.embedder.encoders[role].dtype)
        except NumericalError:
            self._refuse_non_finite_alone(role, tokens, batch, vectors)
            raise  # a batch of one sequence
        missing = [k for k, i in enumerate(batch) if not self.done[role][i]]
        chosen = [batch[k] for k in missing]
        self.known[role][chosen] = vectors[missing]
        self.done[role][chosen] = True
        self.unsaved[role][0].extend(chosen)
        self.unsaved[role][1].append(vectors[missing])
        self.computed[role] += len(chosen)
        self.progress.advance(0, part=role, sequences=len(chosen), tokens=sum(len(tokens[i]) for i in batch),
                              letters=sum(len(self.distinct[role].sequences[i]) for i in chosen))

    def stop_if_requested(self, stop: StopRequest) -> None:
        """After a batch, on a stop signal: save what is computed and exit 6 (a rerun resumes)."""
        if not stop.signal_name:
            return
        self.save()
        self.checkpoints.flush()
        n_records = len(self.record_ids)
        at = _covered_records(self.distinct, self.done, n_records)
        raise InterruptedByUser(f"{stop.signal_name} received: checkpoint saved ({at:,} of {n_records:,} records "
                                f"complete; distinct sequences embedded: {_embedded_counts(self.done)})",
                                "rerun the same command to resume")

    def save(self) -> None:
        """Queue the vectors computed since the last save as one checkpoint part."""
        if any(self.unsaved[role][0] for role in ROLES):
            self.checkpoints.save(self.unsaved, self.embedder.take_unsaved_made())
        self.unsaved = _no_vectors()
        self.last_save = time.monotonic()

    def close_window(self, window_end: int) -> None:
        """Every work item of a window is done: save its part and count its records."""
        self.save()
        self.progress.advance(max(0, window_end - self.covered))
        self.covered = max(self.covered, window_end)

    def report(self) -> None:
        """Count the trailing windows restored whole from a checkpoint; log the work done and its speed."""
        self.progress.advance(len(self.record_ids) - self.covered)
        elapsed = self.progress.close()
        embedder = self.embedder
        waste = 1 - embedder.real_tokens / embedder.padded_tokens if embedder.padded_tokens else 0.0
        info(f"computed {self.computed['dnabert_s']:,} nucleotide and {self.computed['esm2']:,} protein sequences "
             f"in {elapsed:,.1f}s ({embedder.real_tokens / max(elapsed, 1e-9):,.0f} real tokens/s; padding "
             f"in planned batches {waste:.1%})" + _waits(embedder))
