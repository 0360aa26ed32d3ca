"""``make lab``: the site's cluster as hosts on this machine, until Ctrl-C.

Starts db (PostgreSQL), redis-a, redis-b, web ('!'), wf ('workflow:process') and tasks
('async-task:process'), each in a network namespace of its own on a private /24, prints the map,
the admin's password and the addresses to open, and tears everything down on Ctrl-C, SIGTERM,
--for's end, or a failure.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import Lab, why_unavailable
from .cluster import HOSTS, Cluster


def cpus(text: str) -> dict[str, float | None]:
    """``"wf=0.5,tasks=0.5"`` -> {"wf": 0.5, "tasks": 0.5}: hosts of the lab, CPUs above 0."""
    caps: dict[str, float | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (part.strip() for part in item.partition("="))
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not math.isfinite(number) or number <= 0:
            raise argparse.ArgumentTypeError(f"{item!r} is not HOST=CPUS with CPUS above 0, e.g. wf=0.5")
        if name not in HOSTS:
            raise argparse.ArgumentTypeError(f"{name!r} is no host of the lab; its hosts: {', '.join(HOSTS)}")
        caps[name] = number
    return caps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=cpus, default={}, metavar="HOST=CPUS,...",
                        help="CPU cap per host, e.g. 'wf=0.5,tasks=0.5,db=1' (default: no caps)")  # fmt: skip
    parser.add_argument("--for", dest="seconds", type=float, default=0, metavar="SECONDS",
                        help="stop after this long (default: run until Ctrl-C)")  # fmt: skip
    parser.add_argument("--directory", type=Path, default=None,
                        help="where logs and task files go (default: a new temporary directory)")  # fmt: skip
    args = parser.parse_args(argv)

    reason = why_unavailable()
    if reason:
        print(f"The lab cannot run here: {reason}.", file=sys.stderr)
        return 2
    directory = args.directory or Path(tempfile.mkdtemp(prefix="nclab-"))
    stop = {"now": False, "starting": True}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True
        if stop["starting"]:  # interrupt the startup (once: the teardown is not interrupted)
            stop["starting"] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return _run(args, directory, stop)
    except (KeyboardInterrupt, RuntimeError):
        if not stop["now"]:
            raise
        # Ctrl-C reaches the programs the startup runs too: their failure is the interruption
        print("Stopped during its startup: the lab is removed.", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, directory: Path, stop: dict[str, bool]) -> int:
    with Lab(directory) as lab:
        print(f"Starting the lab in {directory} ...", flush=True)
        cluster = Cluster(lab, cpus=args.cpus)
        cluster.start_node("web", "!")
        cluster.start_node("wf", "workflow:process")
        cluster.start_node("tasks", "async-task:process")
        stop["starting"] = False
        if stop["now"]:
            raise KeyboardInterrupt
        print(cluster.map())
        print(
            f"""
Open {cluster.url()}/admin/ as admin / {cluster.admin_password}
  (Cluster page: {cluster.url()}/admin/worker_mode/cluster/)
API token: {cluster.token}
  curl -H 'Authorization: Bearer {cluster.token}' {cluster.url()}/api/tasks
Logs: {directory}/logs/   A host's shell: ip netns exec {lab.hosts["wf"].netns} bash
Cut a host off: ip link set {lab.hosts["wf"].link} down (and up)
Ctrl-C stops the lab and removes every namespace, link and cgroup it made.""",
            flush=True,
        )
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            for host in lab.hosts.values():
                for process in host.processes.values():
                    if process.popen.poll() is not None:
                        print(f"{host.name}: {process.name} exited ({process.popen.returncode}); "
                              f"see {process.log}", file=sys.stderr)  # fmt: skip
                        return 1
            time.sleep(0.5)
        print("Stopping the lab ...", flush=True)
    print("Lab removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
