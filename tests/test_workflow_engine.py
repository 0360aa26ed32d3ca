"""The engine in-process: node types, branches, sync vs async, delay, stack limit, claim, cancel, retry."""

from __future__ import annotations

import datetime
import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.utils import timezone

from catalog.models import Order, Product
from tests.conftest import build_workflow, drain, is_postgres
from worker_mode import claims
from workflows import engine, graph, recovery, triggers
from workflows.exceptions import WorkflowFailed
from workflows.models import Execution, Job, Node, Workflow

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def product(redis_conn):
    return Product.objects.create(sku="P-1", name="Mug", price=Decimal("9.90"), quantity=5)


def statuses(execution):
    return {j.node_key: j.status for j in Job.objects.filter(execution=execution)}


def results(execution):
    return {j.node_key: j.result for j in Job.objects.filter(execution=execution)}


def stock_workflow(**fields):
    """condition -> calculation -> update record: the benchmark's 3-node shape."""
    return build_workflow(
        [
            {
                "key": "enough",
                "type": "condition",
                "config": {"expression": "{{ $context.data.quantity }} <= 5"},
            },
            {
                "key": "left",
                "type": "calculation",
                "upstream": "enough",
                "branch": "true",
                "config": {"expression": "5 - {{ $context.data.quantity }}"},
            },
            {
                "key": "save",
                "type": "update",
                "upstream": "left",
                "config": {
                    "collection": "catalog.Product",
                    "filter": {"sku": "{{ $context.data.sku }}"},
                    "values": {"quantity": "{{ $jobs.left }}"},
                },
            },
        ],
        **fields,
    )


def test_async_execution_is_queued_then_run_by_a_worker(product):
    workflow = stock_workflow()
    execution = triggers.trigger_manually(workflow, {"quantity": 2, "sku": "P-1"})
    assert execution.status == Execution.Status.QUEUED
    assert Job.objects.count() == 0
    drain()
    execution.refresh_from_db()
    assert execution.status == Execution.Status.RESOLVED, execution.error
    assert results(execution) == {"enough": True, "left": 3, "save": {"updated": 1, "ids": [product.pk]}}
    assert execution.worker.endswith(f".{__import__('os').getpid()}")
    assert execution.node_name and execution.started_at <= execution.finished_at
    product.refresh_from_db()
    assert product.quantity == 3


def test_false_branch_then_the_main_line_continues(product):
    workflow = build_workflow(
        [
            {"key": "big", "type": "condition", "config": {"expression": "{{ $context.data.n }} > 10"}},
            {
                "key": "yes",
                "type": "calculation",
                "upstream": "big",
                "branch": "true",
                "config": {"expression": "1"},
            },
            {
                "key": "no",
                "type": "calculation",
                "upstream": "big",
                "branch": "false",
                "config": {"expression": "2"},
            },
            {"key": "after", "type": "calculation", "upstream": "big", "config": {"expression": "3"}},
        ]
    )
    execution = triggers.trigger_manually(workflow, {"n": 1})
    drain()
    assert statuses(execution) == {"big": "resolved", "no": "resolved", "after": "resolved"}
    assert results(execution)["big"] is False


def test_reject_on_false_fails_the_execution(product):
    workflow = build_workflow(
        [{"key": "gate", "type": "condition", "config": {"expression": "False", "reject_on_false": True}}]
    )
    execution = triggers.trigger_manually(workflow, {})
    drain()
    execution.refresh_from_db()
    assert execution.status == Execution.Status.FAILED
    assert "condition is false" in execution.error


def test_query_create_update_delete_nodes(product):
    Product.objects.create(sku="P-2", name="Cup", price=Decimal("3"), quantity=0, active=False)
    workflow = build_workflow(
        [
            {
                "key": "active",
                "type": "query",
                "config": {
                    "collection": "catalog.Product",
                    "filter": {"active": True},
                    "multiple": True,
                    "fields": ["sku", "quantity"],
                },
            },
            {
                "key": "one",
                "type": "query",
                "upstream": "active",
                "config": {
                    "collection": "catalog.Product",
                    "filter": {"sku__startswith": "P-"},
                    "order_by": ["-sku"],
                },
            },
            {
                "key": "new",
                "type": "create",
                "upstream": "one",
                "config": {
                    "collection": "catalog.Order",
                    "values": {
                        "product": "{{ $jobs.one.id }}",
                        "quantity": 2,
                        "customer": "{{ $context.data.who }}",
                    },
                },
            },
            {
                "key": "mark",
                "type": "update",
                "upstream": "new",
                "config": {
                    "collection": "catalog.Order",
                    "filter": {"id": "{{ $jobs.new.id }}"},
                    "values": {"status": "accepted"},
                },
            },
            {
                "key": "drop",
                "type": "delete",
                "upstream": "mark",
                "config": {
                    "collection": "catalog.Product",
                    "filter": {"quantity": 0, "active": False},
                },
            },
        ]
    )
    execution = triggers.trigger_manually(workflow, {"who": "Ada"})
    drain()
    execution.refresh_from_db()
    assert execution.status == Execution.Status.ERROR  # P-2 is protected: it has an order now
    got = results(execution)
    assert got["active"] == [{"sku": "P-1", "quantity": 5}]
    assert got["one"]["sku"] == "P-2"
    order = Order.objects.get()
    assert (order.product.sku, order.customer, order.status) == ("P-2", "Ada", "accepted")
    assert "ProtectedError" in Job.objects.get(execution=execution, node_key="drop").error


