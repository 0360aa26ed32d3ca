from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import redis
from django.test import override_settings

from worker_mode.supervisor import process_tree

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def check_error_codes(messages) -> list[str]:
    return sorted(m.id for m in messages)


class RedisServer:
    """A private redis-server on a free loopback port that saves nothing: ``kill()`` is a crash,
    and ``start()`` again brings it back empty. (Also used by bench/faults.py.)"""

    def __init__(self, directory: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; `make test` installs it (scripts/ensure_redis.sh install)"
            )
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.directory is not None:
            argv += ["--dir", str(self.directory)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, timeout=10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Hook(BaseHTTPRequestHandler):
    """A webhook that holds the first ``hold`` calls until ``release`` is set, answers the rest at
    once; ``calls`` lists the callers' addresses. Serve it with ThreadingHTTPServer."""

    calls: list[str] = []
    hold = 0
    release = threading.Event()

    @classmethod
    def reset(cls) -> None:
        cls.calls, cls.hold, cls.release = [], 0, threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        Hook.calls.append(self.client_address[0])
        if len(Hook.calls) <= Hook.hold:
            Hook.release.wait(60)
        try:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        except OSError:
            pass  # the caller is gone (killed, cut off): that is the point

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port for the whole session."""
    server = RedisServer()
    try:
        server.start()
        yield server.url
    finally:
        server.kill()


@pytest.fixture(scope="session", autouse=True)
def _use_private_redis(redis_server: str, django_db_blocker) -> Iterator[None]:
    with override_settings(REDIS_URL=redis_server):
        yield


@pytest.fixture
def redis_conn(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, made once per session; each node test gets a copy (see ``site_env``)."""
    folder = tmp_path_factory.mktemp("migrated")
    path = folder / "template.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "WORKER_MODE"))}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        VAR_DIR=str(folder / "var"),
        DATABASE_URL=f"sqlite:///{path}",
        PYTHONPATH=str(ROOT),
    )
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=180,
    )
    return path


@pytest.fixture
def site_env(redis_server: str, tmp_path: Path, migrated_sqlite: Path) -> dict[str, str]:
    """Environment of a real node process: the private Redis, a migrated SQLite file of its own."""
    database = tmp_path / "node.sqlite3"
    shutil.copyfile(migrated_sqlite, database)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "WORKER_MODE"))}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        REDIS_URL=redis_server,
        VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{database}",
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="INFO",
        GUNICORN_ACCESS_LOG="",
        WEB_CONCURRENCY="2",
        WORKER_MODE_SHUTDOWN_GRACE="20",
    )
    return env


class Node:
    """A real ``manage.py`` process in its own process group, logging to a file."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, prefix: tuple[str, ...] = ()
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [*prefix, sys.executable, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process did not exit within {timeout} s; log:\n{self.log}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever is left of its group
        self.process.wait(timeout=10)
        self._log.close()


def signal_tree(node: Node, sig: int) -> list[int]:
    """Send ``sig`` to every process of ``node`` (its children have process groups of their own)."""
    pids = process_tree(node.process.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def lose_node(node: Node) -> list[int]:
    """Lose ``node`` as a pod or a machine is lost: every process stops at once, then all are killed.

    (Killing only the parent is a graceful stop: its children get a parent-death signal.)
    """
    pids = signal_tree(node, signal.SIGSTOP)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.process.wait(timeout=10)
    return pids


@pytest.fixture
def start_node(site_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(
        args: list[str], worker_mode: str | None = None, *, prefix: tuple[str, ...] = (), **extra_env: str
    ) -> Node:
        env = dict(site_env)
        if worker_mode is not None:
            env["WORKER_MODE"] = worker_mode
        env.update(extra_env)
        node = Node(args, env, tmp_path / f"node{len(nodes)}.log", prefix)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        signal_tree(node, signal.SIGCONT)  # a frozen node must be able to stop
        node.stop()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_http(url: str, node: Node, timeout: float = 20.0) -> None:
    def up() -> bool:
        if node.process.poll() is not None:
            raise AssertionError(f"node exited with {node.process.returncode}; log:\n{node.log}")
        try:
            http_get(url, timeout=1)
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_until(up, timeout=timeout, interval=0.1)


def shared_database_url() -> str:
    """The URL of this test's database, for node processes that must see its committed rows."""
    from django.db import connection

    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    user, password = settings["USER"], settings["PASSWORD"]
    return f"postgres://{user}:{password}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"


# -- workflows ---------------------------------------------------------------------------------


def build_workflow(nodes: list[dict], *, trigger_type: str = "manual", trigger_config=None, **fields):
    """An enabled workflow with ``nodes`` (dicts of key, type, config, upstream, branch), validated."""
    from workflows import graph
    from workflows.models import Node, Workflow

    fields.setdefault("key", f"wf-{Workflow.objects.count() + 1}")
    fields.setdefault("title", fields["key"])
    fields.setdefault("enabled", True)
    workflow = Workflow(trigger_type=trigger_type, trigger_config=trigger_config or {}, **fields)
    workflow.full_clean()
    workflow.save()
    made = []
    for spec in nodes:
        node = Node(workflow=workflow, **{"upstream": "", "branch": "", "config": {}, **spec})
        node.full_clean()
        made.append(node)
    problems = graph.check(made, sync=workflow.sync)
    assert not problems, problems
    Node.objects.bulk_create(made)
    return workflow


def drain(key: str = "workflow:process") -> None:
    """Run every job queued on ``key`` in this process, as a burst worker would."""
    from rq import SimpleWorker

    from worker_mode import get_queue
    from worker_mode.queues import get_connection

    SimpleWorker([get_queue(key)], connection=get_connection(key)).work(burst=True)


def is_postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


@pytest.fixture(autouse=True)
def _forget_workflow_caches():
    """Per-process caches of workflows would outlive the database flush between tests."""
    from workflows import engine, triggers

    triggers.forget_listeners()
    engine.forget_workflows()
    yield


# -- async tasks ----------------------------------------------------------------------------


@pytest.fixture
def task_storage(settings, tmp_path: Path) -> Path:
    """A private async_tasks storage in this test's temporary directory."""
    location = tmp_path / "task-files"
    settings.STORAGES = {
        **settings.STORAGES,
        "async_tasks": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    return location


def product_csv(rows: int, *, start: int = 0, delimiter: str = ",", encoding: str = "utf-8") -> bytes:
    """A products CSV with ``rows`` valid rows (skus P000000...)."""
    lines = [delimiter.join(["sku", "name", "price", "quantity", "active", "created"])]
    for i in range(start, start + rows):
        lines.append(
            delimiter.join([f"P{i:06d}", f"Product {i}", f"{i % 1000}.25", str(i % 50), "true", "2024-05-01"])
        )
    return ("\n".join(lines) + "\n").encode(encoding)


@pytest.fixture(autouse=True)
def _forget_cluster_cache():
    """The per-process cache of live nodes would outlive a test's Redis flush."""
    from worker_mode import coverage

    coverage.forget()
    yield
