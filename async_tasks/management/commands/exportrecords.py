from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from async_tasks import storage, tasks
from async_tasks.exceptions import AsyncTaskError
from async_tasks.progress import run_or_queue

from .importrecords import owner


class Command(BaseCommand):
    help = (
        "Export an allowed model (ASYNC_TASKS_MODELS) to CSV or XLSX, in this process with a progress "
        "line, or with --async as a task for the async-task:process nodes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="The model's label, e.g. catalog.Product.")
        parser.add_argument("--output", "-o", type=Path, help="The file to write (required unless --async).")
        parser.add_argument("--format", choices=["csv", "xlsx"], help="Default: from --output, else csv.")
        parser.add_argument("--fields", help="Comma-separated field names; default: all allowed fields.")
        parser.add_argument(
            "--filter",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="An admin changelist filter, e.g. active__exact=1 or q=text; repeatable.",
        )
        parser.add_argument("--user", help="Owner of the task (a username).")
        parser.add_argument("--async", dest="run_async", action="store_true", help="Enqueue; do not wait.")

    def handle(self, *args: Any, **options: Any) -> None:
        output: Path | None = options["output"]
        if output is None and not options["run_async"]:
            raise CommandError("Give --output FILE, or --async to enqueue the export.")
        fmt = options["format"] or (output.suffix.lstrip(".").lower() if output else "") or "csv"
        filters = []
        for item in options["filter"]:
            key, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--filter {item!r}: use KEY=VALUE.")
            filters.append([key, value])
        fields = [f.strip() for f in options["fields"].split(",")] if options["fields"] else None
        try:
            task = tasks.create_export(
                owner(options["user"]),
                options["model"],
                fmt=fmt,
                fields=fields,
                filters=filters,
                dispatch=options["run_async"],
            )
        except AsyncTaskError as exc:
            raise CommandError(str(exc)) from None
        task = run_or_queue(self, task, run_async=options["run_async"], verbosity=options["verbosity"])
        if task is None:
            return
        if task.status != task.Status.SUCCEEDED:
            raise CommandError(f"Task {task.pk} {task.status}: {task.error}")
        with storage.get_storage().open(task.result_file, "rb") as src, output.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        self.stdout.write(f"Task {task.pk}: {task.done} rows written to {output}.")
