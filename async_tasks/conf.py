"""The async_tasks app's settings, read lazily (``override_settings`` works); defaults in ``defaults.py``."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from . import defaults


def _get(name: str) -> Any:
    return getattr(settings, name, getattr(defaults, name))


class Settings:
    @property
    def ASYNC_TASKS_RECOVERY(self) -> str:
        return _get("ASYNC_TASKS_RECOVERY")

    @property
    def ASYNC_TASKS_MAX_ATTEMPTS(self) -> int:
        return _get("ASYNC_TASKS_MAX_ATTEMPTS")

    @property
    def ASYNC_TASKS_CLEANUP_INTERVAL(self) -> float:
        return _get("ASYNC_TASKS_CLEANUP_INTERVAL")

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("ASYNC_TASKS_"):
            raise AttributeError(name)
        return _get(name)


conf = Settings()
