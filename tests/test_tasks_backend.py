"""worker_mode.tasks.RQBackend: Django's Tasks API on the service keys' RQ queues (the site's TASKS)."""

from __future__ import annotations

import datetime
import os
import signal

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from redis import RedisError
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from worker_mode import checks, get_queue
from worker_mode import tasks as backend_module
from worker_mode.exceptions import UnknownServiceKey
from worker_mode.registry import services
from worker_mode.tasks import (
    InvalidTask,
    RQBackend,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    UnknownTaskQueue,
    task,
    task_backends,
)
from worker_mode.workers import DjangoForkWorker, DjangoWorker

from . import tasks as defs
from .conftest import check_error_codes, wait_until

WF, AT = defs.WF, defs.AT
BACKEND = "worker_mode.tasks.RQBackend"
#: No database engine plays a part (Redis at most; the nodes run on SQLite copies): run once in CI.
no_database = pytest.mark.engine_independent


def drain(key: str, worker_class: type = DjangoWorker, **work: bool) -> None:
    """Run what is queued on ``key`` with worker_mode's worker class, as a node does (in this process;
    DjangoForkWorker forks a work horse per job)."""
    queue = get_queue(key)
    worker_class([queue], connection=queue.connection).work(burst=True, **work)


@pytest.fixture
def forget_new_tasks():
    """Tasks a test defines stay out of the other tests' checks."""
    before = dict(backend_module._defined)
    yield
    backend_module._defined.clear()
    backend_module._defined.update(before)


# -- the backend ------------------------------------------------------------------------------


@no_database
def test_the_site_uses_the_backend_and_what_it_supports():
    backend = task_backends["default"]
    assert isinstance(backend, RQBackend)
    assert backend.supports_get_result and backend.supports_defer and backend.supports_async_task
    assert not backend.supports_priority  # one FIFO queue per key
    with pytest.raises(InvalidTask, match="priority"):
        defs.add.using(priority=10)


@no_database
@override_settings(TASKS={"default": {"BACKEND": BACKEND, "QUEUES": None, "OPTIONS": None}})
def test_queues_and_options_set_to_none_mean_not_set(redis_conn):
    assert checks.check_tasks() == []  # as the checks read them
    result = defs.add.enqueue(1, 2)
    assert Job.fetch(result.id, connection=redis_conn).result_ttl == backend_module.DEFAULT_RESULT_TTL


@no_database
def test_a_task_on_an_unknown_key_is_refused_when_defined(forget_new_tasks):
    with pytest.raises(UnknownTaskQueue) as refused:
        task(queue_name="workflow:proces")(defs.undecorated)
    assert isinstance(refused.value, InvalidTask) and isinstance(refused.value, UnknownServiceKey)
    message = str(refused.value)
    assert "'workflow:proces'" in message and "tests.tasks.undecorated" in message
    assert "'async-task:process'" in message and "Did you mean 'workflow:process'?" in message


@no_database
def test_the_default_queue_name_is_no_service_key(forget_new_tasks):
    with pytest.raises(UnknownTaskQueue, match="Unknown service key 'default'"):
        task(defs.undecorated)


# -- enqueueing --------------------------------------------------------------------------------


@no_database
def test_a_task_goes_to_its_service_keys_queue(redis_conn, caplog):
    result = defs.pid.enqueue()  # outside a transaction: sent at once
    assert result.status == TaskResultStatus.READY and result.enqueued_at is not None
    assert Job.fetch(result.id, connection=redis_conn).origin == AT
    assert get_queue(AT).job_ids == [result.id]
    assert get_queue(WF).count == 0
    assert f"No live node serves {AT}" in caplog.text  # as for worker_mode.enqueue's jobs


@pytest.mark.django_db(transaction=True)
def test_a_task_is_enqueued_when_the_transaction_commits(redis_conn):
    with transaction.atomic():
        result = defs.add.enqueue(2, 3)
        assert get_queue(WF).count == 0
        with pytest.raises(TaskResultDoesNotExist):
            defs.add.get_result(result.id)
    assert get_queue(WF).job_ids == [result.id]
    assert result.enqueued_at is not None
    assert defs.add.get_result(result.id).status == TaskResultStatus.READY


