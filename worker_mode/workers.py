"""Start and supervise the RQ worker processes of the services this node serves.

A node runs groups of worker processes: one group per service that has a
dedicated count in WORKER_MODE_SERVICE_PROCESSES (so a flood of imports cannot
starve workflows), and one shared group for the other served services. The
supervisor restarts a crashed process, gives up (exit 1) when one crash-loops,
and on SIGTERM asks every worker for a warm shutdown, turning it cold after
WORKER_MODE_SHUTDOWN_GRACE seconds or on a second SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from django.db import connections
from django.utils.module_loading import import_string
from redis import RedisError
from rq import SimpleWorker, Worker
from rq.worker import WorkerStatus

from . import presence
from .cluster import set_current_worker_name
from .conf import conf
from .exceptions import WorkerModeError
from .node import current_mode, served_keys
from .periodic import PeriodicRunner
from .queues import get_connection, get_queue
from .registry import services
from .startup import validate, wait_for_migrations

logger = logging.getLogger(__name__)

#: rq ignores a second stop signal that arrives within 1 s of the first.
_RQ_DUPLICATE_SIGNAL_WINDOW = 1.1
#: How long a cold-stopped worker gets before SIGKILL.
_COLD_STOP_TIMEOUT = 10.0
_FORK = multiprocessing.get_context("fork")


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


class DjangoWorkerMixin:
    """Treat each job like a request: no stale or broken DB connection survives it.

    Between back-to-back jobs it also skips what a busy worker does not need
    to repeat: the ``SELECT 1`` health check of a connection that served the
    previous job a moment ago, and rq's repeated idle-state and heartbeat
    writes (a handful of Redis round trips per job).
    """

    _job_ended_at: float | None = None
    _default_heartbeat_at: float | None = None
    _suspension_checked_at: float | None = None

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


class DjangoWorker(DjangoWorkerMixin, SimpleWorker):
    """Runs jobs in the worker process itself: no fork per job, so no fork cost.

    Isolation comes from the supervisor instead: a process that dies is
    replaced.
    """

    #: rq's "result is kept for N seconds" line after every job: noise at hundreds of jobs/s.
    log_result_lifespan = False

    def execute_job(self, job: Any, queue: Any) -> Any:
        # SimpleWorker.execute_job, with the idle state and the heartbeat that follow a job
        # written in one round trip instead of three.
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


class DjangoForkWorker(DjangoWorkerMixin, Worker):
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
    keys: tuple[str, ...], processes: int, service_processes: dict[str, int]
) -> list[WorkerGroup]:
    """Split the served keys into dedicated groups and one shared group."""
    dedicated = [WorkerGroup(key, (key,), service_processes[key]) for key in keys if key in service_processes]
    shared = tuple(key for key in keys if key not in service_processes)
    if shared:
        if processes < 1:
            raise WorkerModeError(
                f"Services {', '.join(shared)} have no dedicated processes and the shared pool has "
                f"{processes}; set --processes or WORKER_MODE_PROCESSES to 1 or more."
            )
        return [WorkerGroup("shared", shared, processes), *dedicated]
    return dedicated


def _set_parent_death_signal(sig: int) -> None:
    """Linux: get ``sig`` when the supervisor dies, so no worker outlives it unnoticed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


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
    # Own process group: a terminal's Ctrl-C reaches the supervisor only, which
    # then stops workers in order instead of every process at once.
    os.setpgid(0, 0)
    _set_parent_death_signal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    connections.close_all()  # the parent's sockets must not be shared
    if conf.WORKER_MODE_WORKER_NICE:
        # Background work yields the CPU to request handling on the same machine.
        try:
            os.nice(conf.WORKER_MODE_WORKER_NICE)
        except OSError as exc:
            logger.warning("Could not lower the worker's CPU priority: %s", exc)

    wait_for_redis(group.queues[0])
    worker_class = import_string(worker_class_path)
    name = f"{conf.WORKER_MODE_NODE_NAME}.{group.name}.{index}.{os.getpid()}"
    set_current_worker_name(name)
    worker = worker_class(
        [get_queue(key) for key in group.queues],
        connection=get_connection(group.queues[0]),
        name=name,
    )
    worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=log_level)


