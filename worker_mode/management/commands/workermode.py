from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand

from worker_mode import node


class Command(BaseCommand):
    help = "Show what this node serves: HTTP requests, background services and their queues."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object, for scripts.")

    def handle(self, *args: Any, **options: Any) -> None:
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
