"""Authentication for JSON API views: a session (with CSRF) or ``Authorization: Bearer <token>``."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from worker_mode import storable

from .models import ApiToken, hash_token

#: How stale ``ApiToken.last_used_at`` may be.
LAST_USED_PRECISION = datetime.timedelta(seconds=60)


def error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _token_user(request: HttpRequest):
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=hash_token(raw.strip()), user__is_active=True)
        .first()
    )
    if token is None or (token.expires_at is not None and token.expires_at <= timezone.now()):
        return None
    now = timezone.now()
    # At most one write a minute per token: a busy client's reads stay reads.
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_PRECISION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def _csrf_failure(request: HttpRequest) -> JsonResponse | None:
    # The session path needs CSRF protection; the view itself is csrf_exempt for the token path.
    check = CsrfViewMiddleware(lambda r: None)
    check.process_request(request)
    rejected = check.process_view(request, lambda r: None, (), {})
    if rejected is not None:
        return error(403, "CSRF verification failed; send the X-CSRFToken header with a session.")
    return None


def api_view(
    *, permission: str | None = None, methods: tuple[str, ...] = ("GET",), staff: bool = True
) -> Callable:
    """JSON API view: authenticated (token or session + CSRF), active (staff unless ``staff=False``),
    optional permission; the view checks any per-object permission itself."""

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                response = error(405, f"Method {request.method} not allowed; use {', '.join(methods)}.")
                response["Allow"] = ", ".join(methods)
                return response
            user = _token_user(request)
            if user is None and "Authorization" in request.headers:
                return error(401, "Invalid or expired API token.")
            if user is None:
                user = request.user
                if not user.is_authenticated:
                    return error(
                        401, "Authentication required: log in or send 'Authorization: Bearer <token>'."
                    )
                failure = _csrf_failure(request)
                if failure is not None:
                    return failure
            request.user = user
            if not user.is_active:
                return error(403, "Inactive user.")
            if staff and not user.is_staff:
                return error(403, "Staff users only.")
            if permission and not user.has_perm(permission):
                return error(403, f"Permission {permission} required.")
            return view(request, *args, **kwargs)

        wrapper.allowed_methods = methods  # read by the OpenAPI document's test
        return wrapper

    return decorate


def json_body(request: HttpRequest, *, max_depth: int = storable.MAX_DEPTH) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); raises ValueError with a readable message.

    Refused, so that what is accepted can be stored: invalid JSON, NaN and Infinity,
    numbers beyond what JSON can carry (``1e400``), the NUL character, lone surrogates,
    and nesting deeper than ``worker_mode.storable.MAX_DEPTH`` levels.
    """
    if not request.body:
        return {}
    data = storable.loads(request.body, max_depth=max_depth)  # NotStorable is a ValueError naming the problem
    if not isinstance(data, dict):
        raise ValueError("The body must be a JSON object.")
    return data