@dataclass
class _Slot:
    group: WorkerGroup
    index: int
    process: BaseProcess | None = None
    restart_at: float | None = None
    crashes: deque[float] = field(default_factory=deque)

    @property
    def label(self) -> str:
        return f"{self.group.name}#{self.index}"


class Supervisor:
    """Runs the worker groups and keeps them running until told to stop."""

    def __init__(
        self,
        groups: list[WorkerGroup],
        *,
        burst: bool = False,
        with_scheduler: bool = False,
        grace: float | None = None,
        worker_class: str | None = None,
        log_level: str = "INFO",
        restart_limit: int | None = None,
        restart_window: float | None = None,
        periodic: PeriodicRunner | None = None,
    ) -> None:
        self.periodic = periodic
        self.slots = [_Slot(group, index) for group in groups for index in range(group.processes)]
        self.burst = burst
        self.with_scheduler = with_scheduler
        self.grace = conf.WORKER_MODE_SHUTDOWN_GRACE if grace is None else grace
        self.worker_class = worker_class or conf.WORKER_MODE_WORKER_CLASS
        self.log_level = log_level
        self.restart_limit = conf.WORKER_MODE_RESTART_LIMIT if restart_limit is None else restart_limit
        self.restart_window = conf.WORKER_MODE_RESTART_WINDOW if restart_window is None else restart_window
        self.stop_requests = 0
        self.failed = False
        self._warm_sent_at: float | None = None
        self._cold_at: float | None = None
        self._cold_sent_at: float | None = None

    # -- signals -------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requests += 1
        if self.stop_requests == 1:
            logger.info(
                "Got %s: warm shutdown, running jobs may finish (grace %.0f s)",
                signal.Signals(signum).name,
                self.grace,
            )
        else:
            logger.warning("Got %s again: cold shutdown", signal.Signals(signum).name)

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # -- processes -----------------------------------------------------------
    def _run_periodic(self, *, force: bool = False) -> None:
        if self.periodic is not None:
            self.periodic.run_due(force=force)

    def _start(self, slot: _Slot) -> None:
        connections.close_all()
        with_scheduler = self.with_scheduler and slot.index == 0
        slot.process = _FORK.Process(
            target=_worker_main,
            args=(slot.group, slot.index, self.burst, with_scheduler, self.worker_class, self.log_level),
            name=f"rq worker {slot.label}",
            daemon=False,
        )
        slot.process.start()
        slot.restart_at = None
        logger.info(
            "Started worker %s (pid %s) on %s", slot.label, slot.process.pid, ", ".join(slot.group.queues)
        )

    def _live(self) -> list[_Slot]:
        return [s for s in self.slots if s.process is not None and s.process.is_alive()]

    def _signal_all(self, sig: int) -> None:
        for slot in self._live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, sig)  # type: ignore[union-attr]

    def _reap(self, now: float) -> None:
        for slot in self.slots:
            process = slot.process
            if process is None or process.is_alive():
                continue
            process.join()
            code = process.exitcode
            slot.process = None
            if self.stop_requests or self.failed:
                logger.info("Worker %s stopped (exit %s)", slot.label, code)
            elif self.burst:
                if code != 0:
                    logger.error("Worker %s exited with %s in burst mode", slot.label, code)
                    self.failed = True
            else:
                self._schedule_restart(slot, code, now)

    def _schedule_restart(self, slot: _Slot, code: int | None, now: float) -> None:
        slot.crashes.append(now)
        while slot.crashes and slot.crashes[0] < now - self.restart_window:
            slot.crashes.popleft()
        if len(slot.crashes) >= self.restart_limit:
            logger.error(
                "Worker %s exited with %s: %d crashes within %.0f s, giving up and stopping the node",
                slot.label,
                code,
                len(slot.crashes),
                self.restart_window,
            )
            self.failed = True
            return
        delay = min(0.5 * 2 ** (len(slot.crashes) - 1), 30.0)
        slot.restart_at = now + delay
        logger.warning("Worker %s exited with %s; restarting in %.1f s", slot.label, code, delay)

    def _advance_shutdown(self, now: float) -> None:
        if self._warm_sent_at is None:
            self._warm_sent_at = now
            self._cold_at = now + max(self.grace, _RQ_DUPLICATE_SIGNAL_WINDOW)
            self._signal_all(signal.SIGTERM)
            return
        if self.stop_requests > 1 and self._cold_sent_at is None:
            self._cold_at = min(
                self._cold_at or now, max(now, self._warm_sent_at + _RQ_DUPLICATE_SIGNAL_WINDOW)
            )
        if self._cold_sent_at is None and now >= (self._cold_at or now):
            if self._live():
                logger.warning("Cold shutdown: interrupting %d worker(s) still running", len(self._live()))
            self._cold_sent_at = now
            self._signal_all(signal.SIGTERM)
        elif (
            self._cold_sent_at is not None and now >= self._cold_sent_at + _COLD_STOP_TIMEOUT and self._live()
        ):
            logger.error("Killing %d worker(s) that ignored the cold shutdown", len(self._live()))
            self._signal_all(signal.SIGKILL)

    def run(self) -> int:
        """Run until stopped (or, in burst mode, until the queues are drained). Returns an exit code."""
        self._install_signal_handlers()
        # Recovery first: work left behind by a previous run is queued again before workers take jobs.
        self._run_periodic(force=True)
        for slot in self.slots:
            self._start(slot)
        while True:
            now = time.monotonic()
            self._reap(now)
            if self.stop_requests or self.failed:
                self._advance_shutdown(now)
                if not self._live():
                    break
            elif self.burst and not self._live():
                break
            else:
                due = [s for s in self.slots if s.process is None and (s.restart_at or now + 1) <= now]
                # A replaced worker may have left work half done: recover it at once, not at the next sweep.
                self._run_periodic(force=bool(due))
                for slot in due:
                    self._start(slot)
            sentinels = [s.process.sentinel for s in self._live()]  # type: ignore[union-attr]
            if sentinels:
                wait(sentinels, timeout=0.2)
            else:
                time.sleep(0.2)
        if self.failed:
            return 1
        return 0


