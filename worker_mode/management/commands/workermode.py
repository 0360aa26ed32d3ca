from __future__ import annotations

import datetime
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from redis import RedisError

from worker_mode import node
from worker_mode.coverage import cluster_report

#: ``--cluster`` exits with this when a service key has queued work and no live node serves it
#: (1 is a failure to read the cluster at all).
UNCOVERED_EXIT = 3


class Command(BaseCommand):
    help = (
        "Show what this node serves: HTTP requests, background services and their queues. "
        "With --cluster: the live nodes of the whole cluster, queue depths, failed jobs and "
        "service keys with queued work that no live node serves; it exits with 3 when there are any "
        "(1 when Redis cannot be read), so scripts and monitors can act on it."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object, for scripts.")
        parser.add_argument("--cluster", action="store_true", help="Show the whole cluster (reads Redis).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["cluster"]:
            return self.cluster(as_json=options["json"])
        info = node.describe()
        if options["json"]:
            self.stdout.write(json.dumps(info, indent=2))
            return
        yes_no = {True: "yes", False: "no"}
        lines = [
            ("Node", info["node"]),
            ("WORKER_MODE", repr(info["worker_mode"])),
            ("Serves HTTP requests", yes_no[info["serves_requests"]]),
            ("Services", ", ".join(info["services"]) or "none"),
            ("Queues", ", ".join(info["queues"]) or "none"),
            ("Transient", yes_no[info["transient"]]),
            ("Registered services", ", ".join(info["registered"]) or "none"),
        ]
        width = max(len(label) for label, _ in lines)
        for label, value in lines:
            self.stdout.write(f"{label:<{width}}  {value}")

    def cluster(self, *, as_json: bool) -> None:
        try:
            report = cluster_report()
        except RedisError as exc:
            raise CommandError(f"Cannot read the cluster from Redis: {exc}") from None
        if as_json:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self._print_cluster(report)
        if report["uncovered"]:
            # Non-zero, so scripts and monitors can act on it (the report is printed first).
            raise CommandError(
                f"Uncovered service keys: {', '.join(report['uncovered'])}", returncode=UNCOVERED_EXIT
            )

    def _print_cluster(self, report: dict) -> None:
        entries = report["entries"]
        self.stdout.write(f"Live node processes: {len(entries)}")
        for e in entries:
            started = datetime.datetime.fromtimestamp(e["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
            ago = max(0.0, datetime.datetime.now().timestamp() - e.get("heartbeat_at", e["started_at"]))
            self.stdout.write(
                f"  {e['node']:<20} {e['role']:<8} pid {e['pid']:<8} host {e['host']}"
                f"  WORKER_MODE={e['worker_mode']!r}"
                f"  serves {', '.join(e['services']) or 'no services'}"
                f"{' + requests' if e['serves_requests'] else ''}  x{e['processes']}"
                f"  since {started}, heartbeat {ago:.0f} s ago"
            )
        self.stdout.write("Services:")
        for row in report["services"]:
            nodes = ", ".join(row["nodes"]) or "none"
            flag = "  <- UNCOVERED: queued work, no live node serves it" if row["uncovered"] else ""
            self.stdout.write(
                f"  {row['key']:<22} queued {row['queued']:<6} running {row['running']:<4} "
                f"failed {row['failed']:<5} nodes {nodes}  {_pace(row)}{flag}"
            )
        pressure = report.get("pacing", {}).get("pressure", {})
        self.stdout.write(
            "Request pressure: "
            + (", ".join(f"{node} {level:.2f}" for node, level in sorted(pressure.items())) or "none")
        )


def _pace(row: dict) -> str:
    if row.get("weight") == 0:
        return "pace: not paced (weight 0)"
    if row.get("yielding"):
        return f"pace {row['pace']:.0%} ({row['yielding']} process(es) yielding to requests)"
    return "pace: full speed"