@pytest.mark.django_db(transaction=True)
def test_a_rollback_enqueues_nothing(redis_conn):
    with pytest.raises(RuntimeError), transaction.atomic():
        result = defs.add.enqueue(2, 3)
        raise RuntimeError("rolled back")
    assert get_queue(WF).count == 0
    with pytest.raises(TaskResultDoesNotExist):
        defs.add.get_result(result.id)


@pytest.mark.django_db(transaction=True)
def test_redis_down_at_commit_is_logged_and_outside_a_transaction_raised(redis_conn, caplog):
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        with transaction.atomic():
            defs.add.enqueue(1, 2)  # the commit itself must not fail
        assert "Could not enqueue task" in caplog.text
        with pytest.raises(RedisError):
            defs.add.enqueue(1, 2)


@no_database
def test_a_task_workers_could_not_find_is_refused_when_enqueued(redis_conn, forget_new_tasks):
    renamed = task(queue_name=WF)(defs.double)  # `renamed = ...` in a module: not at tests.tasks.double
    with pytest.raises(InvalidTask, match=r"tests\.tasks\.double is not a task"):
        renamed.enqueue(2)
    assert get_queue(WF).count == 0  # no job that could only fail on a worker


@no_database
def test_e022_a_task_workers_could_not_find(forget_new_tasks):
    task(queue_name=WF)(defs.double)
    [error] = checks.check_tasks()
    assert (error.id, error.msg) == (
        "worker_mode.E022",
        "Task tests.tasks.double is not at its path: workers cannot run it.",
    )
    assert "module-level function decorated with @task" in error.hint


@no_database
def test_a_job_that_names_no_task_runs_nothing(redis_conn):
    """Job data in Redis names what execute() imports: only a task may run, not any function."""
    job = get_queue(WF).enqueue(backend_module.EXECUTE, "tests.jobs.mark", ["crafted"], {})
    drain(WF)
    assert redis_conn.get("test:done:crafted") is None
    job = Job.fetch(job.id, connection=redis_conn)
    assert job.is_failed and "tests.jobs.mark is not a task" in job.latest_result().exc_string
    with pytest.raises(TaskResultDoesNotExist):  # nor is it any backend's result
        task_backends["default"].get_result(job.id)


@no_database
def test_a_task_that_raises_system_exit_fails_with_that_class(redis_conn):
    result = defs.exits.enqueue()
    drain(WF)  # the worker survives it
    failed = defs.exits.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert [error.exception_class for error in failed.errors] == [SystemExit]


# -- results -----------------------------------------------------------------------------------


@no_database
@pytest.mark.parametrize("worker_class", [DjangoWorker, DjangoForkWorker])
def test_results_through_the_tasks_api(redis_conn, worker_class):
    ok = defs.add.enqueue(2, 3)
    bad = defs.fail.enqueue("boom")
    itself = defs.look_at_itself.enqueue()
    later = defs.add_later.enqueue(4, 5)
    drain(WF, worker_class)

    ok = defs.add.get_result(ok.id)
    assert ok.status == TaskResultStatus.SUCCESSFUL and ok.return_value == 5
    assert ok.args == [2, 3] and ok.task.queue_name == WF and ok.attempts == 1
    assert ok.started_at <= ok.finished_at and ok.errors == []

    bad.refresh()
    assert bad.status == TaskResultStatus.FAILED
    [error] = bad.errors
    assert error.exception_class is ValueError and "ValueError: boom" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        bad.return_value  # noqa: B018 (the property raises)

    seen = defs.look_at_itself.get_result(itself.id).return_value
    assert seen["id"] == itself.id and seen["attempt"] == 1
    assert seen["status_seen_by_get_result"] == TaskResultStatus.RUNNING
    assert seen["worker_ids"] == defs.look_at_itself.get_result(itself.id).worker_ids != []

    assert defs.add_later.get_result(later.id).return_value == 9


@no_database
def test_a_result_belongs_to_its_task(redis_conn):
    ok = defs.add.enqueue(1, 1)
    with pytest.raises(TaskResultMismatch):
        defs.fail.get_result(ok.id)
    with pytest.raises(TaskResultDoesNotExist):
        defs.add.get_result("no-such-id")
    plain = get_queue(WF).enqueue("tests.jobs.mark", "plain")  # a worker_mode job, not a task
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(plain.id)


