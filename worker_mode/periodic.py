"""Run the served services' periodic tasks (recovery, schedules) in a process of their own.

Each task runs at start and then every ``every`` seconds on every node that
serves its service; a non-blocking Redis lock makes one node at a time run it,
so N worker nodes do not do the same sweep N times. Besides the tasks services
declare, every served key with claimed-work models gets worker_mode's recovery
sweeps (``claims.periodic_tasks``).

``runnode`` and ``runworkers`` run them in the ``periodic`` child
(:func:`periodic_child`), beside the worker processes and not inside the
supervisor's loop, so a slow sweep never holds up the supervisor; a warm stop
lets the running task finish for at most STOP_GRACE seconds, then interrupts it
(every task is safe to interrupt and to run again). The child waits for the
database's migrations and runs every task once before the workers start (work
left behind by a previous run is queued again first; a task another node is
running at that moment is left to it); SIGUSR1 (sent when a worker process was
replaced) runs them all at once.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable

from django.utils.module_loading import import_string
from redis import RedisError

from .conf import conf
from .queues import get_connection
from .registry import PeriodicTask, services
from .supervisor import Child, Restart

logger = logging.getLogger(__name__)

#: A lock outlives a task by at most twice its interval, and at least this much, if its holder dies
#: (or freezes): short, so that a lost node holding a recovery lock delays recovery by seconds.
_LOCK_TIMEOUT = 10.0


class PeriodicRunner:
    """Keeps the due times of the periodic tasks of ``keys`` and runs the due ones."""

    def __init__(self, keys: Iterable[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.tasks: list[tuple[str, PeriodicTask]] = []
        from .claims import periodic_tasks

        seen: set[str] = set()
        for key in keys:
            for task in (*services.get(key).periodic, *periodic_tasks([key])):
                if task.name not in seen:
                    seen.add(task.name)
                    self.tasks.append((key, task))
        self.next_run = {task.name: 0.0 for _, task in self.tasks}

    def run_due(self, *, force: bool = False, stop: Callable[[], bool] | None = None) -> list[str]:
        """Run every task that is due (all of them if ``force``), until ``stop()`` says to stop;
        returns the names of those run."""
        ran: list[str] = []
        for key, task in self.tasks:
            if stop is not None and stop():
                break
            now = self.clock()
            if not force and now < self.next_run[task.name]:
                continue
            repeat = task.first_repeat if force and task.first_repeat else task.every
            self.next_run[task.name] = now + min(repeat, task.every)
            outcome = run_locked(key, task)
            if outcome is None:  # Redis did not answer: try again soon, not a whole interval later
                self.next_run[task.name] = now + min(task.every, REDIS_RETRY)
            elif outcome:
                ran.append(task.name)
        return ran


_unlocked: set[str] = set()
#: Redis of a service key that did not answer: since when, and when that was last said.
_down_since: dict[str, float] = {}
_last_warned: dict[str, float] = {}
#: While Redis stays down, the warning is repeated at most this often (seconds).
REDIS_WARN_EVERY = 60.0
_clock = time.monotonic
#: A task skipped because Redis did not answer is tried again after this many seconds, so the
#: work it does (e.g. enqueueing again what Redis lost) starts soon after Redis is back.
REDIS_RETRY = 2.0


def _redis_down(key: str, task: PeriodicTask, exc: Exception) -> None:
    """Say once that Redis is down, then every REDIS_WARN_EVERY seconds, not at every retry."""
    now = _clock()
    since = _down_since.setdefault(key, now)
    if now - _last_warned.get(key, -REDIS_WARN_EVERY) < REDIS_WARN_EVERY:
        return
    _last_warned[key] = now
    if now == since:
        logger.warning(
            "Periodic tasks of %s skipped (first: %s): Redis is unavailable (%s); retrying every %.0f s",
            key, task.name, exc, REDIS_RETRY,
        )  # fmt: skip
    else:
        logger.warning(
            "Periodic tasks of %s still skipped: Redis unavailable for %.0f s (%s)", key, now - since, exc
        )


def _redis_up(key: str) -> None:
    since = _down_since.pop(key, None)
    _last_warned.pop(key, None)
    if since is not None:
        logger.warning(
            "Redis for %s is back after %.0f s: its periodic tasks run again", key, _clock() - since
        )


def run_locked(key: str, task: PeriodicTask) -> bool | None:
    """Run ``task`` unless another node holds its lock: True if it ran, False if not, None if it
    was skipped because Redis did not answer. Errors are logged, never raised."""
    try:
        lock = get_connection(key).lock(
            f"worker_mode:periodic:{task.name}", timeout=max(_LOCK_TIMEOUT, task.every * 2)
        )
        if not lock.acquire(blocking=False):
            return False
    except RedisError as exc:
        if task.lock_optional:
            if task.name not in _unlocked:
                logger.warning(
                    "Redis for %s is unavailable (%s): %s runs without its lock until it answers",
                    key, exc, task.name,
                )  # fmt: skip
                _unlocked.add(task.name)
            return _run(task)
        _redis_down(key, task, exc)
        return None
    _unlocked.discard(task.name)
    _redis_up(key)
    try:
        return _run(task)
    finally:
        try:
            lock.release()
        except RedisError:
            logger.warning("Could not release the lock of periodic task %s", task.name)
        except Exception:  # LockNotOwnedError: it expired while the task ran
            logger.warning("Periodic task %s outlived its lock", task.name)


def _run(task: PeriodicTask) -> bool:
    try:
        import_string(task.func)(*task.args)
        return True
    except Exception:
        logger.exception("Periodic task %s failed", task.name)
        return False


#: How often the periodic process looks at its signals and due times (seconds).
_TICK = 0.2
#: A warm stop lets the running task finish for at most this long (seconds); then it is
#: interrupted. Every periodic task is safe to interrupt and to run again (conditional updates).
STOP_GRACE = 2.0


def run_forever(keys: tuple[str, ...], ready: Callable[[], None]) -> None:
    """The periodic process: wait for migrations, run every task once, call ``ready``, then run
    tasks when due. SIGUSR1 runs them all at once; SIGTERM ends it after the running task (SIGINT,
    the cold stop, ends it at once: SIGTERM may come twice, from the supervisor and from a
    service manager that signals every process)."""
    from .claims import database_answers
    from .startup import wait_for_migrations
    from .workers import close_old_db_connections

    state = {"stop": False, "wake": False}

    def on_stop(signum: int, frame: object) -> None:
        state["stop"] = True

    def on_wake(signum: int, frame: object) -> None:
        state["wake"] = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGUSR1, on_wake)
    # Workers and recovery sweeps need the tables: one clear line while they are missing, not a
    # traceback per job or per tick.
    wait_for_migrations(stop=lambda: state["stop"])
    runner = PeriodicRunner(keys)

    def stopping() -> bool:
        return state["stop"]

    if not state["stop"]:
        runner.run_due(force=True, stop=stopping)  # recovery first, before any worker takes a job
        ready()
    while not state["stop"]:
        force, state["wake"] = state["wake"], False
        # Every node watches the database, sweeping or not: whichever takes the next sweep knows
        # whether leases lapsed because their owners could not reach it (claims.recently_unreachable).
        database_answers()
        runner.run_due(force=force, stop=stopping)
        close_old_db_connections()  # between sweeps as between requests: no broken or expired one kept
        due = min(runner.next_run.values(), default=runner.clock() + 60.0)
        while not (state["stop"] or state["wake"]) and runner.clock() < due:
            time.sleep(_TICK)


def periodic_child(keys: Iterable[str], *, grace: float | None = None) -> Child:
    """The periodic process of a node serving ``keys``, for the supervisor; the worker processes
    listed after it start once it has run every task once. A warm stop waits for the running task
    at most STOP_GRACE seconds (or the workers' ``grace`` if shorter)."""
    return Child(
        "periodic",
        target=run_forever,
        args=(tuple(keys),),
        gate=True,
        helper=True,
        wake_signal=signal.SIGUSR1,
        cold_signal=signal.SIGINT,
        grace=min(STOP_GRACE, STOP_GRACE if grace is None else grace),
        restart=Restart(conf.WORKER_MODE_RESTART_LIMIT, conf.WORKER_MODE_RESTART_WINDOW),
    )
