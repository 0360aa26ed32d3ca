"""The workflows app's settings, read lazily so that ``override_settings`` works.

Every property keeps the setting's own name; defaults live in ``defaults.py``; the system
checks (``workflows.checks``) validate them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from . import defaults


def _get(name: str) -> Any:
    return getattr(settings, name, getattr(defaults, name))


class Settings:
    @property
    def WORKFLOWS_COLLECTIONS(self) -> tuple[str, ...]:
        return tuple(_get("WORKFLOWS_COLLECTIONS"))

    @property
    def WORKFLOWS_HTTP_ALLOWED_NETWORKS(self) -> tuple[str, ...]:
        return tuple(_get("WORKFLOWS_HTTP_ALLOWED_NETWORKS"))

    @property
    def WORKFLOWS_HTTP_MAX_TIMEOUT(self) -> float:
        return _get("WORKFLOWS_HTTP_MAX_TIMEOUT")

    @property
    def WORKFLOWS_HTTP_MAX_RESPONSE_BYTES(self) -> int:
        return _get("WORKFLOWS_HTTP_MAX_RESPONSE_BYTES")

    @property
    def WORKFLOWS_MAX_RECORDS(self) -> int:
        return _get("WORKFLOWS_MAX_RECORDS")

    @property
    def WORKFLOWS_RECOVERY(self) -> str:
        return _get("WORKFLOWS_RECOVERY")

    @property
    def WORKFLOWS_MAX_ATTEMPTS(self) -> int:
        return _get("WORKFLOWS_MAX_ATTEMPTS")

    @property
    def WORKFLOWS_TICK_INTERVAL(self) -> float:
        return _get("WORKFLOWS_TICK_INTERVAL")


conf = Settings()