@no_database
def test_a_result_is_found_while_another_keys_redis_is_down(redis_conn):
    result = defs.pid.enqueue()  # on async-task:process
    with override_settings(WORKER_MODE_REDIS_URLS={WF: "redis://127.0.0.1:1/0"}):  # looked at first
        assert defs.pid.get_result(result.id).status == TaskResultStatus.READY
        with pytest.raises(RedisError):  # not "does not exist": it may be on the Redis that is down
            defs.pid.get_result("no-such-id")


@no_database
@override_settings(TASKS={"default": {"BACKEND": BACKEND}, "other": {"BACKEND": BACKEND, "QUEUES": [WF]}})
def test_a_result_belongs_to_its_backend(redis_conn):
    ok = defs.add.enqueue(1, 1)
    assert task_backends["default"].get_result(ok.id).backend == "default"
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["other"].get_result(ok.id)


@no_database
@override_settings(USE_TZ=False)
def test_times_are_naive_without_use_tz_as_enqueued_and_as_read(redis_conn):
    result = defs.add.enqueue(1, 2)
    assert timezone.is_naive(result.enqueued_at)
    assert timezone.is_naive(defs.add.get_result(result.id).enqueued_at)


@no_database
def test_run_after_waits_for_the_scheduler(redis_conn, caplog):
    when = timezone.now() - datetime.timedelta(seconds=1)
    result = defs.add.using(run_after=when).enqueue(1, 2)
    assert result.id in ScheduledJobRegistry(queue=get_queue(WF)).get_job_ids()
    assert f"No rq scheduler runs for {WF}" in caplog.text
    drain(WF)  # no scheduler: it waits
    assert defs.add.get_result(result.id).status == TaskResultStatus.READY
    drain(WF, with_scheduler=True)
    done = defs.add.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 3
    assert done.task.run_after == when


@no_database
def test_no_scheduler_warning_while_one_runs(redis_conn, caplog):
    redis_conn.set(f"rq:scheduler-lock:{WF}", "a node", ex=60)  # what a running rq scheduler holds
    defs.add.using(run_after=timezone.now()).enqueue(1, 2)
    assert "No rq scheduler runs" not in caplog.text


# -- real nodes --------------------------------------------------------------------------------


