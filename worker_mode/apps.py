from __future__ import annotations

from django.apps import AppConfig


class WorkerModeConfig(AppConfig):
    name = "worker_mode"
    verbose_name = "Worker mode"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
