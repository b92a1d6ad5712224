#!/usr/bin/env python3
"""The first process (PID 1) of the virnucpro image: runs the container's command, and when the
container is stopped, passes the stop signal on to every process in it and waits for them.

    container_init.py COMMAND [ARGS...]
    container_init.py -OPTION [ARGS...]     (runs `virnucpro -OPTION ARGS...`)
    container_init.py -- COMMAND [ARGS...]  (as tini: `--` ends the init's arguments)

Why: `docker stop` (Nextflow's task wrapper, AWS Batch, a user's Ctrl-C) signals PID 1 only. Under
Nextflow that is a shell without a handler, and the kernel drops signals to a PID 1 that has none:
`virnucpro embed` never heard the stop, never saved its stop checkpoint, and was killed when the
stop timed out. Here every process gets the signal (embed saves and exits 6), and the container ends
once all of them have. A command that ends by itself ends the container at once, as before. Outside
a PID namespace of its own (not PID 1), this just runs the command. A first argument that starts with
`-` is an option of virnucpro's (`docker run IMAGE --version`), so virnucpro is the command then; a
first `--` is dropped (tini's way), so `-- virnucpro --version` runs `virnucpro --version`.
Standard library only.
"""

from __future__ import annotations

import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
PYTHON_IGNORED = (signal.SIGPIPE, signal.SIGXFSZ)  # Python ignores these two; a command must not inherit that
# virnucpro's stop signals, which it holds back until its handlers are in place (virnucpro/entry.py
# blocks them on its first line): blocked from the exec on, so that a stop in the tenths of a second
# Python takes to start (more in a container) waits for them too, and ends the run with exit 6, not 143
VIRNUCPRO_STOPS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)


def forward(signum: int, _frame) -> None:
    """Send `signum` to every process of the container but this one (kill(-1) from PID 1)."""
    forward.received = signum
    try:
        os.kill(-1, signum)
    except ProcessLookupError:  # nobody left
        pass


forward.received = 0  # the last stop signal received


VIRNUCPRO_COMMANDS = ("prepare", "embed", "predict", "run", "models")


def cannot_run(command: list[str], exc: OSError) -> int:
    """A shell's message and exit code for a command that cannot start (127: not found); a command
    of virnucpro's given alone (`docker run IMAGE run x.fa`) is named with the program."""
    print(f"container_init: cannot run {command[0]}: {exc.strerror}", file=sys.stderr, flush=True)
    if isinstance(exc, FileNotFoundError) and command[0] in VIRNUCPRO_COMMANDS:
        print(f"  fix: name the program: docker run IMAGE virnucpro {command[0]} ...", file=sys.stderr, flush=True)
    return 127 if isinstance(exc, FileNotFoundError) else 126


def held_back(command: list[str]) -> tuple[signal.Signals, ...]:
    """The signals `command` starts with blocked: virnucpro's stops when it is virnucpro (by name or
    path, or `python -m virnucpro`), else none."""
    program = os.path.basename(command[0])
    module = program.startswith("python") and command[1:3] == ["-m", "virnucpro"]
    return VIRNUCPRO_STOPS if program == "virnucpro" or module else ()


def start(command: list[str]) -> int:
    """The command's process. Its signal dispositions are those this process was given (a caught
    one is reset by exec; one inherited as ignored, SIGHUP under nohup, stays ignored), except the
    two Python ignores on its own; virnucpro starts with its stop signals held back."""
    try:
        return os.posix_spawnp(command[0], command, os.environ, setsigdef=PYTHON_IGNORED,
                               setsigmask=held_back(command))
    except OSError as exc:
        sys.exit(cannot_run(command, exc))


def exit_code(status: int) -> int:
    """A shell's exit code for a wait status (128 + N for death by signal N)."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def reap(main: int) -> int:
    """Reap every child (orphans come to PID 1) until the command has ended and, after a stop
    signal, every other process too; the command's exit code."""
    code = None
    while code is None or forward.received:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # nothing left to wait for
            break
        if pid == main:
            code = exit_code(status)
            if forward.received:  # once more, for processes started while the stop went round
                forward(forward.received, None)
    return 0 if code is None else code


def command_of(argv: list[str]) -> list[str]:
    """The command to run: what follows a first `--` (as tini reads it), else `argv`, or virnucpro
    with `argv` as its options when the first starts with `-` (no program is named that way;
    `docker run IMAGE --help` means virnucpro's help). Empty when no command is given."""
    if argv[:1] == ["--"]:
        return argv[1:]
    return ["virnucpro", *argv] if argv and argv[0].startswith("-") else argv


def main(argv: list[str]) -> int:
    argv = command_of(argv)
    if not argv:
        print("usage: container_init.py [--] COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if not argv[0]:  # exec refuses an empty program name with a ValueError, not an OSError
        print("container_init: cannot run '': the command is an empty string", file=sys.stderr, flush=True)
        return 127
    if os.getpid() != 1:
        for signum in PYTHON_IGNORED:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, held_back(argv))
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            return cannot_run(argv, exc)
    for signum in FORWARDED:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored when given: stays so, for all
            signal.signal(signum, forward)
    command = start(argv)
    if forward.received:  # stopped before the command existed: it gets the signal too
        forward(forward.received, None)
    return reap(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
