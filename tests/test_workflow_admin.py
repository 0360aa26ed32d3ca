"""Workflows in the admin: sync rejections as messages, runs on chosen records, versions, manual context."""

from __future__ import annotations

import json
import warnings

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from api_tokens.models import ApiToken
from catalog.models import Order, Product
from tests.conftest import build_workflow, drain
from workflows import triggers
from workflows.models import Execution, Workflow

# Not transaction=True but for the tests that need real commits: the commit hooks that enqueue a
# triggered execution for drain() run from django_capture_on_commit_callbacks.
pytestmark = pytest.mark.django_db

#: A sync workflow's rejection rolls the write back with its transaction: tested with real ones.
REAL_TRANSACTIONS = pytest.mark.django_db(transaction=True)

GUARD = [
    {
        "key": "small",
        "type": "condition",
        "config": {"expression": "{{ $context.data.quantity }} <= 5", "reject_on_false": True},
    }
]


@pytest.fixture
def product(redis_conn):
    return Product.objects.create(sku="G-1", name="Guarded", price="3.00", quantity=10)


@pytest.fixture
def guard(product):
    return build_workflow(
        GUARD,
        key="order-guard",
        title="Order guard",
        sync=True,
        trigger_type="collection",
        trigger_config={"collection": "catalog.Order", "events": ["created", "updated"]},
    )


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-12345"))
    return client


@REAL_TRANSACTIONS
def test_a_sync_rejection_in_the_admin_is_a_form_error_naming_the_workflow(admin_client, guard, product):
    page = admin_client.post(
        "/admin/catalog/order/add/",
        {"product": product.pk, "quantity": 9, "customer": "Big", "status": "pending"},
    )
    assert page.status_code == 200  # the form again, not a 500
    html = page.content.decode()
    assert "Not saved: the workflow “Order guard” (order-guard) rejected this change:" in html
    assert "The condition is false and the node rejects the execution." in html
    assert 'value="Big"' in html  # what was typed is kept
    assert not Order.objects.exists() and not Execution.objects.exists()
    ok = admin_client.post(
        "/admin/catalog/order/add/",
        {"product": product.pk, "quantity": 2, "customer": "Small", "status": "pending"},
    )
    assert ok.status_code == 302 and Order.objects.get().customer == "Small"
    order = Order.objects.get()
    edit = admin_client.post(
        f"/admin/catalog/order/{order.pk}/change/",
        {"product": product.pk, "quantity": 50, "customer": "Small", "status": "pending"},
    )
    assert edit.status_code == 200 and "rejected this change" in edit.content.decode()
    order.refresh_from_db()
    assert order.quantity == 2


@REAL_TRANSACTIONS
def test_other_views_answer_422_with_the_workflow_not_500(guard, product):
    from django.test import RequestFactory

    from workflows.exceptions import WorkflowFailed
    from workflows.middleware import WorkflowRejectionMiddleware

    try:
        Order.objects.create(product=product, quantity=9, customer="Big")
    except WorkflowFailed as exc:
        rejection = exc
    middleware = WorkflowRejectionMiddleware(lambda request: None)
    api = middleware.process_exception(RequestFactory().post("/api/anything"), rejection)
    assert api.status_code == 422
    assert json.loads(api.content) == {
        "error": "Not saved: the workflow “Order guard” (order-guard) rejected this change: "
        "The condition is false and the node rejects the execution.",
        "workflow": "order-guard",
        "execution_status": "failed",
    }
    page = middleware.process_exception(RequestFactory().post("/catalog/somewhere"), rejection)
    assert page.status_code == 422 and "Order guard" in page.content.decode()
    assert middleware.process_exception(RequestFactory().get("/"), ValueError("x")) is None


