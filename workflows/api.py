"""JSON API: trigger a workflow by key, read an execution with its jobs."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpRequest, JsonResponse

from api_tokens.auth import api_view, error, json_body
from worker_mode import storable

from . import triggers
from .exceptions import WorkflowFailed
from .models import Execution, Workflow
from .records import get_model


def execution_json(execution: Execution, *, jobs: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": execution.pk,
        "workflow": {"key": execution.workflow.key, "version": execution.workflow.version},
        "status": execution.status,
        "event": execution.event,
        "context": execution.context,
        "created_at": execution.created_at.isoformat(),
        "started_at": execution.started_at and execution.started_at.isoformat(),
        "finished_at": execution.finished_at and execution.finished_at.isoformat(),
        "node": execution.node_name,
        "worker": execution.worker,
        "attempts": execution.attempts,
        "error": execution.error,
    }
    if jobs:
        data["jobs"] = [
            {
                "node": job.node_key,
                "status": job.status,
                "result": job.result,
                "error": job.error,
                "runs": job.runs,
                "started_at": job.started_at.isoformat(),
                "finished_at": job.finished_at and job.finished_at.isoformat(),
            }
            for job in execution.jobs.all()
        ]
    return data


@api_view(permission="workflows.trigger_workflow", methods=("POST",))
def trigger(request: HttpRequest, key: str) -> JsonResponse:
    """POST /api/workflows/<key>/trigger with a JSON object body, the execution's ``$context.data``;
    or ``?record=<pk>`` to run a collection workflow on one of its records (body ignored)."""
    try:
        # Stored one level down, as $context.data: one level less for the body.
        data = json_body(request, max_depth=storable.MAX_DEPTH - 1)
    except ValueError as exc:
        return error(400, str(exc))
    workflow = Workflow.objects.filter(key=key, enabled=True).first()
    if workflow is None:
        return error(404, f"No enabled workflow with key {key!r}.")
    record = None
    if "record" in request.GET:
        if workflow.trigger_type != Workflow.Trigger.COLLECTION:
            return error(400, f"Workflow {key!r} has no collection: '?record=' is for collection workflows.")
        model = get_model(workflow.trigger_config.get("collection"))
        given = request.GET.getlist("record")
        if len(given) != 1:
            return error(400, "Give one record: ?record=<pk>.")
        pk = given[0]
        # As written: no spaces, no digits of other scripts (int() would read "١" as 1).
        whole = isinstance(model._meta.pk, models.AutoField | models.IntegerField)
        if not pk or not pk.isascii() or pk != pk.strip() or len(pk) > 100 or (whole and not pk.isdigit()):
            return error(404, f"No {model._meta.label} record {storable.text(pk, 60)!r}.")
        try:
            record = model._default_manager.filter(pk=pk).first()
        except (ValueError, TypeError, ValidationError):
            record = None
        if record is None:
            return error(404, f"No {model._meta.label} record {storable.text(pk, 60)!r}.")
        data = None
    try:
        execution = triggers.trigger_manually(workflow, data, user=request.user, record=record)
    except WorkflowFailed as exc:
        return error(422, str(exc), execution_status=exc.execution.status)
    if execution is None:
        return error(409, f"Workflow {key!r} is already running in this chain (stack limit).")
    return JsonResponse(execution_json(execution, jobs=workflow.sync), status=200 if workflow.sync else 202)


@api_view(permission="workflows.view_execution")
def execution_detail(request: HttpRequest, pk: int) -> JsonResponse:
    execution = Execution.objects.select_related("workflow").filter(pk=pk).first()
    if execution is None:
        return error(404, f"No execution {pk}.")
    return JsonResponse(execution_json(execution))
