"""Progress bars, and the console the command line prints summaries on: stderr, so stdout stays
clean for scripts. Library functions print nothing but a bar, and a bar only when asked to
(`WriteOptions.show_progress`: on a terminal, by default)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

_console = Console(stderr=True)


class ByteProgress:
    """One bar over a job's bytes, with an item counter (tensors or files) and bytes/s."""

    def __init__(
        self,
        description: str,
        total_bytes: int,
        total_items: int,
        show: bool,
        unit: str = "tensors",
    ) -> None:
        self.show = show
        self.total_items = total_items
        self.unit = unit
        self.items = 0
        self._lock = threading.Lock()
        self.start = time.perf_counter()
        self._progress = None
        if show:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[items]}"),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=_console,
                transient=False,
            )
            self._task = self._progress.add_task(
                description, total=total_bytes, items=self._items_text()
            )

    def __enter__(self) -> ByteProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, nbytes: int, items: int = 1) -> None:
        """Count finished bytes and items; safe to call from several threads."""
        with self._lock:
            self.items += items
            if self._progress is not None:
                self._progress.update(self._task, advance=nbytes, items=self._items_text())

    def _items_text(self) -> str:
        return f"{self.items}/{self.total_items} {self.unit}"

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"  # and beyond: 1500.00 TB


def human_time(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"
