"""The RQ worker processes of the services this node serves, and ``runworkers``.

A node runs groups of worker processes: one group per service that has a
dedicated count in WORKER_MODE_SERVICE_PROCESSES (so a flood of imports cannot
starve workflows), and one shared group for the other served services. They
run under :mod:`worker_mode.supervisor` beside the periodic process: a crashed
one is restarted, one that crash-loops fails the node (exit 1); SIGTERM is a
warm shutdown, turning cold after WORKER_MODE_SHUTDOWN_GRACE seconds or on a
second SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.utils.module_loading import import_string
from redis import RedisError
from rq import SimpleWorker, Worker
from rq.worker import WorkerStatus

from . import pacing, presence
from .cluster import set_current_worker_name
from .conf import conf
from .exceptions import WorkerModeError
from .node import current_mode, served_keys
from .periodic import periodic_child
from .queues import get_connection, get_queue, server_of
from .registry import services
from .startup import validate
from .supervisor import Child, Restart, Supervisor, catch_stop_signals

logger = logging.getLogger(__name__)


def close_old_db_connections(*, trust_open: bool = False) -> None:
    """Close unusable or expired connections, as Django does around a request.

    A connection inside an atomic block is left alone: closing it would break
    the transaction (this happens when jobs run in-process, e.g. in tests).
    With ``trust_open``, a connection that stays open is not health-checked
    (``SELECT 1``) on its next use: it has just served a job without error.
    """
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()
            if trust_open and conn.connection is not None:
                conn.health_check_done = True


#: A worker busy with back-to-back jobs refreshes its rq heartbeat (and its
#: idle state) at most this often; a job's own heartbeat, which carries the
#: job's timeout, is always sent. The worker key's TTL is minutes long.
HEARTBEAT_INTERVAL = 5.0
#: A database connection left idle longer than this is health-checked before the next job.
DB_HEALTH_CHECK_IDLE = 1.0
#: How often a busy worker checks whether ``rq suspend`` was called (rq checks before every job).
SUSPENSION_CHECK_INTERVAL = 1.0


class DatabaseHygiene:
    """Treat each job like a request: no stale or broken database connection survives it.

    A connection that served the previous job a moment ago is not health-checked
    (``SELECT 1``) again before the next one.
    """

    _job_ended_at: float | None = None

    def execute_job(self, job: Any, queue: Any) -> Any:
        self._before_job()
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            self._after_job()

    def _before_job(self) -> None:
        ended = self._job_ended_at
        if ended is None or time.monotonic() - ended >= DB_HEALTH_CHECK_IDLE:
            close_old_db_connections()

    def _after_job(self) -> None:
        close_old_db_connections(trust_open=True)
        self._job_ended_at = time.monotonic()


#: The rq code the worker classes below copy or rely on, as checked (rq 2.12.0): the SHA-256
#: (first 16 hex digits) of each function's source. ``tests/test_workers.py`` fails when an rq
#: release changes one of them: read the new code, adapt the classes, then update the digest.
RQ_CHECKED = {
    "SimpleWorker.execute_job": "d8a40d49f515b558",  # copied into DjangoWorker.execute_job
    "BaseWorker.set_state": "bb8d4f1d93ff078b",  # keeps the state written in self._state
    "BaseWorker.heartbeat": "d00c83971db2d72f",  # timeout None: the worker's own heartbeat
    "BaseWorker.check_for_suspension": "e8095ae1fcf966bd",  # only reads: safe to skip for 1 s
}


class FewerRoundTrips:
    """Skip what a busy worker does not need to repeat between back-to-back jobs: rq's idle-state
    and heartbeat writes and its suspension check (a handful of Redis round trips per job)."""

    _default_heartbeat_at: float | None = None
    _suspension_checked_at: float | None = None

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if timeout is not None:  # a job's heartbeat, with the job's timeout: always sent
            self._default_heartbeat_at = None
            return super().heartbeat(timeout, pipeline)  # type: ignore[misc]
        now = time.monotonic()
        last = self._default_heartbeat_at
        if last is not None and now - last < HEARTBEAT_INTERVAL:
            return None
        self._default_heartbeat_at = now
        return super().heartbeat(pipeline=pipeline)  # type: ignore[misc]

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == getattr(self, "_state", None):
            return  # already written
        super().set_state(state, pipeline)  # type: ignore[misc]

    def check_for_suspension(self, burst: bool) -> None:
        now = time.monotonic()
        last = self._suspension_checked_at
        if last is not None and now - last < SUSPENSION_CHECK_INTERVAL:
            return
        self._suspension_checked_at = now
        super().check_for_suspension(burst)  # type: ignore[misc]


class Paced:
    """Every job runs under ``worker_mode.pacing``: its database time is charged to the cluster's
    background budget, and the worker yields after it while request nodes are under pressure."""

    def perform_job(self, job: Any, queue: Any) -> Any:
        with pacing.job(job.origin):  # the queue's name is the service key
            return super().perform_job(job, queue)  # type: ignore[misc]


class DjangoWorker(DatabaseHygiene, FewerRoundTrips, Paced, SimpleWorker):
    """Runs jobs in the worker process itself: no fork per job, so no fork cost.

    Isolation comes from the supervisor instead: a process that dies is
    replaced.
    """

    #: rq's "result is kept for N seconds" line after every job: noise at hundreds of jobs/s.
    log_result_lifespan = False

    def execute_job(self, job: Any, queue: Any) -> Any:
        # SimpleWorker.execute_job (RQ_CHECKED), with the idle state and the heartbeat that follow
        # a job written in one round trip instead of three.
        self._before_job()
        try:
            self.prepare_execution(job)
            self.perform_job(job, queue)
        finally:
            self._after_job()
        with self.connection.pipeline(transaction=False) as pipeline:
            self.set_state(WorkerStatus.IDLE, pipeline=pipeline)
            SimpleWorker.heartbeat(self, pipeline=pipeline)
            pipeline.execute()
        self._default_heartbeat_at = time.monotonic()


class DjangoForkWorker(DatabaseHygiene, FewerRoundTrips, Paced, Worker):
    """rq's forking worker (a work horse per job), with Django connections closed before each fork."""

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        connections.close_all()
        super().fork_work_horse(job, queue)


