"""The service layer: create tasks, run them (in a worker or in-process), cancel, recover, clean up."""

from __future__ import annotations

import datetime
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from django.db import transaction
from django.utils import timezone

from worker_mode import claims, pacing, storable
from worker_mode.claims import Claim, ClaimLost
from worker_mode.storable import text

from . import exporter, formats, storage
from .conf import conf
from .exceptions import AsyncTaskError, Canceled, FileRejected, NotAllowed
from .importer import Importer, Mode, Summary
from .models import AsyncTask
from .spec import ModelSpec, get_spec

logger = logging.getLogger(__name__)
Status = AsyncTask.Status

ProgressCallback = Callable[[AsyncTask], None]


# -- creating -----------------------------------------------------------------------------


def import_options(
    *,
    mode: str = Mode.INSERT,
    encoding: str | None = None,
    delimiter: str | None = None,
    sheet: str | None = None,
    fire_workflows: bool = False,
) -> dict[str, Any]:
    """Validated import parameters; AsyncTaskError with a message for a bad one."""
    if mode not in Mode.choices:
        raise FileRejected(f"Unknown mode {text(mode, 60)!r}; modes: {', '.join(Mode.choices)}.")
    if encoding:
        formats.check_encoding(encoding)  # a text encoding files are written in, or a 400
    if delimiter and (len(delimiter) != 1 or delimiter in '"\r\n' or (delimiter < " " and delimiter != "\t")):
        raise FileRejected("The delimiter must be one character, e.g. ',' ';' '|' or a tab.")
    return {
        "mode": mode,
        "encoding": encoding or "",
        "delimiter": delimiter or "",
        "sheet": sheet or "",
        "fire_workflows": bool(fire_workflows),
    }


def create_import(
    owner: Any,
    label: str,
    upload: IO[bytes],
    *,
    name: str,
    fmt: str | None = None,
    size: int | None = None,
    dispatch: bool = True,
    **options: Any,
) -> AsyncTask:
    """Store ``upload`` and create a queued import task; enqueued on commit when ``dispatch``."""
    spec = get_spec(label)
    fmt = fmt or formats.guess_format(name)
    if fmt not in AsyncTask.Format.values:
        raise FileRejected(f"Unknown format {text(fmt, 60)!r}; formats: csv, xlsx.")
    if size is not None and size > conf.ASYNC_TASKS_MAX_UPLOAD_SIZE:
        raise FileRejected(
            f"The file is {size} bytes; the largest accepted is {conf.ASYNC_TASKS_MAX_UPLOAD_SIZE} bytes."
        )
    parameters = import_options(**options)
    path = storage.save("uploads", fmt, upload)
    task = AsyncTask.objects.create(
        kind=AsyncTask.Kind.IMPORT,
        model=spec.label,
        format=fmt,
        owner=owner if getattr(owner, "pk", None) else None,
        parameters=parameters,
        source_file=path,
        source_name=_display_name(name),
    )
    if dispatch:
        task.dispatch()
    return task


def create_export(
    owner: Any,
    label: str,
    *,
    fmt: str = "csv",
    fields: Sequence[str] | None = None,
    filters: Sequence[Sequence[str]] | None = None,
    dispatch: bool = True,
) -> AsyncTask:
    """Create a queued export task (fields and filters checked now); enqueued on commit."""
    spec = get_spec(label)
    if fmt not in AsyncTask.Format.values:
        raise FileRejected(f"Unknown format {text(fmt, 60)!r}; formats: csv, xlsx.")
    chosen = exporter.choose_fields(spec, fields)
    pairs = [[str(k), str(v)] for k, v in (filters or [])]
    exporter.check_filter_sizes(pairs)
    exporter.filtered_queryset(spec, pairs, owner)  # a bad filter fails here, not in the worker
    task = AsyncTask.objects.create(
        kind=AsyncTask.Kind.EXPORT,
        model=spec.label,
        format=fmt,
        owner=owner if getattr(owner, "pk", None) else None,
        parameters={"fields": [f.name for f in chosen], "filters": pairs},
    )
    if dispatch:
        task.dispatch()
    return task


def _display_name(name: str) -> str:
    from django.utils.text import get_valid_filename

    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    try:
        return get_valid_filename(base)[:200]
    except Exception:  # SuspiciousFileOperation for '.' or '..'
        return "upload"


# -- running ------------------------------------------------------------------------------


