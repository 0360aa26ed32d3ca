"""Node presence in Redis, uncovered service keys, and where they are reported."""

from __future__ import annotations

import json
import logging
import time
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import free_port, wait_for_http, wait_until
from worker_mode import coverage, enqueue, presence

pytestmark = pytest.mark.usefixtures("redis_conn")


def test_an_announced_process_is_listed_with_its_details_until_it_stops():
    heartbeat = presence.announce("workers", processes=3, services=["workflow:process"])
    try:
        (entry,) = presence.live_entries()
        assert entry["role"] == "workers" and entry["processes"] == 3
        assert entry["services"] == ["workflow:process"]
        for field in ("node", "host", "pid", "started_at", "heartbeat_at", "version"):
            assert entry[field] not in (None, ""), field
        assert entry["worker_mode"] == "" and entry["serves_requests"] is True  # the test settings' mode
    finally:
        heartbeat.stop()
    assert presence.live_entries() == []


def test_an_entry_lapses_when_its_heartbeats_stop():
    heartbeat = presence.Heartbeat(presence.describe_process("http"), ttl=0.3)
    assert heartbeat.beat()  # one beat, no thread: like a process that was killed afterwards
    assert len(presence.live_entries()) == 1
    time.sleep(0.4)
    assert presence.live_entries() == []


def test_the_heartbeat_thread_renews_the_entry():
    heartbeat = presence.Heartbeat(presence.describe_process("node"), interval=0.1, ttl=0.3).start()
    try:
        time.sleep(0.6)  # twice the TTL: alive only because the thread renewed it
        assert [e["role"] for e in presence.live_entries()] == ["node"]
    finally:
        heartbeat.stop()


def test_a_key_with_queued_work_and_no_serving_node_is_uncovered(redis_conn):
    assert coverage.uncovered_keys(cached=False) == []  # nothing queued: no alarm
    redis_conn.rpush("rq:queue:async-task:process", "some-job-id")
    assert coverage.uncovered_keys(cached=False) == ["async-task:process"]
    http = presence.announce("http", services=["async-task:process"])  # not a worker: does not count
    workers = presence.announce("workers", services=["async-task:process"])
    try:
        assert coverage.uncovered_keys(cached=False) == []
        status = {row["key"]: row for row in coverage.service_status()}
        assert status["async-task:process"]["queued"] == 1
        assert status["async-task:process"]["nodes"] == [presence.describe_process("x")["node"]]
        assert status["workflow:process"]["uncovered"] is False  # empty queue
    finally:
        workers.stop()
        http.stop()


@pytest.mark.django_db(transaction=True)
def test_enqueue_warns_once_a_minute_while_nobody_serves_the_key(caplog):
    with caplog.at_level(logging.WARNING, logger="worker_mode.coverage"):
        enqueue("async-task:process", "os.getpid")
        enqueue("async-task:process", "os.getpid")
    warnings = [r.getMessage() for r in caplog.records if r.name == "worker_mode.coverage"]
    assert len(warnings) == 1
    assert warnings[0].startswith("No live node serves async-task:process")
    coverage.forget()
    caplog.clear()
    heartbeat = presence.announce("workers", services=["async-task:process"])
    try:
        with caplog.at_level(logging.WARNING, logger="worker_mode.coverage"):
            enqueue("async-task:process", "os.getpid")
        assert not [r for r in caplog.records if r.name == "worker_mode.coverage"]
    finally:
        heartbeat.stop()


@pytest.mark.django_db
def test_readyz_reports_uncovered_keys_without_failing(client, redis_conn):
    redis_conn.rpush("rq:queue:workflow:process", "job")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["uncovered"] == ["workflow:process"]


@pytest.mark.django_db
def test_the_admin_shows_a_banner_for_uncovered_keys(client, redis_conn):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-123"))
    assert b'id="uncovered-services"' not in client.get("/admin/").content
    redis_conn.rpush("rq:queue:async-task:process", "job")
    coverage.forget()
    page = client.get("/admin/").content.decode()
    assert 'id="uncovered-services"' in page and "No live node serves async-task:process" in page


def test_workermode_cluster_lists_nodes_services_and_uncovered_keys(redis_conn):
    redis_conn.rpush("rq:queue:async-task:process", "job")
    heartbeat = presence.announce("workers", processes=2, services=["workflow:process"])
    try:
        out = StringIO()
        with pytest.raises(CommandError, match="^Uncovered service keys: async-task:process$"):
            call_command("workermode", "--cluster", stdout=out)
        text = out.getvalue()
        assert "Live node processes: 1" in text and "workers" in text and "x2" in text
        assert "async-task:process     queued 1" in text and "UNCOVERED" in text
        out = StringIO()
        with pytest.raises(CommandError):
            call_command("workermode", "--cluster", "--json", stdout=out)
        report = json.loads(out.getvalue())
        assert report["uncovered"] == ["async-task:process"]
        assert [e["role"] for e in report["entries"]] == ["workers"]
        assert {r["key"]: r["nodes"] for r in report["services"]}["workflow:process"] == [
            report["entries"][0]["node"]
        ]
    finally:
        heartbeat.stop()


@pytest.mark.processes
def test_real_nodes_announce_themselves_and_leave_on_shutdown(start_node, site_env):
    port = free_port()
    web = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "!", NODE_NAME="web-1")
    workers = start_node(["runworkers"], "workflow:process", NODE_NAME="flows-1")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", web)

    def roles():
        return sorted((e["node"], e["role"]) for e in presence.live_entries())

    wait_until(lambda: len(roles()) == 3, timeout=30)
    assert roles() == [("flows-1", "workers"), ("web-1", "http"), ("web-1", "node")]
    entries = {(e["node"], e["role"]): e for e in presence.live_entries()}
    assert entries[("web-1", "http")]["serves_requests"] is True
    assert entries[("flows-1", "workers")]["services"] == ["workflow:process"]
    assert coverage.serving_nodes("workflow:process", presence.live_entries()) == ["flows-1"]
    workers.stop()
    assert roles() == [("web-1", "http"), ("web-1", "node")]  # a stopped node withdraws at once
    web.stop()
    assert roles() == []


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


def test_workermode_cluster_exits_non_zero_while_a_key_is_uncovered(redis_conn):
    from worker_mode.management.commands.workermode import UNCOVERED_EXIT

    out = StringIO()
    call_command("workermode", "--cluster", stdout=out)  # nothing queued: exit 0
    redis_conn.rpush("rq:queue:workflow:process", "job")
    coverage.forget()
    for args in (["--cluster"], ["--cluster", "--json"]):
        out = StringIO()
        with pytest.raises(CommandError) as raised:
            call_command("workermode", *args, stdout=out)
        assert raised.value.returncode == UNCOVERED_EXIT == 3
        assert "workflow:process" in str(raised.value)
        assert "workflow:process" in out.getvalue()  # the report is printed before the exit


def test_the_version_is_that_of_the_distribution_providing_worker_mode():
    from importlib.metadata import packages_distributions, version

    (name,) = set(packages_distributions()["worker_mode"])  # this checkout installs one distribution
    assert presence.describe_process("x")["version"] == version(name)
    from pathlib import Path

    assert "nocobase" not in Path(presence.__file__).read_text()  # the reusable app names no site