@no_database
@pytest.mark.processes
def test_only_nodes_serving_the_key_run_a_task_and_any_process_reads_the_result(start_node, redis_conn):
    added = defs.add.enqueue(2, 3)
    failed = defs.fail.enqueue("boom")
    elsewhere = defs.pid.enqueue()  # async-task:process

    node = start_node(["runworkers", "--burst"], worker_mode=WF, WORKER_MODE_NODE_NAME="node-wf")
    assert node.wait(timeout=60) == 0, node.log
    added = defs.add.get_result(added.id)
    assert added.status == TaskResultStatus.SUCCESSFUL and added.return_value == 5
    assert added.worker_ids[0].startswith("node-wf.")
    failed = defs.fail.get_result(failed.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class is ValueError and "boom" in failed.errors[0].traceback
    assert defs.pid.get_result(elsewhere.id).status == TaskResultStatus.READY  # not served there
    assert get_queue(AT).job_ids == [elsewhere.id]

    node = start_node(["runworkers", "--burst"], worker_mode=AT, WORKER_MODE_NODE_NAME="node-at")
    assert node.wait(timeout=60) == 0, node.log
    ran = defs.pid.get_result(elsewhere.id)
    assert ran.status == TaskResultStatus.SUCCESSFUL and ran.worker_ids[0].startswith("node-at.")
    assert ran.return_value == int(ran.worker_ids[0].rsplit(".", 1)[1])  # that worker's process ran it


def _status_is(task, result_id: str, status: str):
    """The task's result once it has ``status``, else None (for wait_until)."""
    result = task.get_result(result_id)
    return result if result.status == status else None


def _running_pid(result) -> int:
    """The pid of the worker process running ``result``'s task (``defs.wait``), once it runs."""
    running = wait_until(lambda: _status_is(defs.wait, result.id, TaskResultStatus.RUNNING), timeout=60)
    return int(running.worker_ids[0].rsplit(".", 1)[1])


@no_database
@pytest.mark.processes
def test_a_task_whose_worker_is_killed_fails_when_the_worker_is_replaced(start_node, redis_conn):
    result = defs.wait.enqueue(300)
    node = start_node(["runworkers"], worker_mode=WF, WORKER_MODE_NODE_NAME="node-wf")
    os.kill(_running_pid(result), signal.SIGKILL)  # its worker process
    # The supervisor's replacement fails it as it starts (rq alone: after 180 + 60 s, at its next
    # maintenance, up to 10 minutes later).
    failed = wait_until(lambda: _status_is(defs.wait, result.id, TaskResultStatus.FAILED), timeout=60)
    assert "AbandonedJobError" in failed.errors[-1].traceback, node.log
    assert f"Task {result.id} (tests.tasks.wait, pid" in node.log


@no_database
@pytest.mark.processes
def test_a_frozen_workers_task_is_not_failed_and_finishes(start_node, redis_conn):
    result = defs.wait.enqueue(3)
    node = start_node(["runworkers"], worker_mode=WF, WORKER_MODE_NODE_NAME="node-wf")
    pid = _running_pid(result)
    os.kill(pid, signal.SIGSTOP)
    try:
        # Another worker of this node starts (and looks for abandoned tasks) while it is frozen.
        other = start_node(["runworkers", "--burst"], worker_mode=WF, WORKER_MODE_NODE_NAME="node-wf")
        assert other.wait(timeout=60) == 0, other.log
        assert defs.wait.get_result(result.id).status == TaskResultStatus.RUNNING
    finally:
        os.kill(pid, signal.SIGCONT)
    done = wait_until(lambda: _status_is(defs.wait, result.id, TaskResultStatus.SUCCESSFUL), timeout=60)
    assert done.return_value == "waited" and done.errors == [], node.log


# -- the check ---------------------------------------------------------------------------------


@no_database
def test_the_sites_tasks_are_clean():
    assert check_error_codes(checks.check_tasks()) == []


@no_database
def test_e020_a_task_on_a_key_that_is_no_longer_registered(forget_new_tasks):
    services.register("thumbs:process")
    try:
        task(queue_name="thumbs:process")(defs.undecorated)
    finally:
        services.unregister("thumbs:process")
    [error] = [e for e in checks.check_tasks() if e.id == "worker_mode.E020"]  # (and E022: undecorated)
    assert error.id == "worker_mode.E020"
    assert error.msg == "Task tests.tasks.undecorated names unknown service key 'thumbs:process'."
    assert "'default' takes: workflow:process, async-task:process" in error.hint


@no_database
@override_settings(TASKS={"default": {"BACKEND": BACKEND, "QUEUES": [WF, "reports:x"]}})
def test_e020_queues_names_an_unknown_key_and_a_task_outside_them():
    errors = checks.check_tasks()
    assert check_error_codes(errors) == ["worker_mode.E020", "worker_mode.E020"]
    assert errors[0].msg == "TASKS['default']['QUEUES'] names unknown service key 'reports:x'."
    assert errors[1].msg == f"Task tests.tasks.pid: {AT!r} is not in its backend's QUEUES."
    assert errors[1].hint == "Its backend 'default' takes: workflow:process."


@no_database
@override_settings(TASKS={"default": {"BACKEND": BACKEND, "QUEUES": WF}})
def test_e020_queues_is_a_list():
    error = checks.check_tasks()[0]
    assert (error.id, error.msg) == (
        "worker_mode.E020",
        "TASKS['default']['QUEUES'] must be a list of service keys.",
    )


@no_database
@override_settings(TASKS={"default": {"BACKEND": BACKEND, "OPTIONS": {"RESULT_TTL": 0}}})
def test_e021_result_ttl():
    [error] = checks.check_tasks()
    assert error.id == "worker_mode.E021" and "RESULT_TTL" in error.msg


@no_database
@pytest.mark.django_db  # Django 6.1's check command asks the database about model fields
@override_settings(TASKS={"default": {"BACKEND": BACKEND, "QUEUES": ["reports:x"]}})
def test_check_command_refuses_a_bad_task_queue():
    with pytest.raises(SystemCheckError, match=r"worker_mode\.E020.*reports:x"):
        call_command("check")
