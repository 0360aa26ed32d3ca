"""Prometheus metrics for autoscalers: django-rq's queue and worker metrics plus the cluster's own.

``GET /metrics`` (exempt from the 503, so every node can be scraped) answers in
the Prometheus text format with django-rq's collector (``rq_jobs{queue,status}``,
``rq_workers``, ``rq_job_successful_total``, ``rq_job_failed_total``) and:

- ``worker_mode_service_queued_jobs{service}``: jobs waiting, per service key;
- ``worker_mode_service_nodes{service}``: live nodes whose workers serve the key;
- ``worker_mode_service_worker_processes{service}``: their worker processes;
- ``worker_mode_service_uncovered{service}``: 1 when jobs wait and no node serves the key;
- ``worker_mode_node_processes{node,role}``: live node processes by role;
- ``worker_mode_service_pace{service}``: 1 at full speed, lower while its workers yield the
  database to requests (``worker_mode.pacing``);
- ``worker_mode_request_pressure{node}``: a request node's published pressure, 0 to 1.

Access: ``Authorization: Bearer <WORKER_MODE_METRICS_TOKEN>`` or a staff session with
``worker_mode.view_cluster`` (as the Cluster page).
"""

from __future__ import annotations

from hmac import compare_digest

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CollectorRegistry, exposition
from prometheus_client.core import GaugeMetricFamily

from .conf import conf


class ClusterCollector:
    def collect(self):
        from .coverage import cluster_report

        report = cluster_report()
        queued = GaugeMetricFamily(
            "worker_mode_service_queued_jobs", "Jobs waiting in the service's queue", labels=["service"]
        )
        nodes = GaugeMetricFamily(
            "worker_mode_service_nodes", "Live nodes whose workers serve the key", labels=["service"]
        )
        processes = GaugeMetricFamily(
            "worker_mode_service_worker_processes",
            "Worker processes of live nodes serving the key",
            labels=["service"],
        )
        uncovered = GaugeMetricFamily(
            "worker_mode_service_uncovered",
            "1 when jobs wait and no live node serves the key",
            labels=["service"],
        )
        node_processes = GaugeMetricFamily(
            "worker_mode_node_processes", "Live node processes by node and role", labels=["node", "role"]
        )
        pace = GaugeMetricFamily(
            "worker_mode_service_pace",
            "Share of the time the service's workers work rather than yield to requests (1: full speed)",
            labels=["service"],
        )
        pressure = GaugeMetricFamily(
            "worker_mode_request_pressure", "Request pressure a request node publishes (0-1)", labels=["node"]
        )
        for node, level in sorted(report["pacing"]["pressure"].items()):
            pressure.add_metric([node], level)
        for row in report["services"]:
            key = row["key"]
            pace.add_metric([key], row["pace"])
            queued.add_metric([key], row["queued"])
            nodes.add_metric([key], len(row["nodes"]))
            serving = [e for e in report["entries"] if e["role"] == "workers" and key in e["services"]]
            processes.add_metric([key], sum(e["processes"] for e in serving))
            uncovered.add_metric([key], 1 if row["uncovered"] else 0)
        counts: dict[tuple[str, str], int] = {}
        for entry in report["entries"]:
            counts[(entry["node"], entry["role"])] = counts.get((entry["node"], entry["role"]), 0) + 1
        for (node, role), count in sorted(counts.items()):
            node_processes.add_metric([node, role], count)
        yield from (queued, nodes, processes, uncovered, node_processes, pace, pressure)


_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    global _registry
    if _registry is None:
        from django_rq.contrib.prometheus import RQCollector

        _registry = CollectorRegistry(auto_describe=False)
        _registry.register(RQCollector())
        _registry.register(ClusterCollector())
    return _registry


def _authorized(request: HttpRequest) -> bool:
    token = conf.WORKER_MODE_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and compare_digest(given.strip().encode(), token.encode()):
        return True
    user = getattr(request, "user", None)
    # As the Cluster page: staff with worker_mode.view_cluster (superusers have it).
    return bool(
        user is not None and user.is_active and user.is_staff and user.has_perm("worker_mode.view_cluster")
    )


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        return JsonResponse(
            {
                "error": "Send 'Authorization: Bearer <WORKER_MODE_METRICS_TOKEN>', or log in as staff "
                "with the worker_mode.view_cluster permission."
            },
            status=401,
        )
    encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry()), content_type=content_type)
