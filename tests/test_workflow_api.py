"""The JSON API (auth, CSRF, tokens, permissions), the admin, the checks, and the demo."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client

from api_tokens.models import ApiToken
from catalog.models import Order, Product, WebhookDelivery
from tests.conftest import build_workflow, check_error_codes, drain
from workflows import checks
from workflows.models import Execution, Workflow

# Not transaction=True but for the tests that need real commits: the commit hook that enqueues a
# triggered execution for drain() runs from django_capture_on_commit_callbacks.
pytestmark = pytest.mark.django_db

ONE = [{"key": "double", "type": "calculation", "config": {"expression": "{{ $context.data.n }} * 2"}}]


@pytest.fixture
def workflow(redis_conn):
    return build_workflow(ONE, key="double")


@pytest.fixture
def staff():
    user = User.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["trigger_workflow", "view_execution", "view_workflow"])
    )
    return user


def post(client, url, data, **extra):
    return client.post(url, json.dumps(data), content_type="application/json", **extra)


def test_trigger_needs_authentication(client, workflow):
    response = post(client, "/api/workflows/double/trigger", {"n": 1})
    assert response.status_code == 401
    assert not Execution.objects.exists()


def test_session_trigger_needs_csrf(staff, workflow, django_capture_on_commit_callbacks):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert post(client, "/api/workflows/double/trigger", {"n": 1}).status_code == 403
    client.get("/admin/")  # renders a form, which sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    with django_capture_on_commit_callbacks(execute=True):  # the execution is enqueued
        response = post(client, "/api/workflows/double/trigger", {"n": 2}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["workflow"] == {"key": "double", "version": 1}
    drain()
    detail = client.get(f"/api/executions/{body['id']}").json()
    assert detail["status"] == "resolved"
    assert detail["jobs"][0]["node"] == "double" and detail["jobs"][0]["result"] == 4
    assert Execution.objects.get().triggered_by == staff


def test_bearer_token_trigger(staff, workflow):
    token, raw = ApiToken.issue(staff, "ci")
    client = Client(enforce_csrf_checks=True)
    response = post(client, "/api/workflows/double/trigger", {"n": 5}, HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 202
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert raw not in token.digest
    response = post(client, "/api/workflows/double/trigger", {"n": 5}, HTTP_AUTHORIZATION="Bearer wrong")
    assert response.status_code == 401


def test_staff_and_permission_are_required(client, staff, workflow):
    plain = User.objects.create_user("plain", password="pw-plain-123")
    client.force_login(plain)
    assert post(client, "/api/workflows/double/trigger", {}).status_code == 403
    staff.user_permissions.remove(Permission.objects.get(codename="trigger_workflow"))
    client.force_login(User.objects.get(pk=staff.pk))
    response = post(client, "/api/workflows/double/trigger", {})
    assert response.status_code == 403 and "workflows.trigger_workflow" in response.json()["error"]


def test_bad_requests_get_clear_errors(client, staff, workflow):
    client.force_login(staff)
    assert post(client, "/api/workflows/nope/trigger", {}).status_code == 404
    response = client.post("/api/workflows/double/trigger", "{oops", content_type="application/json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    assert post(client, "/api/workflows/double/trigger", [1, 2]).status_code == 400
    assert client.get("/api/workflows/double/trigger").status_code == 405
    assert client.get("/api/executions/999").status_code == 404


@pytest.mark.django_db(transaction=True)  # a sync failure rolls the request's transaction back
def test_sync_trigger_answers_with_the_result(client, staff, redis_conn):
    build_workflow(ONE, key="now", sync=True)
    client.force_login(staff)
    response = post(client, "/api/workflows/now/trigger", {"n": 21})
    assert response.status_code == 200
    assert response.json()["jobs"][0]["result"] == 42
    build_workflow(
        [{"key": "no", "type": "end", "config": {"status": "failed", "message": "nope"}}],
        key="bad",
        sync=True,
    )
    response = post(client, "/api/workflows/bad/trigger", {})
    assert response.status_code == 422 and "nope" in response.json()["error"]


def test_admin_pages_and_actions(admin_client, workflow):
    assert admin_client.get("/admin/workflows/workflow/?enabled__exact=1&q=double").status_code == 200
    assert admin_client.get(f"/admin/workflows/workflow/{workflow.pk}/change/").status_code == 200
    response = admin_client.post(
        "/admin/workflows/workflow/",
        {"action": "trigger_now", "_selected_action": [workflow.pk]},
        follow=True,
    )
    assert "execution #" in response.content.decode()
    execution = Execution.objects.get()
    assert admin_client.get("/admin/workflows/execution/?status__exact=queued").status_code == 200
    assert admin_client.get(f"/admin/workflows/execution/{execution.pk}/change/").status_code == 200
    admin_client.post("/admin/workflows/execution/", {"action": "cancel", "_selected_action": [execution.pk]})
    execution.refresh_from_db()
    assert execution.status == "canceled"
    admin_client.post("/admin/workflows/execution/", {"action": "retry", "_selected_action": [execution.pk]})
    execution.refresh_from_db()
    assert execution.status == "queued"
    admin_client.post(
        "/admin/workflows/workflow/", {"action": "copy_to_new_version", "_selected_action": [workflow.pk]}
    )
    assert Workflow.objects.filter(key="double", version=2, enabled=False).exists()


def test_admin_rejects_a_broken_chain(admin_client, redis_conn):
    data = {
        "title": "t", "key": "chain", "enabled": "on", "trigger_type": "manual", "trigger_config": "{}",
        "stack_limit": "1", "nodes-TOTAL_FORMS": "2", "nodes-INITIAL_FORMS": "0",
        "nodes-0-key": "a", "nodes-0-type": "calculation", "nodes-0-expression": "1",
        "nodes-1-key": "b", "nodes-1-type": "calculation", "nodes-1-config": '{"expression": "2"}',
        "nodes-1-advanced": "on",  # the JSON view, for power users
    }  # fmt: skip
    response = admin_client.post("/admin/workflows/workflow/add/", data)
    assert response.status_code == 200
    assert "upstream and branch, which must be unique" in response.content.decode()
    data["nodes-1-upstream"] = "zzz"
    response = admin_client.post("/admin/workflows/workflow/add/", data)
    assert "follows &#x27;zzz&#x27;, which does not exist" in response.content.decode()
    data["nodes-1-upstream"] = "a"
    response = admin_client.post("/admin/workflows/workflow/add/", data)
    assert response.status_code == 302
    assert Workflow.objects.get(key="chain").nodes.count() == 2


def test_workflow_checks(settings):
    assert check_error_codes(checks.check_settings()) == []
    settings.WORKFLOWS_COLLECTIONS = ["catalog.Nope", "bad"]
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["intranet"]
    settings.WORKFLOWS_TICK_INTERVAL = 0
    codes = check_error_codes(checks.check_settings())
    assert codes == ["workflows.E001", "workflows.E001", "workflows.E003", "workflows.E004"]
    with pytest.raises(Exception, match="workflows.E003"):
        call_command("check")


@pytest.mark.django_db(transaction=True)  # the live server's thread records the webhook calls
def test_demo_workflow_accepts_rejects_and_calls_the_webhook(live_server, settings, redis_conn):
    settings.WORKFLOWS_HTTP_ALLOWED_NETWORKS = ["127.0.0.1"]
    call_command("loaddemo", webhook_url=f"{live_server.url}/catalog/webhook")
    call_command("loaddemo", webhook_url=f"{live_server.url}/catalog/webhook")  # idempotent
    frother = Product.objects.get(sku="DEMO-2")
    accepted = Order.objects.create(product=frother, quantity=2)
    rejected = Order.objects.create(product=frother, quantity=2)  # only 1 left by then
    drain()
    accepted.refresh_from_db()
    rejected.refresh_from_db()
    frother.refresh_from_db()
    assert (accepted.status, rejected.status, frother.quantity) == ("accepted", "rejected", 1)
    assert sorted(Execution.objects.values_list("status", flat=True)) == ["resolved", "resolved"]
    payloads = sorted((d.payload["order"], d.payload["accepted"]) for d in WebhookDelivery.objects.all())
    assert payloads == [(accepted.pk, True), (rejected.pk, False)]


def test_webhook_needs_its_token(client):
    response = client.post("/catalog/webhook", "{}", content_type="application/json")
    assert response.status_code == 401
