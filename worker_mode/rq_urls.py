"""django-rq's queue pages behind worker_mode's permissions.

django-rq's own views ask only for ``is_staff``: any staff user could empty
``workflow:process``. Here viewing a queue, its jobs and workers needs
``worker_mode.view_cluster`` (as the Cluster page does), and changing one —
empty, requeue, delete, enqueue, stop, bulk actions — ``worker_mode.control_queues``
(superusers have both). Include it instead of ``django_rq.urls``::

    path("django-rq/", include("worker_mode.rq_urls")),

It keeps django-rq's namespace, so ``reverse("django_rq:jobs", ...)`` works. django-rq's
``stats.json`` and ``metrics`` are viewing too: they need a session with
``worker_mode.view_cluster`` here (scrapers use worker_mode's own ``/metrics`` and its token).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern
from django_rq.urls import get_admin_urlpatterns, get_api_urlpatterns
from rq.exceptions import NoSuchJobError

VIEW_PERMISSION = "worker_mode.view_cluster"
CONTROL_PERMISSION = "worker_mode.control_queues"
#: django-rq's views that change a queue or a job.
CONTROL_VIEWS = frozenset(
    {
        "clear",
        "requeue_all",
        "delete_failed_jobs",
        "delete_job",
        "requeue_job",
        "enqueue_job",
        "stop_job",
        "confirm_action",
        "actions",
    }
)


def guarded(view: Callable[..., HttpResponse], permission: str) -> Callable[..., HttpResponse]:
    """``view`` for active staff users with ``permission``; others get the login page or a 403."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(permission):
            raise PermissionDenied(f"Permission {permission} required.")
        try:
            return view(request, *args, **kwargs)
        except NOT_FOUND as exc:
            # django-rq answers a queue number, a worker or a job that does not exist (or a page
            # of a scheduler that is not installed) with an exception: a 404 here, not a 500.
            raise Http404(f"Not found: {type(exc).__name__}: {str(exc)[:200]}") from None

    return staff_member_required(wrapper)


#: What django-rq's views raise for a queue index, worker key or job id that does not exist.
NOT_FOUND = (IndexError, KeyError, ValueError, NoSuchJobError, ImproperlyConfigured)


def permission_for(name: str | None) -> str:
    return CONTROL_PERMISSION if name in CONTROL_VIEWS else VIEW_PERMISSION


app_name = "django_rq"
urlpatterns = [
    URLPattern(p.pattern, guarded(p.callback, permission_for(p.name)), p.default_args, p.name)
    for p in [*get_api_urlpatterns(), *get_admin_urlpatterns()]
]
