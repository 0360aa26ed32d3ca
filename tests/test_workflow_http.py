"""HTTP request nodes: private addresses refused unless allow-listed, statuses, bounded bodies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import build_workflow, drain
from workflows import http, triggers
from workflows.exceptions import NodeFailed
from workflows.models import Execution, Job

pytestmark = pytest.mark.django_db(transaction=True)


POISON = {
    "/nan": b'{"a": NaN}',
    "/deep": b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    "/huge": b'{"a": ' + b"7" * 5000 + b"}",
    "/nul": b'{"a": "x\\u0000y"}',
    "/text": b"plain words, not JSON",
}


class Handler(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.received.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        status = 500 if self.path == "/fail" else 200
        payload = POISON.get(self.path) or (
            b"x" * 4096 if self.path == "/big" else json.dumps({"ok": True, "echo": body}).encode()
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(redis_conn):
    Handler.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def http_workflow(url, **config):
    return build_workflow(
        [
            {
                "key": "call",
                "type": "http",
                "config": {
                    "url": url,
                    "headers": {"Authorization": "Bearer {{ $context.token }}"},
                    "body": {"n": "{{ $context.n }}", "text": "n={{ $context.n }}"},
                    **config,
                },
            }
        ]
    )


def run(workflow, context):
    execution = triggers.trigger_manually(workflow, context)
    drain()
    execution.refresh_from_db()
    return execution, Job.objects.get(execution=execution)


def test_loopback_is_refused_by_default(server):
    execution, job = run(http_workflow(f"{server}/hook"), {"n": 1, "token": "t"})
    assert execution.status == Execution.Status.FAILED
    assert "private or local address" in job.error and "WORKFLOWS_HTTP_ALLOWED_NETWORKS" in job.error
    assert Handler.received == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "[::1]", "localhost", "0.0.0.0"]
)
def test_private_and_local_addresses_are_blocked(host):
    with pytest.raises(NodeFailed, match="private or local"):
        http.request("GET", f"http://{host}:9/", headers={})


def test_allow_listed_network_is_called_with_rendered_body(server, settings):
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    execution, job = run(http_workflow(f"{server}/hook"), {"n": 7, "token": "s3cret"})
    assert execution.status == Execution.Status.RESOLVED, execution.error
    assert Handler.received == [{"path": "/hook", "body": {"n": 7, "text": "n=7"}, "auth": "Bearer s3cret"}]
    assert job.result == {"status": 200, "data": {"ok": True, "echo": {"n": 7, "text": "n=7"}}}


def test_error_status_fails_unless_ignored(server, settings):
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["127.0.0.1"]
    execution, job = run(http_workflow(f"{server}/fail"), {"n": 1, "token": "t"})
    assert execution.status == Execution.Status.FAILED
    assert job.result["status"] == 500 and "HTTP 500" in job.error
    execution, job = run(http_workflow(f"{server}/fail", ignore_fail=True), {"n": 1, "token": "t"})
    assert execution.status == Execution.Status.RESOLVED


def test_response_body_is_bounded(server, settings):
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["127.0.0.1"]
    settings.WORKFLOWS_HTTP_MAX_RESPONSE_BYTES = 1024
    execution, job = run(http_workflow(f"{server}/big"), {"n": 1, "token": "t"})
    assert execution.status == Execution.Status.FAILED
    assert "larger than 1024 bytes" in job.error


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/nan", "failed", "NaN is not a number"),
        ("/deep", "failed", "nested deeper than 64 levels"),
        ("/huge", "failed", "a number that cannot be read"),
        ("/nul", "failed", "the NUL character"),
        ("/text", "resolved", ""),
    ],
)
def test_responses_the_database_cannot_store_fail_the_node_with_the_reason(
    server, settings, path, status, reason
):
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["127.0.0.1"]
    execution = triggers.trigger_manually(http_workflow(server + path), {"n": 1, "token": "t"})
    drain()
    execution.refresh_from_db()
    assert execution.status == status, execution.error
    assert reason in execution.error
    if status == "resolved":
        assert Job.objects.get(execution=execution).result["data"] == "plain words, not JSON"