def run(
    *,
    processes: int | None = None,
    burst: bool = False,
    with_scheduler: bool = False,
    grace: float | None = None,
    log_level: str = "INFO",
) -> int:
    """Start workers for exactly the services this node serves; returns the exit code."""
    validate()
    mode = current_mode()
    keys = served_keys(mode)
    if not keys:
        raise WorkerModeError(
            f"WORKER_MODE {mode.raw!r} serves no background services, so runworkers has nothing to run; "
            f"set WORKER_MODE to '*' or to service keys ({', '.join(services.keys()) or 'none registered'})."
        )
    groups = plan_groups(
        keys,
        conf.WORKER_MODE_PROCESSES if processes is None else processes,
        conf.WORKER_MODE_SERVICE_PROCESSES,
    )
    logger.info(
        "Node %s (WORKER_MODE=%r, %s): %s",
        conf.WORKER_MODE_NODE_NAME,
        mode.raw,
        mode.describe(),
        "; ".join(f"{g.processes} x [{', '.join(g.queues)}]" for g in groups),
    )
    # Workers and recovery sweeps need the tables: one clear line while they are missing, not a
    # traceback per job or per tick.
    wait_for_migrations()
    supervisor = Supervisor(
        groups,
        burst=burst,
        with_scheduler=with_scheduler,
        grace=grace,
        log_level=log_level,
        periodic=PeriodicRunner(keys),
    )
    heartbeat = presence.announce("workers", processes=sum(g.processes for g in groups), services=list(keys))
    try:
        return supervisor.run()
    finally:
        heartbeat.stop()
