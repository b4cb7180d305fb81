"""The live view of a command's data passes, drawn from `coexist.progress.PassProgress`.

On a terminal: a rich `Live` display, one line per batch (mailboxes done / running /
waiting, items and MB per second, ETA) and a bar per running mailbox, redrawn as the
passes report. Anywhere else (output redirected to a file, a pipe, a CI log): plain lines
only, the estimate before the first pass starts, a one-line summary every `every_s` seconds and the
estimate against the actual at the end; no cursor movement and no colour codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from coexist import progress
from coexist.progress import (
    PassAdvanced,
    PassesOver,
    PassesPlanned,
    PassEvent,
    PassPaused,
    PassProgress,
    PassStarted,
)

SUMMARY_EVERY_S = 15.0  # plain output: one summary line at most this often
REDRAW_EVERY_S = 0.2  # terminal: redraw at most this often (events come per item)
BARS_SHOWN = 12  # running mailboxes drawn; more are counted in their batch's line


class PassView:
    """Renders pass events on `console`; `print` puts a line above the live display."""

    def __init__(
        self,
        console: Console,
        *,
        every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.every_s = every_s
        self.clock = clock
        self.model = PassProgress(clock=clock)
        self.live: Live | None = None
        self._last = 0.0
        self._started = False  # a pass of the announced ones has started

    @property
    def active(self) -> bool:
        return self.live is not None

    def __call__(self, event: PassEvent) -> None:
        self.model.apply(event)
        now = self.clock()
        if isinstance(event, PassesPlanned):
            self.stop()
            self._started = False
            return
        if isinstance(event, PassesOver):
            self.stop()
            if self._started:  # a command whose users all still wait says nothing here
                self._line(self.model.line())
                self._line(event.summary_text)
            self._started = False
            return
        if isinstance(event, PassPaused):
            # Said at once, live display or not: a pass that waits hours must say why.
            label = self.model.mailboxes.get(event.subject)
            who = f"{label.label}: " if label is not None and label.label else ""
            self._line(f"{who}{event.text}")
            return
        if isinstance(event, PassStarted | PassAdvanced) and not self._started:
            # The estimate just before the first pass starts: a retry round whose users
            # are all still waiting on Microsoft 365 runs no pass and prints none.
            self._started = True
            self._line(self.model.estimate_text or f"{self.model.kind}: passes")
            if self.console.is_terminal:
                # Redrawn by the events, not by a thread: the model changes on the event
                # loop's thread and is read only there. stdout keeps its own stream: the
                # command's result goes there.
                self.live = Live(
                    self,
                    console=self.console,
                    auto_refresh=False,
                    transient=True,
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
                self.live.start(refresh=True)
            self._last = now
            return
        if self.live is not None:
            if now - self._last >= REDRAW_EVERY_S:
                self._last = now
                self.live.refresh()
        elif self._started and now - self._last >= self.every_s:
            self._last = now
            self._line(self.model.line())

    def print(self, markup: str) -> None:
        """A step line: above the live display when there is one."""
        self.console.print(markup)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _line(self, text: str) -> None:
        # soft_wrap: a summary stays one line in a file, however long.
        self.console.print(escape(text), soft_wrap=True, highlight=False)

    def __rich__(self) -> RenderableType:
        rows: list[RenderableType] = []
        for b in self.model.batches():
            rows.append(Text(f"{self.model.kind}: {progress.summary_line(b)}"))
        table = Table.grid(padding=(0, 1))
        for _ in range(5):
            table.add_column()
        running = self.model.running()
        for m in running[:BARS_SHOWN]:
            fraction = m.fraction()
            bar = ProgressBar(
                total=1.0 if fraction is not None else None,
                completed=fraction or 0.0,
                width=30,
                pulse=fraction is None,
            )
            took = max(self.clock() - (m.started or self.clock()), 1e-9)
            left = "" if fraction is None else f"{fraction:4.0%}"
            table.add_row(
                Text(m.label, overflow="ellipsis", no_wrap=True),
                bar,
                Text(left),
                Text(f"{m.items} items, {progress.megabytes(m.bytes)}"),
                Text(f"{m.bytes / took / 1_000_000:.2f} MB/s"),
            )
        if len(running) > BARS_SHOWN:
            table.add_row(Text(f"… {len(running) - BARS_SHOWN} more running"), "", "", "", "")
        return Group(*rows, table)
