"""The cluster as hosts (lab/): scale-out, per-job costs, and isolation with the database on a host
of its own. Every figure comes from the lab's own counters: the cgroup CPU time of each host, the
bytes of each host's link, PostgreSQL's pg_stat_statements and Redis's INFO commandstats.

1. scale: workflow executions/s and import rows/s with 1, 2, 3 worker hosts, each capped at
   --worker-cpus (one worker process per host), db and Redis hosts at fixed caps. The backlog is
   queued first; the rate is measured between 10 % and 90 % of it done (node start-up not counted).
   Printed per run: rate, speed-up over one host, and what each host used of its cap in that
   window (the knee is where a fixed host, not the worker hosts, runs out).
2. costs: over the same window of the one-host runs, per execution and per imported row: SQL
   statements, Redis commands, bytes on the wire and CPU-ms, per role (worker, db, redis).
3. isolation: request p50/p99 on a database-backed page (GET /api/tasks with a token: a token
   check, a write of its last use, a paginated query) from wrk on this machine to the web host,
   idle, then while the worker hosts process a backlog (split: pacing off, then 2b: the same
   worker nodes at the default WORKER_MODE_PACING_BUDGET), then with one host doing both
   (WORKER_MODE '', capped at web + worker caps: all-in-one).

    .venv/bin/python bench/lab.py [--phases scale,isolation] [--worker-cpus 0.3] [--executions 1500]
        [--tasks 6] [--rows 20000] [--duration 15]

Needs root (the lab) and Debian's wrk (``make bench-lab`` installs it).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from isolation import bench_workflow, wrk  # noqa: E402  (bench/isolation.py: wrk on CPU 1 at real-time priority)

from lab import Host, Lab, why_unavailable  # noqa: E402
from lab.cluster import Cluster  # noqa: E402

#: Fixed hosts' CPU caps: the database, each Redis, the web host (isolation only).
FIXED = {"db": 0.6, "redis-a": 0.2, "redis-b": 0.2, "web": 1.0}
#: gunicorn workers of the request node (and of the all-in-one node). With one wrk connection one
#: request runs at a time: the web host (one CPU) is never held back by its quota, so what its p99
#: shows is the wait for the shared database, not CPU throttling.
WEB_WORKERS = "2"


def memory_mb(host: Host) -> float:
    """The proportional set size of every process of ``host`` (shared pages split between their
    sharers, so forked workers are not counted twice), in MB."""
    total = 0
    for pid in host.pids():
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += int(re.search(r"^Pss:\s+(\d+) kB", text, re.M).group(1))
    return total / 1024


def link_bytes(host: Host) -> int:
    stats = Path("/sys/class/net") / host.link / "statistics"
    return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())


class Counters:
    """Snapshots of everything counted, and the difference between two."""

    def __init__(self, cluster: Cluster, bench_role: str) -> None:
        self.cluster, self.bench_role = cluster, bench_role
        self.redis = {name: redis.Redis.from_url(server.url) for name, server in cluster.redis.items()}

    def snapshot(self) -> dict[str, float]:
        values: dict[str, float] = {"t": time.monotonic()}
        for name, host in self.cluster.lab.hosts.items():
            values[f"cpu:{name}"] = host.cgroup.cpu_seconds()
            values[f"bytes:{name}"] = link_bytes(host)
        with psycopg.connect(self.cluster.db.url) as conn:  # the bench's own queries are not counted
            values["sql"] = float(
                conn.execute(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                    "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname <> %s",
                    [self.bench_role],
                ).fetchone()[0]
            )
        for name, client in self.redis.items():
            stats = client.info("commandstats")
            values[f"redis:{name}"] = sum(v["calls"] for v in stats.values())
        return values


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0) for key in after}


class Bench:
    def __init__(self, args: argparse.Namespace, lab: Lab) -> None:
        self.args = args
        self.cluster = Cluster(
            lab,
            cpus=dict(FIXED),
            env={"WORKER_MODE_PROCESSES": "1", "ASYNC_TASKS_BATCH_SIZE": "1000", "LOG_LEVEL": "WARNING"},
            postgres_settings={
                "shared_preload_libraries": "pg_stat_statements",
                "pg_stat_statements.track": "all",
            },
        )
        self.cluster.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.cluster.sql("CREATE ROLE bench LOGIN SUPERUSER")
        self.bench_url = self.cluster.db.url.replace("postgres://postgres@", "postgres://bench@")
        self.counters = Counters(self.cluster, "bench")
        self._django()

    def _django(self) -> None:
        """This process talks to the cluster as the operator's machine does: Django over the lab network."""
        env = self.cluster.env(self.cluster.lab.hosts["web"])
        os.environ.update({k: v for k, v in env.items() if k not in ("PATH", "NODE_NAME")})
        os.environ["DATABASE_URL"] = self.bench_url
        os.environ["NODE_NAME"] = "bench"
        import logging

        import django

        django.setup()
        logging.getLogger("worker_mode.coverage").setLevel(logging.ERROR)  # backlogs wait for workers

    def sql1(self, query: str, *params) -> int:
        with psycopg.connect(self.bench_url) as conn:
            return int(conn.execute(query, params).fetchone()[0])

    # -- backlogs -----------------------------------------------------------------------------
    def queue_executions(self, count: int) -> None:
        from decimal import Decimal

        from catalog.models import Product
        from worker_mode import get_queue
        from workflows import triggers
        from workflows.models import Execution, Workflow

        get_queue("workflow:process").empty()  # no message of an earlier phase left to run
        Execution.objects.all().delete()
        Product.objects.filter(sku__startswith="W-").delete()
        Product.objects.bulk_create(
            Product(sku=f"W-{i:04d}", name="w", price=Decimal(1), quantity=10**9) for i in range(1000)
        )
        workflow = Workflow.objects.filter(key="bench").first() or bench_workflow()
        for i in range(count):
            triggers.trigger_manually(workflow, {"quantity": i % 7 + 1, "sku": f"W-{i % 1000:04d}"})

    def executions_done(self) -> int:
        return self.sql1("SELECT count(*) FROM workflows_execution WHERE status = 'resolved'")

    def queue_imports(self, tasks_count: int, rows: int) -> None:
        import io

        from django.contrib.auth.models import User

        from async_tasks import tasks
        from async_tasks.models import AsyncTask
        from catalog.models import Product
        from worker_mode import get_queue

        get_queue("async-task:process").empty()
        AsyncTask.objects.all().delete()
        Product.objects.filter(sku__startswith="I").delete()
        owner = User.objects.get(username="admin")
        for t in range(tasks_count):
            lines = ["sku,name,price,quantity,active,created"]
            lines += [
                f"I{t:02d}{i:07d},item {i},{i % 9999}.50,{i % 500},true,2024-03-0{1 + i % 9}"
                for i in range(rows)
            ]
            data = io.BytesIO(("\n".join(lines) + "\n").encode())
            tasks.create_import(owner, "catalog.Product", data, name=f"bench-{t}.csv")

    def rows_done(self) -> int:
        return self.sql1("SELECT coalesce(sum(done), 0) FROM async_tasks_asynctask WHERE kind = 'import'")

    # -- one measured run -----------------------------------------------------------------------
    def drain(self, key: str, hosts: int, total: int, queue, done, label: str) -> dict:
        """Queue the backlog with ``queue()`` while the queue is suspended, start ``hosts`` worker hosts
        for ``key``, resume once every one has its workers running, and measure between 10 % and 90 %
        of ``total`` done (``done()``)."""
        from rq.suspension import resume, suspend

        from worker_mode import presence
        from worker_mode.queues import get_connection

        names = [f"w{i}" for i in range(1, hosts + 1)]
        connection = get_connection(key)
        suspend(connection)
        try:
            queue()
            for name in names:
                self.cluster.start_node(name, key, cpus=self.args.worker_cpus, wait=False)
            for name in names:
                self.cluster.wait_node(name)

            def all_working() -> bool:
                return {e["node"] for e in presence.live_entries() if e["role"] == "workers"} >= set(names)

            wait_for(all_working, 120)
            wait_for(lambda: self.idle(names), 120)  # start-up done: no import or boot in the window
        finally:
            resume(connection)
        try:
            wait_for(lambda: done() >= total * 0.1, 600)
            before, count0 = self.counters.snapshot(), done()
            wait_for(lambda: done() >= total * 0.9, 900)
            after, count1 = self.counters.snapshot(), done()
            memory = [memory_mb(self.cluster.lab.hosts[name]) for name in names]
            wait_for(lambda: done() >= total, 300)
        finally:
            for name in names:
                self.cluster.lab.hosts[name].stop("node")
        delta = diff(after, before)
        items = count1 - count0
        return {"label": label, "hosts": hosts, "rate": items / delta["t"], "items": items, "delta": delta,
                "names": names, "memory": max(memory)}  # fmt: skip

    def idle(self, names: list[str]) -> bool:
        """Whether the hosts ``names`` used under 5 % of a CPU each over the last second."""
        hosts = [self.cluster.lab.hosts[name] for name in names]
        before = [host.cgroup.cpu_seconds() for host in hosts]
        time.sleep(1)
        return all(host.cgroup.cpu_seconds() - used < 0.05 for host, used in zip(hosts, before, strict=True))

    def scale(self) -> list[dict]:
        a = self.args
        # Warm-up, not reported: the database's caches, the first plans and imports of each kind.
        self.drain("workflow:process", 1, 200, lambda: self.queue_executions(200), self.executions_done, "")
        self.drain("async-task:process", 1, 4000, lambda: self.queue_imports(1, 4000), self.rows_done, "")
        results = []
        for hosts in a.hosts:
            results.append(
                self.drain("workflow:process", hosts, a.executions,
                           lambda: self.queue_executions(a.executions), self.executions_done, "executions")
            )  # fmt: skip
            report_run(results[-1], results, a.worker_cpus)
        for hosts in a.hosts:
            results.append(
                self.drain("async-task:process", hosts, a.tasks * a.rows,
                           lambda: self.queue_imports(a.tasks, a.rows), self.rows_done, "import rows")
            )  # fmt: skip
            report_run(results[-1], results, a.worker_cpus)
        return results

    # -- isolation ----------------------------------------------------------------------------
    def isolation(self) -> None:
        a = self.args
        cluster = self.cluster
        from django.contrib.auth.models import User

        from async_tasks.models import AsyncTask

        owner = User.objects.get(username="admin")
        AsyncTask.objects.bulk_create(
            AsyncTask(kind="export", model="catalog.Product", format="csv", owner=owner, status="succeeded")
            for _ in range(20)
        )
        url = f"{cluster.url('web')}/api/tasks"
        # As bench/isolation.py does on one machine: the request node has CPU 0 to itself; the worker
        # hosts, the database and Redis share CPU 1 (wrk runs there too, at real-time priority).
        for name in ("db", "redis-a", "redis-b", "wf", "tasks"):
            cluster.lab.hosts[name].pin("1")
        cluster.lab.hosts["web"].pin("0")
        cluster.start_node("web", "!", WEB_CONCURRENCY=WEB_WORKERS)
        wrk(url, cluster.token, 5, a.connections)  # warm-up: every gunicorn worker's first requests
        idle = measure("1. idle: web ('!') on CPU 0", url, cluster.token, a)
        self.queue_executions(a.executions * 2)
        self.queue_imports(1, a.tasks * a.rows)
        unpaced = {"WORKER_MODE_PACING_BUDGET": "0"}
        cluster.start_node("wf", "workflow:process", cpus=a.worker_cpus, **unpaced)
        cluster.start_node("tasks", "async-task:process", cpus=a.worker_cpus, **unpaced)
        wait_for(lambda: self.executions_done() > 0 and self.rows_done() > 0, 120)

        def progress() -> tuple[int, int]:
            return self.rows_done(), self.executions_done()

        split = measure("2. split, unpaced: backlog on wf + tasks", url, cluster.token, a, progress)
        hosts = ("web", "wf", "tasks", "db", "redis-a")
        print("   memory (PSS): " + ", ".join(f"{h} {memory_mb(cluster.lab.hosts[h]):.0f} MB" for h in hosts))
        # The same worker nodes with pacing at its default (the web node publishes its pressure).
        for name in ("wf", "tasks"):
            cluster.lab.hosts[name].stop("node")
        # A stopped import node's running import is ended (ASYNC_TASKS_RECOVERY "fail"): a new one.
        self.queue_imports(1, a.tasks * a.rows)
        cluster.start_node("wf", "workflow:process", cpus=a.worker_cpus)
        cluster.start_node("tasks", "async-task:process", cpus=a.worker_cpus)
        rows = self.rows_done()
        wait_for(lambda: self.rows_done() > rows, 120)
        paced = measure("2b. split, paced (default budget)", url, cluster.token, a, progress)
        for name in ("web", "wf", "tasks"):
            cluster.lab.hosts[name].stop("node")
        self.queue_executions(a.executions * 2)
        self.queue_imports(1, a.tasks * a.rows)
        # The same backlog on the request node's CPU, as one node serving everything.
        aio_cpus = FIXED["web"]
        cluster.lab.add_host("aio", cpus=aio_cpus).pin("0")
        # Two worker processes, as the split layout has (one on each worker host).
        cluster.start_node("aio", "", WEB_CONCURRENCY=WEB_WORKERS, WORKER_MODE_PROCESSES="2")
        url = f"{cluster.url('aio')}/api/tasks"
        wrk(url, cluster.token, 5, a.connections)
        wait_for(lambda: self.executions_done() > 0 and self.rows_done() > 0, 120)
        mixed = measure(
            f"3. all-in-one: WORKER_MODE '' on CPU 0 ({aio_cpus:g})", url, cluster.token, a, progress
        )
        cluster.lab.hosts["aio"].stop("node")
        ratios = {name: f"{run['99%'] / idle['99%']:.2f}x" for name, run in
                  (("split", split), ("paced", paced), ("all-in-one", mixed))}  # fmt: skip
        print("\np99 under load / idle: " + ", ".join(f"{name} {ratio}" for name, ratio in ratios.items()))


