"""The three-node example end to end on real processes: node1 '!' (gunicorn), node2
'workflow:process', node3 'async-task:process', against this test's database and Redis,
driven over HTTP only; every execution and task runs on the right node, nothing is left."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import User

from api_tokens.models import ApiToken
from async_tasks.models import AsyncTask
from catalog import demo
from catalog.models import Order, Product, WebhookDelivery
from lab.cluster import multipart
from tests.conftest import free_port, shared_database_url, wait_for_http, wait_until
from worker_mode import presence
from workflows.models import Execution

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def env(site_env, task_storage):
    url = shared_database_url()
    return {
        **site_env,
        "DATABASE_URL": url,
        "CONN_MAX_AGE": "0",
        "ASYNC_TASKS_DIR": str(task_storage),
        "WORKFLOWS_HTTP_ALLOWED_NETWORKS": "127.0.0.1",
        "WORKER_MODE_RECOVERY_INTERVAL": "2",
    }


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, method: str, path: str, data: dict | None = None) -> tuple[int, dict]:
        body = json.dumps(data).encode() if data is not None else None
        status, raw = self.call(method, path, body, "application/json" if body else "")
        return status, json.loads(raw)

    def upload(self, path: str, filename: str, content: bytes, fields: dict[str, str]) -> tuple[int, dict]:
        body, content_type = multipart(filename, content, fields)
        status, raw = self.call("POST", path, body, content_type)
        return status, json.loads(raw)

    def finished_task(self, task_id: int) -> dict:
        def done():
            status, task = self.json("GET", f"/api/tasks/{task_id}")
            assert status == 200, task
            return task if task["status"] in ("succeeded", "failed", "canceled") else None

        return wait_until(done, timeout=60, interval=0.2)


def test_the_three_node_example_over_http(start_node, env, redis_conn):
    web_port, flows_port, tasks_port = free_port(), free_port(), free_port()
    demo.load(f"http://127.0.0.1:{web_port}/catalog/webhook")
    admin = User.objects.create_superuser("ops", "ops@example.com", "pw-ops-12345")
    _, token = ApiToken.issue(admin, "e2e")
    node1 = start_node(["runnode", "--bind", f"127.0.0.1:{web_port}"], "!", **{**env, "NODE_NAME": "node1"})
    node2 = start_node(
        ["runnode", "--bind", f"127.0.0.1:{flows_port}"], "workflow:process", **{**env, "NODE_NAME": "node2"}
    )
    node3 = start_node(
        ["runnode", "--bind", f"127.0.0.1:{tasks_port}"],
        "async-task:process",
        **{**env, "NODE_NAME": "node3"},
    )
    for port, node in ((web_port, node1), (flows_port, node2), (tasks_port, node3)):
        wait_for_http(f"http://127.0.0.1:{port}/healthz", node, timeout=40)
    api = Api(f"http://127.0.0.1:{web_port}", token)
    assert Api(f"http://127.0.0.1:{flows_port}", token).call("GET", "/api/tasks")[0] == 503

    # 1. import products (node3)
    rows = "".join(
        f"E2E-{i},Product {i},{i}.50,{10 if i % 2 else 0},true,2024-01-0{i}\n" for i in range(1, 6)
    )
    status, task = api.upload(
        "/api/import/catalog.Product",
        "products.csv",
        f"sku,name,price,quantity,active,created\n{rows}".encode(),
        {},
    )
    assert status == 202, task
    task = api.finished_task(task["id"])
    assert (task["status"], task["node"], task["summary"]["created"]) == ("succeeded", "node3", 5)

    # 2. import orders with workflows on (node3), whose order-created executions run on node2
    products = dict(Product.objects.filter(sku__startswith="E2E-").values_list("sku", "pk"))
    orders = "".join(f"{products[f'E2E-{i}']},1,customer {i}\n" for i in range(1, 6))
    status, task = api.upload(
        "/api/import/catalog.Order", "orders.csv", f"product,quantity,customer\n{orders}".encode(),
        {"fire_workflows": "true"},
    )  # fmt: skip
    assert status == 202, task
    task = api.finished_task(task["id"])
    assert (task["status"], task["node"], task["summary"]["created"]) == ("succeeded", "node3", 5)
    executions = Execution.objects.filter(workflow__key=demo.DEMO_KEY)

    def all_resolved():
        return executions.count() == 5 and set(executions.values_list("status", flat=True)) == {"resolved"}

    wait_until(all_resolved, timeout=60, interval=0.2)
    assert set(executions.values_list("node_name", flat=True)) == {"node2"}
    statuses = dict(Order.objects.filter(customer__startswith="customer").values_list("customer", "status"))
    assert statuses == {f"customer {i}": "accepted" if i % 2 else "rejected" for i in range(1, 6)}
    assert Product.objects.get(sku="E2E-1").quantity == 9  # decremented by the workflow
    wait_until(lambda: WebhookDelivery.objects.count() == 5, timeout=30)  # node2 -> node1's webhook

    # 3. export (node3), downloaded from node1
    status, task = api.json("POST", "/api/export/catalog.Product", {"filters": {"q": "E2E-"}})
    assert status == 202, task
    task = api.finished_task(task["id"])
    assert (task["status"], task["node"]) == ("succeeded", "node3")
    status, content = api.call("GET", task["links"]["download"])
    assert status == 200
    exported = list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))
    assert sorted(r[0] for r in exported[1:]) == [f"E2E-{i}" for i in range(1, 6)]

    # 4. the cluster as it sees itself, and nothing left behind
    roles = {(e["node"], e["role"]) for e in presence.live_entries()}
    assert {("node1", "http"), ("node2", "workers"), ("node3", "workers")} <= roles
    assert not AsyncTask.objects.exclude(status="succeeded").exists()
    assert not Execution.objects.exclude(status="resolved").exists()
    queues = ("rq:queue:workflow:process", "rq:queue:async-task:process")  # drained by the workers
    wait_until(lambda: not any(redis_conn.llen(name) for name in queues), timeout=10)
