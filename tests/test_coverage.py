"""worker_mode.coverage: keys with queued work and no live node serving them, and where that is said."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import User

from worker_mode import coverage, enqueue, presence

pytestmark = pytest.mark.usefixtures("redis_conn")


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