def wait_for(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout} s")
        time.sleep(0.25)
    return time.monotonic() - start


def report_run(run: dict, results: list[dict], cap: float) -> None:
    one = next(r for r in results if r["label"] == run["label"] and r["hosts"] == 1)
    d, seconds = run["delta"], run["delta"]["t"]
    workers = sum(d[f"cpu:{n}"] for n in run["names"]) / seconds
    usage = ", ".join(
        f"{name} {d[f'cpu:{name}'] / seconds:.2f}/{FIXED[name]:g}" for name in ("db", "redis-a", "redis-b")
    )
    print(
        f"{run['label']:<11} {run['hosts']} host(s): {run['rate']:8.1f}/s  "
        f"speed-up {run['rate'] / one['rate']:.2f}x  "
        f"CPU used/cap: workers {workers:.2f}/{cap * run['hosts']:g}, {usage}; "
        f"redis cmds/s {sum(v for k, v in d.items() if k.startswith('redis:')) / seconds:,.0f}; "
        f"memory per worker host {run['memory']:.0f} MB",
        flush=True,
    )


def report_costs(results: list[dict]) -> None:
    print("\nPer-job costs (one worker host, over the measured window):")
    print(f"{'':<19}{'SQL stmts':>10}{'Redis cmds':>11}{'bytes worker':>13}{'bytes db':>10}"
          f"{'bytes redis':>12}{'CPU-ms worker':>14}{'CPU-ms db':>10}{'CPU-ms redis':>13}")  # fmt: skip
    for run in (r for r in results if r["hosts"] == 1):
        d = run["delta"]
        per = 1 if run["label"] == "executions" else 1000
        n = run["items"] / per
        redis_bytes = d["bytes:redis-a"] + d["bytes:redis-b"]
        redis_cpu = d["cpu:redis-a"] + d["cpu:redis-b"]
        worker = run["names"][0]
        print(
            f"{'per execution' if per == 1 else 'per 1,000 rows':<19}"
            f"{d['sql'] / n:>10.2f}{(d['redis:redis-a'] + d['redis:redis-b']) / n:>11.2f}"
            f"{d[f'bytes:{worker}'] / n:>13,.0f}{d['bytes:db'] / n:>10,.0f}{redis_bytes / n:>12,.0f}"
            f"{d[f'cpu:{worker}'] * 1000 / n:>14.2f}{d['cpu:db'] * 1000 / n:>10.2f}"
            f"{redis_cpu * 1000 / n:>13.3f}"
        )


