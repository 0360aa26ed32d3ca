from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from async_tasks import storage, tasks
from async_tasks.exceptions import AsyncTaskError
from async_tasks.importer import Mode
from async_tasks.progress import run_or_queue


def owner(username: str | None) -> Any:
    if not username:
        return None
    try:
        return get_user_model()._default_manager.get_by_natural_key(username)
    except get_user_model().DoesNotExist:
        raise CommandError(f"No user {username!r}.") from None


class Command(BaseCommand):
    help = (
        "Import a CSV or XLSX file into an allowed model (ASYNC_TASKS_MODELS), in this process with a "
        "progress line, or with --async as a task for the async-task:process nodes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="The model's label, e.g. catalog.Product.")
        parser.add_argument("file", type=Path, help="The .csv or .xlsx file.")
        parser.add_argument("--format", choices=["csv", "xlsx"], help="Default: from the file name.")
        parser.add_argument(
            "--mode", choices=Mode.choices, default=Mode.INSERT, help="Duplicates (default: insert)."
        )
        parser.add_argument("--encoding", help="CSV encoding; default: detected.")
        parser.add_argument("--delimiter", help="CSV delimiter; default: detected.")
        parser.add_argument("--sheet", help="XLSX sheet name; default: the first sheet.")
        parser.add_argument("--fire-workflows", action="store_true", help="Run collection-event workflows.")
        parser.add_argument("--user", help="Owner of the task (a username).")
        parser.add_argument("--errors", type=Path, help="Write the error report (CSV) to this file.")
        parser.add_argument("--async", dest="run_async", action="store_true", help="Enqueue; do not wait.")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"No file {path}.")
        try:
            with path.open("rb") as upload:
                task = tasks.create_import(
                    owner(options["user"]),
                    options["model"],
                    upload,
                    name=path.name,
                    fmt=options["format"],
                    size=None,  # a local file: the upload limit is for HTTP
                    dispatch=options["run_async"],
                    mode=options["mode"],
                    encoding=options["encoding"],
                    delimiter=options["delimiter"],
                    sheet=options["sheet"],
                    fire_workflows=options["fire_workflows"],
                )
        except AsyncTaskError as exc:
            raise CommandError(str(exc)) from None
        task = run_or_queue(self, task, run_async=options["run_async"], verbosity=options["verbosity"])
        if task is None:
            return
        if task.error_file and options["errors"]:
            with (
                storage.get_storage().open(task.error_file, "rb") as src,
                options["errors"].open("wb") as dst,
            ):
                shutil.copyfileobj(src, dst)
        summary = task.summary_text()
        if task.status != task.Status.SUCCEEDED:
            raise CommandError(f"Task {task.pk} {task.status}: {task.error} ({summary})")
        self.stdout.write(f"Task {task.pk} {task.status}: {summary}.")
        if task.error_file:
            where = options["errors"] or f"the task's error report ({task.error_file})"
            self.stdout.write(f"Rows with errors are listed in {where}.")
