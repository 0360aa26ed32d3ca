"""A synchronous workflow that rejects a write, outside the admin forms and the API views that
handle it themselves, answers 422 with the workflow and its reason instead of a bare 500."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import format_html

from .collection_admin import rejection_message
from .exceptions import WorkflowFailed


class WorkflowRejectionMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, WorkflowFailed):
            return None
        execution = exception.execution
        message = rejection_message(exception)
        if request.path.startswith("/api/") or "json" in request.headers.get("Accept", ""):
            return JsonResponse(
                {
                    "error": message,
                    "workflow": execution.workflow.key,
                    "execution_status": execution.status,
                },
                status=422,
            )
        page = format_html(
            "<!doctype html><title>Not saved</title><h1>Not saved</h1><p>{}</p>"
            '<p><a href="javascript:history.back()">Back</a></p>',
            message,
        )
        return HttpResponse(page, status=422)
