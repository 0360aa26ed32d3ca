"""The service layer: create tasks, run them (in a worker or in-process), cancel, recover, clean up."""

from __future__ import annotations

import datetime
import logging
import tempfile
from collections.abc import Callable, Sequence
from typing import IO, Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from redis import RedisError

from worker_mode import current_worker_name, enqueue, worker_is_alive
from worker_mode.conf import conf as worker_conf
from worker_mode.queues import get_connection, requeue_lost

from . import exporter, formats, storage
from .apps import SERVICE_KEY
from .conf import conf
from .exceptions import AsyncTaskError, Canceled, FileRejected, NotAllowed
from .importer import Importer, Mode, Summary
from .models import AsyncTask
from .spec import ModelSpec, get_spec

logger = logging.getLogger(__name__)
Status = AsyncTask.Status
ENCODINGS_HINT = "utf-8, utf-8-sig, cp1252, latin-1, utf-16, ..."

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
        raise FileRejected(f"Unknown mode {mode!r}; modes: {', '.join(Mode.choices)}.")
    if encoding:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise FileRejected(f"Unknown encoding {encoding!r}; e.g. {ENCODINGS_HINT}.") from None
    if delimiter and (len(delimiter) != 1 or delimiter in '"\r\n'):
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
    """Store ``upload`` and create a pending import task; enqueued on commit when ``dispatch``."""
    spec = get_spec(label)
    fmt = fmt or formats.guess_format(name)
    if fmt not in AsyncTask.Format.values:
        raise FileRejected(f"Unknown format {fmt!r}; formats: csv, xlsx.")
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
        _dispatch(task)
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
    """Create a pending export task (fields and filters checked now); enqueued on commit."""
    spec = get_spec(label)
    if fmt not in AsyncTask.Format.values:
        raise FileRejected(f"Unknown format {fmt!r}; formats: csv, xlsx.")
    chosen = exporter.choose_fields(spec, fields)
    pairs = [[str(k), str(v)] for k, v in (filters or [])]
    exporter.filtered_queryset(spec, pairs, owner)  # a bad filter fails here, not in the worker
    task = AsyncTask.objects.create(
        kind=AsyncTask.Kind.EXPORT,
        model=spec.label,
        format=fmt,
        owner=owner if getattr(owner, "pk", None) else None,
        parameters={"fields": [f.name for f in chosen], "filters": pairs},
    )
    if dispatch:
        _dispatch(task)
    return task


def _display_name(name: str) -> str:
    from django.utils.text import get_valid_filename

    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    try:
        return get_valid_filename(base)[:200]
    except Exception:  # SuspiciousFileOperation for '.' or '..'
        return "upload"


def _dispatch(task: AsyncTask) -> None:
    enqueue(SERVICE_KEY, "async_tasks.jobs.process_task", task.pk, job_id=task.job_id)


# -- running ------------------------------------------------------------------------------


def claim(task_id: int, worker: str) -> AsyncTask | None:
    """pending -> running for ``worker``; None if another run has it (a duplicate message)."""
    claimed = AsyncTask.objects.filter(pk=task_id, status=Status.PENDING).update(
        status=Status.RUNNING,
        worker=worker,
        node_name=worker_conf.WORKER_MODE_NODE_NAME,
        started_at=timezone.now(),
        attempts=F("attempts") + 1,
        done=0,
    )
    if not claimed:
        return None
    return AsyncTask.objects.select_related("owner").get(pk=task_id)


def run(task_id: int, *, worker: str | None = None, on_progress: ProgressCallback | None = None) -> str:
    """Claim and run task ``task_id``; returns its final status (or why it did not run)."""
    task = claim(task_id, worker or current_worker_name())
    if task is None:
        logger.info("Task %s is not pending; nothing to do", task_id)
        return "not pending"
    logger.info("Task %s: %s of %s (%s) started", task.pk, task.kind, task.model, task.format)
    tracker = _Tracker(task, on_progress)
    try:
        spec = get_spec(task.model)
        if task.kind == AsyncTask.Kind.IMPORT:
            _run_import(task, spec, tracker)
        else:
            _run_export(task, spec, tracker)
    except Canceled:
        _finish(task, Status.CANCELED, error="Canceled; rows written before the cancel stay.")
    except (AsyncTaskError, NotAllowed) as exc:
        _finish(task, Status.FAILED, error=str(exc))
    except Exception as exc:
        logger.exception("Task %s failed", task.pk)
        _finish(task, Status.FAILED, error=f"Internal error: {type(exc).__name__}: {exc}")
    else:
        _finish(task, Status.SUCCEEDED)
    if on_progress is not None:
        on_progress(task)
    logger.info("Task %s %s: %s", task.pk, task.status, task.summary or task.error)
    return task.status