def test_delete_node_deletes_the_filtered_records(product):
    Product.objects.create(sku="OLD-1", name="Old", price=1, quantity=0, active=False)
    workflow = build_workflow(
        [
            {
                "key": "drop",
                "type": "delete",
                "config": {"collection": "catalog.Product", "filter": {"active": False}},
            }
        ]
    )
    execution = triggers.trigger_manually(workflow, {})
    drain()
    assert results(execution)["drop"]["deleted"] == 1
    assert list(Product.objects.values_list("sku", flat=True)) == ["P-1"]


def test_record_validation_failure_fails_the_node_and_rolls_its_effects_back(product):
    workflow = build_workflow(
        [
            {
                "key": "bad",
                "type": "update",
                "config": {
                    "collection": "catalog.Product",
                    "filter": {"sku": "P-1"},
                    "values": {"price": "-1"},
                },
            }
        ]
    )
    execution = triggers.trigger_manually(workflow, {})
    drain()
    execution.refresh_from_db()
    assert execution.status == Execution.Status.FAILED
    job = Job.objects.get(execution=execution)
    assert job.status == Job.Status.FAILED and "price" in job.error
    product.refresh_from_db()
    assert product.price == Decimal("9.90")


def test_end_node_stops_the_chain(product):
    workflow = build_workflow(
        [
            {"key": "stop", "type": "end", "config": {"status": "failed", "message": "Out of season"}},
            {"key": "never", "type": "calculation", "upstream": "stop", "config": {"expression": "1"}},
        ]
    )
    execution = triggers.trigger_manually(workflow, {})
    drain()
    execution.refresh_from_db()
    assert (execution.status, execution.error) == ("failed", "Out of season")
    assert statuses(execution) == {"stop": "resolved"}


def test_delay_pauses_without_holding_a_worker_then_resumes(product):
    workflow = build_workflow(
        [
            {"key": "wait", "type": "delay", "config": {"seconds": 60}},
            {"key": "after", "type": "calculation", "upstream": "wait", "config": {"expression": "42"}},
        ]
    )
    execution = triggers.trigger_manually(workflow, {})
    drain()  # returns: the worker is free while the execution waits
    execution.refresh_from_db()
    assert execution.status == Execution.Status.QUEUED
    assert execution.run_after > timezone.now() + datetime.timedelta(seconds=50)
    assert statuses(execution) == {"wait": "pending"}
    assert recovery.dispatch_due() == 0
    assert engine.run(execution.pk) == "not claimed"  # an early duplicate message cannot resume it
    later = execution.run_after + datetime.timedelta(seconds=1)
    Execution.objects.filter(pk=execution.pk).update(run_after=timezone.now() - datetime.timedelta(seconds=1))
    Job.objects.filter(execution=execution).update(result={"until": timezone.now().isoformat()})
    assert recovery.dispatch_due(later) == 1
    drain()
    execution.refresh_from_db()
    assert execution.status == Execution.Status.RESOLVED
    assert results(execution)["after"] == 42


def test_sync_workflow_runs_in_the_transaction_and_rolls_it_back_on_failure(product):
    build_workflow(
        [
            {
                "key": "check",
                "type": "condition",
                "config": {"expression": "{{ $context.data.quantity }} < 100", "reject_on_false": True},
            }
        ],
        trigger_type="collection",
        trigger_config={"collection": "catalog.Product", "events": ["created"]},
        sync=True,
    )
    Product.objects.create(sku="OK", name="fine", price=1, quantity=3)
    assert Execution.objects.get(workflow__key="wf-1").status == Execution.Status.RESOLVED
    with pytest.raises(WorkflowFailed, match="condition is false"), transaction.atomic():
        Product.objects.create(sku="HUGE", name="too many", price=1, quantity=1000)
    assert not Product.objects.filter(sku="HUGE").exists()
    assert redis_queue_length() == 0


def redis_queue_length() -> int:
    from worker_mode import get_queue

    return get_queue("workflow:process").count


