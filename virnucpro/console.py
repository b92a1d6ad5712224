"""Messages and progress on stderr: a rich bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import os
import time
import weakref

from rich.console import Console
from rich.markup import escape

MIN_COLUMNS = 20  # narrower than this, COLUMNS is a mistake (COLUMNS=0 made rich print nothing at all)
MAX_COLUMNS = 1000  # wider than this, too (COLUMNS=10000000 padded one error line to 70 MB)


def columns_from_environment() -> int | None:
    """COLUMNS when it is a usable width, else None (unset, not a number, under MIN_COLUMNS or over
    MAX_COLUMNS)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return None
    return columns if MIN_COLUMNS <= columns <= MAX_COLUMNS else None


def drop_unusable_columns() -> None:
    """Remove a COLUMNS that is no usable width, so that every rich console of the process (ours,
    typer's help and usage errors) falls back to the terminal's width, or 80 off a terminal."""
    if "COLUMNS" in os.environ and columns_from_environment() is None:
        del os.environ["COLUMNS"]


def silence_dead_stream(stream) -> None:
    """Point the file descriptor of `stream`, whose reader is gone (`| head -1`), at /dev/null, so
    that later writes and the interpreter's flush at exit succeed unseen (the recipe of the Python
    docs on SIGPIPE): a closed pipe loses the messages, never the command or its exit code."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return  # no descriptor (a StringIO) or closed already: nothing will be flushed there
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _survive_broken_pipe(self: Console) -> None:
    """rich's hook when a write meets a closed pipe. Its own raised SystemExit(1), which ended a run
    in the middle (its work deleted) with no message, and sent stdout, not the dead stream, to
    /dev/null: here the console goes quiet, its stream to /dev/null, and the command goes on."""
    self.quiet = True
    silence_dead_stream(self.file)


# every console of the process, typer's included (it makes its own for help and usage errors)
Console.on_broken_pipe = _survive_broken_pipe
drop_unusable_columns()
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)  # `:ok:` in an id stays text


def _say(text: str) -> None:
    """Print to stderr; a terminal that is gone (closed, the ssh link dropped: EIO) or a closed pipe
    (see _survive_broken_pipe) loses the message, never the command: the exit code still tells how it
    ended."""
    try:
        err.print(text, markup=True)
    except OSError:
        pass


def info(message: str) -> None:
    _say(f"[dim]virnucpro[/dim] {escape(message)}")


def warn(message: str) -> None:
    _say(f"[yellow]warning:[/yellow] {escape(message)}")


def error(message: str) -> None:
    """A fatal message: a progress bar still drawn is stopped first, so that the error is the last
    thing on the screen and the terminal gets its cursor back."""
    close_all_progress()
    _say(f"[bold red]error:[/bold red] {escape(message)}")


_drawing: "weakref.WeakSet[Progress]" = weakref.WeakSet()
BAR_WIDTH = 20


def close_all_progress() -> None:
    """Stop every progress display still open (a command failing or stopped in the middle of one)."""
    for progress in list(_drawing):
        progress.close()


def duration(seconds: float) -> str:
    """Seconds as h:mm:ss (m:ss under an hour)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _amount(value: float, unit: str) -> str:
    """A count for people: bytes in MB, other units as whole numbers with separators."""
    if unit.endswith("bytes"):
        return f"{value / 1e6:,.1f} MB" if value >= 1e5 else f"{value / 1e3:,.1f} kB"
    return f"{value:,.0f}"


def _rate(value: float, unit: str) -> str:
    if unit.endswith("bytes"):
        return f"{value / 1e6:,.1f} MB/s"
    return f"{value:,.1f} {unit}/s" if value < 100 else f"{value:,.0f} {unit}/s"


class Progress:
    """Counts work done against a total and reports rate and ETA.

    On a terminal it draws a rich progress bar; elsewhere (Nextflow's .command.err, SLURM output, a
    dumb terminal) it prints one line every `every_seconds`, so logs stay short but show liveness.
    `total` None or 0: unknown (a pipe, a download without a length): counts and rates, no ETA.
    `done`: work done before this run (a resumed download), shown but never counted as speed.
    `eta_by`: (counter, its total): the ETA follows that counter of `advance`, for work whose unit
    completes in steps (embed's records finish a checkpoint window at a time; its tokens every batch).
    Use it as a context manager, or call `close`; an error message closes it too.
    """

    def __init__(self, label: str, total: int | None, unit: str = "records", every_seconds: float = 30.0,
                 done: int = 0, eta_by: tuple[str, float] | None = None):
        self.label, self.total, self.unit = label, total or None, unit
        self.every, self.eta_by = every_seconds, eta_by
        self.done = self._before = done
        self.extra: dict[str, float] = {}
        self._start = self._last_log = time.monotonic()
        self._bar = self._start_bar() if err.is_terminal and not err.is_dumb_terminal else None
        _drawing.add(self)

    def _start_bar(self):
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn

        bar = RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=BAR_WIDTH),
                           TextColumn("{task.fields[text]}"), console=err, transient=False)
        self._task = bar.add_task(self.label, total=self.total, completed=self.done, text=self._fitted())
        bar.start()
        return bar

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _eta(self, elapsed: float) -> str:
        """Seconds left at the rate so far, as h:mm:ss; '?' before any progress or without a total."""
        done, total = (self.extra.get(self.eta_by[0], 0.0), self.eta_by[1]) if self.eta_by else \
            (self.done - self._before, (self.total or 0) - self._before)
        if not total or done <= 0 or elapsed <= 0:
            return "?"
        return duration(max(total - done, 0) * elapsed / done)

    def _status(self) -> str:
        """'done/total unit, ETA h:mm:ss (rates)' (no total or ETA when the total is unknown); the
        ETA before the rates, so that a narrow terminal cuts rates first."""
        elapsed = time.monotonic() - self._start
        count = _amount(self.done, self.unit) + (f"/{_amount(self.total, self.unit)}" if self.total else "")
        unit = (" " + self.unit.removesuffix("bytes")).rstrip() if self.unit.endswith("bytes") else f" {self.unit}"
        rates = [_rate((self.done - self._before) / max(elapsed, 1e-9), self.unit)]
        rates += [_rate(value / max(elapsed, 1e-9), key) for key, value in self.extra.items()]
        eta = f", ETA {self._eta(elapsed)}" if self.total or self.eta_by else ""
        return f"{count}{unit}{eta} ({', '.join(rates)})"

    def _fitted(self) -> str:
        """The status cut to the terminal's width beside the label and the bar (rich would drop them)."""
        room = max(err.width - len(self.label) - BAR_WIDTH - 3, 10)
        status = self._status()
        return status if len(status) <= room else status[:room - 1] + "…"

    def advance(self, n: int, **counters: float) -> None:
        self.done += n
        for key, value in counters.items():
            self.extra[key] = self.extra.get(key, 0.0) + value
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, text=self._fitted())
            return
        now = time.monotonic()
        if now - self._last_log >= self.every:
            self._last_log = now
            info(f"{self.label}: {self._status()}")

    def close(self) -> float:
        """Stop drawing (the cursor shown again) and return the elapsed seconds; closing twice is harmless."""
        _drawing.discard(self)
        bar, self._bar = self._bar, None
        if bar is not None:
            try:
                bar.stop()
            except OSError:
                pass  # the terminal is gone (see _say)
        return time.monotonic() - self._start
