"""``runnode``: start what this node's WORKER_MODE asks for, as child processes.

gunicorn runs on every non-transient node: on nodes that do not serve
requests with one worker, so probes reach /healthz and /readyz and everything
else gets the middleware's 503. ``runworkers`` runs when the node serves any
background service. The launcher forwards SIGTERM/SIGINT (a second one makes
the shutdown cold) and SIGHUP (gunicorn reload), and when a child exits on its
own it stops the others and exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from . import presence
from .conf import conf
from .mode import WorkerMode
from .node import current_mode, served_keys
from .signals import node_starting
from .startup import validate
from .workers import _set_parent_death_signal

logger = logging.getLogger(__name__)

#: Extra seconds, beyond the workers' grace, before the launcher kills a child that will not stop.
_STOP_MARGIN = 15.0


@dataclass(frozen=True)
class Child:
    name: str
    argv: list[str]


def _manage_py() -> list[str]:
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main and Path(main).name == "manage.py":
        return [sys.executable, str(Path(main).resolve())]
    return [sys.executable, "-m", "django"]


def _wsgi_target() -> str:
    module, _, attribute = settings.WSGI_APPLICATION.rpartition(".")
    return f"{module}:{attribute}"


def plan_children(
    mode: WorkerMode,
    *,
    bind: str | None = None,
    http_workers: int | None = None,
    processes: int | None = None,
    with_scheduler: bool = False,
    verbosity: int = 1,
) -> list[Child]:
    """The processes this node runs, without starting them."""
    if mode.transient:
        return []
    gunicorn = [sys.executable, "-m", "gunicorn"]
    if conf.WORKER_MODE_GUNICORN_CONFIG:
        gunicorn += ["--config", conf.WORKER_MODE_GUNICORN_CONFIG]
    if bind:
        gunicorn += ["--bind", bind]
    if not mode.serves_requests:
        gunicorn += ["--workers", "1"]  # only probes and 503s to answer
    elif http_workers:
        gunicorn += ["--workers", str(http_workers)]
    main = _manage_py()
    if len(main) == 2:
        gunicorn += ["--chdir", str(Path(main[1]).parent)]
    children = [Child("gunicorn", [*gunicorn, _wsgi_target()])]
    if served_keys(mode):
        workers = [*main, "runworkers", f"--verbosity={verbosity}"]
        if processes is not None:
            workers.append(f"--processes={processes}")
        if with_scheduler:
            workers.append("--with-scheduler")
        children.append(Child("workers", workers))
    return children


def _child_setup() -> None:
    _set_parent_death_signal(signal.SIGTERM)


class Launcher:
    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_requests = 0
        self._forwarded = 0
        self._hangups = 0
        self._stop_started: float | None = None
        self._killed = False
        self.exit_code = 0

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stop_requests += 1

    def _on_hangup(self, signum: int, frame: Any) -> None:
        self._hangups += 1

    def _send(self, name: str, sig: int) -> None:
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    def _forward(self) -> None:
        while self._forwarded < self.stop_requests:
            self._forwarded += 1
            cold = self._forwarded > 1
            logger.info("%s shutdown of %s", "Cold" if cold else "Warm", ", ".join(self.processes))
            # gunicorn: SIGTERM is graceful, SIGINT quick; runworkers: a second SIGTERM is cold.
            self._send("gunicorn", signal.SIGINT if cold else signal.SIGTERM)
            self._send("workers", signal.SIGTERM)
            if self._stop_started is None:
                self._stop_started = time.monotonic()
        while self._hangups:
            self._hangups -= 1
            self._send("gunicorn", signal.SIGHUP)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        for child in self.children:
            logger.info("Starting %s: %s", child.name, " ".join(child.argv))
            # Own process group: Ctrl-C reaches the launcher, which stops children in order.
            self.processes[child.name] = subprocess.Popen(
                child.argv, process_group=0, preexec_fn=_child_setup
            )
        while any(p.poll() is None for p in self.processes.values()):
            self._forward()
            for name, process in self.processes.items():
                code = process.poll()
                if code is not None and not self.stop_requests:
                    logger.error("%s exited with %s; stopping the node", name, code)
                    self.exit_code = code or 1
                    self.stop_requests = 1
            deadline = (self._stop_started or 0) + conf.WORKER_MODE_SHUTDOWN_GRACE + _STOP_MARGIN
            if self._stop_started is not None and not self._killed and time.monotonic() > deadline:
                self._killed = True
                for name, process in self.processes.items():
                    if process.poll() is None:
                        logger.error("%s did not stop in time; killing it", name)
                        self._send(name, signal.SIGKILL)
            time.sleep(0.1)
        return self.exit_code


def run(
    *,
    bind: str | None = None,
    http_workers: int | None = None,
    processes: int | None = None,
    with_scheduler: bool = False,
    verbosity: int = 1,
) -> int:
    validate()
    mode = current_mode()
    # Refusals (e.g. the site's "no public bind with a known SECRET_KEY") before any child starts.
    node_starting.send(sender=None, bind=bind, mode=mode)
    children = plan_children(
        mode,
        bind=bind,
        http_workers=http_workers,
        processes=processes,
        with_scheduler=with_scheduler,
        verbosity=verbosity,
    )
    logger.info(
        "Node %s (pid %s): WORKER_MODE=%r serves %s",
        conf.WORKER_MODE_NODE_NAME,
        os.getpid(),
        mode.raw,
        mode.describe(),
    )
    if not children:
        logger.info("WORKER_MODE '-' is transient: this node starts nothing.")
        return 0
    heartbeat = presence.announce("node", processes=len(children), services=list(served_keys(mode)))
    try:
        return Launcher(children).run()
    finally:
        heartbeat.stop()