def test_run_a_workflow_on_chosen_records(admin_client, product, django_capture_on_commit_callbacks):
    workflow = build_workflow(
        [
            {
                "key": "qty",
                "type": "calculation",
                "config": {"expression": "{{ $context.data.quantity }} * 10"},
            }
        ],
        key="order-qty",
        trigger_type="collection",
        trigger_config={"collection": "catalog.Order", "events": ["deleted"]},
    )
    orders = [Order.objects.create(product=product, quantity=n, customer=f"c{n}") for n in (1, 2, 3)]
    chosen = [orders[0].pk, orders[2].pk]
    action = {"action": "run_workflow", "_selected_action": chosen}
    choose = admin_client.post("/admin/catalog/order/", action)
    assert choose.status_code == 200 and "Run a workflow on the selected records" in choose.content.decode()
    assert f'<option value="{workflow.pk}">{workflow}</option>' in choose.content.decode()
    with django_capture_on_commit_callbacks(execute=True):  # the executions are enqueued
        done = admin_client.post("/admin/catalog/order/", {**action, "apply": "1", "workflow": workflow.pk})
    assert done.status_code == 302
    drain()
    runs = Execution.objects.filter(workflow=workflow).order_by("pk")
    assert [e.event for e in runs] == ["manual", "manual"]
    assert sorted(e.context["data"]["id"] for e in runs) == sorted(chosen)
    assert runs[0].context["collection"] == "catalog.Order"
    assert sorted(e.jobs.get().result for e in runs) == [10, 30]


def test_the_run_workflow_action_follows_djangos_action_api(admin_client, product):
    """Django 6.1 tells get_actions() where the actions are offered and warns about overrides that
    cannot hear it; running a workflow on chosen records belongs to the change list only."""
    order = Order.objects.create(product=product, quantity=1, customer="x")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", PendingDeprecationWarning)
        listing = admin_client.get("/admin/catalog/order/")
        form = admin_client.get(f"/admin/catalog/order/{order.pk}/change/")
    assert listing.status_code == 200 and b"run_workflow" in listing.content
    assert form.status_code == 200 and b"run_workflow" not in form.content


def test_run_a_workflow_needs_the_trigger_permission(product):
    Order.objects.create(product=product, quantity=1, customer="x")  # actions show on a non-empty list
    clerk = User.objects.create_user("clerk", password="pw-clerk-123", is_staff=True)
    clerk.user_permissions.add(*Permission.objects.filter(codename__in=["view_order", "change_order"]))
    client = Client()
    client.force_login(clerk)
    assert b"run_workflow" not in client.get("/admin/catalog/order/").content
    clerk.user_permissions.add(Permission.objects.get(codename="trigger_workflow"))
    clerk = User.objects.get(pk=clerk.pk)
    client.force_login(clerk)
    assert b"run_workflow" in client.get("/admin/catalog/order/").content


