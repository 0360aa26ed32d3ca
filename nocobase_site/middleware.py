"""Refuse query strings the database cannot compare: a NUL character in any parameter is a 400.

PostgreSQL's text type cannot hold NUL, so a list filter such as
``/admin/workflows/execution/?status__exact=%00`` would otherwise reach the
database and end in a 500. Forms are already protected (Django's form fields
refuse NUL); query strings feed admin filters, searches and API lists directly.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

MESSAGE = "The query string contains the NUL character (%00), which no parameter may contain."


def has_nul(request: HttpRequest) -> bool:
    return "\x00" in request.path or any(
        "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
    )


class RejectNulMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if has_nul(request):
            if request.path.startswith("/api/"):
                return JsonResponse({"error": MESSAGE}, status=400)
            return HttpResponseBadRequest(MESSAGE, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
