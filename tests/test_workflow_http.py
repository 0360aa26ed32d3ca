"""HTTP request nodes: private addresses refused unless allow-listed, statuses, bounded bodies."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError

from tests.conftest import build_workflow, drain
from workflows import outbound, triggers
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
                    "headers": {"Authorization": "Bearer {{ $context.data.token }}"},
                    "body": {"n": "{{ $context.data.n }}", "text": "n={{ $context.data.n }}"},
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
        outbound.request("GET", f"http://{host}:9/", headers={})


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


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254 (cloud metadata)
        ("64:ff9b:1::a00:1", False),  # local-use NAT64 of 10.0.0.1
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:c0a8:101::1", False),  # 6to4 of 192.168.1.1
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("::ffff:0:7f00:1", False),  # SIIT: IPv4-translated 127.0.0.1
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo, client 127.0.0.1
        ("fec0::1", False),  # site-local
        ("::1", False),
        ("fe80::1", False),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8: a public address
        ("2606:4700:4700::1111", True),
        ("8.8.8.8", True),
    ],
)
def test_ipv6_forms_are_judged_by_the_ipv4_address_they_carry(address, public):
    import ipaddress

    assert outbound.is_public(ipaddress.ip_address(address)) is public


def test_an_embedded_ipv4_address_may_be_allow_listed(settings):
    import ipaddress

    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["127.0.0.1"]
    assert outbound._allowed(ipaddress.ip_address("::ffff:127.0.0.1"), outbound.allowed_networks())
    assert not outbound._allowed(ipaddress.ip_address("::ffff:10.0.0.1"), outbound.allowed_networks())
    # Other forms reach a translator or relay, not the listed host: listed themselves, or refused.
    for other in ("64:ff9b::7f00:1", "2002:7f00:1::", "::127.0.0.1", "2001:0:4136:e378:8000:63bf:80ff:fffe"):
        assert not outbound._allowed(ipaddress.ip_address(other), outbound.allowed_networks()), other
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["64:ff9b::/96"]
    assert outbound._allowed(ipaddress.ip_address("64:ff9b::7f00:1"), outbound.allowed_networks())


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:99999/", "Port out of range"),
        ("http://[::1/", "Invalid IPv6 URL"),
        ("ftp://example.com/", "is not an http(s) URL"),
        ("http:///path-only", "is not an http(s) URL"),
        ("http://example.com/a b", "spaces or control characters"),
        ("http://example.com:0/", "has port 0"),
        ("http://" + "a" * 64 + ".example.com/", "cannot be looked up"),  # a label over 63 characters
    ],
)
def test_malformed_urls_are_refused_when_saved_and_fail_cleanly_when_run(server, url, problem):
    from workflows import nodes

    with pytest.raises(ValidationError, match=re.escape(problem)):
        nodes.check_config("http", {"url": url})
    workflow = http_workflow("{{ $context.data.url }}")
    execution, job = run(workflow, {"url": url, "n": 1, "token": "t"})
    assert execution.status == Execution.Status.FAILED and problem in execution.error


def test_header_values_cannot_smuggle_lines(server, settings):
    from workflows import nodes

    for headers in (
        {"X-A": "1\r\nX-B: 2"},
        {"X Y": "1"},
        {"X-é": "1"},
        {"X": "é€"},
        {"X": "\u2028"},
        {"": "1"},
    ):
        with pytest.raises(ValidationError, match="no spaces or colons"):
            nodes.check_config("http", {"url": "http://example.com/", "headers": headers})
    nodes.check_config(
        "http", {"url": "http://example.com/", "headers": {"X-Ok": "café {{ $context.data.n }}"}}
    )
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["127.0.0.1"]
    execution, job = run(http_workflow(f"{server}/hook"), {"n": 1, "token": "t\r\nX-Evil: 1"})
    assert execution.status == Execution.Status.FAILED and "without line breaks" in job.error
    assert Handler.received == []


class Drip(BaseHTTPRequestHandler):
    """Answers one byte every 0.2 s, for at most 20 s: each read gets data long before its timeout."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        self.wfile.flush()
        for _ in range(100):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)  # the drip rate of a slow peer: the behaviour simulated, not a wait

    def log_message(self, *args):
        pass


def test_the_timeout_bounds_the_whole_call_not_each_read(settings, redis_conn):
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["127.0.0.1"]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/drip"
        execution, job = run(http_workflow(url, timeout=1.5), {"n": 1, "token": "t"})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert execution.status == Execution.Status.FAILED
    assert "took longer than its 1.5 s timeout" in job.error
