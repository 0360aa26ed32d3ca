"""Answer 503 on nodes whose WORKER_MODE does not serve HTTP requests; count the requests it does
serve, for pacing (``worker_mode.pacing``: background work yields the database while they wait)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse

from . import pacing
from .conf import conf


def is_exempt(path: str, exempt_paths: tuple[str, ...]) -> bool:
    """Exact match, or a prefix match for entries that end in '/'."""
    return any(
        path == exempt or (exempt.endswith("/") and path.startswith(exempt)) for exempt in exempt_paths
    )


def _view(request: HttpRequest) -> str:
    """The view's route pattern (a bounded set, unlike paths), for its latency baseline."""
    match = getattr(request, "resolver_match", None)
    return getattr(match, "route", None) or getattr(match, "view_name", None) or "-"


def counted() -> bool:
    """Whether this node counts its requests for pacing (every request: health probes are too
    rare and short to make pressure on their own)."""
    return pacing.enabled()


def rejection(request: HttpRequest) -> HttpResponse | None:
    """The 503 for this request, or None when this node should answer it."""
    mode = conf.worker_mode()
    if mode.serves_requests or is_exempt(request.path_info, conf.WORKER_MODE_EXEMPT_PATHS):
        return None
    response = JsonResponse(
        {
            "error": "service_unavailable",
            "detail": "This node does not serve HTTP requests.",
            "worker_mode": mode.raw,
        },
        status=503,
    )
    response["Cache-Control"] = "no-store"
    # An expected answer on this node, not a server error: keep it out of the
    # django.request error log (Django's own flag for "already logged").
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


class WorkerModeMiddleware:
    """Put it first in MIDDLEWARE: nothing above it should answer on a worker node."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.async_mode:
            return self.__acall__(request)
        refused = rejection(request)
        if refused is not None:
            return refused
        if not pacing.enabled():  # (counted(), inlined)
            return self.get_response(request)
        # Inlined (Pressure.begin/record): this runs on every request of a request node.
        pressure = pacing.request_pressure()
        active = pressure.active
        started = active[id(request)] = time.monotonic()
        try:
            return self.get_response(request)
        finally:
            del active[id(request)]
            pressure.requests.append((started, time.monotonic(), _view(request)))
            if pressure._thread is None:
                pressure._start_thread()

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        refused = rejection(request)
        if refused is not None:
            return refused
        if not pacing.enabled():  # (counted(), inlined)
            return await self.get_response(request)
        # Inlined (Pressure.begin/record): this runs on every request of a request node.
        pressure = pacing.request_pressure()
        active = pressure.active
        started = active[id(request)] = time.monotonic()
        try:
            return await self.get_response(request)
        finally:
            del active[id(request)]
            pressure.requests.append((started, time.monotonic(), _view(request)))
            if pressure._thread is None:
                pressure._start_thread()
