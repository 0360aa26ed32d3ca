"""worker_mode.presence: node processes announce themselves in Redis with a heartbeat and a TTL."""

from __future__ import annotations

import pytest

from tests.conftest import free_port, wait_for_http, wait_until
from worker_mode import coverage, presence

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
    wait_until(lambda: presence.live_entries() == [], timeout=5)


def test_the_heartbeat_thread_renews_the_entry():
    heartbeat = presence.Heartbeat(presence.describe_process("node"), interval=0.1, ttl=0.3).start()
    try:
        first = heartbeat.entry["heartbeat_at"]
        # Twice the TTL after the first beat: alive only because the thread renewed it.
        wait_until(lambda: heartbeat.entry["heartbeat_at"] > first + 0.6, timeout=5)
        assert [e["role"] for e in presence.live_entries()] == ["node"]
    finally:
        heartbeat.stop()


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


@pytest.mark.processes
def test_runnode_announces_the_workers_it_runs(start_node):
    port = free_port()
    node = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "workflow:process", NODE_NAME="all-1")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", node)
    wait_until(lambda: len(presence.live_entries()) == 3, timeout=30)
    entries = {e["role"]: e for e in presence.live_entries()}
    assert sorted(entries) == ["http", "node", "workers"]
    assert entries["workers"]["pid"] == entries["node"]["pid"]  # runnode runs the workers itself
    assert entries["workers"]["services"] == ["workflow:process"]
    assert coverage.serving_nodes("workflow:process", presence.live_entries()) == ["all-1"]


def test_the_version_is_worker_modes_own():
    import worker_mode

    # The release the django-worker-mode build reads (tests/test_package.py checks the wheel's).
    assert presence.describe_process("x")["version"] == worker_mode.__version__
    from pathlib import Path

    assert "nocobase" not in Path(presence.__file__).read_text()  # the reusable app names no site
