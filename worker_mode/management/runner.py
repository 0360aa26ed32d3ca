"""The shared tail of runnode and runworkers: run, map errors to CommandError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError

from worker_mode.exceptions import WorkerModeError


def run_or_fail(run: Callable[..., int], what: str, **kwargs: Any) -> None:
    """Call ``run(**kwargs)``; a configuration error or a non-zero exit code becomes a CommandError."""
    try:
        code = run(**kwargs)
    except WorkerModeError as exc:
        raise CommandError(str(exc)) from None
    if code:
        raise CommandError(f"{what} failed (exit {code}); see the log above.", returncode=code)
