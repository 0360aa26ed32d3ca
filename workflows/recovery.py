"""Periodic work of the nodes serving workflow:process: due schedules and finished delays.

Recovery of executions whose worker, process or node is gone, and of queued
executions whose message Redis lost, is worker_mode's (``worker_mode.claims``):
``Execution`` is claimed work, so the same sweeps that serve every service serve it.
``tick`` runs every WORKFLOWS_TICK_INTERVAL seconds, one node at a time.
"""

from __future__ import annotations

import datetime
import logging

from redis import RedisError

from worker_mode import claims

from . import triggers
from .models import Execution

logger = logging.getLogger(__name__)


def dispatch_due(now: datetime.datetime | None = None) -> int:
    """Enqueue paused (delayed) executions whose time has come; returns how many."""
    return claims.dispatch_due(Execution, now)


def tick() -> None:
    """Fire due schedules and resume finished delays."""
    try:
        triggers.fire_schedules()
        dispatch_due()
    except RedisError as exc:  # dispatch swallows Redis errors; this is a lookup failing
        logger.warning("Workflow tick skipped: %s", exc)
