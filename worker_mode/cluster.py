"""Which worker processes of the cluster are alive.

A worker process is named ``{node}.{group}.{index}.{pid}`` (see ``workers``).
Code that records who runs a piece of work stores ``current_worker_name()``;
recovery later asks ``worker_is_alive(name)`` to find work left behind by a
process that was killed, ran out of memory, or lost its pod.
"""

from __future__ import annotations

import os

from redis import Redis
from rq import Worker

from .conf import conf

_current_worker_name: str | None = None


def set_current_worker_name(name: str) -> None:
    global _current_worker_name
    _current_worker_name = name


def current_worker_name() -> str:
    """This process's worker name; outside ``runworkers``: ``{node}.inline.0.{pid}``."""
    return _current_worker_name or f"{conf.WORKER_MODE_NODE_NAME}.inline.0.{os.getpid()}"


def _pid_of(name: str) -> int | None:
    _, _, pid = name.rpartition(".")
    return int(pid) if pid.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_is_alive(name: str, connection: Redis) -> bool:
    """False when the named worker process is known to be gone.

    On this node (NODE_NAME must be unique per node) the process id answers at
    once; elsewhere rq's worker record tells, which lapses ``worker_ttl``
    seconds (420 by default) after its last heartbeat.
    """
    pid = _pid_of(name)
    if name.startswith(f"{conf.WORKER_MODE_NODE_NAME}.") and pid is not None:
        return _pid_alive(pid)
    if ".inline." in name:
        # Work run in-process by another node (a sync run, a management command): no rq record.
        return True
    key = Worker.redis_worker_namespace_prefix + name
    # rq keeps a stopped worker's record for 60 s with a 'death' field; a killed one lacks it until it lapses.
    exists, death = connection.pipeline().exists(key).hget(key, "death").execute()
    return bool(exists) and death is None
