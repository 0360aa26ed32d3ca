"""The async_tasks app's settings, read lazily so that ``override_settings`` works.

Every property keeps the setting's own name; defaults live in ``defaults.py``; the system
checks (``async_tasks.checks``) validate them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from . import defaults


def _get(name: str) -> Any:
    return getattr(settings, name, getattr(defaults, name))


class Settings:
    @property
    def ASYNC_TASKS_MODELS(self) -> dict:
        return _get("ASYNC_TASKS_MODELS")

    @property
    def ASYNC_TASKS_STORAGE(self) -> str:
        return _get("ASYNC_TASKS_STORAGE")

    @property
    def ASYNC_TASKS_MAX_UPLOAD_SIZE(self) -> int:
        return _get("ASYNC_TASKS_MAX_UPLOAD_SIZE")

    @property
    def ASYNC_TASKS_XLSX_MAX_UNPACKED(self) -> int:
        return _get("ASYNC_TASKS_XLSX_MAX_UNPACKED")

    @property
    def ASYNC_TASKS_XLSX_MAX_RATIO(self) -> int:
        return _get("ASYNC_TASKS_XLSX_MAX_RATIO")

    @property
    def ASYNC_TASKS_BATCH_SIZE(self) -> int:
        return _get("ASYNC_TASKS_BATCH_SIZE")

    @property
    def ASYNC_TASKS_EXPIRY(self) -> float:
        return _get("ASYNC_TASKS_EXPIRY")

    @property
    def ASYNC_TASKS_RECOVERY(self) -> str:
        return _get("ASYNC_TASKS_RECOVERY")

    @property
    def ASYNC_TASKS_MAX_ATTEMPTS(self) -> int:
        return _get("ASYNC_TASKS_MAX_ATTEMPTS")

    @property
    def ASYNC_TASKS_CLEANUP_INTERVAL(self) -> float:
        return _get("ASYNC_TASKS_CLEANUP_INTERVAL")


conf = Settings()
