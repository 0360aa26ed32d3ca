"""Faults on real processes, timed: how long until everything is final (or running) again, and what ran twice.

On PostgreSQL (a database ``nocobase_bench_faults`` created and dropped by the run) and a
private redis-server this run can kill and restart, with the default claim and recovery
settings (WORKER_MODE_LEASE 30 s, WORKER_MODE_RECOVERY_INTERVAL 5 s, WORKER_MODE_QUEUED_GRACE
10 s, WORKFLOWS_RECOVERY "retry", ASYNC_TASKS_RECOVERY "fail"). A node is lost the way a pod or
a machine is: every process of it is stopped at once (SIGSTOP), then killed (SIGKILL), and the
replacement has a new NODE_NAME.

1. Redis restarted empty with 1,000 queued executions: time from the worker node's start
   until all are resolved; executions that ran more than once.
2. Redis down for 10 s while a request node takes triggers over HTTP (20/s): answers by
   status, then time from Redis's return until every execution is resolved.
3. A whole workflow node lost with executions running (an HTTP call of 2 s, then an order
   created per execution): time from the loss until the last affected execution runs again
   on the replacement, and until it is resolved; orders created twice.
4. A whole import node lost mid-import: time from the loss until the task is final.
5. An in-process import (``manage.py importrecords`` on node "shell") killed: time from the
   kill until a worker node has the task final.
6. SIGTERM to a worker node running an execution, three more queued: time to exit, and
   what became of the four.

At the end: rows of either kind left running without a live owner (must be 0).

    .venv/bin/python bench/faults.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "nocobase_bench_faults"

from tests.conftest import RedisServer, free_port, lose_node  # noqa: E402 (what the tests use)


def wait(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"not done within {timeout} s: {predicate.__doc__ or predicate}")


class Node:
    def __init__(self, env: dict[str, str], worker_mode: str, name: str, *args: str) -> None:
        self.log = open(env["VAR_DIR"] + f"/{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env={**env, "WORKER_MODE": worker_mode, "NODE_NAME": name},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


class SlowHook(BaseHTTPRequestHandler):
    delay = 2.0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        try:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        except BrokenPipeError:
            pass  # the node that called was lost: that is the point

    def log_message(self, *args):
        pass


def main() -> None:
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    (tmp / "var").mkdir()
    redis = RedisServer(tmp)
    redis.start()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WORKER_MODE", "WORKFLOWS_", "ASYNC_TASKS_"))
        },
        "DJANGO_SETTINGS_MODULE": "nocobase_site.settings",
        "DATABASE_URL": urlunsplit(urlsplit(server)._replace(path=f"/{BENCH_DB}")),
        "REDIS_URL": redis.url,
        "VAR_DIR": str(tmp / "var"),
        "ASYNC_TASKS_DIR": str(tmp / "tasks"),
        "LOG_LEVEL": "INFO",
        "GUNICORN_ACCESS_LOG": "",
        "WEB_CONCURRENCY": "2",
        "WORKFLOWS_HTTP_ALLOWED_NETWORKS": "127.0.0.1",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.clear()
    os.environ.update(env)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowHook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, check=True)
        run(env, redis, f"http://127.0.0.1:{httpd.server_address[1]}/", tmp)
    finally:
        httpd.shutdown()
        if redis.process.poll() is None:
            redis.kill()
        from django.db import connections

        connections.close_all()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        shutil.rmtree(tmp, ignore_errors=True)


def run(env: dict[str, str], redis: RedisServer, hook_url: str, tmp: Path) -> None:
    import logging

    import django

    django.setup()
    logging.getLogger("worker_mode").setLevel(logging.ERROR)
    from django.contrib.auth.models import User
    from django.db.models import Count, Max

    from api_tokens.models import ApiToken
    from async_tasks import tasks
    from async_tasks.models import AsyncTask
    from catalog.models import Order, Product
    from worker_mode import claims
    from worker_mode.conf import conf
    from workflows import triggers
    from workflows.models import Execution, Workflow
    from workflows.models import Node as WorkflowNode

    def workflow(key: str, nodes: list[dict]) -> Workflow:
        flow = Workflow.objects.create(key=key, title=key, enabled=True, trigger_type="manual")
        WorkflowNode.objects.bulk_create(WorkflowNode(workflow=flow, **node) for node in nodes)
        return flow

    product = Product.objects.create(sku="BENCH", name="bench", price=1, quantity=1)
    calc = workflow(
        "calc", [{"key": "n", "type": "calculation", "config": {"expression": "{{ $context.data.n }} * 2"}}]
    )
    slow = workflow(
        "slow",
        [
            {"key": "hook", "type": "http", "config": {"url": hook_url, "body": {}, "timeout": 10}},
            {
                "key": "order",
                "type": "create",
                "upstream": "hook",
                "config": {
                    "collection": "catalog.Order",
                    "values": {"product": product.pk, "quantity": 1, "customer": "e{{ $system.execution }}"},
                },
            },
        ],
    )
    user = User.objects.create_superuser("bench", "bench@example.com", "pw-bench-12345")
    _, token = ApiToken.issue(user, "faults")
    print(
        f"machine: {os.uname().machine}, {os.cpu_count()} CPUs; PostgreSQL, private redis-server; "
        f"WORKER_MODE_LEASE {conf.WORKER_MODE_LEASE:.0f} s, WORKER_MODE_RECOVERY_INTERVAL "
        f"{conf.WORKER_MODE_RECOVERY_INTERVAL:.0f} s (defaults)"
    )

    def orders_twice() -> int:
        return (
            Order.objects.filter(customer__startswith="e")
            .values("customer")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .count()
        )

    # 1. Redis restarted empty with 1,000 queued executions
    for n in range(1000):
        triggers.trigger_manually(calc, {"n": n})
    redis.kill()
    redis.start()
    started = time.monotonic()
    node = Node(env, "workflow:process", "flows", "runworkers", "--processes", "2")
    rows = Execution.objects.filter(workflow=calc)

    def all_resolved():
        """all 1,000 resolved"""
        return rows.filter(status="resolved").count() == 1000

    wait(all_resolved, 180, 0.5)
    print(
        "1. Redis restarted empty, 1,000 queued executions: all resolved "
        f"{time.monotonic() - started:.1f} s after "
        f"the worker node started; attempts at most {rows.aggregate(m=Max('attempts'))['m']} (none ran twice)"
    )

    # 2. Redis down for 10 s while the request node takes triggers
    port = free_port()
    web = Node(env, "!", "web", "runnode", "--bind", f"127.0.0.1:{port}")
    wait(lambda: _status(f"http://127.0.0.1:{port}/healthz") == 200, 30)
    answers: dict[int, int] = {}
    before = rows.count()

    def trigger() -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/workflows/calc/trigger", data=b'{"n": 1}', method="POST"
        )
        request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    redis.kill()
    down_until = time.monotonic() + 10
    while time.monotonic() < down_until:
        code = trigger()
        answers[code] = answers.get(code, 0) + 1
        time.sleep(0.05)
    redis.start()
    back = time.monotonic()
    total = before + sum(answers.values())

    def caught_up():
        """every execution resolved"""
        return rows.filter(status="resolved").count() == total

    wait(caught_up, 180, 0.5)
    print(
        f"2. Redis down 10 s: {sum(answers.values())} triggers through the request node answered "
        f"{json.dumps(answers)}; all resolved {time.monotonic() - back:.1f} s after Redis came back"
    )
    web.stop()
    node.stop()

    # 3. A whole workflow node lost with executions running
    lost = Node(
        env, "workflow:process", "wf-1", "runnode", "--bind", f"127.0.0.1:{free_port()}", "--processes", "2"
    )
    time.sleep(3)
    batch = [triggers.trigger_manually(slow, {}) for _ in range(10)]
    ids = [e.pk for e in batch]
    wait(lambda: Execution.objects.filter(pk__in=ids, status="running").count() == 2, 30, 0.02)
    affected = list(Execution.objects.filter(pk__in=ids, status="running").values_list("pk", flat=True))
    lose_node(lost)
    lost_at = time.monotonic()
    replacement = Node(env, "workflow:process", "wf-2", "runworkers", "--processes", "2")
    moved = Execution.objects.filter(pk__in=affected)

    def affected_running_again():
        """the lost node's executions running again on the replacement (or final)"""
        again = moved.filter(status="running", node_name="wf-2").count()
        return again + moved.filter(status__in=Execution.FINISHED).count() == len(affected)

    wait(affected_running_again, 120, 0.05)
    running_again = time.monotonic() - lost_at
    wait(lambda: moved.filter(status="resolved").count() == len(affected), 120, 0.05)
    affected_final = time.monotonic() - lost_at
    attempts = sorted(moved.values_list("attempts", flat=True))
    wait(lambda: Execution.objects.filter(pk__in=ids, status="resolved").count() == len(ids), 180, 0.2)
    print(
        f"3. Whole workflow node lost (all its processes SIGSTOP, then SIGKILL) with {len(affected)} "
        f"executions running: running again on the replacement {running_again:.1f} s after the loss, "
        f"resolved {affected_final:.1f} s after it (attempts {attempts}); "
        f"all {len(ids)} resolved; orders created twice: {orders_twice()}"
    )
    replacement.stop()

    # 4. A whole import node lost mid-import
    lines = "".join(f"K{i:07d},k,1.00,1,true,2024-01-01\n" for i in range(300_000))
    path = Path(env["VAR_DIR"]) / "import.csv"
    path.write_text("sku,name,price,quantity,active,created\n" + lines)
    with path.open("rb") as handle:
        task = tasks.create_import(user, "catalog.Product", handle, name="import.csv")
    importer = Node(env, "async-task:process", "tasks-1", "runworkers")
    wait(lambda: AsyncTask.objects.get(pk=task.pk).done >= 20_000, 60, 0.05)
    lose_node(importer)
    lost_at = time.monotonic()
    done = AsyncTask.objects.get(pk=task.pk).done
    survivor = Node(env, "async-task:process", "tasks-2", "runworkers")
    wait(lambda: AsyncTask.objects.get(pk=task.pk).status in AsyncTask.FINISHED, 120, 0.05)
    took = time.monotonic() - lost_at
    task.refresh_from_db()
    print(
        f"4. Whole import node lost at {done:,} of 300,000 rows: {task.status} {took:.1f} s after the loss "
        f"({task.error!r}); the {Product.objects.filter(sku__startswith='K').count():,} rows committed "
        f"with their progress stay"
    )

    # 5. An in-process import killed, with the worker node of (4) still serving async-task:process
    lines = "".join(f"S{i:07d},s,1.00,1,true,2024-01-01\n" for i in range(300_000))
    path.write_text("sku,name,price,quantity,active,created\n" + lines)
    log = open(Path(env["VAR_DIR"]) / "shell.log", "ab")  # noqa: SIM115
    command = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "importrecords", "catalog.Product", str(path), "-v", "0"],
        env={**env, "NODE_NAME": "shell"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    inline = wait(
        lambda: AsyncTask.objects.filter(worker__startswith="shell.inline.", done__gte=20_000).first(),
        60,
        0.05,
    )
    command.kill()
    command.wait(10)
    log.close()
    killed_at = time.monotonic()
    wait(lambda: AsyncTask.objects.get(pk=inline.pk).status in AsyncTask.FINISHED, 120, 0.05)
    took = time.monotonic() - killed_at
    inline.refresh_from_db()
    print(
        f"5. In-process import (importrecords on node 'shell') killed at {inline.done:,} rows: "
        f"{inline.status} {took:.1f} s after the kill ({inline.error!r})"
    )
    survivor.stop()

    # 6. SIGTERM to a worker node with one running and three queued executions
    node = Node(env, "workflow:process", "deploy", "runworkers")
    time.sleep(3)
    batch = [triggers.trigger_manually(slow, {}) for _ in range(4)]
    ids = [e.pk for e in batch]
    wait(lambda: Execution.objects.filter(pk__in=ids, status="running").exists(), 30)
    signaled = time.monotonic()
    os.killpg(node.process.pid, signal.SIGTERM)
    node.process.wait(60)
    took = time.monotonic() - signaled
    statuses = sorted(Execution.objects.filter(pk__in=ids).values_list("status", flat=True))
    print(
        f"6. SIGTERM with one execution running, three queued: the node exited after {took:.1f} s; {statuses}"
    )
    node.stop()

    orphans = sum(model._base_manager.filter(status="running").count() for model in claims.work_models())
    print(
        f"Rows left running without a live owner: {orphans}; orders created twice overall: {orders_twice()}"
    )


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError):
        return 0


if __name__ == "__main__":
    main()
