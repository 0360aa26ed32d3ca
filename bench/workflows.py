"""Workflow execution throughput and enqueue-to-start latency, against plain django-rq.

On PostgreSQL and a private redis-server started for the run:

1. Throughput: N async executions of a 3-node workflow (condition ->
   calculation -> update record) are queued first, then ``runworkers --burst``
   with K processes drains them. Rate = N / (last finished - first started),
   from the executions' own timestamps, so process start-up is not counted.
2. The same for N no-op jobs (``os.getpid``) drained by django-rq's
   ``rqworker --burst`` (rq's default forking Worker: a work horse per job),
   K processes; rate from rq's job timestamps.
   Both run ``--rounds`` times, alternating, and the medians are printed.
3. Latency: with K ``runworkers`` processes idle and waiting, M executions
   are triggered one at a time, 20 ms apart; enqueue-to-start is the
   execution's claim time minus the moment just before it was triggered.

    .venv/bin/python bench/workflows.py [--executions 2000] [--processes 2] [--rounds 3] [--latency 300]

DATABASE_URL must point at a PostgreSQL server (default
postgres://postgres@127.0.0.1:5432/postgres); the run creates and drops its
own database ``nocobase_bench`` there.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from isolation import bench_workflow  # bench/isolation.py: the benchmarks' workflow

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "nocobase_bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def recreate_database(server_url: str) -> str:
    parts = urlsplit(server_url)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def drop_database(server_url: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def manage(*args: str, env: dict[str, str], wait: bool = True, worker_mode: str = "*") -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env={**env, "WORKER_MODE": worker_mode},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if wait else subprocess.DEVNULL,
    )
    if wait:
        _, err = process.communicate(timeout=900)
        if process.returncode != 0:
            raise SystemExit(f"manage.py {' '.join(args)} failed:\n{err.decode()}")
    return process


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=2000, help="executions (and no-op jobs) to drain")
    parser.add_argument("--processes", type=int, default=2, help="worker processes K on each side")
    parser.add_argument("--latency", type=int, default=300, help="executions triggered one by one")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both sides; medians")
    parser.add_argument(
        "--hot-row", action="store_true", help="every execution updates the same row (lock contention)"
    )
    args = parser.parse_args()

    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if not server.startswith("postgres"):
        raise SystemExit("DATABASE_URL must be a PostgreSQL URL for this benchmark")
    tmp = Path(tempfile.mkdtemp(prefix="bench-workflows-"))
    redis_process, redis_url = start_redis(tmp)
    database_url = recreate_database(server)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WORKER_MODE")},
        "DJANGO_SETTINGS_MODULE": "nocobase_site.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "VAR_DIR": str(tmp),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    try:
        manage("migrate", "--noinput", "-v0", env=env)
        run(args, env)
    finally:
        redis_process.terminate()
        redis_process.wait(10)
        from django.db import connections

        connections.close_all()
        drop_database(server)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, env: dict[str, str]) -> None:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import logging
    from decimal import Decimal

    # The run queues executions before it starts workers, on purpose: not an alarm here.
    logging.getLogger("worker_mode.coverage").setLevel(logging.ERROR)

    import django_rq
    from rq.job import Job as RQJob

    from catalog.models import Product
    from workflows import triggers
    from workflows.models import Execution

    # Each execution updates the record its context names, as a workflow on an order or a product
    # does; --hot-row makes them all update one row, which serializes on its lock.
    rows = 1 if args.hot_row else 1000
    Product.objects.bulk_create(
        Product(sku=f"BENCH-{i:04d}", name="bench", price=Decimal("1.00"), quantity=10**9)
        for i in range(rows)
    )
    workflow = bench_workflow()  # condition -> calculation -> update (bench/isolation.py)
    n, k = args.executions, args.processes

    def context(i: int) -> dict:
        return {"quantity": i % 7 + 1, "sku": f"BENCH-{i % rows:04d}"}

    def drain_ours() -> tuple[float, float]:
        """1. our engine: queue N, then drain with K runworkers processes."""
        Execution.objects.all().delete()
        t0 = time.perf_counter()
        for i in range(n):
            triggers.trigger_manually(workflow, context(i))
        trigger_rate = n / (time.perf_counter() - t0)
        manage("runworkers", "--burst", "--processes", str(k), env=env, worker_mode="workflow:process")
        rows = Execution.objects.filter(workflow=workflow)
        statuses = set(rows.values_list("status", flat=True))
        assert statuses == {"resolved"}, statuses
        first = min(rows.values_list("started_at", flat=True))
        last = max(rows.values_list("finished_at", flat=True))
        return trigger_rate, n / (last - first).total_seconds()

    def drain_plain() -> float:
        """2. plain django-rq: N no-op jobs, K forking rqworker processes."""
        queue = django_rq.get_queue("async-task:process")
        ids = [queue.enqueue("os.getpid", result_ttl=3600).id for _ in range(n)]
        workers = [manage("rqworker", "--burst", "async-task:process", env=env, wait=False) for _ in range(k)]
        for worker in workers:
            worker.wait(900)
        jobs = RQJob.fetch_many(ids, connection=queue.connection)
        assert all(job is not None and job.get_status() == "finished" for job in jobs)
        return n / (max(j.ended_at for j in jobs) - min(j.started_at for j in jobs)).total_seconds()

    # Rounds alternate the two sides, so a slow spell of a shared machine hits both alike.
    rounds = []
    for number in range(1, args.rounds + 1):
        trigger_rate, ours = drain_ours()
        plain = drain_plain()
        rounds.append((trigger_rate, ours, plain))
        print(
            f"round {number}: runworkers {ours:6.0f} executions/s, rqworker {plain:6.0f} jobs/s, "
            f"ratio {ours / plain:.2f}x",
            flush=True,
        )
    trigger_rate = statistics.median(r[0] for r in rounds)
    ours = statistics.median(r[1] for r in rounds)
    plain = statistics.median(r[2] for r in rounds)

    # 3. latency: K idle runworkers processes, executions triggered one at a time
    node = manage("runworkers", "--processes", str(k), env=env, wait=False, worker_mode="workflow:process")
    try:
        time.sleep(3)  # let the workers start and block on the queue
        latencies, sent = [], {}
        for i in range(args.latency):
            before = time.time()
            execution = triggers.trigger_manually(workflow, context(i))
            sent[execution.pk] = before
            time.sleep(0.02)
        deadline = time.time() + 60
        while Execution.objects.filter(pk__in=sent, status="queued").exists() and time.time() < deadline:
            time.sleep(0.1)
        for pk, started in Execution.objects.filter(pk__in=sent).values_list("pk", "started_at"):
            latencies.append((started.timestamp() - sent[pk]) * 1000)
    finally:
        node.terminate()
        node.wait(60)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, Django {django.get_version()}, PostgreSQL, private redis-server"
    )
    print(
        f"{n} executions of a 3-node workflow (condition, calculation, update record), {k} worker processes, "
        f"median of {len(rounds)} rounds; "
        + ("every execution updates the same row" if args.hot_row else "each updates its own record of 1,000")
    )
    print(f"trigger (create row + enqueue), in the benchmark process: {trigger_rate:8.0f} executions/s")
    print(
        f"runworkers (DjangoWorker, no fork per job):               {ours:8.0f} executions/s "
        f"= {ours / k:.0f} per process"
    )
    print(
        f"plain django-rq rqworker (forking), no-op job:           {plain:8.0f} jobs/s "
        f"= {plain / k:.0f} per process"
    )
    print(f"ratio, workflow executions / plain no-op jobs, per process: {ours / plain:.2f}x (goal >= 2x)")
    print(f"enqueue-to-start, {len(latencies)} executions one at a time, {k} idle workers: "
          f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
          f"max {max(latencies):.1f} ms (goal p50 < 10 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