@dataclass(frozen=True)
class WorkerGroup:
    """Worker processes that listen to the same queues."""

    name: str
    queues: tuple[str, ...]
    processes: int


def plan_groups(
    keys: tuple[str, ...],
    processes: int,
    service_processes: dict[str, int],
    server: Callable[[str], Any] | None = None,
) -> list[WorkerGroup]:
    """Split the served keys into dedicated groups and shared ones: one shared group of
    ``processes`` per Redis server (``server(key)``; an rq worker listens on one connection)."""
    dedicated = [WorkerGroup(key, (key,), service_processes[key]) for key in keys if key in service_processes]
    shared = tuple(key for key in keys if key not in service_processes)
    if not shared:
        return dedicated
    if processes < 1:
        raise WorkerModeError(
            f"Services {', '.join(shared)} have no dedicated processes and the shared pool has "
            f"{processes}; set --processes or WORKER_MODE_PROCESSES to 1 or more."
        )
    by_server: dict[Any, tuple[str, ...]] = {}
    for key in shared:
        where = None if server is None else server(key)
        by_server[where] = (*by_server.get(where, ()), key)
    if len(by_server) == 1:
        return [WorkerGroup("shared", shared, processes), *dedicated]
    return [
        *(
            WorkerGroup(f"shared-{index}", group, processes)
            for index, group in enumerate(by_server.values(), 1)
        ),
        *dedicated,
    ]


def wait_for_redis(key: str) -> None:
    """Block until the queue's Redis answers, backing off up to 30 s between tries."""
    delay = 0.5
    while True:
        try:
            get_connection(key).ping()
            return
        except RedisError as exc:
            logger.warning("Redis for %s does not answer (%s); retrying in %.1f s", key, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def _worker_main(
    group: WorkerGroup, index: int, burst: bool, with_scheduler: bool, worker_class_path: str, log_level: str
) -> None:
    if conf.WORKER_MODE_WORKER_NICE:
        # Background work yields the CPU to request handling on the same machine.
        try:
            os.nice(conf.WORKER_MODE_WORKER_NICE)
        except OSError as exc:
            logger.warning("Could not lower the worker's CPU priority: %s", exc)

    wait_for_redis(group.queues[0])
    _fail_abandoned_tasks(group.queues)
    worker_class = import_string(worker_class_path)
    name = f"{conf.WORKER_MODE_NODE_NAME}.{group.name}.{index}.{os.getpid()}"
    set_current_worker_name(name)
    worker = worker_class(
        [get_queue(key) for key in group.queues],
        connection=get_connection(group.queues[0]),
        name=name,
    )
    worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=log_level)


