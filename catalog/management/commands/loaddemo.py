from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from catalog import demo


class Command(BaseCommand):
    help = (
        "Load the demo collection (products) and the 'order-created' workflow, unless they exist. "
        "Create an order in the admin to see the workflow run on a workflow:process node."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--webhook-url",
            default="http://127.0.0.1:8000/catalog/webhook",
            help="Where the workflow's HTTP node posts (default: this site on 127.0.0.1:8000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workflow, created = demo.load(options["webhook_url"])
        if created:
            self.stdout.write(self.style.SUCCESS(f"Loaded the demo: {workflow}"))
        else:
            self.stdout.write(f"The demo is already loaded: {workflow}")
