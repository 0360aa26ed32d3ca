"""Recovery: no execution stays queued without a message, or started by a dead worker.

Run by ``runworkers`` on nodes serving workflow:process, at start and every
WORKFLOWS_RECOVERY_INTERVAL seconds (``recover``), and every
WORKFLOWS_TICK_INTERVAL seconds for schedules and finished delays (``tick``);
worker_mode's lock makes one node at a time run each.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from django.db.models import Q
from django.utils import timezone
from redis import RedisError

from worker_mode import worker_is_alive
from worker_mode.queues import get_connection, requeue_lost

from . import engine, triggers
from .apps import SERVICE_KEY
from .conf import conf
from .models import Execution, Job

logger = logging.getLogger(__name__)
Status = Execution.Status

_BATCH = 500


def recover(now: datetime.datetime | None = None, *, queued_grace: float | None = None) -> dict[str, int]:
    """One recovery sweep; returns counts of resumed, aborted and re-enqueued executions."""
    now = now or timezone.now()
    connection = get_connection(SERVICE_KEY)
    counts = {"resumed": 0, "aborted": 0, "requeued": 0}
    for row in Execution.objects.filter(status=Status.STARTED).values(
        "id", "worker", "lease_expires_at", "attempts"
    ):
        lease_lapsed = row["lease_expires_at"] is not None and row["lease_expires_at"] < now
        if lease_lapsed or not worker_is_alive(row["worker"], connection):
            counts[_recover_started(row, now, "its lease lapsed" if lease_lapsed else "its worker died")] += 1
    grace = conf.WORKFLOWS_QUEUED_GRACE if queued_grace is None else queued_grace
    waiting = (
        Execution.objects.filter(
            status=Status.QUEUED, created_at__lte=now - datetime.timedelta(seconds=grace)
        )
        .filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
        .select_related("workflow")
    )
    counts["requeued"] = requeue_lost(SERVICE_KEY, waiting, engine.dispatch, batch=_BATCH)
    if any(counts.values()):
        logger.warning(
            "Recovered executions: %d resumed, %d aborted, %d re-enqueued",
            counts["resumed"],
            counts["aborted"],
            counts["requeued"],
        )
    return counts


def _recover_started(row: dict[str, Any], now: datetime.datetime, reason: str) -> str:
    started = Execution.objects.filter(pk=row["id"], status=Status.STARTED, worker=row["worker"])
    give_up = conf.WORKFLOWS_RECOVER_STARTED == "fail" or row["attempts"] >= conf.WORKFLOWS_MAX_ATTEMPTS
    if give_up:
        error = f"Aborted: {reason} ({row['worker']}) after {row['attempts']} attempt(s)."
        if started.update(status=Status.ABORTED, finished_at=now, lease_expires_at=None, error=error):
            Job.objects.filter(execution_id=row["id"], status=Job.Status.PENDING).update(
                status=Job.Status.ABORTED, finished_at=now, error=error
            )
            logger.error("Execution %s aborted: %s (%s)", row["id"], reason, row["worker"])
        return "aborted"
    if started.update(status=Status.QUEUED, worker="", lease_expires_at=None):
        logger.warning("Execution %s resumed: %s (%s)", row["id"], reason, row["worker"])
        engine.dispatch(Execution.objects.select_related("workflow").get(pk=row["id"]))
    return "resumed"


def dispatch_due(now: datetime.datetime | None = None) -> int:
    """Enqueue paused (delayed) executions whose time has come; returns how many."""
    now = now or timezone.now()
    dispatched = 0
    due = Execution.objects.filter(status=Status.QUEUED, run_after__lte=now).select_related("workflow")
    for execution in due.order_by("run_after")[:_BATCH]:
        # Clearing run_after claims the dispatch, so two nodes never both enqueue it.
        if Execution.objects.filter(pk=execution.pk, run_after=execution.run_after).update(run_after=None):
            engine.dispatch(execution)
            dispatched += 1
    return dispatched


def tick() -> None:
    """Fire due schedules and resume finished delays."""
    try:
        triggers.fire_schedules()
        dispatch_due()
    except RedisError as exc:  # dispatch swallows Redis errors; this is a lookup failing
        logger.warning("Workflow tick skipped: %s", exc)
