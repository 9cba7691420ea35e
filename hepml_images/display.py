"""Live progress and summaries for long commands (part of the CLI layer: it prints)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from rich.live import Live
from rich.table import Table
from rich.text import Text

from hepml_images.build.graph import Outcome, State

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from rich.console import Console
    from typing_extensions import Self

_STYLE = {
    State.WAITING: "dim",
    State.BUILDING: "cyan",
    State.BUILT: "green",
    State.UP_TO_DATE: "green",
    State.FAILED: "bold red",
    State.BLOCKED: "yellow",
    State.CANCELLED: "yellow",
}


def _elapsed(outcome: Outcome) -> str:
    seconds = outcome.seconds
    if seconds is None:
        return ""
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d}"


class BuildProgress:
    """A live table on a terminal; one line per change elsewhere (CI logs)."""

    def __init__(self, console: Console, outcomes: Sequence[Outcome]) -> None:
        self.console = console
        self.outcomes = list(outcomes)
        self._lock = threading.Lock()
        self._last: dict[str, tuple[State, str]] = {}
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(
                get_renderable=self._table, console=console, refresh_per_second=4, transient=False
            )

    def _table(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column("image", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("step", overflow="ellipsis", no_wrap=True)
        for outcome in self.outcomes:
            table.add_row(
                outcome.variant.key,
                Text(outcome.state.value, style=_STYLE[outcome.state]),
                _elapsed(outcome),
                outcome.step or (outcome.reason or ""),
            )
        return table

    def update(self, outcome: Outcome) -> None:
        """Called from build threads on every change."""
        if self._live is not None:
            return  # the live table polls the outcomes itself
        key = outcome.variant.key
        now = (outcome.state, outcome.step)
        with self._lock:
            if self._last.get(key) == now:
                return
            self._last[key] = now
            detail = outcome.step or outcome.reason or ""
            stamp = time.strftime("%H:%M:%S")
            self.console.print(
                f"{stamp} {key}: {outcome.state.value}" + (f" · {detail}" if detail else ""),
                markup=False,
            )

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()


def summary_table(outcomes: Sequence[Outcome]) -> Table:
    """The end-of-build table: what happened to each image."""
    table = Table(title="build summary")
    for column in ("image", "state", "image ID", "time", "note"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        table.add_row(
            outcome.variant.content_ref,
            Text(outcome.state.value, style=_STYLE[outcome.state]),
            (outcome.image_id or "")[7:19],
            _elapsed(outcome),
            outcome.reason or "",
        )
    return table
