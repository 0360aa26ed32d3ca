"""The workflows app's settings, read lazily (``override_settings`` works); defaults in ``defaults.py``."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from . import defaults


class Settings:
    def __getattr__(self, name: str) -> Any:
        if not name.startswith("WORKFLOWS_"):
            raise AttributeError(name)
        value = getattr(settings, name, getattr(defaults, name))
        if name in ("WORKFLOWS_COLLECTIONS", "WORKFLOWS_HTTP_ALLOWED_NETWORKS"):
            return tuple(value)
        return value


conf = Settings()