def test_stack_limit_stops_a_workflow_that_retriggers_itself(product):
    # On every product update, update the product again: without a limit this never ends.
    def make(limit):
        return build_workflow(
            [
                {
                    "key": "bump",
                    "type": "update",
                    "config": {
                        "collection": "catalog.Product",
                        "filter": {"id": "{{ $context.data.id }}"},
                        "values": {"quantity": "{{ $context.data.quantity }}"},
                    },
                }
            ],
            trigger_type="collection",
            trigger_config={"collection": "catalog.Product", "events": ["updated"]},
            stack_limit=limit,
            key=f"loop-{limit}",
        )

    workflow = make(1)
    product.save()
    drain()
    assert Execution.objects.filter(workflow=workflow).count() == 1
    workflow.enabled = False
    workflow.save()
    workflow = make(3)
    product.save()
    drain()
    executions = list(Execution.objects.filter(workflow=workflow).order_by("id"))
    assert [len(e.stack) for e in executions] == [0, 1, 2]
    assert all(e.status == Execution.Status.RESOLVED for e in executions)


def test_timeout_aborts_the_execution(product):
    workflow = stock_workflow(timeout=5)
    execution = triggers.trigger_manually(workflow, {"quantity": 1, "sku": "P-1"})
    Execution.objects.filter(pk=execution.pk).update(
        started_at=timezone.now() - datetime.timedelta(seconds=60)
    )
    drain()
    execution.refresh_from_db()
    assert execution.status == Execution.Status.ABORTED
    assert "Timed out after 5 s" in execution.error


def test_a_second_claim_does_nothing(product):
    workflow = stock_workflow()
    execution = triggers.trigger_manually(workflow, {"quantity": 1, "sku": "P-1"})
    first = engine.claim(execution.pk, claims.Owner("node-a", 1, "node-a.shared.0.1"))
    assert first and first.instance.workflow == workflow
    assert not engine.claim(execution.pk, claims.Owner("node-b", 2, "node-b.shared.0.2"))
    execution.refresh_from_db()
    assert (execution.status, execution.node_name, execution.pid) == ("running", "node-a", 1)
    assert (execution.worker, execution.attempts) == ("node-a.shared.0.1", 1)
    assert execution.claim_token == first.token and len(first.token) == 32


@pytest.mark.skipif(not is_postgres(), reason="SQLite serialises writers, so a claim race needs PostgreSQL")
def test_claim_race_on_postgres_has_exactly_one_winner(product):
    workflow = stock_workflow()
    executions = [triggers.trigger_manually(workflow, {"quantity": 1, "sku": "P-1"}) for _ in range(5)]
    for execution in executions:
        barrier = threading.Barrier(8)
        wins = []

        def race(i, pk=execution.pk, barrier=barrier, wins=wins):
            try:
                barrier.wait()
                if engine.claim(pk, claims.Owner("node", i, f"node.race.{i}.{i}")):
                    wins.append(i)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(wins) == 1
        assert Execution.objects.get(pk=execution.pk).attempts == 1


def test_duplicate_messages_run_an_execution_once(product):
    workflow = stock_workflow()
    execution = triggers.trigger_manually(workflow, {"quantity": 1, "sku": "P-1"})
    for _ in range(3):
        engine.dispatch(execution)
    drain()
    execution.refresh_from_db()
    assert execution.attempts == 1
    assert Job.objects.filter(execution=execution).count() == 3
    product.refresh_from_db()
    assert product.quantity == 4


def test_cancel_stops_a_queued_or_running_execution(product):
    workflow = stock_workflow()
    queued = triggers.trigger_manually(workflow, {"quantity": 1, "sku": "P-1"})
    assert engine.cancel(queued)
    drain()
    queued.refresh_from_db()
    assert queued.status == Execution.Status.CANCELED and Job.objects.count() == 0
    running = triggers.trigger_manually(workflow, {"quantity": 1, "sku": "P-1"})
    claimed = engine.claim(running.pk)
    runner = engine.Runner(claimed.instance, claimed)
    assert engine.cancel(running)
    runner.checked_at -= datetime.timedelta(seconds=1)  # the runner re-reads its row every 0.5 s
    assert runner.run() == Execution.Status.CANCELED
    assert not Job.objects.filter(execution=running).exists()
    product.refresh_from_db()
    assert product.quantity == 5
    assert not engine.cancel(running)  # finished: nothing to cancel


