from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from worker_mode import log, workers
from worker_mode.management.runner import run_or_fail


class Command(BaseCommand):
    help = (
        "Start RQ workers for exactly the background services this node's WORKER_MODE serves. "
        "SIGTERM: warm shutdown (running jobs finish within WORKER_MODE_SHUTDOWN_GRACE); "
        "a second SIGTERM/SIGINT: cold shutdown."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--processes",
            type=int,
            help="Worker processes shared by services without a dedicated count "
            "(default: WORKER_MODE_PROCESSES).",
        )
        parser.add_argument("--burst", action="store_true", help="Drain the queues, then exit.")
        parser.add_argument(
            "--with-scheduler",
            action="store_true",
            help="Also run rq's scheduler for scheduled/retried jobs.",
        )
        parser.add_argument(
            "--grace", type=float, help="Seconds for a warm shutdown (default: WORKER_MODE_SHUTDOWN_GRACE)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        run_or_fail(
            workers.run,
            "Worker processes",
            processes=options["processes"],
            burst=options["burst"],
            with_scheduler=options["with_scheduler"],
            grace=options["grace"],
            log_level=log.configure(options["verbosity"]),
        )
