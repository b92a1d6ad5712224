"""Messages and progress on stderr: a rich bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    """Print to stderr; a terminal that is gone (closed, the ssh link dropped: EIO) or a closed pipe
    loses the message, never the command: the exit code still tells how it ended."""
    try:
        err.print(text, markup=True)
    except OSError:
        pass


def info(message: str) -> None:
    _say(f"[dim]virnucpro[/dim] {escape(message)}")


def warn(message: str) -> None:
    _say(f"[yellow]warning:[/yellow] {escape(message)}")


def error(message: str) -> None:
    _say(f"[bold red]error:[/bold red] {escape(message)}")


class Progress:
    """Counts work done against a total and reports rate and ETA.

    On a terminal it draws a rich progress bar; elsewhere (Nextflow's .command.log, SLURM output) it
    prints one line every `every_seconds`, so logs stay short but show liveness.
    """

    def __init__(self, label: str, total: int, unit: str = "records", every_seconds: float = 30.0):
        self.label, self.total, self.unit = label, total, unit
        self.every = every_seconds
        self.done = 0
        self.extra: dict[str, float] = {}
        self._start = time.monotonic()
        self._last_log = self._start
        self._bar = None
        if err.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeRemainingColumn)
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                     TimeRemainingColumn(), console=err, transient=False)
            self._task = self._bar.add_task(label, total=total, rate="")
            self._bar.start()

    def _rates(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        parts = [f"{self.done / elapsed:,.1f} {self.unit}/s"]
        parts += [f"{v / elapsed:,.0f} {k}/s" for k, v in self.extra.items()]
        return ", ".join(parts)

    def advance(self, n: int, **counters: float) -> None:
        self.done += n
        for key, value in counters.items():
            self.extra[key] = self.extra.get(key, 0.0) + value
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=self._rates())
            return
        now = time.monotonic()
        if now - self._last_log >= self.every:
            self._last_log = now
            elapsed = now - self._start
            rate = self.done / max(elapsed, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_text = f"{eta:,.0f}s" if eta != float("inf") else "?"
            info(f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({self._rates()}), ETA {eta_text}")

    def close(self) -> float:
        """Stop drawing and return the elapsed seconds."""
        if self._bar is not None:
            try:
                self._bar.stop()
            except OSError:
                pass  # the terminal is gone (see _say)
        return time.monotonic() - self._start
