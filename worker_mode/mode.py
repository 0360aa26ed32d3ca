"""Parse a WORKER_MODE string into what a node does.

Pure Python on purpose, no Django import: ``gunicorn.conf.py`` and other
start-up code use it before Django is configured.

=========================================  =============  ====================
WORKER_MODE                                HTTP requests  background services
=========================================  =============  ====================
unset or empty                             yes            all
``!``                                      yes            none
``workflow:process,async-task:process``    no             only those keys
``*``                                      no             all
``!,workflow:process`` (any order)         yes            only that key
``!,*``                                    yes            all
``-``                                      no             none (transient)
=========================================  =============  ====================

Items are separated by commas; whitespace around an item is ignored; empty
and repeated items are ignored, but a value of separators only (``" , "``) is
an error, not "everything"; ``-`` must stand alone. Keys are
case-sensitive. Whether a key is *registered* is not known here: that is the
registry's and the system checks' business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

REQUESTS = "!"
ALL_SERVICES = "*"
TRANSIENT = "-"

#: What a service key may look like: ``app:verb``, ``my-plugin:process``, ``reports``.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]*")


class WorkerModeSyntaxError(ValueError):
    """WORKER_MODE cannot be parsed; the message names the offending item."""


@dataclass(frozen=True)
class WorkerMode:
    """What one node does, as decided by its WORKER_MODE."""

    raw: str
    serves_requests: bool
    serves_all_services: bool
    #: Keys named explicitly, in the order given (may overlap "all" with ``*``).
    keys: tuple[str, ...]
    transient: bool

    def serves(self, key: str) -> bool:
        """Does this node process the background service ``key``?"""
        return self.serves_all_services or key in self.keys

    def served_keys(self, registered: Iterable[str]) -> tuple[str, ...]:
        """The registered keys this node processes, in registration order."""
        return tuple(key for key in registered if self.serves(key))

    @property
    def serves_services(self) -> bool:
        """Does this node process any background service at all?"""
        return self.serves_all_services or bool(self.keys)

    def describe(self) -> str:
        """A one-line, human description: ``requests + all services``."""
        if self.transient:
            return "transient: no requests, no services"
        parts = []
        if self.serves_requests:
            parts.append("requests")
        if self.serves_all_services:
            parts.append("all services")
        elif self.keys:
            parts.append(", ".join(self.keys))
        return " + ".join(parts) if parts else "nothing"


def parse(raw: str | None) -> WorkerMode:
    """Parse a WORKER_MODE value; ``None`` and ``""`` mean "everything".

    Raises :class:`WorkerModeSyntaxError` for ``-`` combined with other items
    and for items that are not valid service keys.
    """
    if raw is None:
        raw = ""
    if not isinstance(raw, str):
        raise WorkerModeSyntaxError(f"WORKER_MODE must be a string, not {type(raw).__name__}.")
    return _parse(raw)


@lru_cache(maxsize=64)
def _parse(raw: str) -> WorkerMode:
    items: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if item and item not in items:
            items.append(item)

    if not items:
        if raw.strip():
            # ' , ' or ',,,' is a templating slip, not a choice: it must not turn a worker into a node
            # that serves requests and every service.
            raise WorkerModeSyntaxError(
                f"WORKER_MODE {raw!r} has separators but no items; leave it empty (or unset) for "
                "requests + every service, or name '!', '*', '-' or service keys."
            )
        return WorkerMode(raw, serves_requests=True, serves_all_services=True, keys=(), transient=False)

    if TRANSIENT in items:
        if len(items) > 1:
            others = ", ".join(repr(i) for i in items if i != TRANSIENT)
            raise WorkerModeSyntaxError(
                f"WORKER_MODE {raw!r}: '-' (transient) must stand alone, but is combined with {others}."
            )
        return WorkerMode(raw, serves_requests=False, serves_all_services=False, keys=(), transient=True)

    keys = tuple(i for i in items if i not in (REQUESTS, ALL_SERVICES))
    for key in keys:
        if not KEY_PATTERN.fullmatch(key):
            raise WorkerModeSyntaxError(
                f"WORKER_MODE {raw!r}: {key!r} is not a service key; items are '!', '*', '-' "
                "or keys such as 'workflow:process'."
            )
    return WorkerMode(
        raw,
        serves_requests=REQUESTS in items,
        serves_all_services=ALL_SERVICES in items,
        keys=keys,
        transient=False,
    )