def measure(label: str, url: str, token: str, args: argparse.Namespace, progress=None) -> dict:
    """wrk for --duration; with ``progress()`` ((rows, executions) done), the backlog done meanwhile."""
    before = progress() if progress else None
    figures = wrk(url, token, args.duration, args.connections)
    if progress:
        after = progress()
        figures["backlog"] = (
            f"; backlog done meanwhile: {after[0] - before[0]:,} rows, {after[1] - before[1]:,} executions"
        )
    latency = f"p50 {figures['50%']:6.1f} ms  p99 {figures['99%']:6.1f} ms"
    errors = f"  non-2xx {figures['non2xx']}" if figures["non2xx"] else ""
    print(
        f"{label:<48} {figures['rps']:6.0f} req/s  {latency}{errors}{figures.get('backlog', '')}", flush=True
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phases", default="scale,isolation", help="scale, isolation or both (comma-separated)"
    )
    parser.add_argument("--hosts", default="1,2,3", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--worker-cpus", type=float, default=0.3, help="CPU cap of each worker host")
    parser.add_argument("--db-cpus", type=float, default=FIXED["db"], help="CPU cap of the database host")
    parser.add_argument("--executions", type=int, default=1500)
    parser.add_argument("--tasks", type=int, default=6, help="import tasks (one file each)")
    parser.add_argument("--rows", type=int, default=20000, help="rows per import file")
    parser.add_argument("--duration", type=int, default=15, help="seconds per isolation phase")
    parser.add_argument("--connections", type=int, default=1, help="wrk's connections (closed loop)")
    args = parser.parse_args()
    reason = why_unavailable()
    if reason:
        raise SystemExit(f"The lab cannot run here: {reason}.")
    FIXED["db"] = args.db_cpus
    phases = set(args.phases.split(","))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; Python "
          f"{platform.python_version()}; caps: worker hosts {args.worker_cpus:g} CPU each (1 worker "
          f"process), " + ", ".join(f"{k} {v:g}" for k, v in FIXED.items()))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="nclab-bench-") as tmp, Lab(Path(tmp)) as lab:
        bench = Bench(args, lab)
        print(bench.cluster.map(), flush=True)
        if "scale" in phases:
            print(f"\nScale-out: {args.executions:,} executions (condition -> calculation -> update); "
                  f"{args.tasks} imports x {args.rows:,} rows")  # fmt: skip
            results = bench.scale()
            report_costs(results)
        if "isolation" in phases:
            print(f"\nIsolation: wrk, {args.connections} connections, {args.duration} s per phase, "
                  "GET /api/tasks")  # fmt: skip
            bench.isolation()


if __name__ == "__main__":
    main()
