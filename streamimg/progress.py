"""Progress bars of the commands (``produce``, ``consume``, ``demo``), on stderr.

One line per task: description, bar, done/total (just the count when the total is
unknown), rate in units per second, elapsed time and, when the total is known, the
time remaining. It draws only when stderr is a terminal; in a pipe, a file or a test
it prints nothing while running (and, if ``transient`` is False, the final line
once). stdout is never touched, so it stays clean JSON for scripts.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class CountColumn(ProgressColumn):
    """``done/total``, or only ``done`` while the total is unknown (whole units)."""

    def render(self, task: Task) -> Text:
        """The count of ``task`` as text."""
        total = "" if task.total is None else f"/{int(task.total)}"
        return Text(f"{int(task.completed)}{total}", style="progress.download")


class RateColumn(ProgressColumn):
    """Rich's speed estimate (``task.speed``, over the last 30 s) as ``12.5 frames/s``.

    ``unit`` names what is counted. Before rich has two samples (or when all came in
    one), the mean since the start; ``? frames/s`` while nothing is done.
    """

    def __init__(self, unit: str = "frames") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        """The rate of ``task`` in units per second, as text."""
        speed = task.finished_speed or task.speed
        if speed is None and task.completed and task.elapsed:
            speed = task.completed / task.elapsed
        if speed is None:
            return Text(f"? {self.unit}/s", style="progress.data.speed")
        shown = f"{speed:,.0f}" if speed >= 100 else f"{speed:.1f}"
        return Text(f"{shown} {self.unit}/s", style="progress.data.speed")


class EtaColumn(TimeRemainingColumn):
    """``eta H:MM:SS`` from the rate and what is left; empty when the total is unknown."""

    def render(self, task: Task) -> Text:
        """The time remaining of ``task``, or empty text without a total."""
        if task.total is None:
            return Text("")
        return Text.assemble("eta ", super().render(task))


class _Progress(Progress):
    """rich's Progress, minus the blank line a transient bar prints when not on a terminal."""

    def stop(self) -> None:
        """Stop the display; a transient bar leaves nothing behind."""
        if self.live.transient:
            self.live.stop()
        else:
            super().stop()


def progress_bar(unit: str = "frames", *, console: Console | None = None,
                 transient: bool = True) -> Progress:
    """A rich ``Progress`` with the columns above; use it as a context manager.

    ``unit`` (plural, e.g. ``"frames"``, ``"records"``) labels the rate. ``console``
    defaults to a new one on stderr. A ``transient`` bar disappears when it stops.
    stdout is not redirected: print results to it after the bar stops. Tasks may be
    added and advanced from several threads. Raises nothing itself.
    """
    return _Progress(TextColumn("{task.description}"), BarColumn(), CountColumn(),
                     RateColumn(unit), TimeElapsedColumn(), EtaColumn(),
                     console=console or Console(stderr=True), transient=transient,
                     redirect_stdout=False)
