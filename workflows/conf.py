"""The workflows app's settings, read lazily (``override_settings`` works); defaults in ``defaults.py``."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from . import defaults


def _get(name: str) -> Any:
    return getattr(settings, name, getattr(defaults, name))


class Settings:
    @property
    def WORKFLOWS_RECOVERY(self) -> str:
        return _get("WORKFLOWS_RECOVERY")

    @property
    def WORKFLOWS_MAX_ATTEMPTS(self) -> int:
        return _get("WORKFLOWS_MAX_ATTEMPTS")

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("WORKFLOWS_"):
            raise AttributeError(name)
        value = _get(name)
        if name in ("WORKFLOWS_COLLECTIONS", "WORKFLOWS_HTTP_ALLOWED_NETWORKS"):
            return tuple(value)
        return value


conf = Settings()