def claim(task_id: int, owner: claims.Owner | None = None) -> Claim | None:
    """queued -> running for this process (or ``owner``); None if another run has it (a duplicate)."""
    return claims.claim(AsyncTask, task_id, owner=owner)


def run(task_id: int, *, on_progress: ProgressCallback | None = None) -> str:
    """Claim and run task ``task_id`` (in a worker, or in-process for the management commands).

    Returns its final status, or why it did not run. In-process runs claim and
    renew exactly like workers, so a killed command's task is recovered too.
    """
    claimed = claim(task_id)
    if claimed is None:
        logger.info("Task %s is not queued; nothing to do", task_id)
        return "not queued"
    task = claimed.instance
    logger.info("Task %s: %s of %s (%s) started", task.pk, task.kind, task.model, task.format)
    with claimed:  # renews the lease meanwhile; an error that escapes still ends the task
        tracker = _Tracker(task, claimed, on_progress)
        try:
            spec = get_spec(task.model)
            if task.kind == AsyncTask.Kind.IMPORT:
                _run_import(task, spec, tracker)
            else:
                _run_export(task, spec, tracker)
        except Canceled:
            _finish(task, claimed, Status.CANCELED, error="Canceled; rows written before the cancel stay.")
        except ClaimLost:
            logger.warning("Task %s was taken from this process before it finished; stopping", task.pk)
            storage.delete(task.result_file, task.error_file)
            return _status_of(task.pk)
        except (AsyncTaskError, NotAllowed) as exc:
            _finish(task, claimed, Status.FAILED, error=str(exc))
        except Exception as exc:
            if not _still_claimed(claimed):  # frozen, taken over, then its session ended: not a failure
                logger.warning("Task %s was taken from this process (%s: %s); stopping", task.pk,
                               type(exc).__name__, exc)  # fmt: skip
                storage.delete(task.result_file, task.error_file)
                return _status_of(task.pk)
            logger.exception("Task %s failed", task.pk)
            _finish(task, claimed, Status.FAILED, error=f"Internal error: {type(exc).__name__}: {exc}")
        else:
            _finish(task, claimed, Status.SUCCEEDED)
        if on_progress is not None:
            on_progress(task)
        logger.info("Task %s %s: %s", task.pk, task.status, task.summary or task.error)
        return task.status
    return _status_of(task_id)


def _still_claimed(claimed: Claim) -> bool:
    from django.db import DatabaseError, connections

    try:
        return claimed.still_mine()
    except DatabaseError:  # e.g. the server ended this process's session while it was frozen
        connections[claimed.using].close()
        try:
            return claimed.still_mine()
        except DatabaseError:
            return True  # cannot tell: record the failure if it still can


def _status_of(task_id: int) -> str:
    return AsyncTask.objects.filter(pk=task_id).values_list("status", flat=True).first() or ""


class _Tracker:
    """Writes progress; the same UPDATE renews the claim, checks it and notices a cancel.

    For an import it runs inside each batch's transaction, so the rows and the progress
    commit together, and only while the claim holds: a process whose task was taken
    over (frozen or cut off past its lease) commits no further batch.
    """

    def __init__(self, task: AsyncTask, claimed: Claim, callback: ProgressCallback | None) -> None:
        self.task, self.claim, self.callback = task, claimed, callback

    def update(self, done: int, summary: dict[str, int] | None = None) -> None:
        task = self.task
        task.pace = pacing.current_pace()  # below 1 while the task yields the database to requests
        fields: dict[str, Any] = {"done": done, "total": task.total, "pace": task.pace}
        if summary is not None:
            fields["summary"] = summary
        now = timezone.now()
        self.claim.step()
        self.claim.renewed_at = time.monotonic()
        written = (
            self.claim.mine()
            .filter(cancel_requested=False)
            .update(**fields, heartbeat_at=now, lease_expires_at=now + self.claim.lease)
        )
        if not written:
            if self.claim.still_mine():
                raise Canceled()
            raise self.claim._lose()

    def report(self, done: int, summary: dict[str, int] | None = None) -> None:
        """After a commit: what the progress callback (the command's progress line) shows; then
        a pacing checkpoint (in a worker, the task yields here while requests are under pressure)."""
        pacing.checkpoint()
        task = self.task
        task.done = done
        if summary is not None:
            task.summary = summary
        if self.callback is not None:
            self.callback(task)


