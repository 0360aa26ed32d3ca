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


def run_or_queue(command, task: AsyncTask, *, run_async: bool, verbosity: int) -> AsyncTask | None:
    """For importrecords/exportrecords: say a queued task's id, or run it here with a progress line."""
    from . import tasks

    if run_async:
        command.stdout.write(f"Task {task.pk} queued on async-task:process.")
        return None
    tasks.run(task.pk, on_progress=ProgressLine(command.stderr, enabled=verbosity > 0))
    task.refresh_from_db()
    return task
