"""Poison input and poison results: a clear 400 or a final state with the reason, never a 500 or a row
left running. Runs on SQLite and on PostgreSQL (which refuses NaN, NUL and lone surrogates)."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from async_tasks import tasks
from async_tasks.models import AsyncTask
from catalog.models import Product
from tests.conftest import build_workflow, drain, product_csv
from worker_mode import storable
from workflows import engine, sql, triggers
from workflows.models import Execution, Job

pytestmark = pytest.mark.django_db(transaction=True)

ONE = [{"key": "double", "type": "calculation", "config": {"expression": "{{ $context.data.n }} * 2"}}]

POISON_BODIES = [
    (b'{"a": NaN}', "NaN is not a number"),
    (b'{"a": Infinity}', "Infinity is not a number"),
    (b'{"a": -Infinity}', "-Infinity is not a number"),
    (b'{"a": 1e400}', "The number at $.a is inf"),
    (b'{"a": "x\\u0000y"}', "The text at $.a contains the NUL character"),
    (b'{"a\\u0000": 1}', "A key at $ contains the NUL character"),
    (b'{"a": "\\ud800"}', "The text at $.a contains a lone surrogate"),
    (b'{"a": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "nested deeper than 64 levels"),
    (b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}", "nested deeper than 64 levels"),
    (b'{"a": ' + b"9" * 5000 + b"}", "a number that cannot be read"),
    (b"[1, 2]", "The body must be a JSON object."),
    (b'{"a": ', "The body is not valid JSON"),
    (b'\xff{"a": 1}', "The body is not valid JSON"),
]


@pytest.fixture
def staff_client(redis_conn):
    user = User.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["trigger_workflow", "view_execution"]))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(("body", "message"), POISON_BODIES)
def test_trigger_refuses_bodies_the_database_cannot_store(staff_client, body, message):
    build_workflow(ONE, key="double")
    response = staff_client.post("/api/workflows/double/trigger", body, content_type="application/json")
    assert response.status_code == 400, response.content
    # The body is stored one level down, as $context.data: it may nest one level less.
    assert message.replace("64 levels", "63 levels") in response.json()["error"]
    assert not Execution.objects.exists()


def test_a_body_at_the_nesting_limit_is_accepted(staff_client):
    build_workflow(ONE, key="double")
    deep = b'{"n": 1, "deep": ' + b"[" * 62 + b"]" * 62 + b"}"  # 63 levels, 64 in $context.data
    response = staff_client.post("/api/workflows/double/trigger", deep, content_type="application/json")
    assert response.status_code == 202, response.content


@pytest.mark.parametrize(("body", "message"), POISON_BODIES[:8])
def test_export_refuses_the_same_bodies(body, message, task_storage, redis_conn):
    user = User.objects.create_user("ann", password="pw-123-secret")
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    client = Client()
    client.force_login(user)
    response = client.post("/api/export/catalog.Product", body, content_type="application/json")
    assert response.status_code == 400 and message in response.json()["error"]
    assert not AsyncTask.objects.exists()


@pytest.mark.parametrize("query", ["status=%ED%A0%80", "status=started", "kind=x", "status=pending"])
def test_task_list_filters_are_checked(query, task_storage):
    user = User.objects.create_user("ann", password="pw-123-secret")
    client = Client()
    client.force_login(user)
    response = client.get(f"/api/tasks?{query}")
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("Unknown ") and (
        "use one of: queued, running" in message or "import, export" in message
    )


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("1e308 * 10", "The number at $ is inf"),
        ("float('nan')", "The number at $ is nan"),
        ("10 ** 5000", "has more than 4300 digits"),
        ("'a' + str({{ $context.data.n }}) + 'b'", None),
    ],
)
def test_a_result_the_database_cannot_store_fails_the_node_with_the_reason(redis_conn, expression, reason):
    workflow = build_workflow([{"key": "calc", "type": "calculation", "config": {"expression": expression}}])
    execution = triggers.trigger_manually(workflow, {"n": 1})
    drain()
    execution.refresh_from_db()
    job = Job.objects.get(execution=execution)
    if reason is None:
        assert (execution.status, job.result) == ("resolved", "a1b")
        return
    assert execution.status == "failed" and reason in execution.error
    assert job.status == "failed" and job.result is None
    assert "The node's result cannot be stored" in job.error


def test_an_error_outside_the_engines_handlers_still_ends_the_execution(redis_conn, monkeypatch):
    workflow = build_workflow(ONE)
    execution = triggers.trigger_manually(workflow, {"n": 1})

    def broken(jobs):
        raise RuntimeError("the job rows could not be written")

    monkeypatch.setattr(sql, "insert_jobs", broken)
    assert engine.run(execution.pk) == "error"
    execution.refresh_from_db()
    assert execution.status == "error" and execution.lease_expires_at is None
    assert execution.error == "RuntimeError: the job rows could not be written"


def test_a_record_whose_values_cannot_be_stored_skips_async_workflows_and_stops_sync_ones(redis_conn, caplog):
    on_created = {"collection": "catalog.Product", "events": ["created"]}
    flow = build_workflow(ONE, key="async-one", trigger_type="collection", trigger_config=on_created)
    product = Product(pk=1, sku="P-1", name="a\x00b", price=1, quantity=1)  # PostgreSQL would refuse it
    assert triggers.fire_collection_event(product, "created") == []
    assert "Workflow async-one not triggered for catalog.Product 1" in caplog.text
    assert not Execution.objects.exists()
    flow.enabled = False
    flow.save()
    build_workflow(ONE, key="sync-one", sync=True, trigger_type="collection", trigger_config=on_created)
    triggers.forget_listeners()
    with pytest.raises(storable.NotStorable, match="NUL"):
        triggers.fire_collection_event(product, "created")


def test_an_error_message_with_nul_is_stored_cleaned(task_storage, redis_conn):
    # A header cell with a NUL: the task fails with its reason; PostgreSQL would refuse the raw text.
    data = b"sku,na\x00me\nP1,x\n"
    task = tasks.create_import(None, "catalog.Product", io.BytesIO(data), name="p.csv", dispatch=False)
    assert tasks.run(task.pk) == "failed"
    task.refresh_from_db()
    assert "Unknown column" in task.error and "\x00" not in task.error
    assert task.lease_expires_at is None


@pytest.mark.parametrize(
    "url",
    [
        "/admin/workflows/execution/?status__exact=%00",
        "/admin/workflows/execution/?node_name=a%00",
        "/admin/async_tasks/asynctask/?status__exact=%00",
        "/admin/catalog/product/?q=%00",
        "/api/executions/1?x%00=1",
        "/api/tasks?status=%00",
        "/api/tasks?kind=x%00",
    ],
)
def test_nul_in_any_query_string_is_a_400(admin_client, url, redis_conn):
    response = admin_client.get(url)
    assert response.status_code == 400
    assert "NUL character" in response.content.decode()


@pytest.mark.parametrize("error", [RecursionError, MemoryError])
def test_recursion_and_memory_errors_in_a_node_end_the_execution(redis_conn, monkeypatch, error):
    from workflows import nodes

    execution = triggers.trigger_manually(build_workflow(ONE), {"n": 1})

    def exhausted(*args, **kwargs):
        raise error("exhausted")

    monkeypatch.setattr(nodes, "run", exhausted)
    assert engine.run(execution.pk) == "error"
    execution.refresh_from_db()
    assert execution.status == "error" and execution.error == f"{error.__name__}: exhausted"
    assert Job.objects.get(execution=execution).status == "error"


@pytest.mark.parametrize("error", [RecursionError, MemoryError])
def test_recursion_and_memory_errors_in_an_import_end_the_task(task_storage, monkeypatch, error):
    from async_tasks import importer

    task = tasks.create_import(
        None, "catalog.Product", io.BytesIO(product_csv(2)), name="p.csv", dispatch=False
    )

    def exhausted(self, rows):
        raise error("exhausted")

    monkeypatch.setattr(importer.Importer, "run", exhausted)
    assert tasks.run(task.pk) == "failed"
    task.refresh_from_db()
    assert task.error == f"Internal error: {error.__name__}: exhausted" and task.lease_expires_at is None


ADMIN_POISON = [
    ('{"x": "\\ud800"}', "contains a lone surrogate"),
    ('{"x": ' + "9" * 5000 + "}", "a number that cannot be read"),
    ('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper than 64 levels"),
    ('{"x": NaN}', "NaN is not a number"),
    ('{"x": "a\\u0000b"}', "contains the NUL character"),
    ("{nope", "The value is not valid JSON"),
]


@pytest.mark.parametrize("field", ["trigger_config", "nodes-0-config"])
@pytest.mark.parametrize(("value", "message"), ADMIN_POISON)
def test_admin_json_fields_refuse_poison_with_a_form_error(admin_client, redis_conn, field, value, message):
    data = {
        "title": "t", "key": "poison", "enabled": "on", "trigger_type": "manual", "trigger_config": "{}",
        "stack_limit": "1", "nodes-TOTAL_FORMS": "1", "nodes-INITIAL_FORMS": "0",
        "nodes-0-key": "a", "nodes-0-type": "calculation", "nodes-0-config": '{"expression": "1"}',
        field: value,
    }  # fmt: skip
    response = admin_client.post("/admin/workflows/workflow/add/", data)
    assert response.status_code == 200
    assert message in response.content.decode()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"interval": 1e15}', "from 1 to 316,224,000 (ten years)"),
        ('{"interval": 1e300}', "from 1 to 316,224,000 (ten years)"),
        ('{"cron": "* * * * *", "start": "0001-01-01T00:00:00Z"}', "out of range"),
    ],
)
def test_schedules_out_of_range_are_form_errors(admin_client, redis_conn, config, message):
    data = {
        "title": "t", "key": "when", "enabled": "on", "trigger_type": "schedule", "trigger_config": config,
        "stack_limit": "1", "nodes-TOTAL_FORMS": "1", "nodes-INITIAL_FORMS": "0",
        "nodes-0-key": "a", "nodes-0-type": "calculation", "nodes-0-config": '{"expression": "1"}',
    }  # fmt: skip
    response = admin_client.post("/admin/workflows/workflow/add/", data)
    assert response.status_code == 200 and message in response.content.decode()
