"""Which service keys have live nodes serving them, and which have work and nobody to do it.

A key with queued jobs and no live ``runworkers`` serving it is *uncovered*:
the admin shows a banner, ``/readyz`` lists it (without failing readiness),
``enqueue()`` logs a rate-limited warning, and ``workermode --cluster`` prints it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis import RedisError

from .presence import live_entries
from .queues import get_queue
from .registry import services

logger = logging.getLogger(__name__)

#: A process reuses the list of live nodes this long before asking Redis again.
CACHE_SECONDS = 5.0
#: ``enqueue()`` warns about an uncovered key at most once per this many seconds per process.
WARN_INTERVAL = 60.0

_cache: tuple[float, list[dict[str, Any]]] | None = None
_warned_at: dict[str, float] = {}


def cached_entries() -> list[dict[str, Any]]:
    global _cache
    now = time.monotonic()
    if _cache is None or now - _cache[0] > CACHE_SECONDS:
        _cache = (now, live_entries())
    return _cache[1]


def forget() -> None:
    global _cache
    _cache = None
    _warned_at.clear()


def serving_nodes(key: str, entries: list[dict[str, Any]]) -> list[str]:
    """Names of the nodes whose workers process ``key`` now."""
    return sorted({e["node"] for e in entries if e["role"] == "workers" and key in e["services"]})


def service_status(entries: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per registered key: queue depth, running and failed jobs, serving nodes, whether it is uncovered."""
    from rq.registry import FailedJobRegistry, StartedJobRegistry

    entries = live_entries() if entries is None else entries
    rows = []
    for service in services:
        queue = get_queue(service.key)
        depth = queue.count
        nodes = serving_nodes(service.key, entries)
        rows.append(
            {
                "key": service.key,
                "queue": service.queue_name,
                "description": service.description,
                "queued": depth,
                "running": StartedJobRegistry(queue=queue).count,
                "failed": FailedJobRegistry(queue=queue).count,
                "nodes": nodes,
                "uncovered": depth > 0 and not nodes,
            }
        )
    return rows


def uncovered_keys(*, cached: bool = True) -> list[str]:
    """Keys with queued jobs and no live node serving them."""
    entries = cached_entries() if cached else live_entries()
    uncovered = []
    for service in services:
        if not serving_nodes(service.key, entries) and get_queue(service.key).count > 0:
            uncovered.append(service.key)
    return uncovered


def warn_if_uncovered(key: str) -> None:
    """Called after an enqueue: log once a minute per key while no live node serves it."""
    now = time.monotonic()
    if now - _warned_at.get(key, -WARN_INTERVAL) < WARN_INTERVAL:
        return
    try:
        if serving_nodes(key, cached_entries()):
            return
    except RedisError:
        return
    _warned_at[key] = now
    logger.warning(
        "No live node serves %s: its jobs wait in the queue until a node with WORKER_MODE "
        "including %r (or '*' or empty) runs",
        key,
        key,
    )


def cluster_report() -> dict[str, Any]:
    """Everything ``workermode --cluster`` and the admin's cluster page show."""
    from . import pacing

    entries = live_entries()
    status = service_status(entries)
    try:
        paced = pacing.report()
    except (RedisError, ValueError) as exc:  # e.g. a pacing key of another type: the rest still shows
        logger.warning("Cannot read pacing's state from Redis: %s", exc)
        paced = {"pressure": {}, "services": {}}
    for row in status:
        weight = pacing.weight_of(row["key"])
        pace = paced["services"].get(row["key"])
        row["weight"] = weight
        row["pace"] = round(pace["pace"], 3) if pace and weight > 0 else 1.0
        row["yielding"] = pace["yielding"] if pace and weight > 0 else 0
    for entry in entries:
        if entry["serves_requests"]:
            entry["pressure"] = round(paced["pressure"].get(entry["node"], 0.0), 3)
    return {
        "entries": entries,
        "services": status,
        "uncovered": [row["key"] for row in status if row["uncovered"]],
        "pacing": {"budget": pacing.budget(), "pressure": paced["pressure"]},
    }
