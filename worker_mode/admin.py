"""The admin's Cluster page: live nodes and, per service key, queue depth, running, failed, nodes."""

from __future__ import annotations

import time

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from redis import RedisError

from .coverage import cluster_report
from .models import Cluster


def _unregister_django_rq_dashboard() -> None:
    # django-rq's own admin entry serves its queue views to any staff user (emptying queues
    # included); the Cluster page links to the guarded ones (worker_mode.rq_urls) instead.
    from django_rq.models import Dashboard

    if admin.site.is_registered(Dashboard):
        admin.site.unregister(Dashboard)


_unregister_django_rq_dashboard()


def _queue_links() -> dict[str, str]:
    # django-rq's views number queues in the order of get_queues_list() (sorted by name), not in
    # the order of RQ_QUEUES: the index must come from the same list.
    from django_rq.settings import get_queues_list

    links = {}
    for index, name in enumerate(queue["name"] for queue in get_queues_list()):
        try:
            links[name] = reverse("django_rq:jobs", args=[index])
        except NoReverseMatch:  # django-rq's views are not installed in this site
            break
    return links


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Cluster",
            "opts": self.model._meta,
            "error": "",
            "report": None,
        }
        try:
            report = cluster_report()
        except RedisError as exc:
            context["error"] = f"Redis does not answer: {exc}"
        else:
            now = time.time()
            for entry in report["entries"]:
                entry["heartbeat_ago"] = round(now - entry.get("heartbeat_at", entry["started_at"]))
                entry["started"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["started_at"]))
            links = _queue_links()
            for row in report["services"]:
                row["link"] = links.get(row["queue"], "")
            context["report"] = report
        return TemplateResponse(request, "admin/worker_mode/cluster.html", context)
