"""What this node does: the parsed WORKER_MODE against the registered services."""

from __future__ import annotations

import os
from typing import Any

from .conf import conf
from .exceptions import UnknownServiceKey
from .mode import WorkerMode
from .registry import services


def current_mode() -> WorkerMode:
    """This node's parsed WORKER_MODE (raises InvalidWorkerMode when it cannot be parsed)."""
    return conf.worker_mode()


def serving(key: str | None = None) -> bool:
    """``serving()``: does this node serve HTTP requests?
    ``serving(key)``: does it process the background service ``key``?

    An unregistered ``key`` raises :class:`UnknownServiceKey`, so a typo in
    code fails loudly instead of answering False forever.
    """
    mode = current_mode()
    if key is None:
        return mode.serves_requests
    if key not in services:
        raise UnknownServiceKey(key, services.keys(), source="serving()")
    return mode.serves(key)


def unknown_keys(mode: WorkerMode | None = None) -> tuple[str, ...]:
    """Keys named in WORKER_MODE that no installed app registered."""
    mode = mode or current_mode()
    return tuple(key for key in mode.keys if key not in services)


def served_keys(mode: WorkerMode | None = None) -> tuple[str, ...]:
    """Registered service keys this node processes, in registration order."""
    mode = mode or current_mode()
    return mode.served_keys(services.keys())


def describe() -> dict[str, Any]:
    """What this node serves, for the workermode command, logs and scripts."""
    mode = current_mode()
    keys = served_keys(mode)
    return {
        "node": conf.WORKER_MODE_NODE_NAME,
        "pid": os.getpid(),
        "worker_mode": mode.raw,
        "serves_requests": mode.serves_requests,
        "services": list(keys),
        "queues": [services.get(key).queue_name for key in keys],
        "transient": mode.transient,
        "registered": list(services.keys()),
        "unknown": list(unknown_keys(mode)),
        "summary": mode.describe(),
    }
