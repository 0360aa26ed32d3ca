"""Claimed work across real processes: whole nodes lost, an in-process import killed, a frozen worker
thawed after its work was taken over (fencing). Short leases keep the tests bounded; the default
timing is what bench/faults.py measures."""

from __future__ import annotations

import io
import signal
import threading
from http.server import ThreadingHTTPServer

import pytest

from async_tasks import tasks
from async_tasks.models import AsyncTask
from catalog.models import Order, Product
from tests.conftest import (
    Hook,
    build_workflow,
    free_port,
    is_postgres,
    lose_node,
    product_csv,
    shared_database_url,
    signal_tree,
    wait_for_http,
    wait_until,
)
from worker_mode.claims import live_nodes
from workflows import triggers
from workflows.models import Execution, Job

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

#: Leases of 6 s (renewed every 2 s) and a sweep every second: a lost owner's work moves within ~8 s.
FAST = {"WORKER_MODE_LEASE": "6", "WORKER_MODE_RECOVERY_INTERVAL": "1"}


@pytest.fixture
def env(site_env, task_storage):
    """Node processes share this test's database and task storage."""
    return {
        **site_env,
        **FAST,
        "DATABASE_URL": shared_database_url(),
        "CONN_MAX_AGE": "0",
        "ASYNC_TASKS_DIR": str(task_storage),
        "WORKFLOWS_HTTP_ALLOWED_NETWORKS": "127.0.0.1",
    }


@pytest.fixture
def hook():
    Hook.reset()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Hook, f"http://127.0.0.1:{server.server_address[1]}/hook"
    Hook.release.set()
    server.shutdown()
    server.server_close()


def call_then_order(url: str, product: Product):
    """calculation -> HTTP call (at-least-once) -> create an order named after the execution (an effect)."""
    return build_workflow(
        [
            {"key": "n", "type": "calculation", "config": {"expression": "{{ $context.data.n }} + 1"}},
            {
                "key": "call",
                "type": "http",
                "upstream": "n",
                "config": {"url": url, "body": {}, "timeout": 30},
            },
            {
                "key": "order",
                "type": "create",
                "upstream": "call",
                "config": {
                    "collection": "catalog.Order",
                    "values": {
                        "product": product.pk,
                        "quantity": 1,
                        "customer": "execution {{ $system.execution }}",
                    },
                },
            },
        ]
    )


def orders_per_execution(executions) -> dict[int, int]:
    return {e.pk: Order.objects.filter(customer=f"execution {e.pk}").count() for e in executions}


def finished(queryset, count: int):
    return lambda: queryset.filter(status__in=queryset.model.FINISHED).count() == count


