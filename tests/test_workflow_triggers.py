"""Collection events (after commit), schedules (once per due time), recovery of lost or orphaned work."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
from decimal import Decimal

import pytest
from django.db import connections, transaction
from django.utils import timezone

from catalog.models import Order, Product
from tests.conftest import build_workflow, drain, is_postgres
from worker_mode import claims
from workflows import schedule, triggers
from workflows.exceptions import ConfigError
from workflows.models import Execution, Job

pytestmark = pytest.mark.django_db(transaction=True)

ONE = [{"key": "one", "type": "calculation", "config": {"expression": "1"}}]
CALC = [{"key": "calc", "type": "calculation", "config": {"expression": "{{ $context.data.quantity }} * 2"}}]


@pytest.fixture
def product(redis_conn):
    return Product.objects.create(sku="P-1", name="Mug", price=Decimal("9.90"), quantity=5)


def on(events, **config):
    return {"collection": "catalog.Product", "events": events, **config}


def test_created_updated_deleted_events_carry_the_record(product):
    for event in ("created", "updated", "deleted"):
        build_workflow(CALC, trigger_type="collection", trigger_config=on([event]), key=f"on-{event}")
    fresh = Product.objects.create(sku="P-2", name="Cup", price=1, quantity=7)
    fresh.quantity = 8
    fresh.save()
    pk = fresh.pk
    fresh.delete()
    drain()
    executions = {e.workflow.key: e for e in Execution.objects.select_related("workflow")}
    assert set(executions) == {"on-created", "on-updated", "on-deleted"}
    assert executions["on-created"].context["data"]["quantity"] == 7
    assert (
        executions["on-updated"].context["changed"] is None
        or "quantity" in executions["on-updated"].context["changed"]
    )
    assert executions["on-deleted"].context["data"]["id"] == pk
    assert all(e.status == "resolved" for e in executions.values())
    assert Job.objects.get(execution=executions["on-updated"]).result == 16


def test_changed_fields_filter_and_condition(product):
    build_workflow(
        CALC, trigger_type="collection", trigger_config=on(["updated"], changed_fields=["price"]), key="price"
    )
    build_workflow(
        CALC,
        trigger_type="collection",
        trigger_config=on(["created", "updated"], condition="{{ $context.data.quantity }} > 100"),
        key="big",
    )
    product.quantity = 6
    product.save()
    assert not Execution.objects.exists()
    product.price = Decimal("12.00")
    product.save()
    execution = Execution.objects.get()
    assert (execution.workflow.key, execution.context["changed"]) == ("price", ["price"])
    assert execution.context["previous"]["price"] == 9.9
    Product.objects.create(sku="BIG", name="Pallet", price=1, quantity=500)
    assert Execution.objects.filter(workflow__key="big").count() == 1


def test_a_rolled_back_write_fires_nothing(product, redis_conn):
    build_workflow(CALC, trigger_type="collection", trigger_config=on(["created"]))
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(sku="GHOST", name="never", price=1, quantity=1)
        raise RuntimeError("rollback")
    assert not Execution.objects.exists()
    assert redis_conn.llen("rq:queue:workflow:process") == 0


def test_async_events_are_enqueued_only_after_commit(product, redis_conn):
    build_workflow(CALC, trigger_type="collection", trigger_config=on(["created"]))
    with transaction.atomic():
        Product.objects.create(sku="P-9", name="x", price=1, quantity=1)
        assert redis_conn.llen("rq:queue:workflow:process") == 0
    assert redis_conn.llen("rq:queue:workflow:process") == 1


def test_trigger_configs_are_validated():
    cases = [
        ("collection", {"collection": "auth.User", "events": ["created"]}, "not allowed"),
        ("collection", on(["exploded"]), "'events'"),
        ("collection", on(["updated"], changed_fields=["colour"]), "no field(s) colour"),
        ("collection", on(["created"], condition="1 +"), "Invalid expression"),
        ("schedule", {"cron": "61 * * * *"}, "Invalid cron"),
        ("schedule", {"cron": "* * * * *", "interval": 5}, "exactly one"),
        ("schedule", {"interval": 0}, "from 1 to 316,224,000"),
        (
            "schedule",
            {"interval": 60, "start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            "after 'start'",
        ),
        ("manual", {"x": 1}, "no config"),
    ]
    for trigger_type, config, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            triggers.check_config(trigger_type, config)
    with pytest.raises(ConfigError, match="asynchronous"):
        triggers.check_config("schedule", {"interval": 60}, sync=True)


def test_schedule_next_times():
    at = datetime.datetime(2026, 1, 1, 10, 2, 30, tzinfo=datetime.UTC)
    assert schedule.next_time({"cron": "*/5 * * * *"}, at) == at.replace(minute=5, second=0)
    start = "2026-01-01T10:00:00Z"
    assert schedule.next_time({"interval": 60, "start": start}, at) == at.replace(minute=3, second=0)
    assert schedule.next_time({"interval": 60, "start": "2026-01-02T00:00:00Z"}, at).day == 2
    assert schedule.next_time({"interval": 60, "end": "2026-01-01T10:03:00Z"}, at) is None


def test_a_due_schedule_fires_once_and_moves_on(redis_conn):
    workflow = build_workflow(ONE, trigger_type="schedule", trigger_config={"interval": 60})
    assert workflow.next_run_at > timezone.now()
    due = workflow.next_run_at
    later = due + datetime.timedelta(seconds=1)
    assert triggers.fire_schedules(timezone.now()) == 0
    assert triggers.fire_schedules(later) == 1
    assert triggers.fire_schedules(later) == 0  # a second node ticking at the same moment
    execution = Execution.objects.get()
    assert (execution.event, execution.scheduled_for) == ("schedule", due)
    workflow.refresh_from_db()
    assert workflow.next_run_at == later + datetime.timedelta(seconds=60)
    drain()
    execution.refresh_from_db()
    assert execution.status == "resolved"


def test_missed_due_times_fire_once(redis_conn):
    workflow = build_workflow(ONE, trigger_type="schedule", trigger_config={"interval": 60})
    much_later = workflow.next_run_at + datetime.timedelta(hours=5)
    assert triggers.fire_schedules(much_later) == 1
    assert triggers.fire_schedules(much_later) == 0


@pytest.mark.skipif(not is_postgres(), reason="SQLite serialises writers, so a tick race needs PostgreSQL")
def test_nodes_ticking_together_fire_a_due_time_once(redis_conn):
    workflow = build_workflow(ONE, trigger_type="schedule", trigger_config={"interval": 60})
    later = workflow.next_run_at + datetime.timedelta(seconds=1)
    barrier = threading.Barrier(6)
    fired = []

    def tick():
        try:
            barrier.wait()
            fired.append(triggers.fire_schedules(later))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=tick) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(fired) == 1
    assert Execution.objects.count() == 1


def test_redis_down_at_trigger_time_loses_nothing(product, settings, redis_conn):
    workflow = build_workflow(CALC, trigger_type="collection", trigger_config=on(["created"]))
    good_url = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    order_product = Product.objects.create(
        sku="P-2", name="Cup", price=1, quantity=3
    )  # the "request" succeeds
    settings.REDIS_URL = good_url
    execution = Execution.objects.get(workflow=workflow)
    assert execution.status == "queued" and redis_conn.llen("rq:queue:workflow:process") == 0
    assert claims.requeue_lost(Execution, grace=0) == 1
    assert claims.requeue_lost(Execution, grace=0) == 0  # its message is in the queue now
    drain()
    execution.refresh_from_db()
    assert execution.status == "resolved"
    assert Job.objects.get(execution=execution).result == order_product.quantity * 2


def test_a_flushed_redis_is_recovered_after_the_grace(product, redis_conn):
    workflow = build_workflow(CALC, trigger_type="collection", trigger_config=on(["created"]))
    Product.objects.create(sku="P-2", name="Cup", price=1, quantity=3)
    redis_conn.flushdb()
    assert claims.requeue_lost(Execution) == 0  # younger than WORKER_MODE_QUEUED_GRACE
    assert claims.requeue_lost(Execution, timezone.now() + datetime.timedelta(seconds=11)) == 1
    drain()
    assert Execution.objects.get(workflow=workflow).status == "resolved"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def orphan(workflow, settings, attempts=1, pid=None):
    """An execution a dead process of this node had claimed: its first node resolved, its second cut short."""
    execution = triggers.trigger_manually(workflow, {"data": {"quantity": 2}})
    settings.WORKER_MODE_NODE_NAME = "node-a"
    pid = pid or dead_pid()
    Execution.objects.filter(pk=execution.pk).update(
        status="running", node_name="node-a", pid=pid, worker=f"node-a.shared.0.{pid}", attempts=attempts,
        host=claims.process_namespace(),
        claim_token="t" * 32, started_at=timezone.now(), heartbeat_at=timezone.now(),
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=30),
    )  # fmt: skip
    first = workflow.nodes.get(key="calc")
    Job.objects.create(execution=execution, node=first, node_key="calc", status="resolved", result=4)
    second = workflow.nodes.get(key="again")
    Job.objects.create(execution=execution, node=second, node_key="again")
    return execution


TWO = [
    *CALC,
    {
        "key": "again",
        "type": "calculation",
        "upstream": "calc",
        "config": {"expression": "{{ $jobs.calc }} + 1"},
    },
]


def test_an_execution_of_a_dead_process_is_resumed_from_its_last_finished_node(redis_conn, settings):
    workflow = build_workflow(TWO)
    execution = orphan(workflow, settings)
    redis_conn.flushdb()
    assert claims.recover(Execution) == {"retried": 1, "failed": 0}
    execution.refresh_from_db()
    assert (execution.status, execution.claim_token, execution.pid) == ("queued", "", None)
    drain()
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == ("resolved", 2)
    jobs = {j.node_key: (j.status, j.result, j.runs) for j in Job.objects.filter(execution=execution)}
    assert jobs == {"calc": ("resolved", 4, 1), "again": ("resolved", 5, 2)}


def test_fail_policy_and_the_attempt_limit_abort(redis_conn, settings):
    workflow = build_workflow(TWO)
    settings.WORKFLOWS_RECOVERY = "fail"
    execution = orphan(workflow, settings)
    assert claims.recover(Execution) == {"retried": 0, "failed": 1}
    execution.refresh_from_db()
    assert execution.status == "aborted" and execution.finished_at
    assert execution.error.startswith("Abandoned: its process (pid ")
    assert "on this node is gone" in execution.error
    again = Job.objects.get(execution=execution, node_key="again")
    assert again.status == "aborted" and again.error == execution.error
    settings.WORKFLOWS_RECOVERY = "retry"
    execution = orphan(workflow, settings, attempts=3)
    assert claims.recover(Execution) == {"retried": 0, "failed": 1}
    execution.refresh_from_db()
    assert "gave up after 3 attempt(s) (WORKFLOWS_MAX_ATTEMPTS)" in execution.error


def test_a_live_process_keeps_its_execution_until_its_lease_lapses(redis_conn, settings):
    workflow = build_workflow(TWO)
    execution = orphan(workflow, settings, pid=os.getpid())
    assert claims.recover(Execution) == {"retried": 0, "failed": 0}
    lapsed = timezone.now() + datetime.timedelta(seconds=31)
    assert claims.recover(Execution, lapsed) == {"retried": 1, "failed": 0}
    execution.refresh_from_db()
    assert execution.status == "queued"


def test_order_workflow_on_a_created_order(product):
    build_workflow(
        [
            {
                "key": "reject",
                "type": "update",
                "config": {
                    "collection": "catalog.Order",
                    "filter": {"id": "{{ $context.data.id }}"},
                    "values": {"status": "rejected"},
                },
            }
        ],
        trigger_type="collection",
        trigger_config={"collection": "catalog.Order", "events": ["created"]},
    )
    order = Order.objects.create(product=product, quantity=1)
    drain()
    order.refresh_from_db()
    assert order.status == "rejected"


def test_lost_messages_behind_a_long_healthy_backlog_are_recovered(redis_conn):
    workflow = build_workflow([{"key": "n", "type": "calculation", "config": {"expression": "1"}}])
    executions = [triggers.trigger_manually(workflow, {}) for _ in range(25)]
    assert redis_conn.llen("rq:queue:workflow:process") == 25
    for execution in executions[-3:]:
        redis_conn.delete(f"rq:job:{execution.job_id}")  # their messages are gone
    # pages of 10: the lost ones sit on the third page
    assert claims.requeue_lost(Execution, grace=0, batch=10) == 3
    assert claims.requeue_lost(Execution, grace=0, batch=10) == 0
