"""The async_tasks app's settings, read lazily (``override_settings`` works); defaults in ``defaults.py``."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from . import defaults


class Settings:
    def __getattr__(self, name: str) -> Any:
        if not name.startswith("ASYNC_TASKS_"):
            raise AttributeError(name)
        return getattr(settings, name, getattr(defaults, name))


conf = Settings()
