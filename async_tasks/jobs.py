"""The rq job of the async-task:process queue. Its argument is a task id, never a model."""

from __future__ import annotations

from . import tasks


def process_task(task_id: int) -> str:
    """Claim and run task ``task_id``; a duplicate message finds it claimed and does nothing."""
    return tasks.run(task_id)
