"""Faults on real processes, bounded in time: Redis restarted empty, Redis down while request
nodes serve, a rolling deploy (SIGTERM), a misconfigured node beside a working cluster.
(A killed workflow or import worker: test_e2e_workflows.py and test_e2e_async_tasks.py.)"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from api_tokens.models import ApiToken
from tests.conftest import (
    RedisServer,
    build_workflow,
    free_port,
    http_get,
    shared_database_url,
    wait_for_http,
    wait_until,
)
from workflows import triggers
from workflows.models import Execution

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

CALC = [{"key": "double", "type": "calculation", "config": {"expression": "{{ $context.data.n }} * 2"}}]


@pytest.fixture
def own_redis(settings):
    server = RedisServer()
    server.start()
    settings.REDIS_URL = server.url
    yield server
    server.kill()


@pytest.fixture
def env(site_env, own_redis):
    url = shared_database_url()
    return {
        **site_env,
        "DATABASE_URL": url,
        "CONN_MAX_AGE": "0",
        "REDIS_URL": own_redis.url,
        "WORKER_MODE_RECOVERY_INTERVAL": "1",
        "WORKER_MODE_REQUEUE_INTERVAL": "1",
        "WORKER_MODE_QUEUED_GRACE": "1",
    }


def finished(queryset, count: int):
    def check():
        return queryset.filter(status__in=Execution.FINISHED).count() == count

    return check


def test_redis_restarted_empty_with_1000_queued_executions(start_node, env, own_redis):
    workflow = build_workflow(CALC)
    for n in range(1000):
        triggers.trigger_manually(workflow, {"n": n})
    assert redis.Redis.from_url(own_redis.url).llen("rq:queue:workflow:process") == 1000
    own_redis.kill()
    own_redis.start()  # back, empty: every message is gone, the rows are the truth
    assert redis.Redis.from_url(own_redis.url).llen("rq:queue:workflow:process") == 0
    node = start_node(["runworkers", "--processes", "2"], "workflow:process", **env)
    executions = Execution.objects.filter(workflow=workflow)
    wait_until(finished(executions, 1000), timeout=120, interval=0.5)
    assert set(executions.values_list("status", flat=True)) == {"resolved"}
    assert set(executions.values_list("attempts", flat=True)) == {1}  # none ran twice
    requeued = re.findall(r"workflows\.Execution: (\d+) queued row\(s\) had lost their message", node.log)
    # All found by the lost-message check, in one sweep or a few (a row a worker takes while a sweep
    # looks at it may be enqueued twice: the second message finds it claimed and does nothing).
    assert sum(map(int, requeued)) >= 1000


def test_redis_down_request_nodes_keep_serving_and_accepting_triggers(start_node, env, own_redis, admin_user):
    workflow = build_workflow(CALC, key="double")
    _, token = ApiToken.issue(admin_user, "faults")
    port = free_port()
    web = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "!", **env)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", web)
    own_redis.kill()

    def trigger(n: int) -> int:
        request = urllib.request.Request(
            f"{base}/api/workflows/double/trigger", data=json.dumps({"n": n}).encode(), method="POST"
        )
        request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    assert [trigger(n) for n in range(5)] == [202] * 5
    assert http_get(f"{base}/admin/login/")[0] == 200
    assert http_get(f"{base}/healthz")[0] == 200
    status, body = http_get(f"{base}/readyz")
    assert status == 503 and json.loads(body)["failing"] == ["redis"]
    executions = Execution.objects.filter(workflow=workflow)
    assert set(executions.values_list("status", flat=True)) == {"queued"}
    own_redis.start()
    start_node(["runworkers"], "workflow:process", **env)
    wait_until(finished(executions, 5), timeout=60, interval=0.5)
    assert sorted(executions.values_list("status", flat=True)) == ["resolved"] * 5


class SlowHook(BaseHTTPRequestHandler):
    delay = 2.0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(SlowHook.delay)  # a slow peer: the delay is the behaviour simulated, not a wait
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_sigterm_lets_the_running_execution_finish_and_queued_ones_wait(start_node, env):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowHook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        hook = {"url": f"http://127.0.0.1:{httpd.server_address[1]}/", "body": {}, "timeout": 10}
        workflow = build_workflow([{"key": "slow", "type": "http", "config": hook}])
        executions = [triggers.trigger_manually(workflow, {}) for _ in range(3)]
        node_env = {**env, "WORKFLOWS_HTTP_ALLOWED_NETWORKS": "127.0.0.1", "WORKER_MODE_SHUTDOWN_GRACE": "20"}
        node = start_node(["runworkers"], "workflow:process", **node_env)
        rows = Execution.objects.filter(workflow=workflow)
        wait_until(lambda: rows.filter(status="running").exists(), timeout=30)
        node.signal(signal.SIGTERM)  # a rolling deploy
        assert node.wait(30) == 0, node.log
        statuses = sorted(rows.values_list("status", flat=True))
        assert statuses == ["queued", "queued", "resolved"], node.log  # finished in the grace; none lost
        start_node(["runworkers"], "workflow:process", **node_env)  # the new version of the node
        wait_until(finished(rows, len(executions)), timeout=30)
        assert sorted(rows.values_list("status", flat=True)) == ["resolved"] * 3
        assert set(rows.values_list("attempts", flat=True)) == {1}
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_misconfigured_node_refuses_to_start_and_the_cluster_runs_on(start_node, env):
    workflow = build_workflow(CALC)
    good = start_node(["runworkers"], "workflow:process", **env)
    bad = start_node(["runnode", "--bind", f"127.0.0.1:{free_port()}"], "workflow:proces", **env)
    assert bad.wait(30) != 0
    assert "workflow:proces" in bad.log and "Did you mean 'workflow:process'?" in bad.log
    execution = triggers.trigger_manually(workflow, {"n": 4})
    rows = Execution.objects.filter(pk=execution.pk)
    wait_until(finished(rows, 1), timeout=30)
    assert rows.get().status == "resolved" and good.process.poll() is None
