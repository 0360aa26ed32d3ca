"""System checks: a bad WORKER_MODE stops manage.py, runnode, runworkers and gunicorn.

Ids are stable and never reused; the README lists every one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .conf import conf
from .exceptions import InvalidWorkerMode, did_you_mean
from .registry import services

MIDDLEWARE_PATH = "worker_mode.middleware.WorkerModeMiddleware"

#: Middleware known never to answer a request before the view runs; anything
#: else above WorkerModeMiddleware could answer (redirect, serve a file, reply
#: from a cache) on a node that must answer 503.
PASSIVE_MIDDLEWARE = frozenset(
    {
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.auth.middleware.LoginRequiredMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.middleware.gzip.GZipMiddleware",
        "django.middleware.http.ConditionalGetMiddleware",
        "django.middleware.locale.LocaleMiddleware",
    }
)


def _is_whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _unless(ok: bool, msg: str, hint: str, id: str) -> list[CheckMessage]:
    """The error ``id`` with ``msg`` and ``hint``, unless the setting is ``ok``."""
    return [] if ok else [Error(msg, hint=hint, id=id)]


def _unknown_key(setting: str, key: str, id: str) -> Error:
    suggestion = did_you_mean(key, services.keys())
    return Error(
        f"{setting} names unknown service key {key!r}.",
        hint=(f"Did you mean {suggestion!r}? " if suggestion else "")
        + f"Registered keys: {', '.join(services.keys()) or 'none'}.",
        id=id,
    )


@register(Tags.compatibility)
def check_worker_mode(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E001: WORKER_MODE cannot be parsed. E002: it names a key no app registered."""
    try:
        mode = conf.worker_mode()
    except InvalidWorkerMode as exc:
        return [
            Error(
                f"WORKER_MODE {conf.WORKER_MODE!r} is invalid.",
                hint=str(exc),
                id="worker_mode.E001",
            )
        ]
    return [_unknown_key("WORKER_MODE", key, "worker_mode.E002") for key in mode.keys if key not in services]


