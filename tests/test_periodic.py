"""worker_mode.periodic: periodic tasks under a lock (one node at a time), and the recovery sweeps."""

from __future__ import annotations

import logging
import os

import pytest

from worker_mode import PeriodicTask, WorkerModeError, register_service, services
from worker_mode.cluster import current_worker_name
from worker_mode.periodic import PeriodicRunner, run_locked

CALLS: list[str] = []


def record(*args: str) -> None:
    CALLS.append("ran" + "".join(f" {a}" for a in args))


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
        assert run_locked("test:periodic", PeriodicTask(f"{__name__}.record", every=1)) is None
    assert CALLS == []
    assert "unavailable" in caplog.text


def test_a_task_gets_its_arguments_and_its_own_lock(periodic_service):
    one = PeriodicTask(f"{__name__}.record", every=1, args=("a",))
    other = PeriodicTask(f"{__name__}.record", every=1, args=("b",))
    assert one.name == f"{__name__}.record(a)" and one.name != other.name
    assert run_locked("test:periodic", one) and run_locked("test:periodic", other)
    assert CALLS == ["ran a", "ran b"]


def test_keys_with_claimed_work_get_the_recovery_sweeps(redis_conn, settings):
    settings.WORKER_MODE_RECOVERY_INTERVAL = 3
    runner = PeriodicRunner(["workflow:process", "async-task:process"])
    names = {task.name: task.every for _, task in runner.tasks}
    assert names["worker_mode.claims.sweep(workflow:process)"] == 3
    assert names["worker_mode.claims.sweep(async-task:process)"] == 3
    assert names["worker_mode.claims.sweep_lost(workflow:process)"] == 30
    assert "workflows.recovery.tick" in names and "async_tasks.tasks.cleanup" in names


def test_periodic_service_without_claimed_work_gets_no_sweep(periodic_service):
    runner = PeriodicRunner(["test:periodic"])
    assert [task.name for _, task in runner.tasks] == [f"{__name__}.record"]


def test_current_worker_name_outside_runworkers_is_inline(settings):
    settings.WORKER_MODE_NODE_NAME = "node-a"
    assert current_worker_name() == f"node-a.inline.0.{os.getpid()}"


def test_redis_down_runs_a_lock_optional_task_without_its_lock(periodic_service, settings, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    task = PeriodicTask(f"{__name__}.record", every=1, args=("unlocked",), lock_optional=True)
    with caplog.at_level(logging.WARNING, logger="worker_mode.periodic"):
        assert run_locked("test:periodic", task) is True
        assert run_locked("test:periodic", task) is True
    assert CALLS == ["ran unlocked", "ran unlocked"]
    assert caplog.text.count("runs without its lock until it answers") == 1


def test_the_claims_sweep_may_run_without_its_lock(redis_conn):
    runner = PeriodicRunner(["workflow:process"])
    optional = {task.name: task.lock_optional for _, task in runner.tasks}
    assert optional["worker_mode.claims.sweep(workflow:process)"] is True
    assert optional["worker_mode.claims.sweep_lost(workflow:process)"] is False  # needs Redis anyway
    assert optional["workflows.recovery.tick"] is False


def test_a_task_skipped_for_redis_is_tried_again_soon(periodic_service, settings, redis_server):
    now = [100.0]
    runner = PeriodicRunner(["test:periodic"], clock=lambda: now[0])  # its task runs every 10 s
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    assert runner.run_due(force=True) == []
    settings.REDIS_URL = redis_server  # Redis is back
    now[0] += 2.5  # long before the next 10-s interval
    assert runner.run_due() == [f"{__name__}.record"]
    assert CALLS == ["ran"]


@pytest.mark.django_db(transaction=True)
def test_the_lost_message_check_repeats_soon_after_a_forced_run(redis_conn, settings):
    settings.WORKER_MODE_QUEUED_GRACE = 10
    now = [100.0]
    runner = PeriodicRunner(["workflow:process"], clock=lambda: now[0])
    runner.run_due(force=True)  # at start: work queued moments ago is too young to judge
    assert runner.next_run["worker_mode.claims.sweep_lost(workflow:process)"] == 111.0  # not 130
    now[0] = 112.0
    assert "worker_mode.claims.sweep_lost(workflow:process)" in runner.run_due()
    assert runner.next_run["worker_mode.claims.sweep_lost(workflow:process)"] == 142.0  # then every 30 s


def test_redis_down_is_said_once_then_slowly_and_its_return_is_said(
    periodic_service, settings, redis_server, caplog, monkeypatch
):
    from worker_mode import periodic

    now = [1000.0]
    monkeypatch.setattr(periodic, "_clock", lambda: now[0])
    task = PeriodicTask(f"{__name__}.record", every=1)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    with caplog.at_level(logging.WARNING, logger="worker_mode.periodic"):
        for _ in range(30):  # half a minute of retries every second: one warning
            assert run_locked("test:periodic", task) is None
            now[0] += 1
        assert len(caplog.records) == 1
        assert "test:periodic skipped" in caplog.records[0].getMessage()
        now[0] += 31  # a minute after the first warning: said again, with how long
        assert run_locked("test:periodic", task) is None
        assert len(caplog.records) == 2
        assert "unavailable for 61 s" in caplog.records[1].getMessage()
        settings.REDIS_URL = redis_server
        now[0] += 5
        assert run_locked("test:periodic", task) is True
        assert len(caplog.records) == 3
        assert "is back after 66 s" in caplog.records[2].getMessage()
        assert run_locked("test:periodic", task) is True
    assert len(caplog.records) == 3  # said once
    assert CALLS == ["ran", "ran"]


def test_a_stop_ends_a_run_between_two_tasks(periodic_service):
    register_service(
        "test:periodic2", periodic=(PeriodicTask(f"{__name__}.record", every=10, args=("two",)),)
    )
    try:
        runner = PeriodicRunner(["test:periodic", "test:periodic2"])
        assert runner.run_due(force=True, stop=lambda: bool(CALLS)) == [f"{__name__}.record"]
        assert CALLS == ["ran"]  # the second task waits for the next run
    finally:
        services.unregister("test:periodic2")


def test_the_periodic_process_stops_within_seconds_and_cold_by_sigint():
    import signal

    from worker_mode.periodic import STOP_GRACE, periodic_child

    child = periodic_child(["workflow:process"])
    assert child.grace == STOP_GRACE <= 2 and child.cold_signal == signal.SIGINT
    assert child.gate and child.helper and child.wake_signal == signal.SIGUSR1
    assert periodic_child(["workflow:process"], grace=0.5).grace == 0.5  # runworkers --grace 0.5
