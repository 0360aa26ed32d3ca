"""The headline number: does background work slow down the request nodes, and does pacing help?

On this 2-CPU machine, nodes are simulated by pinning processes to CPUs (``taskset``):
the request node (WORKER_MODE '!') on CPU 0; the worker node (workflow:process and
async-task:process), a private PostgreSQL and a private redis-server on CPU 1 — the
database is shared by every node, as in a cluster. The load is on an authenticated JSON API
view (``GET /api/tasks``: token check, a write of the token's last use, a paginated query),
from CPU 1 at real-time priority (so it measures rather than queues), in two kinds:

- closed loop: ``wrk`` keeps ``--connections`` connections busy (each sends when the last answer
  came: a slow server slows the load, and waiting hides);
- open loop: requests at a constant rate (``--rate``, default half of the idle closed-loop
  throughput), each on its own connection, latency counted from the moment it was due to be
  sent (so a server that falls behind shows it).

Phases of one run (each loaded phase with a fresh backlog: a ``--rows`` import plus
``--executions`` workflow executions, condition -> calculation -> update record):

1. idle: no background work (closed, then open loop);
2. no request load: the backlog's throughput unpaced and paced (pacing must cost nothing
   when nobody waits);
3. split: the worker node processes the backlog, pacing off (``WORKER_MODE_PACING_BUDGET=0``);
4. split with pacing: the same, at the default budget (or ``--budget``); 4b. the same with
   ``WORKER_MODE_PACING_ASYNC_COMMIT`` for both services (background commits under pressure do
   not wait for the WAL flush);
5. closed-loop curve: split with pacing at each of ``--budgets``;
6. all-in-one, for comparison: the backlog processed by one node with an empty WORKER_MODE
   (requests and every service, pacing off) on CPU 0, sharing the request node's CPU;
7. idle again (before 6): no background work after the loaded phases (the database's own
   after-work: autovacuum, a checkpoint's writes).

Each phase starts after ``VACUUM ANALYZE``, ``CHECKPOINT`` and ``sync`` (the last phase's
writes are not flushed during the next one's measurement).

Printed per phase: requests/s, p50/p99 latency, backlog done during the window; then p99 over
idle and background throughput over the unpaced split phase.

    .venv/bin/python bench/isolation.py [--rows 1000000] [--executions 5000] [--duration 15]
        [--connections 4] [--open-duration 60] [--rate R] [--budget B] [--budgets 0.1,0.25,1]
        [--phases idle,noload,split,paced,relaxed,curve,allinone]

Needs root (a private PostgreSQL is started as the ``postgres`` user) and Debian's
``wrk`` (``make bench-isolation`` installs it). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


class Postgres:
    """A private PostgreSQL 15 cluster on CPU 1 (run as the postgres user)."""

    def __init__(self, tmp: Path, cpus: str, extra: str = "") -> None:
        self.dir = tmp / "pg"
        self.port = free_port()
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres")
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres"])
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50 {extra}"
        self._as_postgres(
            ["taskset", "-c", cpus, str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-o", options, "-w", "start"]
        )
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, args: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "stop"])


class Node:
    def __init__(self, cpu: int, worker_mode: str, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, str(ROOT / "manage.py"), "runnode", *args],
            env={**env, "WORKER_MODE": worker_mode},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        # Twice: the second SIGTERM makes the shutdown cold (a running import is cut short).
        for _ in range(2):
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                time.sleep(0.5)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def bench_workflow():
    """The benchmark's workflow (manual): condition -> calculation -> update the product of
    ``$context.data.sku`` (also used by bench/lab.py)."""
    from workflows.models import Node as WorkflowNode
    from workflows.models import Workflow

    workflow = Workflow.objects.create(key="bench", title="bench", enabled=True, trigger_type="manual")
    WorkflowNode.objects.bulk_create(
        [
            WorkflowNode(workflow=workflow, key="enough", type="condition",
                         config={"expression": "{{ $context.data.quantity }} > 0"}),
            WorkflowNode(workflow=workflow, key="left", type="calculation", upstream="enough", branch="true",
                         config={"expression": "1000000000 - {{ $context.data.quantity }}"}),
            WorkflowNode(workflow=workflow, key="save", type="update", upstream="left",
                         config={"collection": "catalog.Product",
                                 "filter": {"sku": "{{ $context.data.sku }}"},
                                 "values": {"quantity": "{{ $jobs.left }}"}}),
        ]
    )  # fmt: skip
    return workflow


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(7)
    with path.open("w") as out:
        out.write("sku,name,price,quantity,active,created\n")
        for i in range(rows):
            price = rng.randint(0, 99999) / 100
            out.write(f"I{i:08d},item {i},{price:.2f},{rng.randint(0, 500)},true,2024-03-0{1 + i % 9}\n")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, token: str, duration: int, connections: int) -> dict[str, float]:
    output = subprocess.run(
        ["chrt", "-f", "50", "taskset", "-c", "1", "wrk", "-t", "1", "-c", str(connections),
         "-d", f"{duration}s", "--latency", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    figures = {}
    for label in ("50%", "99%"):
        value, unit = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        figures[label] = float(value) * _UNITS[unit]
    figures["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    figures["non2xx"] = int(bad.group(1)) if bad else 0
    figures["socket_errors"] = errors.group(1) if errors else ""
    return figures


def open_loop(url: str, token: str, duration: int, rate: float) -> dict[str, float]:
    """bench/openloop.py on CPU 1 at real-time priority: p50/p99 from each request's due time."""
    output = subprocess.run(
        ["chrt", "-f", "50", "taskset", "-c", "1", sys.executable, str(ROOT / "bench" / "openloop.py"), url,
         "--rate", f"{rate:.1f}", "--duration", str(duration), "--header", f"Authorization: Bearer {token}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    figures = json.loads(output)
    return {"50%": figures["p50"], "99%": figures["p99"], "rps": figures["rate"], "non2xx": figures["errors"],
            "socket_errors": ", ".join(figures["error_kinds"])}  # fmt: skip


PHASES = ("idle", "noload", "split", "paced", "relaxed", "curve", "allinone")
RELAXED = "workflow:process,async-task:process"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--executions", type=int, default=5000)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per measurement")
    parser.add_argument("--connections", type=int, default=4, help="wrk's connections (closed loop)")
    parser.add_argument("--open-duration", type=int, default=60, help="seconds per open-loop measurement")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open-loop requests/s (default: half the idle closed loop's)"
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="WORKER_MODE_PACING_BUDGET when paced (default: the app's)"
    )
    parser.add_argument("--budgets", default="0.1,0.25,1",
                        help="budgets of the closed-loop curve (comma-separated)")  # fmt: skip
    parser.add_argument("--phases", default=",".join(PHASES), help=f"a subset of {','.join(PHASES)}")
    parser.add_argument(
        "--db-cpus", default="1", help="CPUs of PostgreSQL (taskset list; default: the workers' CPU)"
    )
    parser.add_argument("--path", default="/api/tasks", help="the page to load (e.g. /healthz: no database)")
    args = parser.parse_args()
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := set(args.phases) - set(PHASES):
        raise SystemExit(f"--phases: unknown {', '.join(sorted(unknown))}; phases: {', '.join(PHASES)}")
    try:
        args.budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        raise SystemExit("--budgets: numbers, e.g. 0.1,0.25,1") from None
    if os.cpu_count() < 2 or not shutil.which("wrk") or os.geteuid() != 0:
        raise SystemExit("needs 2 CPUs, wrk (apt-get install wrk) and root")
    os.sched_setaffinity(0, {1})  # this process prepares backlogs: keep it off the request node's CPU
    with site("bench-isolation-", args.db_cpus) as (tmp, _pg, env, nodes):
        run(args, env, tmp, nodes)


@contextlib.contextmanager
def site(prefix: str, db_cpus: str = "1", pg_options: str = "") -> Iterator[tuple]:
    """A private PostgreSQL (on ``db_cpus``) and Redis (on CPU 1), the site's environment pointing at
    them (also set in this process), migrated; yields (tmp, pg, env, nodes), and stops the nodes
    appended to ``nodes``, Redis and PostgreSQL at the end."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(tmp, "postgres")
    pg = Postgres(tmp, db_cpus, pg_options)
    redis_port = free_port()
    redis = subprocess.Popen(
        ["taskset", "-c", "1", shutil.which("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(redis_port)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WORKER_MODE")},
        "DJANGO_SETTINGS_MODULE": "nocobase_site.settings",
        "DATABASE_URL": pg.url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "VAR_DIR": str(tmp / "var"),
        "ASYNC_TASKS_DIR": str(tmp / "tasks"),
        "LOG_LEVEL": "WARNING",
        "GUNICORN_ACCESS_LOG": "",
        "WEB_CONCURRENCY": "2",
        "WORKER_MODE_SERVICE_PROCESSES": "workflow:process=1",
        "WORKER_MODE_PROCESSES": "1",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    nodes: list[Node] = []
    try:
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, check=True)
        yield tmp, pg, env, nodes
    finally:
        for node in nodes:
            node.stop()
        redis.terminate()
        redis.wait(10)
        from django.db import connections

        connections.close_all()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_user(token_name: str):  # noqa: ANN201
    """A superuser with an API token (returned with it), and 20 export tasks for GET /api/tasks to list."""
    from django.contrib.auth.models import User

    from api_tokens.models import ApiToken
    from async_tasks.models import AsyncTask

    user = User.objects.create_superuser("bench", "bench@example.com", "pw-bench-12345")
    _, token = ApiToken.issue(user, token_name)
    for _ in range(20):
        AsyncTask.objects.create(
            kind="export", model="catalog.Product", format="csv", owner=user, status="succeeded"
        )
    return user, token


def queue_backlog(user, workflow, upload: Path | None, executions: int) -> None:  # noqa: ANN001
    """Queue a phase's heavy work on a fresh catalog: the import of ``upload`` (if any) and
    ``executions`` executions of ``workflow`` (bench_workflow), then settle()."""
    from decimal import Decimal

    from django.db import connection

    from async_tasks import tasks
    from async_tasks.models import AsyncTask
    from catalog.models import Product
    from worker_mode.queues import get_connection
    from workflows import triggers
    from workflows.models import Execution

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE catalog_product RESTART IDENTITY CASCADE")
    Execution.objects.all().delete()
    AsyncTask.objects.filter(kind="import").delete()
    for key in ("workflow:process", "async-task:process"):
        get_connection(key).delete(f"rq:queue:{key}")
    Product.objects.bulk_create(
        Product(sku=f"W-{i:04d}", name="w", price=Decimal(1), quantity=10**9) for i in range(1000)
    )
    if upload is not None:
        with upload.open("rb") as handle:
            tasks.create_import(user, "catalog.Product", handle, name="import.csv")
    for i in range(executions):
        triggers.trigger_manually(workflow, {"quantity": i % 7 + 1, "sku": f"W-{i % 1000:04d}"})
    settle()


def settle() -> None:
    """Every phase starts from a clean checkpoint: the writes of the last phase (and of queuing the
    backlog) are flushed now, not by the checkpointer during the next measurement."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("CHECKPOINT")
    os.sync()  # and the files written meanwhile (the uploads): no writeback during the window


def backlog_done() -> tuple[int, int]:
    """Import rows done and executions resolved so far."""
    from async_tasks.models import AsyncTask
    from workflows.models import Execution

    task = AsyncTask.objects.filter(kind="import").first()
    return (task.done if task else 0), Execution.objects.filter(status="resolved").count()


def run(args: argparse.Namespace, env: dict[str, str], tmp: Path, nodes: list[Node]) -> None:
    sys.path.insert(0, str(ROOT))
    import logging

    import django

    django.setup()
    logging.getLogger("worker_mode.coverage").setLevel(
        logging.ERROR
    )  # backlogs are queued before workers start
    from worker_mode import pacing
    from worker_mode.conf import conf

    default_budget = conf.WORKER_MODE_PACING_BUDGET if args.budget is None else args.budget
    user, token = bench_user("isolation")
    workflow = bench_workflow()
    upload = tmp / "import.csv"
    write_csv(upload, args.rows)
    web_port = free_port()
    url = f"http://127.0.0.1:{web_port}{args.path}"

    def backlog() -> None:
        """Queue the heavy work: one import of --rows rows and --executions executions."""
        queue_backlog(user, workflow, upload, args.executions)

    def show(label: str, figures: dict) -> dict:
        errors = f", non-2xx {figures['non2xx']}" if figures.get("non2xx") else ""
        errors += f", socket errors {figures['socket_errors']}" if figures.get("socket_errors") else ""
        load = ""
        if "99%" in figures:
            load = (
                f"{figures['rps']:5.0f} req/s  p50 {figures['50%']:6.1f} ms  p99 {figures['99%']:6.1f} ms  "
            )
        pace = f"; pace {figures['pace']}" if figures.get("pace") else ""
        done = f"{figures['rows']:,} rows, {figures['executions']:,} executions" if "rows" in figures else "-"
        print(f"{label:<44} {load}backlog done: {done}{errors}{pace}", flush=True)
        return figures

    def paces() -> str:
        try:
            services = pacing.report()["services"]
        except Exception:  # noqa: BLE001 (a figure for the reader, not the run)
            return ""
        return ", ".join(f"{key} {row['pace']:.0%}" for key, row in sorted(services.items()))

    def measure(label: str, load: str) -> dict:
        before = backlog_done()
        if load == "closed":
            figures = wrk(url, token, args.duration, args.connections)
        elif load == "open":
            figures = open_loop(url, token, args.open_duration, rate)
        else:
            time.sleep(args.duration)
            figures = {}
        figures["pace"] = paces()
        after = backlog_done()
        figures["rows"], figures["executions"] = after[0] - before[0], after[1] - before[1]
        return show(label, figures)

    def start_workers(
        worker_mode: str, budget: float, cpu: int = 1, port: int | None = None, relaxed: bool = False
    ) -> Node:
        node_env = {**env, "WORKER_MODE_PACING_BUDGET": str(budget)}
        if relaxed:
            node_env["WORKER_MODE_PACING_ASYNC_COMMIT"] = RELAXED
        node = Node(cpu, worker_mode, node_env, "--bind", f"127.0.0.1:{port or free_port()}")
        nodes.append(node)
        return node

    def stop(node: Node) -> None:
        node.stop()
        nodes.remove(node)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
        f"Django {django.get_version()}; PostgreSQL 15 (CPUs {args.db_cpus}) and Redis private"
    )
    print(
        f"page: GET {args.path} (token auth); closed loop: wrk, {args.connections} connections, "
        f"{args.duration} s; open loop {args.open_duration} s; backlog: import of {args.rows:,} rows + "
        f"{args.executions:,} workflow executions; pacing budget {default_budget} (curve: "
        f"{', '.join(map(str, args.budgets))})"
    )

    # The request node runs through every split phase (pacing on: it publishes its pressure).
    web = Node(0, "!", {**env, "WORKER_MODE_PACING_BUDGET": str(default_budget or 0.5)},
               "--bind", f"127.0.0.1:{web_port}")  # fmt: skip
    nodes.append(web)
    wait_port(web_port)
    time.sleep(2)
    wrk(url, token, 3, args.connections)  # warm-up (and the idle baselines it teaches)
    results: dict[str, dict] = {}
    idle_closed = measure("1. idle, closed loop", "closed")
    rate = args.rate or round(idle_closed["rps"] / 2, 1)
    print(f"   open-loop rate: {rate} requests/s (half the idle closed-loop throughput unless --rate)")
    results["idle"] = {"closed": idle_closed, "open": measure("1. idle, open loop", "open")}

    def phase(label: str, budget: float, loads: tuple[str, ...], relaxed: bool = False) -> dict[str, dict]:
        backlog()
        workers = start_workers("workflow:process,async-task:process", budget, relaxed=relaxed)
        time.sleep(4)  # workers started and busy
        out = {load: measure(f"{label}, {load}" + (" loop" if load != "none" else " (no requests)"), load)
               for load in loads}  # fmt: skip
        stop(workers)
        return out

    if "noload" in args.phases:
        results["noload"] = phase("2. no request load, unpaced", 0, ("none",))
        results["noload_paced"] = phase(
            f"2. no request load, paced {default_budget}", default_budget, ("none",)
        )
    if "split" in args.phases:
        results["split"] = phase("3. split, unpaced", 0, ("open", "closed"))
    if "paced" in args.phases:
        results["paced"] = phase(f"4. split, paced {default_budget}", default_budget, ("open", "closed"))
    if "relaxed" in args.phases:
        label = f"4b. split, paced {default_budget}, async commit"
        results["relaxed"] = phase(label, default_budget, ("open", "closed"), relaxed=True)
    curve: list[tuple[float, dict]] = []
    if "curve" in args.phases:
        for budget in args.budgets:
            curve.append((budget, phase(f"5. split, paced {budget}", budget, ("closed",))["closed"]))
    if len(results) > 1:  # the request node alone again: what the database's own after-work costs
        settle()
        time.sleep(2)
        results["after"] = {load: measure(f"7. idle again, {load} loop", load) for load in ("open", "closed")}
    if "allinone" in args.phases:
        stop(web)
        backlog()
        allinone = start_workers("", 0, cpu=0, port=web_port)
        wait_port(web_port)
        time.sleep(4)
        results["allinone"] = {
            load: measure(f"6. all-in-one (CPU 0, unpaced), {load} loop", load) for load in ("open", "closed")
        }
        stop(allinone)

    print()

    def ratio(phase_name: str, load: str) -> str:
        return f"{results[phase_name][load]['99%'] / results['idle'][load]['99%']:.2f}x"

    def kept(figures: dict, reference: dict) -> str:
        rows = figures["rows"] / max(reference["rows"], 1)
        executions = figures["executions"] / max(reference["executions"], 1)
        return f"rows {rows:.0%}, executions {executions:.0%}"

    for load in ("open", "closed"):
        line = [f"p99 / idle, {load} loop:"]
        for name in ("split", "paced", "relaxed", "allinone", "after"):
            if name in results:
                line.append(f"{name} {ratio(name, load)}")
        print("  ".join(line) + ("   (goal with pacing: <= 1.25x)" if "paced" in results else ""))
    for name in ("paced", "relaxed"):
        if "split" in results and name in results:
            for load in ("open", "closed"):
                share = kept(results[name][load], results["split"][load])
                print(f"background kept, {name}, {load} loop: {share} of unpaced (goal >= 60%)")
    if "noload" in results:
        share = kept(results["noload_paced"]["none"], results["noload"]["none"])
        print(f"background kept with pacing, no requests: {share} of unpaced (goal >= 95%)")
    if curve and "split" in results:
        print("closed-loop curve (budget: p99 / idle, background kept of unpaced):")
        reference = results["split"]["closed"]
        for budget, figures in curve:
            print(f"  {budget:>6}: {figures['99%'] / results['idle']['closed']['99%']:.2f}x  "
                  f"{kept(figures, reference)}")  # fmt: skip


if __name__ == "__main__":
    main()
