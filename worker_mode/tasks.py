"""A Django Tasks backend on the service keys' RQ queues: ``@task(queue_name="thumbs:process")``.

With ``TASKS = {"default": {"BACKEND": "worker_mode.tasks.RQBackend"}}``, a task's
``queue_name`` is a registered service key: ``enqueue()`` puts it on that key's RQ
queue (the queue ``worker_mode.enqueue`` uses) when the transaction commits, only the
nodes whose WORKER_MODE serves the key run it, and its result (status, return value,
errors with their tracebacks, the workers that ran it) is read back through the Tasks
API from any process.

Django 6 has the Tasks framework (``django.tasks``); Django 5.2 gets it from the
``django-tasks`` backport. This module picks the one that matches the running Django
and re-exports its ``task``, ``Task``, ``TaskResult``, ``TaskResultStatus``,
``TaskContext``, ``TaskError`` and ``task_backends``, so apps import them from here and
work on both.

Why not ``django-tasks-rq`` (0.12): its workers need its own
rq ``Job`` class (``--job-class django_tasks_rq.Job``), which refuses every job that is
not a task, while a service key's queue carries both (``worker_mode.enqueue`` jobs and
tasks); it enqueues at once, not on commit; its ``get_result`` reads only django-rq's
``default`` connection, where keys have their own queues (and may have their own Redis);
and it needs the backport and rq-scheduler even on Django 6. Here a task is an ordinary
rq job that calls :func:`execute`, which any rq worker runs: worker_mode's
``DjangoWorker`` and ``DjangoForkWorker`` (pacing, database hygiene) need no flag.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import django
from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from redis import RedisError
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result

from .conf import conf
from .coverage import warn_if_uncovered
from .exceptions import UnknownServiceKey
from .queues import get_connection, get_queue, server_of
from .registry import services

if django.VERSION >= (6, 0):
    from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import (
        InvalidTask,
        InvalidTaskBackend,
        TaskResultDoesNotExist,
        TaskResultMismatch,
    )
    from django.tasks.signals import task_enqueued, task_finished, task_started
else:  # the django-tasks backport: the same API, two exceptions under older names
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
    from django_tasks.signals import task_enqueued, task_finished, task_started

__all__ = [
    "InvalidTask",
    "InvalidTaskBackend",
    "RQBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultMismatch",
    "TaskResultStatus",
    "UnknownTaskQueue",
    "task",
    "task_backends",
]

logger = logging.getLogger(__name__)

#: How long a finished task's result stays readable, unless the backend's OPTIONS say otherwise.
DEFAULT_RESULT_TTL = 86_400

#: The rq job function every task runs through (its dotted path marks a job as a task).
EXECUTE = f"{__name__}.execute"

# What a task's rq job keeps in its meta, besides rq's own fields.
_BACKEND = "task_backend"
_RUN_AFTER = "task_run_after"
_WORKERS = "task_worker_ids"
_ERRORS = "task_exception_classes"
_PROCESS = "task_process"  # [node name, pid namespace, pid] of the process running it

_STATUSES = {
    JobStatus.CREATED: TaskResultStatus.READY,
    JobStatus.QUEUED: TaskResultStatus.READY,
    JobStatus.DEFERRED: TaskResultStatus.READY,
    JobStatus.SCHEDULED: TaskResultStatus.READY,
    JobStatus.STARTED: TaskResultStatus.RUNNING,
    JobStatus.FINISHED: TaskResultStatus.SUCCESSFUL,
    JobStatus.FAILED: TaskResultStatus.FAILED,
    JobStatus.STOPPED: TaskResultStatus.FAILED,
    JobStatus.CANCELED: TaskResultStatus.FAILED,
}


class UnknownTaskQueue(UnknownServiceKey, InvalidTask):
    """A task's ``queue_name`` is not a registered service key (an ``InvalidTask`` to the Tasks API)."""


#: Every task validated by a worker_mode backend in this process, by (module path, queue name):
#: what ``worker_mode.E020`` checks. The Tasks framework keeps no registry of its own.
_defined: dict[tuple[str, str], Any] = {}


