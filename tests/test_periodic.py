"""worker_mode's periodic tasks (run by runworkers under a lock) and worker liveness."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from rq import SimpleWorker

from worker_mode import PeriodicTask, WorkerModeError, register_service, services, worker_is_alive
from worker_mode.cluster import current_worker_name
from worker_mode.periodic import PeriodicRunner, run_locked
from worker_mode.queues import get_connection, get_queue

CALLS: list[str] = []


def record() -> None:
    CALLS.append("ran")


def hold_lock_and_record() -> None:
    # While this task runs, the same task cannot start again (another node would skip it).
    CALLS.append("outer")
    assert run_locked("test:periodic", PeriodicTask(f"{__name__}.hold_lock_and_record", every=1)) is False


def explode() -> None:
    raise RuntimeError("boom")


@pytest.fixture
def periodic_service(redis_conn):
    CALLS.clear()
    register_service(
        "test:periodic",
        periodic=(PeriodicTask(f"{__name__}.record", every=10),),
    )
    yield
    services.unregister("test:periodic")


def test_periodic_task_validates_its_definition():
    with pytest.raises(WorkerModeError, match="dotted path"):
        PeriodicTask("record", every=1)
    with pytest.raises(WorkerModeError, match="every > 0"):
        PeriodicTask(f"{__name__}.record", every=0)


def test_runner_runs_at_start_then_when_due(periodic_service):
    now = [100.0]
    runner = PeriodicRunner(["test:periodic"], clock=lambda: now[0])
    assert runner.run_due(force=True) == [f"{__name__}.record"]
    now[0] += 5
    assert runner.run_due() == []
    now[0] += 6
    assert runner.run_due() == [f"{__name__}.record"]
    assert CALLS == ["ran", "ran"]


def test_a_held_lock_skips_the_task(periodic_service):
    assert run_locked("test:periodic", PeriodicTask(f"{__name__}.hold_lock_and_record", every=1))
    assert CALLS == ["outer"]


def test_a_failing_task_is_logged_not_raised(periodic_service, caplog):
    with caplog.at_level(logging.ERROR, logger="worker_mode.periodic"):
        assert run_locked("test:periodic", PeriodicTask(f"{__name__}.explode", every=1)) is False
    assert "boom" in caplog.text


def test_redis_down_skips_the_task(periodic_service, settings, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    with caplog.at_level(logging.WARNING, logger="worker_mode.periodic"):
        assert run_locked("test:periodic", PeriodicTask(f"{__name__}.record", every=1)) is False
    assert CALLS == []
    assert "unavailable" in caplog.text


def test_worker_on_this_node_is_alive_while_its_process_is(redis_conn, settings):
    settings.WORKER_MODE_NODE_NAME = "node-a"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert worker_is_alive(f"node-a.shared.0.{os.getpid()}", redis_conn)
    assert not worker_is_alive(f"node-a.shared.0.{child.pid}", redis_conn)
    assert current_worker_name() == f"node-a.inline.0.{os.getpid()}"


def test_worker_on_another_node_is_alive_while_rq_knows_it(redis_conn, settings):
    settings.WORKER_MODE_NODE_NAME = "node-a"
    name = "node-b.shared.0.12345"
    assert not worker_is_alive(name, redis_conn)
    worker = SimpleWorker(
        [get_queue("workflow:process")], connection=get_connection("workflow:process"), name=name
    )
    worker.register_birth()
    try:
        assert worker_is_alive(name, redis_conn)
    finally:
        worker.register_death()
    assert not worker_is_alive(name, redis_conn)
