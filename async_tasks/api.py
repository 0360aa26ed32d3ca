"""JSON API: start imports and exports, read, download and cancel tasks.

Any active user may use it for the models their permissions allow (add/change to
import, view to export); a user sees only their own tasks, except staff with
``async_tasks.view_all_tasks``. Authentication: a session with CSRF, or a token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse

from api_tokens.auth import api_view, error, json_body
from worker_mode import storable

from . import exporter, storage, tasks
from .conf import conf
from .exceptions import AsyncTaskError, FileRejected
from .importer import Mode
from .models import AsyncTask
from .spec import ModelSpec, get_spec


def visible_tasks(user: Any) -> QuerySet[AsyncTask]:
    """The tasks ``user`` may see: their own, or all for staff with async_tasks.view_all_tasks."""
    tasks_ = AsyncTask.objects.select_related("owner")
    if user.is_active and user.is_staff and user.has_perm("async_tasks.view_all_tasks"):
        return tasks_
    return tasks_.filter(owner=user)


def can_import(user: Any, spec: ModelSpec, mode: str) -> bool:
    opts = spec.model._meta
    needed = {Mode.INSERT: ["add"], Mode.SKIP: ["add"], Mode.UPDATE: ["add", "change"]}.get(mode, ["change"])
    return all(user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}") for action in needed)


def can_export(user: Any, spec: ModelSpec) -> bool:
    opts = spec.model._meta
    return user.has_perm(f"{opts.app_label}.view_{opts.model_name}")


def task_json(task: AsyncTask) -> dict[str, Any]:
    links: dict[str, str] = {"self": reverse("async_tasks:task", args=[task.pk])}
    if task.result_file:
        links["download"] = reverse("async_tasks:download", args=[task.pk])
    if task.error_file:
        links["errors"] = reverse("async_tasks:download", args=[task.pk]) + "?file=errors"
    if not task.finished:
        links["cancel"] = reverse("async_tasks:cancel", args=[task.pk])
    return {
        "id": task.pk,
        "kind": task.kind,
        "model": task.model,
        "format": task.format,
        "status": task.status,
        "owner": task.owner.get_username() if task.owner else None,
        "progress": {
            "done": task.done,
            "total": task.total,
            "percent": task.percent,
            "yielding": task.pace is not None and task.status == AsyncTask.Status.RUNNING,
            "pace": task.pace if task.status == AsyncTask.Status.RUNNING else None,
        },
        "summary": task.summary,
        "parameters": task.parameters,
        "source_name": task.source_name,
        "error": task.error,
        "cancel_requested": task.cancel_requested,
        "node": task.node_name,
        "worker": task.worker,
        "created_at": task.created_at.isoformat(),
        "started_at": task.started_at and task.started_at.isoformat(),
        "finished_at": task.finished_at and task.finished_at.isoformat(),
        "expires_at": task.expires_at and task.expires_at.isoformat(),
        "links": links,
    }


def _limit_upload(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    # Refuse an oversized body before anything reads it (the CSRF check would parse it).
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > conf.ASYNC_TASKS_MAX_UPLOAD_SIZE + 64 * 1024:
            return error(413, f"The upload exceeds {conf.ASYNC_TASKS_MAX_UPLOAD_SIZE} bytes.")
        return view(request, *args, **kwargs)

    return wrapper


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _flag(name: str, value: Any) -> bool:
    """A yes/no form field; AsyncTaskError (a 400) for anything else."""
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise FileRejected(
        f"'{name}' must be true or false (1/0, yes/no, on/off), not {storable.text(value, 40)!r}."
    )


@_limit_upload
@api_view(methods=("POST",), staff=False)
def start_import(request: HttpRequest, label: str) -> JsonResponse:
    """POST /api/import/<app.model>, multipart: file, and optional mode, format, encoding,
    delimiter, sheet, fire_workflows."""
    try:
        spec = get_spec(label)
    except AsyncTaskError as exc:
        return error(404, str(exc))
    mode = request.POST.get("mode") or Mode.INSERT
    if mode in Mode.choices and not can_import(request.user, spec, mode):
        return error(403, f"You may not import into {spec.label} in mode {storable.text(mode, 60)!r}.")
    upload = request.FILES.get("file")
    if upload is None:
        return error(400, "Send the file to import in the multipart field 'file'.")
    if upload.size > conf.ASYNC_TASKS_MAX_UPLOAD_SIZE:
        return error(413, f"The upload exceeds {conf.ASYNC_TASKS_MAX_UPLOAD_SIZE} bytes.")
    try:
        task = tasks.create_import(
            request.user,
            spec.label,
            upload,
            name=upload.name or "upload",
            fmt=request.POST.get("format") or None,
            size=upload.size,
            mode=mode,
            encoding=request.POST.get("encoding") or None,
            delimiter=request.POST.get("delimiter") or None,
            sheet=request.POST.get("sheet") or None,
            fire_workflows=_flag("fire_workflows", request.POST.get("fire_workflows", "")),
        )
    except AsyncTaskError as exc:
        return error(400, str(exc))
    return JsonResponse(task_json(task), status=202)


@api_view(methods=("POST",), staff=False)
def start_export(request: HttpRequest, label: str) -> JsonResponse:
    """POST /api/export/<app.model>, JSON: {"format": "csv"|"xlsx", "fields": [...],
    "filters": {"active__exact": "1", "q": "text"}} (the admin changelist's filters)."""
    try:
        spec = get_spec(label)
    except AsyncTaskError as exc:
        return error(404, str(exc))
    if not can_export(request.user, spec):
        return error(403, f"You may not export {spec.label}.")
    try:
        body = json_body(request)
    except ValueError as exc:
        return error(400, str(exc))
    fields = body.get("fields")
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(f, str) for f in fields)):
        return error(400, "'fields' must be a list of field names.")
    raw_filters = body.get("filters")
    if raw_filters is None:
        raw_filters = {}
    if not isinstance(raw_filters, dict):
        return error(400, "'filters' must be an object of changelist parameters.")
    filters = []
    for key, value in raw_filters.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            return error(400, f"Filter {storable.text(key, 60)!r} must be text or a list of texts.")
        filters.extend([key, item] for item in items)
    fmt = body.get("format")
    if fmt is not None and not isinstance(fmt, str):
        return error(400, "'format' must be 'csv' or 'xlsx'.")
    try:
        task = tasks.create_export(request.user, spec.label, fmt=fmt or "csv", fields=fields, filters=filters)
    except AsyncTaskError as exc:
        return error(400, str(exc))
    return JsonResponse(task_json(task), status=202)


