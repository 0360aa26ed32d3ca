"""Workflows (versioned), their nodes, executions and the job each node run leaves."""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from worker_mode.models import ClaimedWork
from worker_mode.storable import validate_storable_json

from . import nodes as node_types
from . import schedule
from .apps import SERVICE_KEY
from .exceptions import ConfigError


class Workflow(models.Model):
    class Trigger(models.TextChoices):
        COLLECTION = "collection", "Collection event"
        SCHEDULE = "schedule", "Schedule"
        MANUAL = "manual", "Manual / API"

    key = models.SlugField(max_length=100, help_text="Shared by all versions; the API triggers by key.")
    version = models.PositiveIntegerField(default=1, editable=False)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(
        default=False,
        help_text="One version per key is enabled: enabling this one disables the enabled one.",
    )
    sync = models.BooleanField(
        "synchronous",
        default=False,
        help_text="Run inside the triggering request (and roll it back on failure). Fixed once created.",
    )
    trigger_type = models.CharField(max_length=20, choices=Trigger.choices)
    trigger_config = models.JSONField(default=dict, blank=True, validators=[validate_storable_json])
    stack_limit = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="How many times this workflow may appear in a chain of executions that trigger each other.",
    )
    timeout = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds an execution may run; empty: no limit."
    )
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["key", "version"], name="workflow_key_version"),
            models.UniqueConstraint(
                fields=["key"], condition=Q(enabled=True), name="workflow_one_enabled_version"
            ),
        ]
        permissions = [("trigger_workflow", "Can trigger workflows manually")]

    def __str__(self) -> str:
        return f"{self.title} ({self.key} v{self.version})"

    @property
    def locked(self) -> bool:
        """A version that has executions cannot change; copy it to a new version instead."""
        return self.pk is not None and self.executions.exists()

    def clean(self) -> None:
        from . import triggers

        errors: dict[str, Any] = {}
        try:
            triggers.check_config(self.trigger_type, self.trigger_config, sync=self.sync)
        except ValidationError as exc:
            errors["trigger_config"] = exc.messages
        if self.pk is not None:
            before = (
                Workflow.objects.filter(pk=self.pk).values("sync", "trigger_type", "trigger_config").first()
            )
            if before and before["sync"] != self.sync:
                errors["sync"] = ["Synchronous or asynchronous is fixed once a workflow is created."]
            if (
                before
                and self.locked
                and (
                    before["trigger_type"] != self.trigger_type
                    or before["trigger_config"] != self.trigger_config
                )
            ):
                errors["trigger_config"] = [
                    "This version has executions; copy it to a new version to change it."
                ]
        if errors:
            raise ValidationError(errors)

    def get_constraints(self):
        # "One enabled version" is kept by save(), which disables the other one: not a form error
        # (the database still enforces it).
        return [
            (model, [c for c in constraints if c.name != "workflow_one_enabled_version"])
            for model, constraints in super().get_constraints()
        ]

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Enabling a version disables the enabled one in the same transaction: there is no
        moment with no version enabled, nor two."""
        if self.trigger_type == self.Trigger.SCHEDULE and self.enabled:
            if self.next_run_at is None or self._schedule_changed():
                self.next_run_at = schedule.next_time(self.trigger_config, timezone.now())
        else:
            self.next_run_at = None
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "next_run_at"}
        with transaction.atomic():
            if self.enabled:
                # Every version of the key locked first: a concurrent enable of another version
                # waits here, then (a new statement, a new snapshot) disables this one in turn.
                list(
                    Workflow.objects.select_for_update().filter(key=self.key).order_by("pk").values_list("pk")
                )
                others = Workflow.objects.filter(key=self.key, enabled=True)
                if self.pk is not None:
                    others = others.exclude(pk=self.pk)
                others.update(enabled=False, next_run_at=None, updated_at=timezone.now())
            super().save(*args, **kwargs)

    def _schedule_changed(self) -> bool:
        if self.pk is None:
            return True
        before = Workflow.objects.filter(pk=self.pk).values_list("trigger_config", "enabled").first()
        return before is None or before != (self.trigger_config, True)

    def copy_to_new_version(self) -> Workflow:
        """An editable, disabled copy of this version with its nodes, numbered after the newest."""
        newest = Workflow.objects.filter(key=self.key).aggregate(models.Max("version"))["version__max"] or 0
        copy = Workflow.objects.create(
            key=self.key,
            version=newest + 1,
            title=self.title,
            description=self.description,
            enabled=False,
            sync=self.sync,
            trigger_type=self.trigger_type,
            trigger_config=self.trigger_config,
            stack_limit=self.stack_limit,
            timeout=self.timeout,
        )
        Node.objects.bulk_create(
            Node(
                workflow=copy,
                key=n.key,
                title=n.title,
                type=n.type,
                config=n.config,
                upstream=n.upstream,
                branch=n.branch,
            )
            for n in self.nodes.all()
        )
        return copy


class Node(models.Model):
    class Branch(models.TextChoices):
        MAIN = "", "main line"
        TRUE = "true", "if true"
        FALSE = "false", "if false"

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="nodes")
    key = models.SlugField(
        max_length=100, help_text="Names the node's result for the nodes after it: {{ $jobs.this_key }}."
    )
    title = models.CharField(max_length=200, blank=True)
    type = models.CharField(max_length=20, choices=node_types.CHOICES)
    config = models.JSONField(default=dict, blank=True, validators=[validate_storable_json])
    upstream = models.SlugField(
        max_length=100, blank=True, help_text="Key of the node before this one; empty for the first node."
    )
    branch = models.CharField(
        max_length=5, blank=True, choices=Branch.choices, help_text="Under a condition: which branch."
    )

    class Meta:
        ordering = ["workflow", "id"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "key"], name="node_key_per_workflow"),
            models.UniqueConstraint(fields=["workflow", "upstream", "branch"], name="node_one_per_slot"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.type})"

    def clean(self) -> None:
        try:
            node_types.check_config(self.type, self.config)
        except ConfigError as exc:
            raise ValidationError({"config": exc.messages}) from None


class Execution(ClaimedWork):
    """One run of a workflow version; its claim state (``ClaimedWork``) says who runs it now."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        RESOLVED = "resolved"
        FAILED = "failed"
        ERROR = "error"
        ABORTED = "aborted"
        CANCELED = "canceled"

    FINISHED = (Status.RESOLVED, Status.FAILED, Status.ERROR, Status.ABORTED, Status.CANCELED)

    service_key = SERVICE_KEY
    job_function = "workflows.jobs.process_execution"
    abandoned_status = Status.ABORTED
    error_status = Status.ERROR
    settings_prefix = "WORKFLOWS"
    default_recovery = "retry"

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="executions")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    event = models.CharField(
        max_length=20, help_text="What triggered it: created, updated, schedule, manual..."
    )
    context = models.JSONField(default=dict, blank=True, validators=[validate_storable_json])
    #: Workflow ids of the executions that led to this one (for the stack limit).
    stack = models.JSONField(default=list, blank=True)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    scheduled_for = models.DateTimeField(null=True, blank=True, help_text="The due time of a scheduled run.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "run_after"], name="execution_status_run_after")]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "scheduled_for"],
                condition=Q(scheduled_for__isnull=False),
                name="execution_once_per_due_time",
            )
        ]
        permissions = [
            ("cancel_execution", "Can cancel executions"),
            ("retry_execution", "Can retry executions"),
        ]

    def __str__(self) -> str:
        return f"Execution #{self.pk} of {self.workflow.key} ({self.status})"

    @property
    def duration(self) -> datetime.timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    # -- ClaimedWork hooks ----------------------------------------------------------------

    def dispatch(self) -> str:
        from . import engine

        return engine.dispatch(self)

    @classmethod
    def for_dispatch(cls, queryset: models.QuerySet) -> models.QuerySet:
        return queryset.select_related("workflow")

    @classmethod
    def recovery_policy(cls) -> tuple[str, int]:
        from .conf import conf

        return conf.WORKFLOWS_RECOVERY, conf.WORKFLOWS_MAX_ATTEMPTS

    @classmethod
    def abandoned(cls, pk: Any, reason: str, now: datetime.datetime) -> None:
        Job.objects.filter(execution_id=pk, status=Job.Status.PENDING).update(
            status=Job.Status.ABORTED, finished_at=now, error=reason
        )


class Job(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RESOLVED = "resolved"
        FAILED = "failed"
        ERROR = "error"
        ABORTED = "aborted"
        CANCELED = "canceled"

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="jobs")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="jobs")
    node_key = models.SlugField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    runs = models.PositiveIntegerField(default=1, help_text="More than 1: re-run after its worker died.")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["execution", "id"]
        constraints = [models.UniqueConstraint(fields=["execution", "node_key"], name="job_one_per_node")]

    def __str__(self) -> str:
        return f"{self.node_key}: {self.status}"
