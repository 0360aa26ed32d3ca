from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults
from django.views.decorators.http import require_safe


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """A landing page that says nothing about the node; the data lives behind the admin login."""
    return render(request, "home.html")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404: JSON under /api/ (clients parse it), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """400 (a request Django itself refuses, e.g. a multipart part it cannot parse): JSON under /api/."""
    if request.path.startswith("/api/"):
        reason = str(exception)[:200] if exception else ""
        return JsonResponse({"error": f"Bad request{': ' + reason if reason else ''}."}, status=400)
    return defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "Internal server error."}, status=500)
    return defaults.server_error(request)