def defined_tasks() -> list[Any]:
    """The tasks defined with a worker_mode backend in the modules imported so far."""
    return list(_defined.values())


def _unknown_queue(task_obj: Any, keys: tuple[str, ...]) -> UnknownTaskQueue:
    return UnknownTaskQueue(
        task_obj.queue_name, keys, source=f"the queue_name of task {task_obj.module_path}"
    )


class RQBackend(BaseTaskBackend):
    """Runs tasks on the RQ queue of the service key named by their ``queue_name``.

    ``QUEUES`` (optional) limits the backend to some service keys; by default it takes
    every registered key. ``OPTIONS``: ``RESULT_TTL``, the seconds a finished task's
    result stays readable (default a day; failures stay as long as rq keeps failed
    jobs, a year).
    """

    supports_defer = True  # run_after: rq's scheduler, on a node started with --with-scheduler
    supports_async_task = True
    supports_get_result = True
    # One FIFO queue per service key: work that must go first gets a key (and processes) of its own.
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        # None is "not set", for QUEUES and OPTIONS alike, as the checks (E020, E021) read them.
        params = {**params, "QUEUES": params.get("QUEUES") or (), "OPTIONS": params.get("OPTIONS") or {}}
        super().__init__(alias, params)
        # Without QUEUES, the keys registered when asked (apps register theirs in ready()).
        self.queues = set(params["QUEUES"])
        self.options = params["OPTIONS"]

    @property
    def result_ttl(self) -> int:
        return self.options.get("RESULT_TTL", DEFAULT_RESULT_TTL)

    def service_keys(self) -> tuple[str, ...]:
        """The service keys this backend's tasks may name (QUEUES, else every registered key)."""
        registered = services.keys()
        return tuple(key for key in registered if key in self.queues) if self.queues else registered

    def validate_task(self, task: Any) -> None:
        """Django's checks, then: the queue name is a registered service key (once the apps are ready;
        a task defined while they load, before the keys are registered, is checked by E020)."""
        if apps.ready and task.queue_name not in self.service_keys():
            raise _unknown_queue(task, self.service_keys())
        if not apps.ready and self.queues and task.queue_name not in self.queues:
            raise _unknown_queue(task, sorted(self.queues))
        super().validate_task(task)  # (its own QUEUES test passes: the key was found in them above)
        _defined[(task.module_path, task.queue_name)] = task

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Put the task on its service key's queue when the transaction on the default database commits.

        Outside a transaction it is sent at once, and a Redis error reaches the caller.
        Inside one, a Redis error at commit time is logged and the task is lost (the
        transaction has committed; ``get_result`` then raises ``TaskResultDoesNotExist``):
        work that must survive a Redis outage belongs in a ``ClaimedWork`` row.
        """
        self.validate_task(task)
        # Workers find the task by its function's dotted path; refuse here what they could not run.
        if _task_at(task.module_path).func is not task.func:
            raise InvalidTask(f"{task.module_path} is another task than the one enqueued.")
        result = TaskResult(
            task=task,
            id=uuid.uuid4().hex,
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,  # made JSON-shaped by TaskResult: what the worker gets is what the result shows
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        meta = {_BACKEND: self.alias, _RUN_AFTER: task.run_after.isoformat() if task.run_after else None}

        def send() -> None:
            queue = get_queue(task.queue_name)
            job = queue.create_job(
                EXECUTE,
                args=(task.module_path, result.args, result.kwargs),
                job_id=result.id,
                result_ttl=self.result_ttl,
                description=f"task {task.module_path}",
                meta=meta,
                status=JobStatus.SCHEDULED if task.run_after else JobStatus.QUEUED,
            )
            if task.run_after is None:
                job = queue.enqueue_job(job)
            else:
                job = queue.schedule_job(job, task.run_after)
            object.__setattr__(result, "enqueued_at", _aware(job.enqueued_at) or timezone.now())
            task_enqueued.send(type(self), task_result=result)
            warn_if_uncovered(task.queue_name)  # as worker_mode.enqueue: no task waits unnoticed
            if task.run_after is not None:
                _warn_if_unscheduled(queue)

        def send_at_commit() -> None:
            try:
                send()
            except RedisError:
                logger.exception(
                    "Could not enqueue task %s (%s) on %s: Redis is unavailable",
                    result.id,
                    task.module_path,
                    task.queue_name,
                )

        if transaction.get_connection(DEFAULT_DB_ALIAS).in_atomic_block:
            transaction.on_commit(send_at_commit)
        else:
            send()
        return result

    def get_result(self, result_id: str) -> Any:
        """The task's result, read from Redis (any process, any node); raises
        ``TaskResultDoesNotExist`` for an id that was never sent, or whose result expired."""
        unreachable: RedisError | None = None
        for key in _one_key_per_server(self.service_keys()):
            try:
                job = Job.fetch(result_id, connection=get_connection(key))
            except NoSuchJobError:
                continue
            except RedisError as exc:
                # Another key's Redis may hold it: "does not exist" only if none was down.
                unreachable = exc
                continue
            # A job of another backend is no result of this one, as in Django's database backend.
            if job.func_name == EXECUTE and job.meta.get(_BACKEND) == self.alias:
                return task_result(job)
        if unreachable is not None:
            raise unreachable
        raise TaskResultDoesNotExist(result_id)


def _warn_if_unscheduled(queue: Any) -> None:
    """A deferred task waits for rq's scheduler, which runs only with --with-scheduler: say so
    when no node holds the key's scheduler lock (an rq scheduler renews it while it runs)."""
    from rq.scheduler import RQScheduler

    try:
        if queue.connection.exists(RQScheduler.get_locking_key(queue.name)):
            return
    except RedisError:
        return
    logger.warning(
        "No rq scheduler runs for %s: tasks with run_after wait until a node serving it runs "
        "runnode or runworkers with --with-scheduler",
        queue.name,
    )


