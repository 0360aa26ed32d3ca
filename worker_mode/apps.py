from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


class WorkerModeConfig(AppConfig):
    name = "worker_mode"
    verbose_name = "Worker mode"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .queues import ServiceQueues

        # One queue per registered key on REDIS_URL, unless the site chose its own.
        if not hasattr(settings, "RQ_QUEUES"):
            settings.RQ_QUEUES = ServiceQueues()
