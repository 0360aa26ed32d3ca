"""AsyncTask: one import or export, its progress, summary and files."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from worker_mode.models import ClaimedWork

from .apps import SERVICE_KEY


class AsyncTask(ClaimedWork):
    """One import or export; its claim state (``ClaimedWork``) says who runs it now."""

    class Kind(models.TextChoices):
        IMPORT = "import"
        EXPORT = "export"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        XLSX = "xlsx", "XLSX"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)

    service_key = SERVICE_KEY
    job_function = "async_tasks.jobs.process_task"
    abandoned_status = Status.FAILED
    error_status = Status.FAILED
    settings_prefix = "ASYNC_TASKS"
    default_recovery = "fail"
    recovery_columns = ("cancel_requested",)

    kind = models.CharField(max_length=10, choices=Kind.choices)
    model = models.CharField(max_length=100, help_text="Label of the model, e.g. catalog.Product.")
    format = models.CharField(max_length=10, choices=Format.choices)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="async_tasks", null=True
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    parameters = models.JSONField(default=dict, blank=True)
    done = models.PositiveBigIntegerField(default=0, help_text="Rows processed so far.")
    total = models.PositiveBigIntegerField(null=True, blank=True, help_text="Rows expected (estimate).")
    summary = models.JSONField(default=dict, blank=True)
    pace = models.FloatField(
        null=True,
        blank=True,
        help_text="While the task yields the database to requests under pressure: the share of its "
        "time it works (0-1). Empty: full speed.",
    )
    # Paths inside the ASYNC_TASKS_STORAGE storage, never served by URL; names are generated.
    source_file = models.CharField(max_length=255, blank=True)
    source_name = models.CharField(
        max_length=255, blank=True, help_text="The uploaded file's name, shown only."
    )
    result_file = models.CharField(max_length=255, blank=True)
    error_file = models.CharField(max_length=255, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"])]
        permissions = [("view_all_tasks", "Can see, download and cancel every user's tasks")]
        verbose_name = "import/export task"

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} {self.model} ({self.status})"

    # -- ClaimedWork hooks ----------------------------------------------------------------

    @classmethod
    def recovery_policy(cls) -> tuple[str, int]:
        from .conf import conf

        return conf.ASYNC_TASKS_RECOVERY, conf.ASYNC_TASKS_MAX_ATTEMPTS

    @classmethod
    def may_retry(cls, row: dict[str, Any]) -> bool:
        return not row["cancel_requested"]  # its owner was lost while stopping: it ends canceled

    @classmethod
    def retry_fields(cls, row: dict[str, Any]) -> dict[str, Any]:
        return {"done": 0}  # a retry starts the file over

    @classmethod
    def abandon_fields(cls, row: dict[str, Any], now: Any) -> dict[str, Any]:
        import datetime

        from .conf import conf

        fields: dict[str, Any] = {"expires_at": now + datetime.timedelta(seconds=conf.ASYNC_TASKS_EXPIRY)}
        if row["cancel_requested"]:
            fields["status"] = cls.Status.CANCELED
        return fields

    @property
    def finished(self) -> bool:
        return self.status in self.FINISHED

    def summary_text(self, sep: str = ", ") -> str:
        """The summary in a fixed order (a JSON column may reorder the keys)."""
        order = ["created", "updated", "skipped", "failed", "exported"]
        items = sorted(
            (self.summary or {}).items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9
        )
        return sep.join(f"{value:,} {name}" for name, value in items)

    @property
    def percent(self) -> int | None:
        if self.status == self.Status.SUCCEEDED:
            return 100
        if not self.total:
            return None
        return min(100, int(self.done * 100 / self.total))
