"""Workflows across real processes: which node runs them, duplicates, and a worker killed mid-execution."""

from __future__ import annotations

import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq import Worker

from tests.conftest import build_workflow, free_port, shared_database_url, wait_for_http, wait_until
from workflows import engine, triggers
from workflows.models import Execution, Job

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

NODES = [
    {"key": "first", "type": "calculation", "config": {"expression": "{{ $context.data.n }} + 1"}},
    {
        "key": "second",
        "type": "calculation",
        "upstream": "first",
        "config": {"expression": "{{ $jobs.first }} * 10"},
    },
]


@pytest.fixture
def env(site_env):
    """Node processes share this test's database (committed data: a transactional test)."""
    url = shared_database_url()
    return {**site_env, "DATABASE_URL": url, "CONN_MAX_AGE": "0"}


def test_a_request_only_node_never_runs_executions_a_workflow_node_does(start_node, env, redis_conn):
    execution = triggers.trigger_manually(build_workflow(NODES), {"n": 1})
    port = free_port()
    web = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "!", **env)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", web)
    other = start_node(["runworkers", "--burst"], "async-task:process", **{**env, "NODE_NAME": "imports"})
    assert other.wait(60) == 0
    assert not [w for w in Worker.all(connection=redis_conn) if "workflow:process" in w.queue_names()]
    execution.refresh_from_db()
    assert execution.status == "queued" and redis_conn.llen("rq:queue:workflow:process") == 1
    worker = start_node(["runworkers", "--burst"], "workflow:process", **{**env, "NODE_NAME": "flows"})
    assert worker.wait(60) == 0, worker.log
    execution.refresh_from_db()
    assert (execution.status, execution.node_name) == ("resolved", "flows")
    assert Job.objects.get(execution=execution, node_key="second").result == 20


def test_duplicate_messages_across_worker_processes_run_it_once(start_node, env, redis_conn):
    execution = triggers.trigger_manually(build_workflow(NODES), {"n": 1})
    for _ in range(5):
        engine.dispatch(execution)
    worker = start_node(["runworkers", "--burst", "--processes", "3"], "workflow:process", **env)
    assert worker.wait(60) == 0, worker.log
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == ("resolved", 1)
    assert [j.runs for j in Job.objects.filter(execution=execution)] == [1, 1]


class SlowHook(BaseHTTPRequestHandler):
    calls: list[str] = []
    release = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        SlowHook.calls.append(self.path)
        SlowHook.release.wait(30)
        payload = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_an_execution_of_a_killed_worker_is_resumed(start_node, env, redis_conn):
    SlowHook.calls, SlowHook.release = [], threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowHook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        workflow = build_workflow(
            [
                NODES[0],
                {
                    "key": "hook",
                    "type": "http",
                    "upstream": "first",
                    "config": {
                        "url": f"http://127.0.0.1:{httpd.server_address[1]}/hook",
                        "body": {},
                        "timeout": 30,
                    },
                },
                {
                    "key": "last",
                    "type": "calculation",
                    "upstream": "hook",
                    "config": {"expression": "{{ $jobs.first }}"},
                },
            ]
        )
        execution = triggers.trigger_manually(workflow, {"n": 1})
        node = start_node(
            ["runworkers"],
            "workflow:process",
            **{**env, "NODE_NAME": "victim", "WORKFLOWS_HTTP_ALLOWED_NETWORKS": "127.0.0.1"},
        )
        wait_until(lambda: SlowHook.calls, timeout=30)
        execution.refresh_from_db()
        assert execution.status == "running" and execution.worker.startswith("victim.shared.0.")
        assert (execution.node_name, execution.worker) == ("victim", f"victim.shared.0.{execution.pid}")
        killed = execution.pid
        os.kill(killed, signal.SIGKILL)  # mid-node, like the OOM killer
        SlowHook.release.set()

        def finished():
            execution.refresh_from_db()
            return execution.status in Execution.FINISHED

        wait_until(finished, timeout=45)
        assert execution.status == "resolved", (execution.error, node.log)
        assert execution.attempts == 2
        runs = {j.node_key: j.runs for j in Job.objects.filter(execution=execution)}
        assert runs == {"first": 1, "hook": 2, "last": 1}
        assert len(SlowHook.calls) == 2  # HTTP is at-least-once; database effects are exactly-once
        assert f"queued again (attempt 1 of 3 done): its process (pid {killed})" in node.log
    finally:
        SlowHook.release.set()
        httpd.shutdown()
        httpd.server_close()