def test_the_readme_curl_example_runs_the_demo_on_an_order(redis_conn, django_capture_on_commit_callbacks):
    from catalog import demo

    demo.load("http://127.0.0.1:9/catalog/webhook")
    product = Product.objects.get(sku="DEMO-1")
    order = Order.objects.create(product=product, quantity=2, customer="Curl")
    Execution.objects.all().delete()
    user = User.objects.create_user("ops", password="pw-ops-12345", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="trigger_workflow"))
    _, raw = ApiToken.issue(user, "curl")
    client = Client()
    with django_capture_on_commit_callbacks(execute=True):  # the execution is enqueued
        response = client.post(
            f"/api/workflows/order-created/trigger?record={order.pk}",
            "{}",
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw}",
        )
    assert response.status_code == 202, response.content
    assert response.json()["context"]["data"]["id"] == order.pk
    drain()
    execution = Execution.objects.get()
    assert {j.node_key: j.status for j in execution.jobs.all()}["accept"] == "resolved"
    missing = client.post(
        "/api/workflows/order-created/trigger?record=999999", "{}", content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )  # fmt: skip
    assert missing.status_code == 404 and "No catalog.Order record '999999'" in missing.json()["error"]
    data = client.post(
        "/api/workflows/order-created/trigger",
        json.dumps({"id": order.pk, "product": product.pk, "quantity": 1}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert data.status_code == 202
    assert data.json()["context"] == {
        "event": "manual",
        "collection": "catalog.Order",
        "data": {"id": order.pk, "product": product.pk, "quantity": 1},
    }


def test_manual_context_has_the_collection_event_shape(redis_conn, django_capture_on_commit_callbacks):
    workflow = build_workflow(
        [{"key": "n", "type": "calculation", "config": {"expression": "{{ $context.data.n }} + 1"}}], key="m"
    )
    with django_capture_on_commit_callbacks(execute=True):  # the execution is enqueued
        execution = triggers.trigger_manually(workflow, {"n": 41})
    assert execution.context == {"event": "manual", "data": {"n": 41}}
    drain()
    assert Execution.objects.get().jobs.get().result == 42


def test_enabling_a_version_disables_the_enabled_one_at_once(redis_conn):
    first = build_workflow(
        [{"key": "n", "type": "calculation", "config": {"expression": "1"}}],
        key="tick",
        trigger_type="schedule",
        trigger_config={"interval": 60},
    )
    assert first.next_run_at is not None
    second = first.copy_to_new_version()
    second.enabled = True
    second.full_clean()
    second.save()
    first.refresh_from_db()
    assert (first.enabled, first.next_run_at) == (False, None)
    assert list(Workflow.objects.filter(key="tick", enabled=True).values_list("version", flat=True)) == [2]
    first.enabled = True  # and back: still exactly one
    first.save()
    assert list(Workflow.objects.filter(key="tick", enabled=True).values_list("version", flat=True)) == [1]


def test_a_record_is_named_as_written(redis_conn, product):
    build_workflow(
        [{"key": "q", "type": "calculation", "config": {"expression": "1"}}],
        key="on-orders",
        trigger_type="collection",
        trigger_config={"collection": "catalog.Order", "events": ["deleted"]},
    )
    Order.objects.create(product=product, quantity=1, customer="x")
    user = User.objects.create_user("ops", password="pw-ops-12345", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="trigger_workflow"))
    client = Client()
    client.force_login(user)

    def post(query):
        return client.post(f"/api/workflows/on-orders/trigger?{query}", "{}", content_type="application/json")

    pk = Order.objects.get().pk
    for query in (
        f"record=%D9%A{pk}" if pk < 10 else "record=%D9%A1",
        f"record=%20{pk}",
        "record=+1",
        "record=1.0",
    ):
        assert post(query).status_code == 404, query
    assert post(f"record={pk}&record={pk}").status_code == 400
    assert post(f"record={pk}").status_code == 202


@REAL_TRANSACTIONS
def test_an_import_firing_workflows_reports_the_rows_a_sync_workflow_rejects(
    redis_conn, product, task_storage
):
    import io

    from async_tasks import storage, tasks

    build_workflow(
        [{"key": "ok", "type": "condition",
          "config": {"expression": "{{ $context.data.customer }} != 'blocked'", "reject_on_false": True}}],
        key="guard", sync=True, trigger_type="collection",
        trigger_config={"collection": "catalog.Order", "events": ["created", "updated"]},
    )  # fmt: skip
    data = f"product,quantity,customer\n{product.pk},1,okB\n{product.pk},1,blocked\n{product.pk},1,okC\n"
    task = tasks.create_import(
        None, "catalog.Order", io.BytesIO(data.encode()), name="o.csv", fire_workflows=True, dispatch=False
    )
    tasks.run(task.pk)
    task.refresh_from_db()
    assert task.status == "succeeded", task.error
    assert task.summary == {"created": 2, "updated": 0, "skipped": 0, "failed": 1}
    assert sorted(Order.objects.values_list("customer", flat=True)) == ["okB", "okC"]
    with storage.get_storage().open(task.error_file, "rb") as handle:
        report = handle.read().decode("utf-8-sig")
    assert "3,,Refused when saved: Workflow 'guard' failed" in report
