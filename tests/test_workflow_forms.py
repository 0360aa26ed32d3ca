# ruff: noqa: E501 (tables of form data read best one case per line)
"""The admin's workflow builder: forms per node and trigger type, the variable picker, the
diagram, and read-only execution pages."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from catalog import demo
from catalog.models import Order, Product
from tests.conftest import build_workflow, drain
from workflows import diagram, forms, variables
from workflows.forms import NodeForm, WorkflowForm, decode, encode
from workflows.models import Execution, Node, Workflow

# Not transaction=True: the only commit hooks that matter (an order's workflow enqueued for drain())
# run from django_capture_on_commit_callbacks in the tests that need them.
pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "value",
    ["abc", "5", 5, 5.5, True, None, "true", "null", [1, "x"], {"a": 1}, "{{ $context.data.id }}", "", '"q"'],
)
def test_typed_values_decode_exactly_what_encode_wrote(value):
    assert decode(encode(value)) == value
    assert decode("abc") == "abc" and decode("5") == 5 and decode('"5"') == "5"


def node_data(prefix: str = "", **fields) -> dict:
    data = {"key": "n", "type": "calculation", **fields}
    return {f"{prefix}{k}": v for k, v in data.items()}


@pytest.fixture
def workflow(redis_conn):
    return build_workflow([], key="wf", trigger_type="manual")


def bound_node(workflow, **fields) -> NodeForm:
    return NodeForm(data=node_data(**fields), instance=Node(workflow=workflow))


@pytest.mark.parametrize(
    ("fields", "config"),
    [
        ({"type": "condition", "expression": "{{ $context.data.n }} > 1", "reject_on_false": "on"},
         {"expression": "{{ $context.data.n }} > 1", "reject_on_false": True}),
        ({"type": "calculation", "expression": "1 + 1"}, {"expression": "1 + 1"}),
        ({"type": "query", "collection": "catalog.Product",
          "filter__field_0": "sku", "filter__lookup_0": "exact", "filter__value_0": "{{ $context.data.sku }}",
          "filter__field_1": "quantity", "filter__lookup_1": "lt", "filter__value_1": "5",
          "filter__field_2": "", "filter__lookup_2": "exact", "filter__value_2": "",
          "multiple": "on", "fields_": "sku, name", "order_by": "-created", "limit": "10"},
         {"collection": "catalog.Product", "filter": {"sku": "{{ $context.data.sku }}", "quantity__lt": 5},
          "multiple": True, "fields": ["sku", "name"], "order_by": ["-created"], "limit": 10}),
        ({"type": "create", "collection": "catalog.Product",
          "values__field_0": "sku", "values__value_0": "N-1", "values__field_1": "price", "values__value_1": '"2.50"'},
         {"collection": "catalog.Product", "values": {"sku": "N-1", "price": "2.50"}}),
        ({"type": "update", "collection": "catalog.Order",
          "filter__field_0": "id", "filter__lookup_0": "exact", "filter__value_0": "{{ $context.data.id }}",
          "values__field_0": "status", "values__value_0": "accepted"},
         {"collection": "catalog.Order", "filter": {"id": "{{ $context.data.id }}"}, "values": {"status": "accepted"}}),
        ({"type": "delete", "collection": "catalog.Order",
          "filter__field_0": "quantity", "filter__lookup_0": "gt", "filter__value_0": "100"},
         {"collection": "catalog.Order", "filter": {"quantity__gt": 100}}),
        ({"type": "http", "method": "PUT", "url": "https://example.com/hook",
          "headers__name_0": "X-Token", "headers__value_0": "abc", "body": '{"id": "{{ $context.data.id }}"}',
          "timeout": "5", "ignore_fail": "on"},
         {"method": "PUT", "url": "https://example.com/hook", "headers": {"X-Token": "abc"},
          "body": {"id": "{{ $context.data.id }}"}, "timeout": 5, "ignore_fail": True}),
        ({"type": "delay", "seconds": "60"}, {"seconds": 60}),
        ({"type": "end", "status": "failed", "message": "Out of stock"}, {"status": "failed", "message": "Out of stock"}),
    ],
)  # fmt: skip
def test_each_node_type_builds_its_config_and_shows_it_again(workflow, fields, config):
    form = bound_node(workflow, **fields)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["config"] == config
    node = form.save()
    again = NodeForm(instance=node)  # the saved node, shown in the fields, not as JSON
    assert not again.initial.get("advanced"), again.initial
    data = {**node_data(type=node.type)}
    for name, value in again.initial.items():
        if name in ("filter", "values", "headers"):
            columns = ("field", "lookup", "value") if name == "filter" else (
                ("name", "value") if name == "headers" else ("field", "value"))  # fmt: skip
            for index, row in enumerate(value):
                data.update({f"{name}__{c}_{index}": v for c, v in zip(columns, row, strict=True)})
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        elif name not in ("key", "type", "title", "upstream", "branch", "config") and value is not None:
            data[name] = str(value)
    resaved = NodeForm(data=data, instance=node)
    assert resaved.is_valid(), resaved.errors
    assert resaved.cleaned_data["config"] == config  # round trip: unchanged


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "query"}, "Choose a collection."),
        ({"type": "calculation"}, "Missing key(s) expression for a calculation node."),
        ({"type": "update", "collection": "catalog.Order", "values__field_0": "status", "values__value_0": "x"},
         "Missing key(s) filter"),
        ({"type": "query", "collection": "catalog.Product", "filter__field_0": "nope",
          "filter__lookup_0": "exact", "filter__value_0": "1"}, "has no field 'nope'"),
        ({"type": "query", "collection": "catalog.Product", "filter__field_0": "", "filter__lookup_0": "exact",
          "filter__value_0": "1"}, "A row has a value but no field."),
        ({"type": "http", "url": "http://[::1/"}, "Invalid IPv6 URL"),
        ({"type": "condition", "expression": "1 +"}, "Invalid expression"),
    ],
)  # fmt: skip
def test_validation_messages_of_the_typed_fields(workflow, fields, message):
    form = bound_node(workflow, **fields)
    assert not form.is_valid()
    assert message in json.dumps(form.errors, ensure_ascii=False)


def test_the_json_view_stays_for_power_users_and_for_configs_the_fields_cannot_show(workflow):
    form = bound_node(workflow, type="calculation", advanced="on", config='{"expression": "2 * 21"}')
    assert form.is_valid(), form.errors
    assert form.cleaned_data["config"] == {"expression": "2 * 21"}
    odd = Node.objects.create(
        workflow=workflow, key="odd", type="query", config={"collection": "catalog.Product", "limit": True}
    )
    assert NodeForm(instance=odd).initial["advanced"] is True  # a boolean limit: shown as JSON


def test_trigger_forms_per_type(redis_conn):
    base = {"title": "T", "key": "t", "stack_limit": "1"}
    form = WorkflowForm(data={**base, "trigger_type": "collection"})
    assert not form.is_valid()
    assert "Choose the collection whose records trigger the workflow." in str(form.errors)  # not "None"
    form = WorkflowForm(data={**base, "trigger_type": "collection", "advanced": "on", "trigger_config": "{}"})
    assert not form.is_valid() and "Choose a collection ('collection'): one of catalog.Product" in str(
        form.errors.as_data()
    )
    assert "None" not in str(form.errors)
    form = WorkflowForm(
        data={
            **base,
            "trigger_type": "collection",
            "trigger_collection": "catalog.Order",
            "trigger_events": ["created", "updated"],
            "trigger_changed_fields": "status",
            "trigger_condition": "{{ $context.data.quantity }} > 5",
        }  # fmt: skip
    )
    assert form.is_valid(), form.errors
    assert form.cleaned_data["trigger_config"] == {
        "collection": "catalog.Order", "events": ["created", "updated"], "changed_fields": ["status"],
        "condition": "{{ $context.data.quantity }} > 5",
    }  # fmt: skip
    workflow = form.save()
    assert WorkflowForm(instance=workflow).initial["trigger_collection"] == "catalog.Order"
    form = WorkflowForm(data={**base, "key": "s", "trigger_type": "schedule", "trigger_interval": "300"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["trigger_config"] == {"interval": 300}
    form = WorkflowForm(data={**base, "key": "c", "trigger_type": "schedule", "trigger_cron": "not cron"})
    assert not form.is_valid() and "Invalid cron expression" in str(form.errors)
    form = WorkflowForm(data={**base, "key": "m", "trigger_type": "manual"})
    assert form.is_valid() and form.cleaned_data["trigger_config"] == {}


def test_the_picker_lists_context_upstream_results_and_system():
    shapes = [
        variables.NodeShape("product", "query", "", "", {"collection": "catalog.Product"}),
        variables.NodeShape("ok", "condition", "product", "", {}),
        variables.NodeShape("save", "update", "ok", "true", {"collection": "catalog.Order"}),
        variables.NodeShape("elsewhere", "calculation", "ok", "false", {}),
    ]
    groups = variables.for_node(
        "collection", {"collection": "catalog.Order", "events": ["created"]}, shapes, "save"
    )
    paths = {title: [v["path"] for v in items] for title, items in groups.items()}
    assert "$context.data.quantity" in paths["Trigger context"]
    assert "$jobs.product.sku" in paths["Node product (query)"] and paths["Node ok (condition)"] == [
        "$jobs.ok"
    ]
    assert not any("elsewhere" in title for title in paths)  # the other branch did not run before it
    assert "$system.now" in paths["System"]
    assert groups["Trigger context"][1]["placeholder"].startswith("{{ $context.data.")


def test_the_picker_endpoint_follows_the_form_state(redis_conn):
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-12345"))
    state = {
        "trigger_type": "collection",
        "trigger_config": {"collection": "catalog.Order", "events": ["updated"]},
        "nodes": [{"key": "a", "type": "query", "upstream": "", "branch": "", "config": {"collection": "catalog.Product"}},
                  {"key": "b", "type": "calculation", "upstream": "a", "branch": "", "config": {}}],
    }  # fmt: skip
    response = client.post(
        "/admin/workflows/workflow/variables/", json.dumps(state), content_type="application/json"
    )
    assert response.status_code == 200
    body = response.json()
    assert "$context.previous.status" in json.dumps(body["trigger"])  # updates carry the previous values
    assert "$jobs.a.price" in json.dumps(body["nodes"]["b"])
    bad = client.post("/admin/workflows/workflow/variables/", "[1", content_type="application/json")
    assert bad.status_code == 400
    plain = User.objects.create_user("plain", password="pw-plain-12345", is_staff=True)
    client.force_login(plain)
    assert (
        client.post("/admin/workflows/workflow/variables/", "{}", content_type="application/json").status_code
        == 403
    )


def test_the_diagram_of_a_workflow_and_of_an_execution(redis_conn, django_capture_on_commit_callbacks):
    demo.load("http://127.0.0.1:9/catalog/webhook")
    workflow = Workflow.objects.get(key=demo.DEMO_KEY)
    html = str(diagram.render(workflow, workflow.nodes.all()))
    assert html.index("Trigger") < html.index('data-key="product"') < html.index('data-key="in_stock"')
    assert 'class="wf-branch wf-branch-true"' in html and 'class="wf-branch wf-branch-false"' in html
    assert html.index('data-key="decrement"') < html.index('class="wf-branch wf-branch-false"')  # true side
    product = Product.objects.get(sku="DEMO-3")  # out of stock: rejected
    with django_capture_on_commit_callbacks(execute=True):  # the order's workflow is enqueued
        Order.objects.create(product=product, quantity=1, customer="Diagram")
    drain()
    execution = Execution.objects.get()
    html = str(diagram.render(workflow, workflow.nodes.all(), execution.jobs.all()))
    assert "wf-status-resolved" in html and 'data-key="reject"' in html
    assert "wf-status-not-run" in html  # the true branch did not run
    assert "wf-badge-resolved" in html and " s</div>" in html or " s ·" in html or "s</div>" in html


def test_execution_pages_are_read_only_with_seconds_and_the_diagram(
    redis_conn, django_capture_on_commit_callbacks
):
    demo.load("http://127.0.0.1:9/catalog/webhook")
    with django_capture_on_commit_callbacks(execute=True):  # the order's workflow is enqueued
        Order.objects.create(product=Product.objects.get(sku="DEMO-1"), quantity=1, customer="Read")
    drain()
    execution = Execution.objects.get()
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-12345"))
    page = client.get(f"/admin/workflows/execution/{execution.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'name="_save"' not in html and 'type="submit" value="Save' not in html  # no SAVE buttons
    assert "What triggered it" not in html  # no edit help texts
    assert 'id="wf-diagram"' in html and "wf-status-resolved" in html
    from workflows.admin import when

    assert when(execution.started_at) in html and len(when(execution.started_at)) == 19  # seconds
    assert client.post(f"/admin/workflows/execution/{execution.pk}/change/", {}).status_code == 403


def test_the_workflow_page_shows_typed_fields_and_its_chain(redis_conn):
    demo.load("http://127.0.0.1:9/catalog/webhook")
    workflow = Workflow.objects.get(key=demo.DEMO_KEY)
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-12345"))
    html = client.get(f"/admin/workflows/workflow/{workflow.pk}/change/").content.decode()
    assert 'id="wf-diagram"' in html and 'id="wf-collections"' in html
    assert 'data-wf-types="query create update delete"' in html
    assert "{{ $jobs.product.quantity }}" in html  # the picker, rendered by the server
    assert "{{ $jobs. }}" not in html and "{{ $jobs.this_key }}" in html  # the help text is all there
    assert forms.NODE_FIELDS.keys() == set(__import__("workflows.nodes").nodes.TYPES)


def test_a_node_key_that_is_no_slug_is_a_form_error_not_a_hang(redis_conn):
    from workflows import graph

    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-12345"))
    data = {
        "title": "t", "key": "typo", "trigger_type": "manual", "stack_limit": "1",
        "nodes-TOTAL_FORMS": "1", "nodes-INITIAL_FORMS": "0",
        "nodes-0-key": "my node", "nodes-0-type": "calculation", "nodes-0-expression": "1",
    }  # fmt: skip
    response = client.post("/admin/workflows/workflow/add/", data)
    assert response.status_code == 200 and "Enter a valid “slug”" in response.content.decode()
    # The chain check itself ends on a loop (an empty key leads back to the first node).
    loop = [
        Node(key="", type="calculation", upstream="", branch=""),
        Node(key="b", type="calculation", upstream=""),
    ]
    assert graph.check(loop)


def test_the_picker_endpoint_is_bounded(redis_conn):
    viewer = User.objects.create_user("viewer", password="pw-view-12345", is_staff=True)
    from django.contrib.auth.models import Permission

    viewer.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    client = Client()
    client.force_login(viewer)
    names = [f"f{i}" for i in range(150_000)]
    nodes = [{"key": "top", "type": "query", "config": {"collection": "catalog.Product", "fields": names}}]
    nodes += [
        {"key": f"n{i}", "type": "calculation", "upstream": "top" if i == 0 else f"n{i - 1}"}
        for i in range(199)
    ]
    state = {"trigger_type": "manual", "nodes": nodes}
    response = client.post(
        "/admin/workflows/workflow/variables/", json.dumps(state), content_type="application/json"
    )
    assert response.status_code == 200 and len(response.content) < 2_000_000
    assert "f149999" not in response.content.decode()  # only the model's own fields are listed
    deep = '{"nodes": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/admin/workflows/workflow/variables/", deep, content_type="application/json")
    assert response.status_code == 400 and "nested deeper than 64 levels" in response.json()["error"]


def test_typed_values_that_cannot_be_stored_or_shown_are_said_where_the_user_looks(workflow):
    deep = "[" * 100_000 + "]" * 100_000
    form = bound_node(workflow, type="create", collection="catalog.Product",
                      values__field_0="name", values__value_0=deep)  # fmt: skip
    assert (
        form.is_valid() and form.cleaned_data["config"]["values"]["name"] == deep
    )  # text, no RecursionError
    assert decode("NaN") == "NaN" and decode("Infinity") == "Infinity"  # text: JSON has no NaN
    form = bound_node(workflow, type="create", collection="catalog.Product",
                      values__field_0="name", values__value_0="a\x00b")  # fmt: skip
    assert not form.is_valid()
    assert "NUL" in " ".join(form.non_field_errors())  # shown above the fields, not on the hidden JSON


def test_what_a_text_input_cannot_show_opens_as_json_and_texts_keep_their_spaces(workflow):
    node = Node.objects.create(
        workflow=workflow, key="u", type="update",
        config={"collection": "catalog.Order", "filter": {"customer": "a\nb"}, "values": {"customer": "x"}},
    )  # fmt: skip
    assert NodeForm(instance=node).initial["advanced"] is True  # an <input> would drop the line break
    form = bound_node(workflow, type="end", status="failed", message=" spaced message ")
    assert form.is_valid() and form.cleaned_data["config"]["message"] == " spaced message "
    form = bound_node(workflow, type="http", url="https://example.com/", body="  text body  ",
                      headers__name_0="X-N", headers__value_0="5")  # fmt: skip
    assert form.is_valid(), form.errors
    assert form.cleaned_data["config"]["body"] == "  text body  "
    assert form.cleaned_data["config"]["headers"] == {"X-N": "5"}  # header values are text


def test_the_demo_nodes_open_in_the_fields(redis_conn):
    demo.load("http://127.0.0.1:9/catalog/webhook")
    for node in Workflow.objects.get(key=demo.DEMO_KEY).nodes.all():
        assert not NodeForm(instance=node).initial.get("advanced"), node.key
