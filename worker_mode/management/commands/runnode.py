from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from worker_mode import launcher, log
from worker_mode.management.runner import run_or_fail


class Command(BaseCommand):
    help = (
        "Start everything this node's WORKER_MODE asks for: gunicorn (small, answering only health "
        "probes and 503s, on nodes that do not serve requests) and the worker processes of the "
        "services it serves. The one entry point of every node: same image, same command."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--bind", help="gunicorn's address, e.g. 0.0.0.0:8000 (default: gunicorn config)."
        )
        parser.add_argument(
            "--http-workers", type=int, help="gunicorn worker processes on request nodes (default: config)."
        )
        parser.add_argument(
            "--processes", type=int, help="Shared worker processes (default: WORKER_MODE_PROCESSES)."
        )
        parser.add_argument(
            "--with-scheduler", action="store_true", help="Run rq's scheduler with the workers."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        run_or_fail(
            launcher.run,
            "A child process",
            bind=options["bind"],
            http_workers=options["http_workers"],
            processes=options["processes"],
            with_scheduler=options["with_scheduler"],
            log_level=log.configure(options["verbosity"]),
        )
