"""JSON API: trigger a workflow by key, read an execution with its jobs."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse

from api_tokens.auth import api_view, error, json_body

from . import triggers
from .exceptions import WorkflowFailed
from .models import Execution, Workflow


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
    """POST /api/workflows/<key>/trigger with a JSON object body: the execution's context."""
    try:
        context = json_body(request)
    except ValueError as exc:
        return error(400, str(exc))
    workflow = Workflow.objects.filter(key=key, enabled=True).first()
    if workflow is None:
        return error(404, f"No enabled workflow with key {key!r}.")
    try:
        execution = triggers.trigger_manually(workflow, context, user=request.user)
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
