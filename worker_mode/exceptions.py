"""The errors worker_mode raises. Each message is one sentence naming the bad value."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from django.core.exceptions import ImproperlyConfigured


class WorkerModeError(ImproperlyConfigured):
    """Base class: the node's service configuration is wrong."""


class InvalidWorkerMode(WorkerModeError, ValueError):
    """WORKER_MODE cannot be parsed (for example ``-`` combined with other items)."""


class UnknownServiceKey(WorkerModeError, LookupError):
    """A service key that no installed app has registered."""

    def __init__(self, key: str, registered: Iterable[str], *, source: str = "") -> None:
        self.key = key
        self.registered = tuple(registered)
        super().__init__(unknown_key_message(key, self.registered, source=source))


class ServiceAlreadyRegistered(WorkerModeError):
    """Two apps registered the same service key with different definitions."""


def did_you_mean(key: str, registered: Iterable[str]) -> str | None:
    """The registered key closest to ``key`` (case-insensitive), if one is close."""
    registered = list(registered)
    by_lower = {k.lower(): k for k in registered}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def unknown_key_message(key: str, registered: Iterable[str], *, source: str = "") -> str:
    registered = tuple(registered)
    where = f" in {source}" if source else ""
    known = ", ".join(repr(k) for k in registered) or "none"
    message = f"Unknown service key {key!r}{where}; registered keys: {known}."
    suggestion = did_you_mean(key, registered)
    if suggestion:
        message += f" Did you mean {suggestion!r}?"
    return message