def test_retry_replays_resolved_nodes_and_reruns_the_failed_one(product):
    workflow = build_workflow(
        [
            {"key": "first", "type": "calculation", "config": {"expression": "{{ $context.data.n }} * 2"}},
            {
                "key": "make",
                "type": "create",
                "upstream": "first",
                "config": {
                    "collection": "catalog.Product",
                    "values": {"sku": "P-1", "name": "dup", "price": "{{ $jobs.first }}"},
                },
            },
        ]
    )
    execution = triggers.trigger_manually(workflow, {"n": 4})
    drain()
    execution.refresh_from_db()
    assert execution.status == Execution.Status.FAILED
    assert "already exists" in Job.objects.get(execution=execution, node_key="make").error
    product.delete()
    assert engine.retry(execution)
    assert not engine.retry(execution)  # queued again: not retryable twice
    drain()
    execution.refresh_from_db()
    assert execution.status == Execution.Status.RESOLVED
    assert execution.attempts == 1  # a manual retry starts recovery's count over
    runs = {j.node_key: j.runs for j in Job.objects.filter(execution=execution)}
    assert runs == {"first": 1, "make": 2}
    assert Product.objects.get(sku="P-1").price == Decimal("8")


def test_a_version_with_executions_is_locked_and_can_be_copied(product):
    workflow = stock_workflow()
    triggers.trigger_manually(workflow, {"quantity": 1, "sku": "P-1"})
    assert workflow.locked
    workflow.trigger_config = {"unexpected": True}
    with pytest.raises(ValidationError, match="copy it to a new version"):
        workflow.clean()
    workflow.refresh_from_db()
    copy = workflow.copy_to_new_version()
    assert (copy.key, copy.version, copy.enabled, copy.locked) == (workflow.key, 2, False, False)
    assert sorted(copy.nodes.values_list("key", flat=True)) == ["enough", "left", "save"]
    copy.enabled = True
    copy.full_clean()  # enabling another version is no error: it takes over
    copy.save()
    assert list(
        Workflow.objects.filter(key=workflow.key, enabled=True).values_list("version", flat=True)
    ) == [2]
    workflow.refresh_from_db()
    assert workflow.enabled is False and workflow.next_run_at is None
    workflow.sync = True
    with pytest.raises(ValidationError, match="fixed once"):
        workflow.clean()


def test_node_configs_are_validated_with_readable_messages():
    cases = [
        ("calculation", {}, "Missing key(s) expression"),
        ("calculation", {"expression": "1", "typo": 1}, "Unknown key(s) typo"),
        ("query", {"collection": "auth.User"}, "not allowed"),
        ("query", {"collection": "catalog.Product", "filter": {"nope": 1}}, "has no field 'nope'"),
        ("query", {"collection": "catalog.Product", "filter": {"sku__regex": ".*"}}, "Lookup 'regex'"),
        ("delete", {"collection": "catalog.Product", "filter": {}}, "'filter' is required"),
        (
            "update",
            {"collection": "catalog.Product", "filter": {"id": 1}, "values": {"id": 2}},
            "primary key",
        ),
        ("http", {"url": "ftp://example.com"}, "http(s) URL"),
        ("http", {"url": "https://example.com", "headers": {"Host": "x"}}, "set by the engine"),
        ("http", {"url": "https://example.com", "timeout": 999}, "'timeout'"),
        ("delay", {"seconds": -1}, "'seconds'"),
        ("end", {"status": "maybe"}, "'status'"),
        ("teleport", {}, "Unknown node type"),
    ]
    for type_name, config, message in cases:
        node = Node(workflow=Workflow(key="x"), key="n", type=type_name, config=config)
        with pytest.raises(ValidationError) as info:
            node.clean()
        assert message in str(info.value), (type_name, config, info.value)


def test_graph_problems_are_named():
    def n(key, type="calculation", upstream="", branch=""):
        return Node(key=key, type=type, upstream=upstream, branch=branch)

    assert graph.check([n("a"), n("b", upstream="a")]) == []
    assert "both at the start" in graph.check([n("a"), n("b")])[0]
    assert "does not exist" in graph.check([n("a"), n("b", upstream="zzz")])[0]
    assert "does not follow a condition" in graph.check([n("a"), n("b", upstream="a", branch="true")])[0]
    assert "No first node" in graph.check([n("a", upstream="b"), n("b", upstream="a")])[-1]
    assert "cannot pause" in graph.check([n("a", type="delay")], sync=True)[0]
    assert "cannot call HTTP" in graph.check([n("a", type="http")], sync=True)[0]
    assert graph.check([n("a", type="http")], sync=False) == []


def test_a_sync_workflow_saved_with_an_http_node_fails_without_calling(product):
    # Saved before graph.check refused HTTP in sync workflows: the engine refuses it too.
    workflow = Workflow.objects.create(
        key="old-sync", title="t", enabled=True, sync=True, trigger_type="manual"
    )
    Node.objects.create(
        workflow=workflow, key="call", type="http", config={"url": "http://127.0.0.1:9/", "body": {}}
    )
    with pytest.raises(WorkflowFailed, match="a synchronous workflow cannot call HTTP"):
        triggers.trigger_manually(workflow, {})
    assert not Execution.objects.exists()  # rolled back with the request's transaction
