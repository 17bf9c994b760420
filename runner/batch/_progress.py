"""Batch progress on stderr: a bar redrawn with `\\r` on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TextIO

from ._results import JobResult

BAR_EVERY_S = 0.1
LINE_EVERY_S = 10.0
BAR_WIDTH = 24


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A snapshot of a running batch.

    Attributes:
        done: Jobs with a result (including those resumed from the file).
        total: Jobs in the input, when known.
        errors: Results this run whose status is not `ok`.
        failed: Results this run whose output did not match `expected_stdout`.
        elapsed_s: Seconds since the batch started.
        rate: Results per second this run.
    """

    done: int
    total: int | None
    errors: int
    failed: int
    elapsed_s: float
    rate: float

    def describe(self) -> str:
        """One line: `123/500 jobs  12.3/s  errors 4  failed 1  10 s  eta 30 s`."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        text = f"{count} jobs  {self.rate:.1f}/s  errors {self.errors}  failed {self.failed}"
        text += f"  {self.elapsed_s:.0f} s"
        if self.total is not None and self.rate > 0 and self.done < self.total:
            text += f"  eta {(self.total - self.done) / self.rate:.0f} s"
        return text


ProgressMode = Literal["auto", "bar", "lines", "off"]
Progress = ProgressMode | Callable[[BatchProgress], None]
"""`auto` (a bar on a terminal, a line every 10 s otherwise), `bar`, `lines`, `off`, or a
callable given a `BatchProgress` after every result."""


class Meter:
    """Counts results and shows progress the way `progress` asks.

    Args:
        progress: How to show it.
        total: Jobs in the input, when known.
        already: Jobs that had a result before this run.
        stream: Where bars and lines go (stderr by default).
    """

    def __init__(
        self,
        progress: Progress,
        *,
        total: int | None,
        already: int = 0,
        stream: TextIO | None = None,
    ) -> None:
        self._stream = stream or sys.stderr
        self._sink = progress if callable(progress) else None
        mode = "off" if callable(progress) else progress
        if mode == "auto":
            mode = "bar" if self._stream.isatty() else "lines"
        self._mode = mode
        self._total = total
        self._already = already
        self._began = time.monotonic()
        self._shown = 0.0
        self._bar_drawn = False
        self._lock = threading.Lock()
        self.results = 0
        self.errors = 0
        self.failed = 0

    def snapshot(self) -> BatchProgress:
        """Where the batch is now."""
        elapsed = time.monotonic() - self._began
        return BatchProgress(
            done=self._already + self.results,
            total=self._total,
            errors=self.errors,
            failed=self.failed,
            elapsed_s=elapsed,
            rate=self.results / elapsed if elapsed > 0 else 0.0,
        )

    def add(self, result: JobResult) -> None:
        """Count one written result and redraw when due."""
        with self._lock:
            self.results += 1
            self.errors += result.status != "ok"
            self.failed += result.passed is False
            snap = self.snapshot()
            if self._sink is not None:
                self._sink(snap)
            self._show(snap, force=False)

    def uncount(self) -> None:
        """Take one job off the total (a duplicate id that will get no result)."""
        with self._lock:
            if self._total is not None:
                self._total -= 1

    def say(self, message: str) -> None:
        """Print a message line without breaking the bar."""
        with self._lock:
            if self._mode == "off":
                return
            if self._bar_drawn:
                self._stream.write("\r\x1b[K")
                self._bar_drawn = False
            self._stream.write(message + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Draw the final figures and end the bar's line."""
        with self._lock:
            self._show(self.snapshot(), force=True)
            if self._bar_drawn:
                self._stream.write("\n")
                self._stream.flush()
                self._bar_drawn = False

    def _show(self, snap: BatchProgress, *, force: bool) -> None:
        now = time.monotonic()
        if self._mode == "bar" and (force or now - self._shown >= BAR_EVERY_S):
            self._stream.write("\r\x1b[K" + _bar(snap) + " " + snap.describe())
            self._bar_drawn = True
        elif self._mode == "lines" and (force or now - self._shown >= LINE_EVERY_S):
            self._stream.write("sandgate batch: " + snap.describe() + "\n")
        else:
            return
        self._stream.flush()
        self._shown = now


def _bar(snap: BatchProgress) -> str:
    if not snap.total:
        return "[" + "?" * BAR_WIDTH + "]"
    filled = min(BAR_WIDTH, BAR_WIDTH * snap.done // snap.total)
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
