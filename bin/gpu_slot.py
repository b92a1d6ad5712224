#!/usr/bin/env python3
"""Run a command on a GPU of its own: concurrent tasks on one machine never share a GPU.

    gpu_slot.py --lock-dir DIR [--device auto|cpu|cuda] [--count N] -- COMMAND [ARGS...]

When a scheduler already chose the GPU (CUDA_VISIBLE_DEVICES naming one: SLURM --gres, cloud
batch, Nextflow >= 26.x's local executor), the command runs with it unchanged. Otherwise (Nextflow
24.x's local executor, `docker --gpus all`, which show every GPU to every task, or a
CUDA_VISIBLE_DEVICES listing several, set in the shell that launched the run) this takes the first
free slot among those GPUs, as an exclusive lock on DIR/gpu<id>.lock, sets CUDA_VISIBLE_DEVICES=<id>
and replaces itself with the command, which inherits the lock: the kernel releases it when the
command ends, however it ends. With every slot taken it waits for one (a stop signal meanwhile is
exit 6, CONTRACTS.md's code for a stopped task, holding no slot). DIR must be shared by the
tasks of the machine (the pipeline uses its checkpoint folder, mounted into containers); the slots
are kept per machine inside it (`machine_slots`), so machines sharing it (EFS, NFS) never wait for
each other's GPUs. A slot file this user cannot open is another user's: skipped, and with none
openable the command runs with every GPU visible, said so. No GPU:
the command runs as it is; with --device cpu it claims no GPU either. Either way it says on stderr
which GPU the command got, so the task's log shows it. Standard library only.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

WAIT_SECONDS = 5.0  # between two tries when every GPU is taken
INTERRUPTED = 6  # CONTRACTS.md's exit code of a task stopped by a signal (rerun it)
# the package's stop signals (virnucpro.errors.STOP_SIGNALS); SIGHUP under nohup stays ignored
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # a file system without flock (Lustre noflock)


class NoFlock(Exception):
    """The slot folder's file system cannot lock files, so GPUs cannot be handed out."""


def say(message: str) -> None:
    print(f"gpu_slot: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int) -> None:
    """One line on stderr and the exit code (a shell's 126/127 for a command it cannot run)."""
    say(message)
    sys.exit(code)


def stop(signum: int, _frame) -> None:
    """A stop before the command started (while waiting for a slot, say): exit 6 in one line, as the
    package's commands stop. A slot this process may hold is released by the kernel as it exits."""
    for sig in STOP_SIGNALS:  # a second signal must not interrupt this exit
        signal.signal(sig, signal.SIG_IGN)
    fail(f"{signal.Signals(signum).name} received: stopped before the command started (no GPU slot kept)",
         INTERRUPTED)


def stop_on_signals() -> None:
    """Stop signals end this process with `stop` until it becomes the command (exec gives the command
    the default handlers back; a signal ignored, SIGHUP under nohup, stays ignored)."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, stop)


def count_gpus() -> int:
    """The GPUs this process can open: nvidia-smi's list, else the /dev/nvidiaN device files."""
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if listed.returncode == 0:
            return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))
    return sum(1 for dev in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", dev.name))


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `path`, or None when another process holds
    it. Opened read-only (flock needs no more), so a slot file another user created still works, and
    one of ours is made readable by all; one this user cannot open at all raises PermissionError."""
    try:  # never through a link (it could create a file elsewhere), never blocking on a FIFO
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except PermissionError:
        raise
    except OSError as exc:  # ELOOP: a symbolic link; EISDIR: a folder; ENOSPC, EROFS: cannot be made
        what = "is not a slot file" if exc.errno in (errno.ELOOP, errno.EISDIR) else "cannot be made or opened"
        raise NoFlock(f"{path} {what} ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NoFlock(f"{path} is not a slot file (a FIFO or device)")
    if info.st_uid == os.geteuid() and info.st_mode & 0o444 != 0o444:  # made under umask 077
        try:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) | 0o444)
        except OSError:
            pass
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        if exc.errno in NO_FLOCK:
            raise NoFlock(f"{exc.strerror}: no flock on this file system") from None
        raise
    return fd


def slot_file(lock_dir: Path, gpu: str) -> Path:
    """The lock file of GPU `gpu` (an index, or a UUID as CUDA_VISIBLE_DEVICES may name one)."""
    return lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock"


def machine_slots(lock_dir: Path) -> Path:
    """This machine's slot folder in `lock_dir`: one per running kernel, named by its boot id (the
    same in every container of the machine, another on each machine)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return lock_dir
    return lock_dir / f"machine-{boot}" if re.fullmatch(r"[0-9a-f-]{36}", boot) else lock_dir


