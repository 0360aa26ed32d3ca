"""``ClaimedWork``, the abstract model of background work with a claim; ``Cluster`` (no table).

A model of background work (a workflow execution, an import task, a third-party
app's job) inherits ``ClaimedWork``: its row carries the claim state as columns
and ``worker_mode.claims`` runs its lifecycle — claim, renew, fenced finish,
release, and recovery when the owner is gone.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.db import models
from django.utils import timezone


def new_job_id() -> str:
    """A fresh rq job id: one per row, kept for every dispatch, so a re-enqueue replaces, not adds."""
    return uuid.uuid4().hex


class ClaimedWork(models.Model):
    """A row of background work that one process at a time may hold.

    Subclasses set ``service_key`` (the queue that carries it), ``job_function``
    (dotted path of the rq job, called with the primary key), redeclare ``status``
    with choices that include ``queued`` and ``running`` and their own final
    statuses, and name the final statuses recovery and escaped errors end in.
    """

    QUEUED = "queued"
    RUNNING = "running"

    #: The registered service key whose queue carries this work.
    service_key: ClassVar[str] = ""
    #: Dotted path of the rq job function; it is called with the row's primary key.
    job_function: ClassVar[str] = ""
    #: Final status of work whose owner is gone when recovery gives up on it.
    abandoned_status: ClassVar[str] = "failed"
    #: Final status of a run that raised an error nothing else handled.
    error_status: ClassVar[str] = "failed"
    #: Settings ``<prefix>_RECOVERY`` ("retry" or "fail") and ``<prefix>_MAX_ATTEMPTS`` tune recovery.
    settings_prefix: ClassVar[str] = ""
    default_recovery: ClassVar[str] = "fail"
    default_max_attempts: ClassVar[int] = 3

    status = models.CharField(max_length=20, default=QUEUED)
    job_id = models.CharField(max_length=64, default=new_job_id, editable=False)
    node_name = models.CharField("node", max_length=255, blank=True, help_text="The node that claimed it.")
    worker = models.CharField(max_length=255, blank=True, help_text="The process that claimed it.")
    pid = models.PositiveIntegerField(null=True, blank=True)
    #: Where ``pid`` means something: the machine's boot id and the process-id namespace (a
    #: container) of the owner. Two nodes that share a NODE_NAME never judge each other's pids.
    host = models.CharField(max_length=100, blank=True, editable=False)
    #: Changes at every claim; every write of the owner is conditional on it (fencing).
    claim_token = models.CharField(max_length=32, blank=True, editable=False)
    attempts = models.PositiveIntegerField(default=0, help_text="How many times a process claimed it.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    #: Queued work is not claimed before this time (a delay, a back-off).
    run_after = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField("last heartbeat", null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        abstract = True

    # -- hooks ----------------------------------------------------------------------------

    def dispatch(self) -> str:
        """Enqueue this row's job on its service's queue when the transaction commits."""
        from .queues import enqueue

        return enqueue(self.service_key, self.job_function, self.pk, job_id=self.job_id)

    @classmethod
    def for_dispatch(cls, queryset: models.QuerySet) -> models.QuerySet:
        """``queryset`` with what ``dispatch()`` reads (e.g. ``select_related``)."""
        return queryset

    @classmethod
    def recovery_policy(cls) -> tuple[str, int]:
        """("retry" or "fail", max attempts) for work whose owner is gone."""
        from django.conf import settings

        return (
            getattr(settings, f"{cls.settings_prefix}_RECOVERY", cls.default_recovery),
            getattr(settings, f"{cls.settings_prefix}_MAX_ATTEMPTS", cls.default_max_attempts),
        )

    @classmethod
    def recovery_settings(cls) -> tuple[str, str]:
        return f"{cls.settings_prefix}_RECOVERY", f"{cls.settings_prefix}_MAX_ATTEMPTS"

    #: Extra columns recovery reads, for ``may_retry`` and ``abandon_fields``.
    recovery_columns: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def may_retry(cls, row: dict[str, Any]) -> bool:
        """False to end ``row`` (recovery's view of it) instead of retrying, whatever the policy."""
        return True

    @classmethod
    def retry_fields(cls, row: dict[str, Any]) -> dict[str, Any]:
        """Extra values written when recovery queues the work again."""
        return {}

    @classmethod
    def abandon_fields(cls, row: dict[str, Any], now: Any) -> dict[str, Any]:
        """Extra values (a status too, if need be) written when recovery ends the work."""
        return {}

    @classmethod
    def abandoned(cls, pk: Any, reason: str, now: Any) -> None:
        """Called in the transaction that ended ``pk`` for good (e.g. to close its child rows)."""


class Cluster(models.Model):
    """No table: gives the admin's Cluster page a place and a permission."""

    class Meta:
        managed = False
        default_permissions = ("view",)
        permissions = [("control_queues", "Can empty, requeue, delete and stop queued jobs")]
        verbose_name = "cluster"
        verbose_name_plural = "cluster"
