"""``runnode``: start what this node's WORKER_MODE asks for, under one supervisor.

gunicorn runs on every non-transient node: on nodes that do not serve
requests with one worker, so probes reach /healthz and /readyz and everything
else gets the middleware's 503. When the node serves any background service,
the periodic process and the worker groups run beside it, in the same
supervisor as ``runworkers`` uses (:mod:`worker_mode.supervisor`): SIGTERM/SIGINT
stop everything warm (a second one makes it cold), SIGHUP reloads gunicorn,
and when gunicorn exits on its own or a worker crash-loops the node stops and
exits non-zero.
"""

from __future__ import annotations

import logging
import os
import runpy
import signal
import sys
from pathlib import Path

from django.conf import settings

from . import presence
from .conf import conf
from .mode import WorkerMode
from .node import current_mode, served_keys
from .signals import node_starting
from .startup import validate
from .supervisor import Child, Supervisor, catch_stop_signals
from .workers import is_worker, node_children

logger = logging.getLogger(__name__)

#: gunicorn bounds its own warm stop (its ``graceful_timeout``); it is stopped cold only if it is
#: still running this long after that.
_GUNICORN_MARGIN = 5.0
#: gunicorn's own default ``graceful_timeout``.
_GUNICORN_GRACEFUL_TIMEOUT = 30.0


def _gunicorn_graceful_timeout() -> float:
    """The ``graceful_timeout`` gunicorn will use, read from its config file (gunicorn's default if
    the file does not set it, or cannot be read here: gunicorn itself will then say why)."""
    path = conf.WORKER_MODE_GUNICORN_CONFIG
    if not path:
        return _GUNICORN_GRACEFUL_TIMEOUT
    try:
        value = runpy.run_path(path).get("graceful_timeout", _GUNICORN_GRACEFUL_TIMEOUT)
        return float(value)
    except Exception:  # noqa: BLE001  (gunicorn reports a broken config when it starts)
        return _GUNICORN_GRACEFUL_TIMEOUT


def _project_dir() -> Path | None:
    """The directory of the manage.py that started this process, if one did (gunicorn's --chdir)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main and Path(main).name == "manage.py":
        return Path(main).resolve().parent
    return None


def _wsgi_target() -> str:
    module, _, attribute = settings.WSGI_APPLICATION.rpartition(".")
    return f"{module}:{attribute}"


def gunicorn_child(mode: WorkerMode, *, bind: str | None = None, http_workers: int | None = None) -> Child:
    argv = [sys.executable, "-m", "gunicorn"]
    if conf.WORKER_MODE_GUNICORN_CONFIG:
        argv += ["--config", conf.WORKER_MODE_GUNICORN_CONFIG]
    if bind:
        argv += ["--bind", bind]
    if not mode.serves_requests:
        argv += ["--workers", "1"]  # only probes and 503s to answer
    elif http_workers:
        argv += ["--workers", str(http_workers)]
    project = _project_dir()
    if project is not None:
        argv += ["--chdir", str(project)]
    return Child(
        "gunicorn",
        argv=(*argv, _wsgi_target()),
        warm_signal=signal.SIGTERM,  # gunicorn: graceful
        cold_signal=signal.SIGINT,  # gunicorn: quick
        hangup_signal=signal.SIGHUP,  # gunicorn: reload
        grace=_gunicorn_graceful_timeout() + _GUNICORN_MARGIN,
        on_exit="stop",
    )


def plan_children(
    mode: WorkerMode,
    *,
    bind: str | None = None,
    http_workers: int | None = None,
    processes: int | None = None,
    with_scheduler: bool = False,
    log_level: str = "INFO",
) -> list[Child]:
    """The processes this node runs, without starting them: gunicorn, then (on nodes serving
    background services) the periodic process and the worker processes."""
    if mode.transient:
        return []
    children = [gunicorn_child(mode, bind=bind, http_workers=http_workers)]
    keys = served_keys(mode)
    if keys:
        children += node_children(
            keys, processes=processes, with_scheduler=with_scheduler, log_level=log_level
        )
    return children


def run(
    *,
    bind: str | None = None,
    http_workers: int | None = None,
    processes: int | None = None,
    with_scheduler: bool = False,
    log_level: str = "INFO",
) -> int:
    catch_stop_signals()  # a stop during the checks below is not lost
    validate()
    mode = current_mode()
    # Refusals (e.g. the site's "no public bind with a known SECRET_KEY") before any child starts.
    node_starting.send(sender=None, bind=bind, mode=mode)
    logger.info(
        "Node %s (pid %s): WORKER_MODE=%r serves %s",
        conf.WORKER_MODE_NODE_NAME,
        os.getpid(),
        mode.raw,
        mode.describe(),
    )
    children = plan_children(
        mode,
        bind=bind,
        http_workers=http_workers,
        processes=processes,
        with_scheduler=with_scheduler,
        log_level=log_level,
    )
    if not children:
        logger.info("WORKER_MODE '-' is transient: this node starts nothing.")
        return 0
    keys = list(served_keys(mode))
    heartbeats = [presence.announce("node", processes=len(children), services=keys)]
    workers = sum(1 for child in children if is_worker(child))
    # Coverage counts a node for a key only once its workers run (after the first sweeps).
    later = presence.Heartbeat(presence.describe_process("workers", processes=workers, services=keys))

    def workers_started() -> None:
        if workers:
            heartbeats.append(later.start())

    try:
        return Supervisor(children, when_started=workers_started).run()
    finally:
        for heartbeat in heartbeats:
            heartbeat.stop()
