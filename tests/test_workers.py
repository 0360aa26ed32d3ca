from __future__ import annotations

import signal
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from rq import Worker as RqWorker

from worker_mode import get_queue
from worker_mode.exceptions import WorkerModeError
from worker_mode.workers import RQ_CHECKED, DjangoForkWorker, DjangoWorker, WorkerGroup, plan_groups

from .conftest import wait_until

WF, AT = "workflow:process", "async-task:process"


# -- planning ------------------------------------------------------------------
def test_plan_shared_pool_only():
    assert plan_groups((WF, AT), 2, {}) == [WorkerGroup("shared", (WF, AT), 2)]


def test_plan_dedicated_processes_per_service():
    assert plan_groups((WF, AT), 1, {WF: 2}) == [WorkerGroup("shared", (AT,), 1), WorkerGroup(WF, (WF,), 2)]


def test_plan_every_service_dedicated_needs_no_shared_pool():
    assert plan_groups((WF, AT), 0, {WF: 1, AT: 3}) == [WorkerGroup(WF, (WF,), 1), WorkerGroup(AT, (AT,), 3)]


def test_plan_ignores_counts_of_services_this_node_does_not_serve():
    assert plan_groups((AT,), 1, {WF: 4}) == [WorkerGroup("shared", (AT,), 1)]


def test_plan_one_shared_pool_per_redis_server():
    """An rq worker listens on one connection: keys on different Redis servers never share one."""
    servers = {WF: "redis-a", AT: "redis-b", "thumbs:process": "redis-a"}
    assert plan_groups((WF, AT, "thumbs:process"), 2, {}, servers.get) == [
        WorkerGroup("shared-1", (WF, "thumbs:process"), 2),
        WorkerGroup("shared-2", (AT,), 2),
    ]
    assert plan_groups((WF, AT), 1, {AT: 1}, servers.get) == [
        WorkerGroup("shared", (WF,), 1),
        WorkerGroup(AT, (AT,), 1),
    ]


def test_plan_refuses_an_empty_shared_pool():
    with pytest.raises(WorkerModeError, match="async-task:process have no dedicated processes"):
        plan_groups((WF, AT), 0, {WF: 1})


# -- rq internals ------------------------------------------------------------------
def test_the_rq_code_the_worker_classes_rely_on_is_the_code_they_were_checked_against():
    import hashlib
    import inspect

    import rq

    found = {}
    for name in RQ_CHECKED:
        owner, method = name.split(".")
        function = getattr(rq.worker, owner).__dict__[method]
        found[name] = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert found == RQ_CHECKED, (
        f"rq {rq.__version__} changed code that worker_mode.workers copies or relies on: read it, adapt "
        "DjangoWorker/FewerRoundTrips, then update RQ_CHECKED"
    )


# -- refusing --------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["!", "-"])
def test_runworkers_refuses_on_a_node_without_services(mode):
    with (
        override_settings(WORKER_MODE=mode),
        pytest.raises(CommandError, match="serves no background services"),
    ):
        call_command("runworkers", "--burst")


@override_settings(WORKER_MODE="workflow:proces")
def test_runworkers_refuses_a_typo():
    with pytest.raises(CommandError, match="E002"):
        call_command("runworkers", "--burst")


# -- Django database connections ------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("worker_class", [DjangoWorker, DjangoForkWorker])
def test_stale_connections_are_replaced_between_jobs(redis_conn, worker_class):
    connection.ensure_connection()
    stale = connection.connection
    connection.close_at = time.monotonic() - 1  # past CONN_MAX_AGE
    queue = get_queue(WF)
    job = queue.enqueue("tests.jobs.database_connection_id")
    worker = worker_class([queue], connection=queue.connection)
    assert worker.work(burst=True)
    job.refresh()
    assert job.is_finished, job.latest_result().exc_string
    assert job.return_value() != id(stale)


@pytest.mark.django_db(transaction=True)
def test_fork_worker_closes_connections_before_forking(redis_conn):
    connection.ensure_connection()
    queue = get_queue(WF)
    queue.enqueue("tests.jobs.mark", "forked")
    worker = DjangoForkWorker([queue], connection=queue.connection)
    assert worker.work(burst=True)
    assert connection.connection is None
    assert redis_conn.get("test:done:forked")


# -- real processes ---------------------------------------------------------------


