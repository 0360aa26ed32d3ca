"""A one-line progress display for the management commands (stderr, redrawn at most 5 times a second)."""

from __future__ import annotations

import time
from typing import TextIO

from .models import AsyncTask


class ProgressLine:
    def __init__(self, stream: TextIO, *, enabled: bool = True) -> None:
        self.stream, self.enabled, self.last, self.started = stream, enabled, 0.0, time.monotonic()

    def __call__(self, task: AsyncTask) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and not task.finished):
            return
        self.last = now
        total = f"/{task.total:,}" if task.total else ""
        percent = f" {task.percent:3d}%" if task.percent is not None else ""
        rate = task.done / max(now - self.started, 1e-6)
        summary = task.summary_text()
        self.stream.write(f"\r{task.done:,}{total} rows{percent}  {rate:,.0f} rows/s  {summary}\x1b[K")
        if task.finished:
            self.stream.write("\n")
        self.stream.flush()