def _fail_abandoned_tasks(keys: tuple[str, ...]) -> None:
    """A worker (re)starting fails the tasks left running by a dead worker process of this node
    (the one it replaces, after a kill), instead of leaving them RUNNING for minutes."""
    try:
        from .tasks import fail_abandoned
    except ImportError:  # no Tasks framework (Django 5.2 without the backport): no tasks
        return
    for key in keys:
        try:
            fail_abandoned(key)
        except Exception:  # never keep a worker from starting
            logger.exception("Could not look for abandoned tasks on %s", key)


def worker_children(
    groups: list[WorkerGroup],
    *,
    burst: bool = False,
    with_scheduler: bool = False,
    grace: float | None = None,
    worker_class: str | None = None,
    log_level: str = "INFO",
) -> list[Child]:
    """The worker processes of ``groups``, for the supervisor: a crashed one is restarted within
    the crash budget; in burst mode each ends when its queues are drained."""
    budget = Restart(conf.WORKER_MODE_RESTART_LIMIT, conf.WORKER_MODE_RESTART_WINDOW)
    worker_class = worker_class or conf.WORKER_MODE_WORKER_CLASS
    return [
        Child(
            f"worker {group.name}#{index}",
            target=_worker_main,
            args=(group, index, burst, with_scheduler and index == 0, worker_class, log_level),
            detail=f"on {', '.join(group.queues)}",
            grace=conf.WORKER_MODE_SHUTDOWN_GRACE if grace is None else grace,
            on_exit="finish" if burst else "restart",
            restart=budget,
        )
        for group in groups
        for index in range(group.processes)
    ]


def is_worker(child: Child) -> bool:
    return child.target is _worker_main


def node_children(keys: tuple[str, ...], *, processes: int | None = None, **options: Any) -> list[Child]:
    """What a node serving ``keys`` runs for them: the periodic process, then the worker groups."""
    groups = plan_groups(
        keys,
        conf.WORKER_MODE_PROCESSES if processes is None else processes,
        conf.WORKER_MODE_SERVICE_PROCESSES,
        server_of,
    )
    logger.info(
        "Node %s (WORKER_MODE=%r, %s): %s",
        conf.WORKER_MODE_NODE_NAME,
        current_mode().raw,
        current_mode().describe(),
        "; ".join(f"{g.processes} x [{', '.join(g.queues)}]" for g in groups),
    )
    return [periodic_child(keys, grace=options.get("grace")), *worker_children(groups, **options)]


def run(
    *,
    processes: int | None = None,
    burst: bool = False,
    with_scheduler: bool = False,
    grace: float | None = None,
    log_level: str = "INFO",
) -> int:
    """Start workers for exactly the services this node serves; returns the exit code."""
    catch_stop_signals()  # a stop during the checks below is not lost
    validate()
    mode = current_mode()
    keys = served_keys(mode)
    if not keys:
        raise WorkerModeError(
            f"WORKER_MODE {mode.raw!r} serves no background services, so runworkers has nothing to run; "
            f"set WORKER_MODE to '*' or to service keys ({', '.join(services.keys()) or 'none registered'})."
        )
    children = node_children(
        keys,
        processes=processes,
        burst=burst,
        with_scheduler=with_scheduler,
        grace=grace,
        log_level=log_level,
    )
    workers = sum(1 for child in children if is_worker(child))
    # Coverage counts this node for its keys only once the workers run (after the first sweeps).
    heartbeat = presence.Heartbeat(
        presence.describe_process("workers", processes=workers, services=list(keys))
    )
    try:
        return Supervisor(children, when_started=heartbeat.start).run()
    finally:
        heartbeat.stop()
