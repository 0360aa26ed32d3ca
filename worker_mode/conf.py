"""worker_mode's settings, read lazily so that ``override_settings`` works.

Every property keeps the setting's own name: ``conf.WORKER_MODE``,
``conf.WORKER_MODE_EXEMPT_PATHS``. Defaults live in ``defaults.py``.
"""

from __future__ import annotations

import socket
from typing import Any

from django.conf import settings

from . import defaults
from .exceptions import InvalidWorkerMode
from .mode import WorkerMode, WorkerModeSyntaxError, parse


def _get(name: str) -> Any:
    return getattr(settings, name, getattr(defaults, name))


class Settings:
    @property
    def WORKER_MODE(self) -> str:
        value = _get("WORKER_MODE")
        return "" if value is None else value

    @property
    def WORKER_MODE_EXEMPT_PATHS(self) -> tuple[str, ...]:
        return tuple(_get("WORKER_MODE_EXEMPT_PATHS"))

    @property
    def WORKER_MODE_PROCESSES(self) -> int:
        return _get("WORKER_MODE_PROCESSES")

    @property
    def WORKER_MODE_SERVICE_PROCESSES(self) -> dict[str, int]:
        value = _get("WORKER_MODE_SERVICE_PROCESSES")
        return dict(value) if isinstance(value, dict) else value  # worker_mode.E005 names the rest

    @property
    def WORKER_MODE_REDIS_URLS(self) -> dict[str, str]:
        value = _get("WORKER_MODE_REDIS_URLS")
        return dict(value) if isinstance(value, dict) else value  # worker_mode.E016 names the rest

    @property
    def WORKER_MODE_SHUTDOWN_GRACE(self) -> float:
        return _get("WORKER_MODE_SHUTDOWN_GRACE")

    @property
    def WORKER_MODE_WORKER_CLASS(self) -> str:
        return _get("WORKER_MODE_WORKER_CLASS")

    @property
    def WORKER_MODE_RESTART_LIMIT(self) -> int:
        return _get("WORKER_MODE_RESTART_LIMIT")

    @property
    def WORKER_MODE_RESTART_WINDOW(self) -> float:
        return _get("WORKER_MODE_RESTART_WINDOW")

    @property
    def WORKER_MODE_NODE_NAME(self) -> str:
        return _get("WORKER_MODE_NODE_NAME") or socket.gethostname()

    @property
    def WORKER_MODE_GUNICORN_CONFIG(self) -> str:
        return str(_get("WORKER_MODE_GUNICORN_CONFIG") or "")

    @property
    def WORKER_MODE_WORKER_NICE(self) -> int:
        return _get("WORKER_MODE_WORKER_NICE")

    @property
    def WORKER_MODE_METRICS_TOKEN(self) -> str:
        return str(_get("WORKER_MODE_METRICS_TOKEN") or "")

    @property
    def WORKER_MODE_LEASE(self) -> float:
        return _get("WORKER_MODE_LEASE")

    @property
    def WORKER_MODE_RECOVERY_INTERVAL(self) -> float:
        return _get("WORKER_MODE_RECOVERY_INTERVAL")

    @property
    def WORKER_MODE_REQUEUE_INTERVAL(self) -> float:
        return _get("WORKER_MODE_REQUEUE_INTERVAL")

    @property
    def WORKER_MODE_DATABASE_WAIT(self) -> float:
        return _get("WORKER_MODE_DATABASE_WAIT")

    @property
    def WORKER_MODE_QUEUED_GRACE(self) -> float:
        return _get("WORKER_MODE_QUEUED_GRACE")

    @property
    def WORKER_MODE_PACING_BUDGET(self) -> float:
        return _get("WORKER_MODE_PACING_BUDGET")

    @property
    def WORKER_MODE_PACING(self) -> dict[str, float]:
        value = _get("WORKER_MODE_PACING")
        return dict(value) if isinstance(value, dict) else value  # worker_mode.E018 names the rest

    @property
    def WORKER_MODE_PACING_ASYNC_COMMIT(self) -> tuple[str, ...]:
        value = _get("WORKER_MODE_PACING_ASYNC_COMMIT")
        return tuple(value) if isinstance(value, (list, tuple)) else value  # worker_mode.E019 names the rest

    @property
    def REDIS_URL(self) -> str:
        return _get("REDIS_URL")

    def worker_mode(self) -> WorkerMode:
        """The parsed WORKER_MODE of this node (cached per value, so cheap per request)."""
        try:
            return parse(self.WORKER_MODE)
        except WorkerModeSyntaxError as exc:
            raise InvalidWorkerMode(str(exc)) from None


conf = Settings()
