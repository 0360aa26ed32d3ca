"""Tasks the tests enqueue (Django's Tasks API on worker_mode.tasks.RQBackend, the site's TASKS)."""

from __future__ import annotations

import os
import time

from worker_mode.tasks import task

WF, AT = "workflow:process", "async-task:process"


@task(queue_name=WF)
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name=WF)
def fail(message: str) -> None:
    raise ValueError(message)


@task(queue_name=AT)
def pid() -> int:
    return os.getpid()


@task(queue_name=WF, takes_context=True)
def look_at_itself(context) -> dict:
    """What a running task sees of itself, through its context and through the Tasks API."""
    result = context.task_result
    return {
        "id": result.id,
        "attempt": context.attempt,
        "worker_ids": result.worker_ids,
        "status_seen_by_get_result": look_at_itself.get_result(result.id).status,
    }


@task(queue_name=WF)
async def add_later(a: int, b: int) -> int:
    return a + b


@task(queue_name=WF)
def exits() -> None:
    raise SystemExit(3)


@task(queue_name=WF)
def wait(seconds: float) -> str:
    time.sleep(seconds)  # the work a task simulates; the tests kill or freeze its process meanwhile
    return "waited"


def double(x: int) -> int:
    """Made a task kept under another name than its own by the tests: workers, which look a task
    up by its function's dotted path (``tests.tasks.double``), would find this plain function."""
    return 2 * x


def undecorated() -> None:
    """Made a task by the tests themselves, with the queue names they need."""
