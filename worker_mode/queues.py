"""One RQ queue per service key, and enqueueing on transaction commit.

The site sets ``RQ_QUEUES = ServiceQueues()``: a lazy mapping with one queue per
registered key, on the key's Redis (``WORKER_MODE_REDIS_URLS``, else ``REDIS_URL``),
so django-rq's admin views and commands see exactly the services' queues.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from django.db import transaction
from redis import Redis, RedisError
from rq import Queue
from rq.job import JobStatus

from .conf import conf
from .registry import services

logger = logging.getLogger(__name__)


class ServiceQueues(Mapping[str, dict[str, Any]]):
    """A live ``RQ_QUEUES``: one entry per registered service key, on the key's own Redis in
    ``WORKER_MODE_REDIS_URLS`` or else on ``REDIS_URL``.

    Computed on every access, so keys registered after this object was made,
    and ``override_settings(REDIS_URL=...)``, are seen.
    """

    def _build(self) -> dict[str, dict[str, Any]]:
        queues: dict[str, dict[str, Any]] = {}
        own = conf.WORKER_MODE_REDIS_URLS
        own = own if isinstance(own, dict) else {}
        for service in services:
            config: dict[str, Any] = {"URL": own.get(service.key) or conf.REDIS_URL}
            if service.default_timeout is not None:
                config["DEFAULT_TIMEOUT"] = service.default_timeout
            queues[service.queue_name] = config
        return queues

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self._build()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return f"ServiceQueues({self._build()!r})"


_connections: dict[tuple[Any, ...], Redis] = {}


def _forget_connections() -> None:
    # A connection inherited through fork() shares its socket with the parent.
    _connections.clear()


os.register_at_fork(after_in_child=_forget_connections)


def server_of(key: str) -> tuple[Any, ...]:
    """What identifies the Redis server (and database) of ``key``'s queue: keys with equal values
    share a connection, and may share a worker process."""
    from django_rq.connection_utils import filter_connection_params
    from django_rq.settings import QUEUES

    config = QUEUES[services.get(key).queue_name]
    return tuple(sorted((k, repr(v)) for k, v in filter_connection_params(config).items()))


def get_connection(key: str) -> Redis:
    """The Redis connection of ``key``'s queue, shared per process and per settings."""
    from django_rq.connection_utils import get_redis_connection
    from django_rq.settings import QUEUES

    cache_key = server_of(key)
    connection = _connections.get(cache_key)
    if connection is None:
        connection = _connections[cache_key] = get_redis_connection(QUEUES[services.get(key).queue_name])
    return connection


def get_queue(key: str) -> Queue:
    """The RQ queue of the registered service ``key`` (enqueues immediately)."""
    import django_rq

    service = services.get(key)
    return django_rq.get_queue(service.queue_name, connection=get_connection(key), commit_mode="auto")


def enqueue(
    key: str, func: Callable[..., Any] | str, *args: Any, using: str | None = None, **kwargs: Any
) -> str:
    """Enqueue ``func(*args, **kwargs)`` on ``key``'s queue when the transaction commits.

    Outside a transaction the job is enqueued at once. Returns the job id
    (chosen up front, so it is known before the commit). If Redis is down at
    commit time the error is logged and swallowed: the database row the job
    refers to is the truth, and the owning app's recovery re-enqueues it.
    Pass rq options (``job_timeout``, ``result_ttl``, ...) as keywords.
    """
    services.get(key)  # an unknown key fails now, in the caller, not after the commit
    job_id = kwargs.pop("job_id", None) or uuid.uuid4().hex

    def send() -> None:
        try:
            get_queue(key).enqueue(func, *args, job_id=job_id, **kwargs)
        except RedisError:
            logger.exception("Could not enqueue job %s on %s: Redis is unavailable", job_id, key)
            return
        from .coverage import warn_if_uncovered

        warn_if_uncovered(key)

    transaction.on_commit(send, using=using)
    return job_id


#: rq job states in which a message will still reach a worker.
_ALIVE_STATES = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED})


def lost_jobs(key: str, job_ids: list[str], *, stale_after: float | None = None) -> set[str]:
    """The ids among ``job_ids`` whose message will never reach a worker of ``key``.

    A job is lost when Redis no longer has it (flushed, restarted empty, the enqueue
    failed) or it ended (failed, stopped, canceled) while the database row it refers
    to still waits. With ``stale_after``, a job rq still calls *started* for longer
    than that is lost too: the rows asked about are queued, so whoever started the job
    never claimed the row (its worker died first). Recovery re-enqueues these rows.
    """
    import datetime

    from rq.job import Job

    if not job_ids:
        return set()
    jobs = Job.fetch_many(job_ids, connection=get_connection(key))
    stale_before = (
        None
        if stale_after is None
        else datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=stale_after)
    )
    lost = set()
    for job_id, job in zip(job_ids, jobs, strict=True):
        status = None if job is None else job.get_status(refresh=False)
        if status not in _ALIVE_STATES:
            lost.add(job_id)
        elif status == JobStatus.STARTED and stale_before is not None:
            started = job.started_at
            if started is not None and started.replace(tzinfo=started.tzinfo or datetime.UTC) < stale_before:
                lost.add(job_id)
    return lost


def requeue_lost(
    key: str,
    waiting: Any,
    dispatch: Callable[[Any], Any],
    *,
    batch: int = 500,
    stale_after: float | None = None,
) -> int:
    """Enqueue again, with ``dispatch(row)``, every row of ``waiting`` whose message is lost.

    ``waiting`` is a queryset of queued rows with a ``job_id``. It is paged through by
    primary key in ``batch``-sized pages, so a long backlog whose messages are fine
    never hides lost ones behind it. Returns how many.
    """
    requeued, last_pk = 0, None
    waiting = waiting.order_by("pk")
    while True:
        page = list((waiting if last_pk is None else waiting.filter(pk__gt=last_pk))[:batch])
        if not page:
            return requeued
        last_pk = page[-1].pk
        lost = lost_jobs(key, [row.job_id for row in page], stale_after=stale_after)
        if not lost:
            continue
        # The page was read before Redis was asked: a row a worker claimed (and maybe finished)
        # meanwhile looks lost but is not waiting any more. Read those rows again.
        still = set(
            waiting.filter(pk__in=[row.pk for row in page if row.job_id in lost]).values_list("pk", flat=True)
        )
        for row in page:
            if row.job_id in lost and row.pk in still:
                dispatch(row)
                requeued += 1