@api_view(staff=False)
def task_list(request: HttpRequest) -> JsonResponse:
    """GET /api/tasks?status=&kind=&page=: the user's tasks, newest first, 50 a page."""
    tasks_ = visible_tasks(request.user)
    for name, choices in (("status", AsyncTask.Status.values), ("kind", AsyncTask.Kind.values)):
        value = request.GET.get(name)
        if value:
            if value not in choices:
                shown = storable.text(value, 40)
                return error(400, f"Unknown {name} {shown!r}; use one of: {', '.join(choices)}.")
            tasks_ = tasks_.filter(**{name: value})
    number = request.GET.get("page") or "1"
    if not number.isdigit() or int(number) < 1:
        return error(400, f"'page' must be a whole number from 1, not {storable.text(number, 40)!r}.")
    page = Paginator(tasks_, 50).get_page(number)
    return JsonResponse(
        {
            "results": [task_json(t) for t in page],
            "page": page.number,
            "pages": page.paginator.num_pages,
            "count": page.paginator.count,
        }
    )


def _task_or_404(request: HttpRequest, pk: int) -> AsyncTask | None:
    return visible_tasks(request.user).filter(pk=pk).first()


@api_view(staff=False)
def task_detail(request: HttpRequest, pk: int) -> JsonResponse:
    task = _task_or_404(request, pk)
    if task is None:
        return error(404, f"No task {pk}.")
    return JsonResponse(task_json(task))


@api_view(methods=("POST",), staff=False)
def task_cancel(request: HttpRequest, pk: int) -> JsonResponse:
    task = _task_or_404(request, pk)
    if task is None:
        return error(404, f"No task {pk}.")
    if not tasks.cancel(task):
        return error(409, f"Task {pk} has already finished ({task.status}).")
    task.refresh_from_db()
    return JsonResponse(task_json(task), status=202)


@api_view(staff=False)
def task_download(request: HttpRequest, pk: int) -> HttpResponse:
    """GET /api/tasks/<id>/download: the export; ?file=errors: the import's error report."""
    task = _task_or_404(request, pk)
    if task is None:
        return error(404, f"No task {pk}.")
    which = request.GET.get("file")
    if which not in (None, "errors"):
        return error(400, "'file' is 'errors' (the import's error report), or absent (the export).")
    return download_response(task, errors=which == "errors")


def download_response(task: AsyncTask, *, errors: bool = False) -> HttpResponse:
    """The task's file as an attachment with a generated name (shared by the API and the admin)."""
    path = task.error_file if errors else task.result_file
    if not path:
        what = "error report" if errors else "result file"
        return error(404, f"Task {task.pk} has no {what}.")
    try:
        handle = storage.get_storage().open(path, "rb")
    except FileNotFoundError:
        return error(410, f"The file of task {task.pk} is gone (expired or deleted).")
    model = task.model.rsplit(".", 1)[-1].lower()
    ext = "csv" if errors else task.format
    name = f"{model}-{task.kind}-{task.pk}{'-errors' if errors else ''}.{ext}"
    response = FileResponse(handle, as_attachment=True, filename=name)
    response["Content-Type"] = (
        "text/csv; charset=utf-8"
        if ext == "csv"
        else "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response


@api_view(staff=False)
def template(request: HttpRequest, label: str) -> HttpResponse:
    """GET /api/import/<app.model>/template?format=csv|xlsx: a header row of the allowed fields,
    for users who may import into the model (its add or change permission)."""
    try:
        spec = get_spec(label)
    except AsyncTaskError as exc:
        return error(404, str(exc))
    if not any(can_import(request.user, spec, mode) for mode in (Mode.INSERT, Mode.UPDATE_ONLY)):
        return error(403, f"You may not import into {spec.label}.")
    return template_response(spec, request.GET.get("format", "csv"))


def template_response(spec: ModelSpec, fmt: str) -> HttpResponse:
    import io

    if fmt not in AsyncTask.Format.values:
        return error(400, f"Unknown format {storable.text(fmt, 60)!r}; formats: csv, xlsx.")
    out = io.BytesIO()
    exporter.export(spec.model._default_manager.none(), list(spec.fields), fmt, out)
    out.seek(0)
    name = f"{spec.model._meta.model_name}-template.{fmt}"
    return FileResponse(out, as_attachment=True, filename=name)
