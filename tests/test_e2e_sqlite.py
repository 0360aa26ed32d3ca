"""The embedded default holds: SQLite (what `make run` uses) with concurrent writers, in real processes.

An all-in-one node (requests + two worker processes) imports a large file while another process saves
orders (each fires the demo workflow, whose workers write and whose HTTP node posts back to the same
node) and a cancel arrives over the API. Nothing fails with "database is locked". And a node started
on a database that was never migrated says so once, answers /readyz 503, and starts when migrated.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import ROOT, free_port, http_get, product_csv, wait_for_http, wait_until

pytestmark = [pytest.mark.processes, pytest.mark.engine_independent]  # SQLite by design

SETUP = """
from django.contrib.auth.models import User
from api_tokens.models import ApiToken
user = User.objects.create_superuser("admin", "admin@example.com", "pw-admin-12345")
print(ApiToken.issue(user, "test")[1])
"""

SAVE_ORDERS = """
from django.db import transaction
from catalog.models import Order, Product
product = Product.objects.get(sku="DEMO-1")
saved = 0
for i in range(150):
    with transaction.atomic():  # as the admin's change form does
        Order.objects.create(product=product, quantity=1, customer=f"shop {i}")
    saved += 1
    if saved == 30:
        print("saving", flush=True)  # the test clicks Cancel now, while the saves go on
print("saved", saved)
"""


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run a manage.py command; the last line it printed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def api(method: str, url: str, token: str, data: bytes | None = None, content_type: str = "") -> dict:
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def multipart(name: str, data: bytes, **fields: str) -> tuple[bytes, str]:
    boundary = "----embedded-test"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: text/csv\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_sqlite_holds_an_import_beside_saves_workflows_and_a_cancel(start_node, site_env):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **site_env,
        "WORKER_MODE_PROCESSES": "2",
        "ASYNC_TASKS_BATCH_SIZE": "500",
        "WORKFLOWS_HTTP_ALLOWED_NETWORKS": "127.0.0.1",
    }
    token = manage(env, "shell", "-c", SETUP)
    manage(env, "loaddemo", "--webhook-url", f"{base}/catalog/webhook")
    node = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "", **env)
    wait_for_http(f"{base}/healthz", node)
    body, content_type = multipart("big.csv", product_csv(300_000))
    task = api("POST", f"{base}/api/import/catalog.Product", token, body, content_type)

    def importing():
        current = api("GET", f"{base}/api/tasks/{task['id']}", token)
        return current["status"] == "running" and current["progress"]["done"] >= 2000

    wait_until(importing, timeout=60, interval=0.2)
    saver = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", SAVE_ORDERS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in saver.stdout:  # until the saves are under way
            lines.append(line)
            if line.startswith("saving"):
                break
        canceled = api("POST", f"{base}/api/tasks/{task['id']}/cancel", token, b"")
        assert canceled["cancel_requested"] is True
        output = "".join(lines) + saver.communicate(timeout=120)[0]
    finally:
        saver.kill()
    assert saver.returncode == 0 and "saved 150" in output, output

    def ended():
        return api("GET", f"{base}/api/tasks/{task['id']}", token)["status"] in ("canceled", "succeeded")

    wait_until(ended, timeout=60, interval=0.2)
    final = api("GET", f"{base}/api/tasks/{task['id']}", token)
    assert final["status"] == "canceled", final
    assert final["error"] == "Canceled; rows written before the cancel stay."
    assert 2000 <= final["progress"]["done"] < 300_000

    counts = """
from workflows.models import Execution
from catalog.models import Order, WebhookDelivery
print(Execution.objects.filter(status="resolved").count(), Execution.objects.count(),
      Order.objects.filter(customer__startswith="shop").count(), WebhookDelivery.objects.count())
"""
    wait_until(
        lambda: manage(env, "shell", "-c", counts).split()[:2] == ["150", "150"], timeout=90, interval=1
    )
    resolved, total, orders, deliveries = manage(env, "shell", "-c", counts).split()
    assert (resolved, total, orders, deliveries) == ("150", "150", "150", "150")
    assert "database is locked" not in node.log and "database is locked" not in output


def test_an_unmigrated_database_is_named_and_the_node_waits_for_it(
    start_node, site_env, tmp_path, redis_conn
):
    from worker_mode import presence

    def roles() -> list[str]:
        return sorted(entry["role"] for entry in presence.live_entries())

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    site_env = {**site_env, "DATABASE_URL": f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}"}
    node = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "", **site_env)
    wait_for_http(f"{base}/healthz", node)
    status, body = http_get(f"{base}/readyz")
    ready = json.loads(body)
    assert status == 503 and ready["failing"] == ["database"] and ready["checks"]["database"] == "unmigrated"
    assert "workflows.0001_initial" in ready["pending_migrations"]
    assert ready["hint"] == "Run `manage.py migrate`."
    wait_until(lambda: "run `manage.py migrate`; waiting" in node.log, timeout=30)
    # No worker runs yet, so the node does not count as serving its keys (queued work is uncovered).
    assert roles() == ["http", "node"]
    manage(site_env, "migrate", "--noinput", "-v0")
    wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, timeout=30, interval=0.5)
    wait_until(lambda: "The database is ready; starting" in node.log, timeout=30)
    wait_until(lambda: "Started worker shared#0" in node.log, timeout=30)
    wait_until(lambda: roles() == ["http", "node", "workers"], timeout=10)
    assert node.log.count("run `manage.py migrate`; waiting") == 1
    assert "Traceback" not in node.log, node.log
