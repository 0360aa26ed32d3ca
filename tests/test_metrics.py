"""worker_mode.metrics: /metrics for autoscalers, behind a token or the view_cluster permission."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from worker_mode import presence


@pytest.mark.django_db
def test_metrics_for_autoscalers(client, settings, redis_conn):
    assert client.get("/metrics").status_code == 401
    settings.WORKER_MODE_METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    redis_conn.rpush("rq:queue:async-task:process", "a", "b")
    heartbeat = presence.announce("workers", processes=3, services=["workflow:process"])
    try:
        response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    finally:
        heartbeat.stop()
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    lines = set(text.splitlines())
    assert 'worker_mode_service_queued_jobs{service="async-task:process"} 2.0' in lines
    assert 'worker_mode_service_uncovered{service="async-task:process"} 1.0' in lines
    assert 'worker_mode_service_nodes{service="workflow:process"} 1.0' in lines
    assert 'worker_mode_service_worker_processes{service="workflow:process"} 3.0' in lines
    assert 'worker_mode_service_uncovered{service="workflow:process"} 0.0' in lines
    assert 'rq_jobs{queue="async-task:process",status="queued"} 2.0' in lines  # django-rq's collector
    staff = User.objects.create_user("ops", password="pw-ops-12345", is_staff=True)
    client.force_login(staff)
    assert client.get("/metrics").status_code == 401  # staff, but not allowed to see the cluster
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="view_cluster"))
    assert client.get("/metrics").status_code == 200
