"""The rq job of the workflow:process queue. Its argument is an execution id, never a model."""

from __future__ import annotations

from . import engine


def process_execution(execution_id: int) -> str:
    """Claim and run execution ``execution_id``; a duplicate message finds it claimed and does nothing."""
    return engine.run(execution_id)