def _one_key_per_server(keys: tuple[str, ...]) -> Iterator[str]:
    seen = set()
    for key in keys:
        server = server_of(key)
        if server not in seen:
            seen.add(server)
            yield key


def _aware(moment: datetime | None) -> datetime | None:
    """rq 2's times (aware, UTC) as Django's settings want them."""
    if moment is None or settings.USE_TZ:
        return moment
    return timezone.make_naive(moment)


def _task_at(path: str) -> Any:
    """The task defined at ``path``: an rq job's data names a task, never any other callable."""
    try:
        found = import_string(path)
    except ImportError as exc:
        raise InvalidTask(
            f"No task at {path}: a task must be a module-level function decorated with @task "
            f"and kept under its own name ({exc})."
        ) from exc
    if not isinstance(found, Task):
        raise InvalidTask(
            f"{path} is not a task: a task must be a module-level function decorated with @task "
            "and kept under its own name."
        )
    return found


def task_result(job: Job, status: Any = None) -> Any:
    """The TaskResult of a task's rq job (``status``: the one to report instead of rq's)."""
    task_path, args, kwargs = job.args
    meta = job.meta
    run_after = meta.get(_RUN_AFTER)
    task_obj = _task_at(task_path).using(
        queue_name=job.origin,
        backend=meta.get(_BACKEND),
        run_after=datetime.fromisoformat(run_after) if run_after else None,
    )
    if status is None:
        status = _STATUSES.get(job.get_status(refresh=False), TaskResultStatus.READY)
    results = list(reversed(job.results()))  # oldest first
    classes = list(meta.get(_ERRORS, []))
    errors = [
        TaskError(
            exception_class_path=classes.pop(0) if classes else "builtins.Exception",
            traceback=r.exc_string or "",
        )
        for r in results
        if r.type == Result.Type.FAILED
    ]
    if status == TaskResultStatus.FAILED and not errors:  # stopped or canceled: no exception was raised
        errors.append(
            TaskError(exception_class_path="builtins.Exception", traceback=f"rq job {job.get_status()}")
        )
    finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
    result = TaskResult(
        task=task_obj,
        id=job.id,
        status=status,
        enqueued_at=_aware(job.enqueued_at),
        started_at=_aware(job.started_at),
        finished_at=_aware(job.ended_at) if finished else None,
        last_attempted_at=_aware(job.started_at),
        args=args,
        kwargs=kwargs,
        backend=meta.get(_BACKEND),
        errors=errors,
        worker_ids=list(meta.get(_WORKERS, [])),
    )
    if status == TaskResultStatus.SUCCESSFUL and results and results[-1].type == Result.Type.SUCCESSFUL:
        object.__setattr__(result, "_return_value", results[-1].return_value)
    return result


