"""Where a request waits while background work runs: inside PostgreSQL, or on the way to it.

The layout of bench/isolation.py (request node '!' on CPU 0; worker node, a private PostgreSQL and a
private Redis on CPU 1; an open-loop load on GET /api/tasks from CPU 1 at real-time priority). For
the request node alone (idle) and beside a worker node processing a backlog (one phase per
``--budgets`` entry: ``WORKER_MODE_PACING_BUDGET`` of the worker node, 0 = unpaced), it prints:

- the requests' latency (p50/p99, counted from each request's due time);
- the request node's SQL round trips as its Django processes see them (from handing a statement to
  the driver to having its result), from a probe loaded into the request node only
  (``bench/dbwait_site/sitecustomize.py``);
- the same statements' time inside PostgreSQL (``log_min_duration_statement`` = 0 for the request
  node's sessions only, so the worker node's statements are not logged);
- how busy each CPU was, and the backlog done.

If round trips slow down while PostgreSQL's own time does not, requests wait for the database
*host* (its CPU, kernel and I/O), not for the database. ``--lowest-priority`` then tests whether
CPU priority is the cure: the worker node's processes run under ``SCHED_IDLE`` and their
PostgreSQL backends at nice 19 (possible here because the database runs on this machine).

    .venv/bin/python bench/dbwait.py [--rows 1000000] [--executions 3000] [--duration 30]
        [--rate R] [--budgets 0,0.3] [--lowest-priority]

Needs root (a private PostgreSQL runs as the ``postgres`` user) and Debian's ``wrk`` (for the
idle closed loop that sets the default rate: half of its throughput). Loopback only.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/: its workflows.py is not the workflows app

from isolation import (  # noqa: E402
    Node,
    backlog_done,
    bench_user,
    bench_workflow,
    free_port,
    open_loop,
    queue_backlog,
    site,
    wait_port,
    write_csv,
    wrk,
)

#: PostgreSQL's log (in its data directory's pg-log/): each line starts with the epoch time in ms, and
#: the request node's sessions log every statement's duration (PGOPTIONS on that node only).
LOGGING = "-c logging_collector=on -c log_directory=pg-log -c log_line_prefix='%n '"


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return f"p50 {at(0.5):.2f}  p90 {at(0.9):.2f}  p99 {at(0.99):.2f} ms"


def cpu_times() -> dict[str, list[int]]:
    with open("/proc/stat") as stat:
        return {
            line.split()[0]: [int(n) for n in line.split()[1:]] for line in stat if line.startswith("cpu")
        }


def busy(before: dict[str, list[int]], after: dict[str, list[int]], cpu: str) -> float:
    spent = [b - a for a, b in zip(before[cpu], after[cpu], strict=False)]
    idle = spent[3] + spent[4]  # idle, iowait
    return 1 - idle / max(sum(spent[:8]), 1)


class LowestPriority(threading.Thread):
    """Keeps the worker node's processes under SCHED_IDLE and their PostgreSQL backends at nice 19."""

    def __init__(self, session: int, database_url: str) -> None:
        super().__init__(daemon=True)
        self.session, self.database_url = session, database_url
        self.done = threading.Event()
        self.seen: set[tuple[str, int]] = set()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as connection:
            while not self.done.is_set():
                listed = subprocess.run(["ps", "-o", "pid=", "-s", str(self.session)],
                                        capture_output=True, text=True).stdout.split()  # fmt: skip
                found = [("worker", int(pid)) for pid in listed]
                found += [("backend", row[0]) for row in connection.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'background'")]  # fmt: skip
                for kind, pid in found:
                    if (kind, pid) in self.seen:
                        continue
                    self.seen.add((kind, pid))
                    try:
                        if kind == "worker":
                            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
                        else:
                            os.setpriority(os.PRIO_PROCESS, pid, 19)
                    except OSError:  # gone meanwhile
                        pass
                time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the backlog's import (0: none)")
    parser.add_argument("--executions", type=int, default=3000, help="workflow executions of the backlog")
    parser.add_argument("--duration", type=int, default=30, help="seconds of open-loop load per phase")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests/s (default: half the idle closed loop's)"
    )
    parser.add_argument(
        "--budgets", default="0", help="the worker node's pacing budget per phase (0: unpaced)"
    )
    parser.add_argument(
        "--lowest-priority", action="store_true", help="worker processes SCHED_IDLE, their backends nice 19"
    )
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    if os.cpu_count() < 2 or not shutil.which("wrk") or os.geteuid() != 0:
        raise SystemExit("needs 2 CPUs, wrk (apt-get install wrk) and root")
    os.sched_setaffinity(0, {1})
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # the probe's files: no disk writes
    probe = Path(tempfile.mkdtemp(prefix="bench-dbwait-", dir=shm))
    try:
        with site("bench-dbwait-", "1", LOGGING) as (tmp, pg, env, nodes):
            run(args, budgets, env, tmp, probe, pg.dir / "pg-log", pg, nodes)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def run(args, budgets, env, tmp, probe, logs, pg, nodes) -> None:  # noqa: ANN001
    import logging

    import django

    django.setup()
    logging.getLogger("worker_mode.coverage").setLevel(logging.ERROR)  # backlogs wait for their workers
    user, token = bench_user("dbwait")
    workflow = bench_workflow()
    upload = tmp / "import.csv"
    if args.rows:
        write_csv(upload, args.rows)

    def round_trips(start: float, end: float) -> list[float]:
        found = []
        for path in probe.iterdir():
            for line in path.read_text().splitlines():
                at, milliseconds = line.split()
                if start <= float(at) <= end:
                    found.append(float(milliseconds))
        return found

    def inside_postgres(start: float, end: float) -> list[float]:
        found = []
        for path in logs.iterdir():
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split(" ", 5)  # "<epoch> LOG:  duration: <ms> ms  statement: ..."
                if len(parts) > 4 and parts[3] == "duration:" and start <= float(parts[0]) <= end:
                    found.append(float(parts[4]))
        return found

    results = {}

    def measure(label: str) -> dict:
        before_cpu, before_done, start = cpu_times(), backlog_done(), time.time()
        figures = open_loop(url, token, args.duration, rate)
        end, after_cpu, after_done = time.time(), cpu_times(), backlog_done()
        time.sleep(1)  # PostgreSQL's logging collector writes the last lines
        trips, inside = round_trips(start, end), inside_postgres(start, end)
        rows, executions = after_done[0] - before_done[0], after_done[1] - before_done[1]
        errors = f"  errors {figures['non2xx']}" if figures["non2xx"] else ""
        print(f"{label:<26} {figures['rps']:4.0f} req/s  p50 {figures['50%']:5.1f}  "
              f"p99 {figures['99%']:5.1f} ms{errors}")  # fmt: skip
        print(f"{'':<26} round trips ({len(trips):,}): {percentiles(trips)}")
        print(f"{'':<26} in PostgreSQL ({len(inside):,}): {percentiles(inside)}")
        cpu0, cpu1 = busy(before_cpu, after_cpu, "cpu0"), busy(before_cpu, after_cpu, "cpu1")
        cpus = f"CPU 0 busy {cpu0:.0%}, CPU 1 {cpu1:.0%}"
        print(f"{'':<26} {cpus}; backlog done: {rows:,} rows, {executions:,} executions", flush=True)
        results[label] = {"p99": figures["99%"], "trips": trips, "inside": inside, "rows": rows,
                          "executions": executions}  # fmt: skip
        return results[label]

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
          f"Django {django.get_version()}; PostgreSQL 15 and Redis on CPU 1")  # fmt: skip
    print(f"page: GET /api/tasks (token); open loop {args.duration} s per phase; backlog: import of "
          f"{args.rows:,} rows + {args.executions:,} executions; budgets {budgets}"
          f"{'; background at lowest CPU priority' if args.lowest_priority else ''}")  # fmt: skip
    web_port = free_port()
    url = f"http://127.0.0.1:{web_port}/api/tasks"
    web_env = {
        **env,
        "WORKER_MODE_PACING_BUDGET": str(max(budgets + [0.3])),  # the request node publishes its pressure
        "PYTHONPATH": f"{ROOT / 'bench' / 'dbwait_site'}{os.pathsep}{ROOT}",
        "BENCH_DBWAIT_DIR": str(probe),
        "PGAPPNAME": "request",
        "PGOPTIONS": "-c log_min_duration_statement=0",
    }
    web = Node(0, "!", web_env, "--bind", f"127.0.0.1:{web_port}")
    nodes.append(web)
    wait_port(web_port)
    time.sleep(2)
    closed = wrk(url, token, 10, 4)  # warm-up, and the rate
    rate = args.rate or round(closed["rps"] / 2, 1)
    print(f"open-loop rate: {rate} requests/s (idle closed loop: {closed['rps']:.0f} req/s)")
    idle = measure("idle")
    for budget in budgets:
        queue_backlog(user, workflow, upload if args.rows else None, args.executions)
        workers = Node(1, "workflow:process,async-task:process",
                       {**env, "WORKER_MODE_PACING_BUDGET": str(budget), "PGAPPNAME": "background"},
                       "--bind", f"127.0.0.1:{free_port()}")  # fmt: skip
        nodes.append(workers)
        lowest = LowestPriority(workers.process.pid, pg.url) if args.lowest_priority else None
        if lowest:
            lowest.start()
        time.sleep(4)
        figures = measure(f"split, {'paced ' + str(budget) if budget else 'unpaced'}")
        if lowest:
            lowest.done.set()
        workers.stop()
        nodes.remove(workers)
        trips, inside = ratio(figures["trips"], idle["trips"]), ratio(figures["inside"], idle["inside"])
        print(f"{'':<26} p99 / idle: requests {figures['p99'] / idle['p99']:.2f}x, round trips {trips}, "
              f"in PostgreSQL {inside}", flush=True)  # fmt: skip


def ratio(values: list[float], reference: list[float]) -> str:
    if not values or not reference:
        return "-"

    def p99(items: list[float]) -> float:
        return sorted(items)[round(0.99 * (len(items) - 1))]

    return f"{p99(values) / p99(reference):.2f}x"


if __name__ == "__main__":
    main()
