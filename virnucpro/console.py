"""Messages and progress on stderr: a rich bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import io
import os
import time
import weakref

from rich.console import Console
from rich.markup import escape

from virnucpro.errors import printable
from virnucpro.streams import silence_dead_stream

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


def draws_a_bar() -> bool:
    """Whether progress is a bar redrawn in place: only when stderr's descriptor is a real terminal
    that rich takes for one (TTY_COMPATIBLE=0 and TERM=dumb say it is none). FORCE_COLOR and
    TTY_COMPATIBLE=1 make rich take any stream for a terminal: they ask for colours, and a log file
    (Nextflow's .command.err) got ten bar frames a second. A stream with no descriptor (in memory)
    is what the console says it is."""
    if not err.is_terminal or err.is_dumb_terminal:
        return False
    try:
        descriptor = err.file.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return True
    except (ValueError, OSError):  # closed
        return False
    return os.isatty(descriptor)


def _say(text: str) -> None:
    """Print to stderr; a terminal that is gone (closed, the ssh link dropped: EIO) or a closed pipe
    (see _survive_broken_pipe) loses the message, never the command: the exit code still tells how it
    ended."""
    try:
        err.print(text, markup=True)
    except OSError:
        pass


def info(message: str) -> None:
    """A progress or result line: what it quotes is escaped (see `printable`)."""
    _say(f"[dim]virnucpro[/dim] {escape(printable(message))}")


def warn(message: str) -> None:
    """A warning on one line: what it quotes (a file name, a header) is escaped (see `printable`)."""
    _say(f"[yellow]warning:[/yellow] {escape(printable(message))}")


def error(message: str) -> None:
    """A fatal message: a progress bar still drawn is stopped first, so that the error is the last
    thing on the screen and the terminal gets its cursor back."""
    close_all_progress()
    _say(f"[bold red]error:[/bold red] {escape(message)}")


_drawing: "weakref.WeakSet[Progress]" = weakref.WeakSet()
BAR_WIDTH = 20
MIN_BAR_WIDTH = 5  # the narrowest bar a narrow terminal gets before the status is cut


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


class RemainingTime:
    """Seconds left of work made of parts whose units cost unequal time (embed's nucleotide letters
    and its far dearer protein letters): each part's amount left at that part's own measured pace,
    summed. One pace for all letters said 0:04 while minutes of protein work were left."""

    def __init__(self, totals: dict, start: float):
        self.left = {part: float(total) for part, total in totals.items()}
        self.done = dict.fromkeys(totals, 0.0)
        self.spent = dict.fromkeys(totals, 0.0)
        self._last = start

    def record(self, part, amount: float, now: float) -> None:
        """`amount` of `part` finished at `now`: the time since the last record was spent on it."""
        self.spent[part] += max(now - self._last, 0.0)
        self._last = now
        self.done[part] += amount
        self.left[part] = max(self.left[part] - amount, 0.0)

    def seconds(self) -> float | None:
        """Seconds left; None while a part with work left has no measured pace (no number beats a wrong one)."""
        total = 0.0
        for part, left in self.left.items():
            if left <= 0:
                continue
            if self.done[part] <= 0 or self.spent[part] <= 0:
                return None
            total += left * self.spent[part] / self.done[part]
        return total


class Progress:
    """Counts work done against a total and reports rate and ETA.

    On a terminal it draws a rich progress bar; elsewhere (Nextflow's .command.err, SLURM output, a
    dumb terminal) it prints one line every `every_seconds`, so logs stay short but show liveness.
    `total` None or 0: unknown (a pipe, a download without a length): counts and rates, no ETA.
    `done`: work done before this run (a resumed download), shown but never counted as speed.
    `eta_by`: (counter, its total): the ETA follows that counter of `advance`, for work whose unit
    completes in steps (embed's records finish a checkpoint window at a time; its tokens every batch).
    `eta_parts`: that total split into parts whose units cost unequal time (embed's roles), each
    timed on its own (see RemainingTime); `advance(part=...)` names the part of each amount.
    Use it as a context manager, or call `close`; an error message closes it too.
    """

    def __init__(self, label: str, total: int | None, unit: str = "records", every_seconds: float = 30.0,
                 done: int = 0, eta_by: tuple[str, float] | None = None, eta_parts: dict | None = None):
        self.label, self.total, self.unit = label, total or None, unit
        self.every, self.eta_by, self.eta_parts = every_seconds, eta_by, eta_parts
        self.done = self._before = done
        self.extra: dict[str, float] = {}
        self._start = self._last_log = time.monotonic()
        self.remaining = RemainingTime(eta_parts or {None: eta_by[1]}, self._start) if eta_by else None
        self._bar = self._start_bar() if draws_a_bar() else None
        _drawing.add(self)

    def _start_bar(self):
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn

        self._bar_width = self._fitting_bar_width()
        bar = RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=self._bar_width),
                           TextColumn("{task.fields[text]}"), console=err, transient=False)
        self._task = bar.add_task(self.label, total=self.total, completed=self.done, text=self._fitted())
        bar.start()
        return bar

    def _fitting_bar_width(self) -> int:
        """BAR_WIDTH, or narrower (to MIN_BAR_WIDTH) where the terminal is too narrow for the label,
        the bar and the count with its ETA at their widest: the bar gives way before the ETA does."""
        most = _amount(self.total or 0, self.unit)
        essential = len(f"{most}/{most} {self.unit}, ETA 00:00:00")
        return max(MIN_BAR_WIDTH, min(BAR_WIDTH, err.width - len(self.label) - essential - 3))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _eta(self, elapsed: float) -> str:
        """Seconds left at the pace so far (per part with `eta_by`), as h:mm:ss; '?' before any
        progress (of every part with work left) or without a total."""
        if self.remaining is not None:
            seconds = self.remaining.seconds()
            return "?" if seconds is None else duration(seconds)
        done, total = self.done - self._before, (self.total or 0) - self._before
        if not total or done <= 0 or elapsed <= 0:
            return "?"
        return duration(max(total - done, 0) * elapsed / done)

    def _status(self, now: float | None = None) -> str:
        """'done/total unit, ETA h:mm:ss (rates)' (no total or ETA when the total is unknown); the
        ETA before the rates, so that a narrow terminal cuts rates first."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        count = _amount(self.done, self.unit) + (f"/{_amount(self.total, self.unit)}" if self.total else "")
        unit = (" " + self.unit.removesuffix("bytes")).rstrip() if self.unit.endswith("bytes") else f" {self.unit}"
        # no "0.0 records/s" while the first records are still in the making (an embed counts them a
        # window of thousands at a time): the rates of the work under way show that it goes on
        rates = [] if self.done == self._before and self.extra else [
            _rate((self.done - self._before) / max(elapsed, 1e-9), self.unit)]
        rates += [_rate(value / max(elapsed, 1e-9), key) for key, value in self.extra.items()]
        eta = f", ETA {self._eta(elapsed)}" if self.total or self.eta_by else ""
        return f"{count}{unit}{eta} ({', '.join(rates)})"

    def _fitted(self, now: float | None = None) -> str:
        """The status cut to the terminal's width beside the label and the bar (rich would drop them)."""
        room = max(err.width - len(self.label) - self._bar_width - 3, 10)
        status = self._status(now)
        return status if len(status) <= room else status[:room - 1] + "…"

    def advance(self, n: int, part=None, **counters: float) -> None:
        """Count `n` units and the amounts of `counters` done; `part`: which of `eta_parts` they were."""
        now = time.monotonic()
        self.done += n
        for key, value in counters.items():
            self.extra[key] = self.extra.get(key, 0.0) + value
        if self.remaining is not None and self.eta_by[0] in counters:
            self.remaining.record(part, counters[self.eta_by[0]], now)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, text=self._fitted(now))
            return
        if now - self._last_log >= self.every:
            self._last_log = now
            info(f"{self.label}: {self._status(now)}")

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