def _run_import(task: AsyncTask, spec: ModelSpec, tracker: _Tracker) -> None:
    options = task.parameters
    reader: formats.CsvReader | formats.XlsxReader
    with storage.get_storage().open(task.source_file, "rb") as raw:
        if task.format == "xlsx":
            reader = formats.XlsxReader(raw, sheet=options.get("sheet") or None)
        else:
            reader = formats.CsvReader(
                raw, encoding=options.get("encoding") or None, delimiter=options.get("delimiter") or None
            )
        task.total = reader.total

        def fence(summary: Summary) -> None:  # inside each batch's transaction
            tracker.update(summary.processed, summary.as_dict())

        def progress(summary: Summary) -> None:  # after it commits
            tracker.report(summary.processed, summary.as_dict())

        importer = Importer(
            spec,
            reader.header,
            mode=options.get("mode", Mode.INSERT),
            batch_size=conf.ASYNC_TASKS_BATCH_SIZE,
            fire_workflows=options.get("fire_workflows", False),
            fence=fence,
            progress=progress,
        )
        task.summary = importer.summary.as_dict()
        try:
            importer.run(reader)
        finally:
            task.summary = importer.summary.as_dict()
            task.done = importer.summary.processed
            if importer.errors.count:
                task.error_file = storage.save("errors", "csv", importer.errors.finish())
            if isinstance(reader, formats.XlsxReader):
                reader.close()
    task.total = task.done


def _run_export(task: AsyncTask, spec: ModelSpec, tracker: _Tracker) -> None:
    fields = exporter.choose_fields(spec, task.parameters.get("fields"))
    queryset = exporter.filtered_queryset(spec, task.parameters.get("filters"), task.owner)
    task.total = queryset.count()
    tracker.update(0)

    def progress(done: int) -> None:
        tracker.update(done)
        tracker.report(done)

    with tempfile.TemporaryFile() as out:
        rows = exporter.export(
            queryset, fields, task.format, out, progress=progress, title=spec.model._meta.model_name
        )
        out.seek(0)
        task.result_file = storage.save("exports", task.format, out)
    task.done = task.total = rows
    task.summary = {"exported": rows}


def _finish(task: AsyncTask, claimed: Claim, status: str, *, error: str = "") -> None:
    now = timezone.now()
    task.status, task.error, task.finished_at = status, storable.text(error), now
    task.expires_at = now + datetime.timedelta(seconds=conf.ASYNC_TASKS_EXPIRY)
    fields = ["error", "expires_at", "done", "total", "summary", "result_file", "error_file"]
    # Only the run that holds the claim may finish it (recovery may have ended it meanwhile).
    if not claimed.finish(status, **{name: getattr(task, name) for name in fields}):
        logger.warning(
            "Task %s was taken from this process before it finished; its result is dropped", task.pk
        )
        storage.delete(task.result_file, task.error_file)


def cancel(task: AsyncTask) -> bool:
    """Cancel a queued task at once, a running one at its next batch; False if already finished."""
    now = timezone.now()
    expires = now + datetime.timedelta(seconds=conf.ASYNC_TASKS_EXPIRY)
    if AsyncTask.objects.filter(pk=task.pk, status=Status.QUEUED).update(
        status=Status.CANCELED, cancel_requested=True, finished_at=now, expires_at=expires, error="Canceled."
    ):
        return True
    return bool(AsyncTask.objects.filter(pk=task.pk, status=Status.RUNNING).update(cancel_requested=True))


# -- clean-up -------------------------------------------------------------------------------
# Recovery of tasks whose owner is gone, and of queued tasks whose message was lost, is
# worker_mode's (``worker_mode.claims``): AsyncTask is claimed work.

_BATCH = 500


def cleanup(now: datetime.datetime | None = None) -> int:
    """Delete expired finished tasks and their files; returns how many."""
    now = now or timezone.now()
    expired = AsyncTask.objects.filter(status__in=AsyncTask.FINISHED, expires_at__lte=now)
    deleted = 0
    for task in expired.order_by("id")[:_BATCH]:
        with transaction.atomic():
            if AsyncTask.objects.filter(pk=task.pk).delete()[0]:
                deleted += 1
                transaction.on_commit(
                    lambda t=task: storage.delete(t.source_file, t.result_file, t.error_file)
                )
    if deleted:
        logger.info("Deleted %d expired task(s) and their files", deleted)
    return deleted