class _Tracker:
    """Writes progress after each batch; the same UPDATE notices a cancel (one query per batch)."""

    def __init__(self, task: AsyncTask, callback: ProgressCallback | None) -> None:
        self.task, self.callback = task, callback

    def update(self, done: int, summary: dict[str, int] | None = None) -> None:
        task = self.task
        task.done = done
        if summary is not None:
            task.summary = summary
        if self.callback is not None:
            self.callback(task)
        fields: dict[str, Any] = {"done": done, "total": task.total}
        if summary is not None:
            fields["summary"] = summary
        if not AsyncTask.objects.filter(pk=task.pk, cancel_requested=False).update(**fields):
            raise Canceled()


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

        def progress(summary: Summary) -> None:
            tracker.update(summary.processed, summary.as_dict())

        importer = Importer(
            spec,
            reader.header,
            mode=options.get("mode", Mode.INSERT),
            batch_size=conf.ASYNC_TASKS_BATCH_SIZE,
            fire_workflows=options.get("fire_workflows", False),
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
    with tempfile.TemporaryFile() as out:
        rows = exporter.export(
            queryset, fields, task.format, out, progress=tracker.update, title=spec.model._meta.model_name
        )
        out.seek(0)
        task.result_file = storage.save("exports", task.format, out)
    task.done = task.total = rows
    task.summary = {"exported": rows}


def _finish(task: AsyncTask, status: str, *, error: str = "") -> None:
    now = timezone.now()
    task.status, task.error, task.finished_at = status, error, now
    task.expires_at = now + datetime.timedelta(seconds=conf.ASYNC_TASKS_EXPIRY)
    fields = ["status", "error", "finished_at", "expires_at", "done", "total", "summary"]
    fields += ["result_file", "error_file"]
    # Only the run that holds the claim may finish it (recovery may have failed it meanwhile).
    updated = AsyncTask.objects.filter(pk=task.pk, status=Status.RUNNING, worker=task.worker).update(
        **{name: getattr(task, name) for name in fields}
    )
    if not updated:
        logger.warning(
            "Task %s was taken from this worker before it finished; its result is dropped", task.pk
        )
        storage.delete(task.result_file, task.error_file)


def cancel(task: AsyncTask) -> bool:
    """Cancel a pending task at once, a running one at its next batch; False if already finished."""
    now = timezone.now()
    expires = now + datetime.timedelta(seconds=conf.ASYNC_TASKS_EXPIRY)
    if AsyncTask.objects.filter(pk=task.pk, status=Status.PENDING).update(
        status=Status.CANCELED, cancel_requested=True, finished_at=now, expires_at=expires, error="Canceled."
    ):
        return True
    return bool(AsyncTask.objects.filter(pk=task.pk, status=Status.RUNNING).update(cancel_requested=True))


# -- recovery and clean-up ------------------------------------------------------------------

_BATCH = 500


def recover(now: datetime.datetime | None = None, *, pending_grace: float | None = None) -> dict[str, int]:
    """Re-enqueue pending tasks whose message is gone; fail or retry running tasks of dead workers."""
    now = now or timezone.now()
    connection = get_connection(SERVICE_KEY)
    counts = {"failed": 0, "retried": 0, "requeued": 0}
    for row in AsyncTask.objects.filter(status=Status.RUNNING).values("id", "worker", "attempts"):
        if worker_is_alive(row["worker"], connection):
            continue
        running = AsyncTask.objects.filter(pk=row["id"], status=Status.RUNNING, worker=row["worker"])
        retry = (
            conf.ASYNC_TASKS_RECOVER_RUNNING == "retry" and row["attempts"] < conf.ASYNC_TASKS_MAX_ATTEMPTS
        )
        if retry:
            if running.update(status=Status.PENDING, worker=""):
                logger.warning("Task %s retried: its worker %s died", row["id"], row["worker"])
                _dispatch(AsyncTask.objects.get(pk=row["id"]))
                counts["retried"] += 1
        else:
            error = f"Failed: its worker {row['worker']} died after {row['attempts']} attempt(s)."
            if running.update(
                status=Status.FAILED,
                error=error,
                finished_at=now,
                expires_at=now + datetime.timedelta(seconds=conf.ASYNC_TASKS_EXPIRY),
            ):
                logger.error("Task %s failed: its worker %s died", row["id"], row["worker"])
                counts["failed"] += 1
    grace = conf.ASYNC_TASKS_PENDING_GRACE if pending_grace is None else pending_grace
    waiting = AsyncTask.objects.filter(
        status=Status.PENDING, created_at__lte=now - datetime.timedelta(seconds=grace)
    )
    counts["requeued"] = requeue_lost(SERVICE_KEY, waiting, _dispatch, batch=_BATCH)
    if any(counts.values()):
        logger.warning(
            "Recovered tasks: %d failed, %d retried, %d re-enqueued",
            counts["failed"],
            counts["retried"],
            counts["requeued"],
        )
    return counts


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


def sweep() -> None:
    """The periodic task of async-task:process nodes: recovery, then clean-up."""
    try:
        recover()
    except RedisError as exc:
        logger.warning("Task recovery skipped: %s", exc)
    cleanup()