@pytest.mark.processes
def test_worker_node_ignores_queues_it_does_not_serve(start_node, redis_conn):
    get_queue(WF).enqueue("tests.jobs.mark", "workflow")
    get_queue(AT).enqueue("tests.jobs.mark", "async-task")
    node = start_node(["runworkers", "--burst"], worker_mode=AT)
    assert node.wait(timeout=60) == 0, node.log
    assert redis_conn.get("test:done:async-task")
    assert redis_conn.get("test:done:workflow") is None
    assert get_queue(WF).count == 1
    assert get_queue(AT).count == 0


@pytest.mark.processes
def test_dedicated_processes_per_service(start_node, redis_conn):
    node = start_node(["runworkers"], worker_mode="*", WORKER_MODE_SERVICE_PROCESSES=f"{WF}=2")
    workers = wait_until(lambda: len(RqWorker.all(redis_conn)) == 3 and RqWorker.all(redis_conn), timeout=30)
    by_queues = sorted(tuple(w.queue_names()) for w in workers)
    assert by_queues == [(AT,), (WF,), (WF,)]
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=30) == 0


@pytest.mark.processes
def test_sigterm_lets_the_running_job_finish(start_node, redis_conn):
    get_queue(WF).enqueue("tests.jobs.slow_mark", "slow", 2.0)
    node = start_node(["runworkers"], worker_mode=WF)
    wait_until(lambda: redis_conn.get("test:started:slow"), timeout=30)
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=30) == 0, node.log
    assert redis_conn.get("test:done:slow"), node.log
    assert "warm shut down requested" in node.log


def stop_during_a_long_job(start_node, redis_conn, args: list[str], signals: list[int]):
    """Start runworkers on a 60 s job, send ``signals`` once it runs; return the stopped node."""
    get_queue(WF).enqueue("tests.jobs.slow_mark", "long", 60.0)
    node = start_node(["runworkers", *args], worker_mode=WF)
    wait_until(lambda: redis_conn.get("test:started:long"), timeout=30)
    # What the supervisor logs once it has handled the first stop signal, and then a second one.
    handled = ["Warm shutdown of", "Stop requested again: cold shutdown"]
    for sig, marker in zip(signals, handled, strict=False):
        node.signal(sig)
        wait_until(lambda marker=marker: marker in node.log, timeout=10)
    assert node.wait(timeout=30) == 0, node.log
    assert redis_conn.get("test:done:long") is None  # interrupted, long before its 60 s
    return node


@pytest.mark.processes
def test_second_signal_is_a_cold_shutdown(start_node, redis_conn):
    node = stop_during_a_long_job(start_node, redis_conn, [], [signal.SIGTERM, signal.SIGINT])
    assert "Cold shutdown" in node.log


@pytest.mark.processes
def test_grace_period_ends_in_a_cold_shutdown(start_node, redis_conn):
    node = stop_during_a_long_job(start_node, redis_conn, ["--grace", "1"], [signal.SIGTERM])
    assert "Cold shutdown: interrupting 1 worker(s) still running" in node.log


@pytest.mark.processes
def test_a_killed_worker_process_is_replaced(start_node, redis_conn):
    node = start_node(["runworkers"], worker_mode=WF)
    [first] = wait_until(lambda: RqWorker.all(redis_conn), timeout=30)
    import os

    os.kill(first.pid, signal.SIGKILL)
    wait_until(lambda: any(w.pid != first.pid for w in RqWorker.all(redis_conn)), timeout=30)
    get_queue(WF).enqueue("tests.jobs.mark", "after-restart")
    wait_until(lambda: redis_conn.get("test:done:after-restart"), timeout=30)
    assert "restarting in" in node.log
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=30) == 0


@pytest.mark.processes
def test_a_crash_looping_worker_fails_the_node(start_node, redis_conn):
    for _ in range(3):
        get_queue(WF).enqueue("tests.jobs.crash_process")
    node = start_node(["runworkers"], worker_mode=WF, WORKER_MODE_RESTART_LIMIT="3")
    assert node.wait(timeout=60) == 1, node.log
    assert "3 crashes within" in node.log
    assert "giving up" in node.log


@pytest.mark.processes
def test_workers_wait_for_redis_instead_of_crashing(start_node, redis_conn):
    node = start_node(["runworkers"], worker_mode=WF, REDIS_URL="redis://127.0.0.1:1/0")
    wait_until(lambda: "does not answer" in node.log, timeout=30)
    assert node.process.poll() is None
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=30) == 0
    assert "giving up" not in node.log