def made_slot_folder(folder: Path) -> None:
    """The slot folder, made if missing: open to every user's tasks (sticky, as /tmp) when made here."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return
    except OSError as exc:
        fail(f"cannot create the GPU slot folder {folder}: {exc.strerror}", 10)
    try:
        os.chmod(folder, 0o1777)
    except OSError:
        pass


def claim_slot(lock_dir: Path, gpus: list[str], wait: float = WAIT_SECONDS) -> tuple[str, int]:
    """(gpu, lock descriptor) of the first free GPU of `gpus`, waiting while all are taken; a slot
    file this user cannot open (another user's) is skipped, said once; with none openable, NoFlock."""
    made_slot_folder(lock_dir)
    announced, unopenable = False, set()
    while True:
        for gpu in gpus:
            try:
                fd = try_lock(slot_file(lock_dir, gpu))
            except PermissionError:
                if gpu not in unopenable:
                    say(f"cannot open {slot_file(lock_dir, gpu)} (permission denied): GPU {gpu} left to its owner")
                    unopenable.add(gpu)
                continue
            if fd is not None:
                return gpu, fd
        if len(unopenable) == len(gpus):
            raise NoFlock("no slot file this user can open (permission denied)")
        if not announced:
            say(f"all {len(gpus)} GPUs are in use by other tasks; waiting for one")
            announced = True
        time.sleep(wait)


def claim_for(lock_dir: Path, gpus: list[str]) -> None:
    """Give the command a free GPU of `gpus` through CUDA_VISIBLE_DEVICES; where the slot folder cannot
    be locked, say so and leave every GPU visible (tasks may then share one, which is slow, not wrong)."""
    lock_dir = machine_slots(lock_dir)
    try:
        gpu, fd = claim_slot(lock_dir, gpus)
    except NoFlock as exc:
        say(f"warning: cannot lock GPU slots in {lock_dir} ({exc}); concurrent tasks may share a GPU: put "
            f"--checkpoint_dir on a file system with flock (and remove what is not a slot file from "
            f"{lock_dir}), or let the scheduler assign GPUs")
        return
    os.set_inheritable(fd, True)  # the command (and anything it leaves running) holds the slot
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    say(f"CUDA_VISIBLE_DEVICES={gpu} (slot {slot_file(lock_dir, gpu)}, {len(gpus)} GPUs)")


def listed_gpus(variable: str) -> list[str]:
    """The GPUs a CUDA_VISIBLE_DEVICES value shows, in its order: CUDA reads up to the first invalid
    entry, so a "-1" (no GPU) ends the list."""
    gpus = []
    for entry in (part.strip() for part in variable.split(",")):
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def choose_and_run(lock_dir: Path, device: str, count: int | None, command: list[str]) -> None:
    """Give `command` one GPU through CUDA_VISIBLE_DEVICES (unless it names one already or the command
    computes on the CPU), then exec it."""
    granted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device == "cpu":
        say("computing on the CPU; no GPU claimed")
    elif granted is not None and len(listed_gpus(granted)) <= 1:
        say(f"CUDA_VISIBLE_DEVICES={granted} (granted by the scheduler, or no GPU)")
    else:
        if granted is not None:
            gpus = listed_gpus(granted)
        else:
            gpus = [str(index) for index in range(count_gpus() if count is None else count)]
        if gpus:
            claim_for(lock_dir, gpus)
        else:
            say("no GPU visible; running as is")
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; the command gets the defaults
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        fail(f"{command[0]}: command not found", 127)
    except OSError as exc:
        fail(f"{command[0]}: cannot run it: {exc.strerror}", 126)


def gpu_count(text: str) -> int:
    """--count: a whole number of GPUs, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GPUs (0 or more)")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock-dir", type=Path, required=True, help="folder shared by the machine's tasks")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="the command's device: cpu claims no GPU")
    parser.add_argument("--count", type=gpu_count, default=None, help="number of GPUs (default: detected)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    stop_on_signals()
    choose_and_run(args.lock_dir, args.device, args.count, command)


if __name__ == "__main__":
    main()