def test_a_lost_workflow_node_s_executions_resume_on_a_replacement_once(start_node, env, hook):
    handler, url = hook
    handler.hold = 3  # the lost node's three calls never return to it
    product = Product.objects.create(sku="P-1", name="Mug", price=1, quantity=5)
    workflow = call_then_order(url, product)
    executions = [triggers.trigger_manually(workflow, {"n": n}) for n in range(3)]
    port = free_port()
    lost = start_node(
        ["runnode", "--bind", f"127.0.0.1:{port}", "--processes", "3"],
        "workflow:process",
        **{**env, "NODE_NAME": "wf-1"},
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz", lost)
    wait_until(lambda: len(handler.calls) == 3, timeout=45)
    rows = Execution.objects.filter(pk__in=[e.pk for e in executions])
    assert set(rows.values_list("status", "node_name")) == {("running", "wf-1")}
    pids = lose_node(lost)
    assert len(pids) >= 7  # runnode, gunicorn and its worker, runworkers and its three rq workers
    replacement = start_node(["runworkers"], "workflow:process", **{**env, "NODE_NAME": "wf-2"})
    wait_until(finished(rows, 3), timeout=45, interval=0.2)
    assert set(rows.values_list("status", "node_name", "attempts")) == {("resolved", "wf-2", 2)}, (
        replacement.log
    )
    assert orders_per_execution(executions) == {e.pk: 1 for e in executions}  # effects: exactly once
    assert len(handler.calls) == 6  # HTTP is at-least-once: the lost node's calls, then the replacement's
    assert replacement.log.count("queued again (attempt 1 of 3 done): its ") == 3


def test_a_lost_import_node_s_task_is_retried_on_a_replacement(start_node, env, redis_conn):
    task = tasks.create_import(
        None, "catalog.Product", io.BytesIO(product_csv(20000)), name="p.csv", mode="update"
    )
    node_env = {**env, "ASYNC_TASKS_BATCH_SIZE": "100", "ASYNC_TASKS_RECOVERY": "retry"}
    lost = start_node(["runworkers"], "async-task:process", **{**node_env, "NODE_NAME": "tasks-1"})

    def importing():
        task.refresh_from_db()
        return task.status == "running" and task.done >= 300

    wait_until(importing, timeout=45)
    # Its presence is up (announced once its workers run): the replacement must wait for the lease.
    wait_until(lambda: "tasks-1" in live_nodes(), timeout=10)
    lose_node(lost)
    done_at_loss = AsyncTask.objects.get(pk=task.pk).done
    replacement = start_node(["runworkers"], "async-task:process", **{**node_env, "NODE_NAME": "tasks-2"})
    wait_until(finished(AsyncTask.objects.filter(pk=task.pk), 1), timeout=90, interval=0.2)
    task.refresh_from_db()
    assert (task.status, task.attempts, task.node_name) == ("succeeded", 2, "tasks-2"), (
        task.error,
        replacement.log,
    )
    assert Product.objects.count() == 20000 and done_at_loss < 20000
    assert "its lease lapsed" in replacement.log


@pytest.mark.parametrize("same_node", [False, True], ids=["other-node", "same-node"])
def test_a_killed_in_process_import_is_failed_with_its_reason(start_node, env, tmp_path, same_node):
    source = tmp_path / "big.csv"
    source.write_bytes(product_csv(30000))
    worker = start_node(["runworkers"], "async-task:process", **{**env, "NODE_NAME": "tasks"})
    command = start_node(
        ["importrecords", "catalog.Product", str(source), "-v", "0"],
        **{**env, "NODE_NAME": "tasks" if same_node else "shell", "ASYNC_TASKS_BATCH_SIZE": "100"},
    )

    def importing():
        task = AsyncTask.objects.first()
        return task is not None and task.status == "running" and task.done >= 300 and task

    task = wait_until(importing, timeout=45)
    assert task.worker == f"{'tasks' if same_node else 'shell'}.inline.0.{command.process.pid}"
    command.signal(signal.SIGKILL)  # the operator's shell dies, the OOM killer strikes
    command.process.wait(10)  # reaped, as its shell would
    wait_until(finished(AsyncTask.objects.filter(pk=task.pk), 1), timeout=30, interval=0.2)
    task.refresh_from_db()
    assert task.status == "failed", worker.log
    if same_node:  # its process id answers at once
        assert f"its process (pid {command.process.pid}) on this node is gone" in task.error
    else:  # no process of "shell" renews it any more
        assert "its lease lapsed" in task.error or "has no live presence" in task.error
    assert 300 <= task.done < 30000 and Product.objects.count() == task.done


def ended_its_job(node, *noticed: str) -> bool:
    """Whether ``node`` logged one of ``noticed`` (its work was taken from it), then rq logged the end
    of that job: after that, nothing more of it can be written."""
    log = node.log
    found = [log.find(text) for text in noticed if text in log]
    rest = log[min(found) :] if found else ""
    return "Job OK" in rest or "exception raised while executing" in rest


def test_a_frozen_worker_thawed_after_a_takeover_applies_nothing(start_node, env, hook):
    handler, url = hook
    handler.hold = 1  # the first caller waits; the takeover's call returns at once
    product = Product.objects.create(sku="P-1", name="Mug", price=1, quantity=5)
    execution = triggers.trigger_manually(call_then_order(url, product), {"n": 1})
    frozen = start_node(["runworkers"], "workflow:process", **{**env, "NODE_NAME": "wf-a"})
    wait_until(lambda: handler.calls, timeout=45)
    signal_tree(frozen, signal.SIGSTOP)  # partitioned mid-call
    taker = start_node(["runworkers"], "workflow:process", **{**env, "NODE_NAME": "wf-b"})
    rows = Execution.objects.filter(pk=execution.pk)
    wait_until(finished(rows, 1), timeout=45, interval=0.2)
    assert rows.get().node_name == "wf-b" and rows.get().status == "resolved", taker.log
    handler.release.set()  # the frozen node's call now answers ...
    signal_tree(frozen, signal.SIGCONT)  # ... and it comes back
    wait_until(lambda: ended_its_job(frozen, "stopped: canceled or taken over"), timeout=20)
    execution.refresh_from_db()
    assert (execution.status, execution.node_name, execution.attempts) == ("resolved", "wf-b", 2)
    assert orders_per_execution([execution]) == {execution.pk: 1}, frozen.log
    jobs = {j.node_key: (j.status, j.runs) for j in Job.objects.filter(execution=execution)}
    assert jobs == {"n": ("resolved", 1), "call": ("resolved", 2), "order": ("resolved", 1)}


@pytest.mark.skipif(
    not is_postgres(),
    reason="a process frozen inside a batch holds SQLite's one write lock, and every writer waits: "
    "partitions are a cluster's failure, and clusters run on PostgreSQL",
)
def test_a_frozen_import_thawed_after_its_task_was_failed_commits_no_further_batch(start_node, env):
    product = Product.objects.create(sku="P-1", name="Mug", price=1, quantity=5)
    lines = "product,quantity,customer\n" + "".join(f"{product.pk},1,c{i}\n" for i in range(40000))
    task = tasks.create_import(None, "catalog.Order", io.BytesIO(lines.encode()), name="o.csv")
    node_env = {**env, "ASYNC_TASKS_BATCH_SIZE": "200"}
    frozen = start_node(["runworkers"], "async-task:process", **{**node_env, "NODE_NAME": "tasks-a"})
    wait_until(lambda: AsyncTask.objects.get(pk=task.pk).done >= 1000, timeout=45)
    signal_tree(frozen, signal.SIGSTOP)
    survivor = start_node(["runworkers"], "async-task:process", **{**node_env, "NODE_NAME": "tasks-b"})
    wait_until(finished(AsyncTask.objects.filter(pk=task.pk), 1), timeout=60, interval=0.2)
    task.refresh_from_db()
    assert task.status == "failed" and "Abandoned:" in task.error, survivor.log
    committed = Order.objects.count()
    assert committed == task.done  # progress and rows commit together
    signal_tree(frozen, signal.SIGCONT)
    # Its next batch finds the claim gone, or its session was ended by the server while it was frozen
    # inside a transaction (idle_in_transaction_session_timeout): either way nothing more commits.
    wait_until(lambda: ended_its_job(frozen, "taken from this process", "could not record"), timeout=30)
    assert Order.objects.count() == committed, frozen.log  # the thawed worker committed nothing more
    task.refresh_from_db()
    assert task.status == "failed" and task.done == committed


def own_pid_namespace() -> tuple[str, ...]:
    """A command prefix that runs a node in a pid namespace of its own, as a container would."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux's unshare is not installed: no second pid namespace to run a node in")
    prefix = (unshare, "--pid", "--mount-proc", "--kill-child")
    if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode != 0:
        pytest.skip("this machine does not let the tests create a pid namespace (unshare needs root)")
    return prefix


def test_namesake_nodes_in_two_containers_leave_each_others_work_alone(start_node, env, hook):
    handler, url = hook
    handler.hold = 1
    product = Product.objects.create(sku="P-1", name="Mug", price=1, quantity=5)
    execution = triggers.trigger_manually(call_then_order(url, product), {"n": 1})
    same = {**env, "NODE_NAME": "node2"}  # a compose service scaled to two keeps its NODE_NAME
    owner = start_node(["runworkers"], "workflow:process", **same)
    wait_until(lambda: handler.calls, timeout=45)
    running = Execution.objects.get(pk=execution.pk)
    assert running.pid > 200  # a pid of this machine's namespace: none such in a fresh container
    container = start_node(["runworkers"], "workflow:process", prefix=own_pid_namespace(), **same)
    wait_until(lambda: "Started worker" in container.log, timeout=30)  # after its first sweep (the gate)
    # More than a lease and several sweeps of the container's node (one a second): the lease the owner
    # held when the container came up has run out and been renewed since (or the row changed hands).
    lease = Execution.objects.get(pk=execution.pk).lease_expires_at

    def a_lease_later():
        row = Execution.objects.get(pk=execution.pk)
        return row.heartbeat_at > lease or row.attempts != 1 or row.status != "running"

    wait_until(a_lease_later, timeout=30)
    assert Execution.objects.get(pk=execution.pk).attempts == 1, container.log
    handler.release.set()
    wait_until(finished(Execution.objects.filter(pk=execution.pk), 1), timeout=30)
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == ("resolved", 1), (owner.log, container.log)
    assert len(handler.calls) == 1 and orders_per_execution([execution]) == {execution.pk: 1}
    assert "queued again" not in owner.log + container.log
    signal_tree(container, signal.SIGTERM)  # unshare blocks SIGTERM; its child, the node, stops on it
    container.wait(30)