@register(Tags.compatibility)
def check_queues(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E003: RQ_QUEUES is not set, or lacks the queue of a registered service. E016: a key's own Redis."""
    queues = getattr(settings, "RQ_QUEUES", None)
    if queues is None:
        return [
            Error(
                "RQ_QUEUES is not set.",
                hint="Set RQ_QUEUES = worker_mode.queues.ServiceQueues() in your settings (one queue per "
                "registered service key on REDIS_URL), or list every service's queue yourself.",
                id="worker_mode.E003",
            )
        ]
    return [
        *(
            Error(
                f"RQ_QUEUES has no queue for service {service.key!r}.",
                hint=f"Add {service.queue_name!r} to RQ_QUEUES, or use worker_mode.queues.ServiceQueues().",
                id="worker_mode.E003",
            )
            for service in services
            if service.queue_name not in queues
        ),
        *_redis_url_errors(conf.WORKER_MODE_REDIS_URLS),
    ]


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url_problem(url: Any) -> str | None:
    """Why ``url`` is no Redis URL a connection can be made from (redis-py's own parser), or None."""
    if not isinstance(url, str) or not url.startswith(_REDIS_SCHEMES):
        return "it is not a Redis URL"
    from urllib.parse import urlsplit

    from redis import ConnectionPool
    from redis.connection import parse_url

    try:
        parsed = parse_url(url)
        ConnectionPool.from_url(url).make_connection()  # builds it (options checked), connects nothing
    except (ValueError, TypeError) as exc:
        return str(exc)
    if url.startswith("unix://"):
        return None if parsed.get("path") else "it names no socket path"
    database = urlsplit(url).path.strip("/")
    if database and not database.isdigit():
        return f"its database {database!r} is not a number"
    return None if parsed.get("host") else "it names no host"


def _redis_url_errors(urls: Any) -> list[CheckMessage]:
    """E016: WORKER_MODE_REDIS_URLS is not a dict, names an unknown key, or holds no Redis URL."""
    if not isinstance(urls, dict):
        return [
            Error(
                "WORKER_MODE_REDIS_URLS must be a dict.",
                hint='For example {"async-task:process": "redis://redis-b:6379/0"}.',
                id="worker_mode.E016",
            )
        ]
    errors: list[CheckMessage] = []
    for key, url in urls.items():
        if key not in services:
            errors.append(_unknown_key("WORKER_MODE_REDIS_URLS", key, "worker_mode.E016"))
        problem = _redis_url_problem(url)
        errors += _unless(
            problem is None,
            f"WORKER_MODE_REDIS_URLS[{key!r}] is not a Redis URL: {url!r} ({problem}).",
            "Use redis://host:port/db, rediss://host:port/db (TLS) or unix:///path/to/redis.sock.",
            "worker_mode.E016",
        )
    return errors


@register(Tags.compatibility)
def check_process_settings(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E004-E006: worker process counts and the shutdown grace."""
    errors: list[CheckMessage] = []
    if not _is_whole(conf.WORKER_MODE_PROCESSES, 0):
        errors.append(
            Error(
                f"WORKER_MODE_PROCESSES must be a whole number >= 0, not {conf.WORKER_MODE_PROCESSES!r}.",
                hint="Set it to the size of the shared worker pool, e.g. 2.",
                id="worker_mode.E004",
            )
        )
    per_service = conf.WORKER_MODE_SERVICE_PROCESSES
    if not isinstance(per_service, dict):
        errors.append(
            Error(
                "WORKER_MODE_SERVICE_PROCESSES must be a dict.",
                hint='For example {"workflow:process": 2}.',
                id="worker_mode.E005",
            )
        )
        per_service = {}
    for key, count in per_service.items():
        if key not in services:
            errors.append(_unknown_key("WORKER_MODE_SERVICE_PROCESSES", key, "worker_mode.E005"))
        elif not _is_whole(count, 1):
            errors.append(
                Error(
                    f"WORKER_MODE_SERVICE_PROCESSES[{key!r}] must be a whole number >= 1.",
                    hint="Leave the key out to use the shared pool instead.",
                    id="worker_mode.E005",
                )
            )
    grace = conf.WORKER_MODE_SHUTDOWN_GRACE
    errors += _unless(
        _is_seconds(grace, 0, math.inf),
        f"WORKER_MODE_SHUTDOWN_GRACE must be seconds >= 0, not {grace!r}.",
        "Keep it below your orchestrator's kill timeout (Kubernetes: 30 s).",
        "worker_mode.E006",
    )
    bad_paths = [p for p in conf.WORKER_MODE_EXEMPT_PATHS if not (isinstance(p, str) and p.startswith("/"))]
    errors += _unless(
        not bad_paths,
        f"WORKER_MODE_EXEMPT_PATHS entries must start with '/': {bad_paths!r}.",
        "Use URL paths such as '/healthz'; end one with '/' to exempt a prefix.",
        "worker_mode.E007",
    )
    return errors


@register(Tags.compatibility)
def check_worker_settings(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E013: the worker class. E014: the crash budget. E015: the workers' nice value."""
    errors: list[CheckMessage] = []
    name = conf.WORKER_MODE_WORKER_CLASS
    try:
        from rq.worker import BaseWorker  # of Worker and SimpleWorker alike (rq 2.x)

        worker_class = import_string(name) if isinstance(name, str) else None
        if not (isinstance(worker_class, type) and issubclass(worker_class, BaseWorker)):
            raise ImportError(f"{worker_class!r} is not an rq Worker class")
    except (ImportError, ValueError) as exc:
        errors.append(
            Error(
                f"WORKER_MODE_WORKER_CLASS {name!r} cannot be used: {exc}.",
                hint="A dotted path to a subclass of rq's Worker, e.g. worker_mode.workers.DjangoWorker.",
                id="worker_mode.E013",
            )
        )
    limit = conf.WORKER_MODE_RESTART_LIMIT
    errors += _unless(
        _is_whole(limit, 1),
        f"WORKER_MODE_RESTART_LIMIT must be a whole number >= 1, not {limit!r}.",
        "How many crashes within WORKER_MODE_RESTART_WINDOW fail the node (default 5).",
        "worker_mode.E014",
    )
    window = conf.WORKER_MODE_RESTART_WINDOW
    errors += _unless(
        _is_seconds(window, 0, math.inf) and window != 0,
        f"WORKER_MODE_RESTART_WINDOW must be seconds > 0, not {window!r}.",
        "The window in which WORKER_MODE_RESTART_LIMIT crashes fail the node (default 60).",
        "worker_mode.E014",
    )
    nice = conf.WORKER_MODE_WORKER_NICE
    errors += _unless(
        _is_whole(nice, -20) and nice <= 19,
        f"WORKER_MODE_WORKER_NICE must be a whole number from -20 to 19, not {nice!r}.",
        "0 keeps the workers at the node's priority; the default 10 lets requests go first.",
        "worker_mode.E015",
    )
    return errors


def _is_rate(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < math.inf


@register(Tags.compatibility)
def check_pacing(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E017: the pacing budget. E018: the pacing weights per service key. E019: relaxed commits."""
    budget = conf.WORKER_MODE_PACING_BUDGET
    errors = _unless(
        _is_rate(budget),
        f"WORKER_MODE_PACING_BUDGET must be a number >= 0, not {budget!r}.",
        "Seconds of database time per second the cluster's background work may spend while requests "
        "are under full pressure, e.g. 0.3; 0 turns pacing off.",
        "worker_mode.E017",
    )
    weights = conf.WORKER_MODE_PACING
    if not isinstance(weights, dict):
        return [
            *errors,
            Error(
                "WORKER_MODE_PACING must be a dict.",
                hint='For example {"async-task:process": 0.5, "workflow:process": 0} (0 opts a key out).',
                id="worker_mode.E018",
            ),
        ]
    for key, weight in weights.items():
        if key not in services:
            errors.append(_unknown_key("WORKER_MODE_PACING", key, "worker_mode.E018"))
        errors += _unless(
            _is_rate(weight),
            f"WORKER_MODE_PACING[{key!r}] must be a number >= 0, not {weight!r}.",
            "A weight: 1 is the default, 2 counts its database time half, 0 opts the key out of pacing.",
            "worker_mode.E018",
        )
    relaxed = conf.WORKER_MODE_PACING_ASYNC_COMMIT
    if not isinstance(relaxed, tuple) or not all(isinstance(key, str) for key in relaxed):
        errors.append(
            Error(
                "WORKER_MODE_PACING_ASYNC_COMMIT must be a list of service keys.",
                hint='For example ["workflow:process"]; empty (the default) keeps every commit durable.',
                id="worker_mode.E019",
            )
        )
    else:
        errors += [_unknown_key("WORKER_MODE_PACING_ASYNC_COMMIT", k, "worker_mode.E019") for k in relaxed
                   if k not in services]  # fmt: skip
    return errors


@register(Tags.compatibility)
def check_middleware(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """W001: the middleware is missing. W002: middleware above it may answer requests."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE_PATH not in middleware:
        return [
            Warning(
                "WorkerModeMiddleware is not in MIDDLEWARE.",
                hint=f"Add {MIDDLEWARE_PATH!r} first in MIDDLEWARE so worker-only nodes answer 503.",
                id="worker_mode.W001",
            )
        ]
    above = middleware[: middleware.index(MIDDLEWARE_PATH)]
    answering = [m for m in above if m not in PASSIVE_MIDDLEWARE]
    if not answering:
        return []
    return [
        Warning(
            f"WorkerModeMiddleware is below {answering[0].rsplit('.', 1)[-1]}.",
            hint=f"{', '.join(answering)} may answer requests itself; put {MIDDLEWARE_PATH!r} above it.",
            id="worker_mode.W002",
        )
    ]


#: Claim timings above a day are mistakes (and overflow PostgreSQL's millisecond settings).
_MAX_SECONDS = 86_400


def _is_seconds(value: Any, minimum: float, maximum: float = _MAX_SECONDS) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and minimum <= value <= maximum


@register(Tags.compatibility)
def check_claim_settings(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E008: the lease. E009: intervals and waits. E010: a claimed-work model. E011: its recovery settings."""
    from .claims import POLICIES, work_models
    from .models import ClaimedWork

    errors: list[CheckMessage] = []
    if not _is_seconds(conf.WORKER_MODE_LEASE, 3):
        errors.append(
            Error(
                f"WORKER_MODE_LEASE must be 3 to {_MAX_SECONDS} seconds, not {conf.WORKER_MODE_LEASE!r}.",
                hint="Owners renew every third of it; 30 (the default) suits most sites.",
                id="worker_mode.E008",
            )
        )
    for name in (
        "WORKER_MODE_RECOVERY_INTERVAL",
        "WORKER_MODE_REQUEUE_INTERVAL",
        "WORKER_MODE_QUEUED_GRACE",
        "WORKER_MODE_DATABASE_WAIT",
    ):
        value = getattr(conf, name)
        if not _is_seconds(value, 0) or value == 0:
            errors.append(
                Error(
                    f"{name} must be seconds > 0 and <= {_MAX_SECONDS}, not {value!r}.",
                    hint="For example 5.",
                    id="worker_mode.E009",
                )
            )
    for model in work_models():
        label = model._meta.label
        statuses = {choice for choice, _ in model._meta.get_field("status").choices or ()}
        needed = {ClaimedWork.QUEUED, ClaimedWork.RUNNING, model.abandoned_status, model.error_status}
        problem = ""
        if model.service_key not in services:
            problem = f"its service_key {model.service_key!r} is not a registered service"
        elif not isinstance(model.job_function, str) or "." not in model.job_function:
            problem = f"its job_function {model.job_function!r} is not a dotted path"
        elif not needed <= statuses:
            problem = f"its status choices lack {', '.join(sorted(needed - statuses))}"
        if problem:
            errors.append(
                Error(
                    f"Claimed-work model {label}: {problem}.",
                    hint="See worker_mode.models.ClaimedWork for what a subclass sets.",
                    id="worker_mode.E010",
                )
            )
        recovery, max_attempts = model.recovery_policy()
        recovery_name, attempts_name = model.recovery_settings()
        if recovery not in POLICIES:
            errors.append(
                Error(
                    f"{recovery_name} is {recovery!r}.",
                    hint=f"Use {' or '.join(repr(p) for p in POLICIES)} (what recovery does with {label}).",
                    id="worker_mode.E011",
                )
            )
        if not _is_whole(max_attempts, 1):
            errors.append(
                Error(
                    f"{attempts_name} must be a whole number >= 1, not {max_attempts!r}.",
                    hint="For example 3.",
                    id="worker_mode.E011",
                )
            )
    return errors


def _task_backends() -> list[tuple[str, dict[str, Any]]]:
    """The aliases and settings of the TASKS backends that are worker_mode's."""
    from .tasks import RQBackend

    found = []
    configured = getattr(settings, "TASKS", None)
    for alias, params in (configured if isinstance(configured, dict) else {}).items():
        try:
            backend_class = import_string(params["BACKEND"])
        except (ImportError, KeyError, TypeError, AttributeError):
            continue  # not ours to judge: the Tasks framework refuses it when it loads the backend
        if isinstance(backend_class, type) and issubclass(backend_class, RQBackend):
            found.append((alias, params))
    return found


@register(Tags.compatibility)
def check_tasks(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E020: a task's queue_name, or a worker_mode task backend's QUEUES, is not a registered key.
    E021: the backend's OPTIONS. E022: a task is not found at its function's dotted path (kept
    under another name, or a method), where workers look it up.

    Django's Tasks framework keeps no list of tasks, so this sees the tasks its backend
    validated when they were defined: those of every module imported by now, after it
    imports each installed app's ``tasks`` module. A task defined in a module imported
    later is checked when it is defined (``@task`` raises ``UnknownTaskQueue``, an
    ``InvalidTask``); one defined while the apps load, before the keys are registered,
    is only seen here. Silent without a Tasks framework (Django 5.2 without the backport).
    """
    try:
        from . import tasks
    except ImportError:
        return []
    from django.utils.module_loading import autodiscover_modules

    errors: list[CheckMessage] = []
    backends = _task_backends()
    for alias, params in backends:
        queues = params.get("QUEUES")
        if queues is not None and not (
            isinstance(queues, (list, tuple, set, frozenset)) and all(isinstance(q, str) for q in queues)
        ):
            errors.append(
                Error(
                    f"TASKS[{alias!r}]['QUEUES'] must be a list of service keys.",
                    hint=f"For example {list(services.keys())[:1]!r}; leave it out to allow every key.",
                    id="worker_mode.E020",
                )
            )
            continue
        errors += [
            _unknown_key(f"TASKS[{alias!r}]['QUEUES']", key, "worker_mode.E020")
            for key in queues or ()
            if key not in services
        ]
        ttl = (params.get("OPTIONS") or {}).get("RESULT_TTL", tasks.DEFAULT_RESULT_TTL)
        errors += _unless(
            _is_whole(ttl, 1),
            f"TASKS[{alias!r}]['OPTIONS']['RESULT_TTL'] must be seconds >= 1, not {ttl!r}.",
            f"How long a finished task's result stays readable; the default is {tasks.DEFAULT_RESULT_TTL}.",
            "worker_mode.E021",
        )
    if not backends:
        return errors
    autodiscover_modules("tasks")
    for task in tasks.defined_tasks():
        try:
            backend = task.get_backend()
        except tasks.InvalidTaskBackend:  # an alias no longer in TASKS: the framework's own check
            continue
        if not isinstance(backend, tasks.RQBackend):
            continue
        try:
            findable = tasks._task_at(task.module_path).func is task.func
        except tasks.InvalidTask:
            findable = False
        if not findable:  # enqueue() refuses it: say so before the first user does
            errors.append(
                Error(
                    f"Task {task.module_path} is not at its path: workers cannot run it.",
                    hint="Workers import a task by its function's path: make it a module-level function "
                    "decorated with @task, kept under its own name.",
                    id="worker_mode.E022",
                )
            )
        keys = backend.service_keys()
        if task.queue_name in keys:
            continue
        suggestion = did_you_mean(task.queue_name, keys)
        errors.append(
            Error(
                f"Task {task.module_path} names unknown service key {task.queue_name!r}."
                if task.queue_name not in services
                else f"Task {task.module_path}: {task.queue_name!r} is not in its backend's QUEUES.",
                hint=(f"Did you mean {suggestion!r}? " if suggestion else "")
                + f"Its backend {backend.alias!r} takes: {', '.join(keys) or 'none'}.",
                id="worker_mode.E020",
            )
        )
    return errors


#: Words of a token nobody replaced.
_PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "secret", "token", "example")


@register(Tags.security)
def check_metrics_token(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E012: WORKER_MODE_METRICS_TOKEN is set but anyone could guess it."""
    token = conf.WORKER_MODE_METRICS_TOKEN
    if not token:
        return []  # metrics for staff sessions only
    if len(token) >= 24 and not any(word in token.lower() for word in _PLACEHOLDERS):
        return []
    return [
        Error(
            "WORKER_MODE_METRICS_TOKEN is a placeholder or shorter than 24 characters.",
            hint="Generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            id="worker_mode.E012",
        )
    ]


def startup_errors() -> list[CheckMessage]:
    """The worker_mode errors that must stop a node from starting (used by gunicorn and wsgi)."""
    messages = [
        *check_worker_mode(),
        *check_queues(),
        *check_process_settings(),
        *check_claim_settings(),
        *check_tasks(),
        *check_metrics_token(),
    ]
    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", []))
    return [m for m in messages if m.is_serious() and m.id not in silenced]
