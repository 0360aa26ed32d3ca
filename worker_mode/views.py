"""Health endpoints for load balancers and orchestrators.

``/healthz`` (liveness) answers 200 while the process runs. ``/readyz``
(readiness) answers 200 when the database answers and has every migration and
Redis answers, else 503 naming the failing part (and the pending migrations).
Both stay reachable on nodes that do not serve requests, because
WORKER_MODE_EXEMPT_PATHS lets them through the middleware. They are
unauthenticated by design and tell only "ok" or which part failed.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from redis import RedisError

from .coverage import uncovered_keys
from .node import current_mode, served_keys
from .queues import get_connection
from .registry import services
from .startup import pending_migrations

logger = logging.getLogger(__name__)


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _database_state() -> tuple[str, list[str]]:
    """("ok" | "failing" | "unmigrated", pending migrations)."""
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
        pending = pending_migrations()
    except DatabaseError:
        logger.warning("readyz: the database does not answer", exc_info=True)
        return "failing", []
    return ("unmigrated", pending) if pending else ("ok", [])


def _redis_ok() -> bool:
    # Every queue of a registered service must be reachable (usually one Redis).
    try:
        for key in services.keys():  # noqa: SIM118 (a registry, not a dict)
            get_connection(key).ping()
        return True
    except RedisError:
        logger.warning("readyz: Redis does not answer", exc_info=True)
        return False


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    database, pending = _database_state()
    checks = {"database": database, "redis": "ok" if _redis_ok() else "failing"}
    failing = [part for part, state in checks.items() if state != "ok"]
    mode = current_mode()
    body: dict = {
        "status": "failing" if failing else "ok",
        "checks": checks,
        "worker_mode": mode.raw,
        "serves_requests": mode.serves_requests,
        "services": list(served_keys(mode)),
    }
    if pending:
        body["pending_migrations"] = pending
        body["hint"] = "Run `manage.py migrate`."
    if failing:
        body["failing"] = failing
    elif mode.serves_requests:
        # Work queued for a service no live node serves: reported, but this node is still ready.
        try:
            body["uncovered"] = uncovered_keys()
        except RedisError:
            logger.warning("readyz: could not read the cluster's presence", exc_info=True)
    response = JsonResponse(body, status=503 if failing else 200)
    if failing:
        # The failing part is logged above (once per probe, at WARNING); Django would add an ERROR
        # "Service Unavailable" line for every probe of a node that is simply not ready yet.
        response._has_been_logged = True
    return response
