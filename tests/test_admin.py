"""worker_mode.admin: the Cluster page."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from worker_mode import presence


@pytest.mark.django_db
def test_the_cluster_admin_page(client, redis_conn):
    from django.contrib.auth.models import Permission

    user = User.objects.create_user("viewer", password="pw-view-12345", is_staff=True)
    client.force_login(user)
    assert client.get("/admin/worker_mode/cluster/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_cluster"))
    redis_conn.rpush("rq:queue:async-task:process", "job")
    heartbeat = presence.announce("workers", processes=2, services=["workflow:process"])
    http = presence.announce("http", services=[])
    try:
        page = client.get("/admin/worker_mode/cluster/")
    finally:
        heartbeat.stop()
        http.stop()
    assert page.status_code == 200
    html = page.content.decode()
    assert (
        "<td>requests</td>" in html
        and "+ requests" not in html
        and "<td>requests, workflow:process</td>" in html
    )
    assert 'id="cluster-uncovered"' in html and "async-task:process" in html
    assert '<a href="/django-rq/queues/0/">queue</a>' in html
    assert "<td>workers</td>" in html and "workflow:process" in html
    assert b"Cluster" in client.get("/admin/").content  # listed on the index