def _json(value: Any) -> Any:
    """``value`` as JSON would give it back: what any Tasks backend returns."""
    return json.loads(json.dumps(value))


def execute(task_path: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """The rq job of every task: call the task, keep who ran it and what it raised.

    A plain function, so any rq worker runs tasks without a job class of its own.
    """
    job = get_current_job()
    assert job is not None, "execute() runs as an rq job"
    job.meta.setdefault(_WORKERS, []).append(job.worker_name or "")
    from .claims import process_namespace  # (it imports models: not while apps load)

    job.meta[_PROCESS] = [conf.WORKER_MODE_NODE_NAME, process_namespace(), os.getpid()]
    job.save_meta()
    sender = None
    try:
        # Inside the try: a path that names no task (or a module this worker cannot import)
        # fails the task with its own exception class, as a task that raises does.
        running = task_result(job, TaskResultStatus.RUNNING)
        defined = running.task
        sender = type(defined.get_backend())
        task_started.send(sender, task_result=running)
        if defined.takes_context:
            value = defined.call(TaskContext(task_result=running), *args, **kwargs)
        else:
            value = defined.call(*args, **kwargs)
        value = _json(value)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: rq fails the job for them
        job.meta.setdefault(_ERRORS, []).append(f"{type(exc).__module__}.{type(exc).__qualname__}")
        job.save_meta()
        if sender is not None:
            failed = task_result(job, TaskResultStatus.FAILED)
            failed.errors.append(
                TaskError(exception_class_path=job.meta[_ERRORS][-1], traceback=traceback.format_exc())
            )
            task_finished.send(sender, task_result=failed)
        raise
    done = task_result(job, TaskResultStatus.SUCCESSFUL)
    object.__setattr__(done, "_return_value", value)
    task_finished.send(sender, task_result=done)
    return value


def fail_abandoned(key: str) -> list[str]:
    """Fail the running tasks of ``key`` whose process on this node is gone; their ids.

    A worker process killed mid-task (SIGKILL, out of memory) leaves its task started in rq's
    registry until its heartbeat lapses, which for ``DjangoWorker`` is the job's timeout plus
    60 s, and rq's maintenance looks only every 10 minutes. The supervisor's replacement of
    the killed worker calls this as it starts: a task whose recorded process, on this node and
    in this pid namespace, no longer exists goes through rq's own abandoned-job path (failure
    callback, failed registry) at once. Processes elsewhere are not judged here.
    """
    from .claims import _pid_alive, process_namespace

    queue = get_queue(key)
    registry = StartedJobRegistry(queue=queue)
    here = [conf.WORKER_MODE_NODE_NAME, process_namespace()]
    gone: dict[bytes, Job] = {}  # registry entry ("<job id>:<execution id>") -> its job
    for entry in queue.connection.zrange(registry.key, 0, -1):
        try:
            job = Job.fetch(registry.parse_job_id(entry).split(":", 1)[0], connection=queue.connection)
        except NoSuchJobError:
            continue
        owner = job.meta.get(_PROCESS)
        if job.func_name == EXECUTE and owner and list(owner[:2]) == here and not _pid_alive(owner[2]):
            gone[entry] = job
    if gone:
        # Their heartbeats lapse now: rq's cleanup fails them as abandoned (and any entry that had).
        queue.connection.zadd(registry.key, dict.fromkeys(gone, 1), xx=True)
        registry.cleanup()
        for job in gone.values():
            logger.warning(
                "Task %s (%s, pid %s) on %s failed: its worker process on this node is gone",
                job.id, job.args[0], job.meta[_PROCESS][2], key,
            )  # fmt: skip
    return [job.id for job in gone.values()]
