"""Node presence: every node process announces itself in Redis with a heartbeat and a TTL.

``runnode`` (role ``node``), gunicorn's arbiter (``http``) and ``runworkers``'
supervisor (``workers``) each keep one entry alive: node name, host, pid,
WORKER_MODE, served keys, processes, started at, version. An entry lapses
``PRESENCE_TTL`` seconds after its last heartbeat, so a killed node drops out
on its own. ``live_entries()`` lists the live ones; ``coverage`` turns them
into alarms for service keys with work and nobody to do it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from redis import Redis, RedisError

from .conf import conf

logger = logging.getLogger(__name__)

PREFIX = "worker_mode:presence:"
INDEX = "worker_mode:presence"
#: Seconds between heartbeats, and after the last one before an entry lapses.
HEARTBEAT_INTERVAL = 10.0
PRESENCE_TTL = 30.0

_connections: dict[str, Redis] = {}


def _forget_connections() -> None:
    _connections.clear()


os.register_at_fork(after_in_child=_forget_connections)


def get_connection() -> Redis:
    """The Redis of REDIS_URL, where the cluster's presence lives (one per process)."""
    url = conf.REDIS_URL
    connection = _connections.get(url)
    if connection is None:
        connection = _connections[url] = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return connection


def _version() -> str:
    """The release of worker_mode this node runs, for the Cluster page. Its own ``__version__``
    (what the django-worker-mode build reads), not installed metadata: it is the code that runs,
    even from a checkout, and needs no scan of every installed distribution."""
    from . import __version__

    return __version__


def describe_process(role: str, *, processes: int = 1, services: list[str] | None = None) -> dict[str, Any]:
    from .node import current_mode, served_keys

    mode = current_mode()
    return {
        "node": conf.WORKER_MODE_NODE_NAME,
        "role": role,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "worker_mode": mode.raw,
        "serves_requests": mode.serves_requests,
        "services": list(served_keys(mode) if services is None else services),
        "processes": processes,
        "started_at": time.time(),
        "version": _version(),
    }


class Heartbeat:
    """Keeps this process's entry alive from a daemon thread until ``stop()``."""

    def __init__(
        self, entry: dict[str, Any], interval: float = HEARTBEAT_INTERVAL, ttl: float = PRESENCE_TTL
    ):
        self.entry, self.interval, self.ttl = entry, interval, ttl
        self.member = f"{entry['node']}:{entry['role']}:{entry['pid']}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self) -> bool:
        now = time.time()
        self.entry["heartbeat_at"] = now
        try:
            get_connection().pipeline(transaction=False).set(
                PREFIX + self.member, json.dumps(self.entry), px=int(self.ttl * 1000)
            ).zadd(INDEX, {self.member: now + self.ttl}).zremrangebyscore(INDEX, "-inf", now).execute()
        except RedisError as exc:
            if not self._failing:
                logger.warning("Presence heartbeat of %s failed (will retry): %s", self.member, exc)
            self._failing = True
            return False
        if self._failing:
            logger.info("Presence heartbeat of %s works again", self.member)
        self._failing = False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def start(self) -> Heartbeat:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="worker-mode-presence", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(RedisError):  # else the entry lapses by itself
            get_connection().pipeline(transaction=False).delete(PREFIX + self.member).zrem(
                INDEX, self.member
            ).execute()


def announce(role: str, **fields: Any) -> Heartbeat:
    """Announce this process (``role`` node, http or workers) and keep it announced."""
    return Heartbeat(describe_process(role, **fields)).start()


def live_entries() -> list[dict[str, Any]]:
    """The live entries of the cluster, by node name and role (raises RedisError if Redis is down)."""
    connection = get_connection()
    now = time.time()
    members = connection.zrangebyscore(INDEX, now, "+inf")
    if not members:
        return []
    raw = connection.mget([PREFIX + m.decode() for m in members])
    entries = [json.loads(item) for item in raw if item]
    return sorted(entries, key=lambda e: (e["node"], e["role"], e["pid"]))
