"""Jobs the tests enqueue; they leave marks in the job's own Redis so the test can see what ran where."""

from __future__ import annotations

import os
import time

from rq import get_current_job


def _redis():
    return get_current_job().connection


def mark(name: str) -> int:
    _redis().set(f"test:done:{name}", os.getpid())
    return os.getpid()


def slow_mark(name: str, seconds: float) -> int:
    redis = _redis()
    redis.set(f"test:started:{name}", os.getpid())
    time.sleep(seconds)  # the work a job simulates (a wait on a condition has nothing to wait for)
    redis.set(f"test:done:{name}", os.getpid())
    return os.getpid()


def crash_process() -> None:
    os._exit(3)


def database_connection_id() -> int:
    from django.db import connection

    connection.ensure_connection()
    return id(connection.connection)
