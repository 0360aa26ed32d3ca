"""Import/export tasks across real processes and recovery: the right node runs them, a killed
worker's task is failed or retried, a lost message is re-enqueued, expired files are removed."""

from __future__ import annotations

import datetime
import io
import os
import signal
import subprocess

import pytest
from django.utils import timezone

from async_tasks import storage, tasks
from async_tasks.models import AsyncTask
from catalog.models import Product
from tests.conftest import drain, product_csv, shared_database_url, wait_until
from worker_mode import claims
from worker_mode.conf import conf as worker_conf

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_conn")]


@pytest.fixture
def env(site_env, task_storage):
    """Node processes share this test's database and task storage."""
    url = shared_database_url()
    return {**site_env, "DATABASE_URL": url, "CONN_MAX_AGE": "0", "ASYNC_TASKS_DIR": str(task_storage)}


def new_import(rows: int, **options) -> AsyncTask:
    return tasks.create_import(
        None, "catalog.Product", io.BytesIO(product_csv(rows)), name="p.csv", **options
    )


@pytest.mark.processes
def test_a_task_runs_only_on_an_async_task_node(start_node, env, redis_conn):
    task = new_import(50)
    flows = start_node(["runworkers", "--burst"], "workflow:process", **{**env, "NODE_NAME": "flows"})
    assert flows.wait(60) == 0, flows.log
    task.refresh_from_db()
    assert task.status == "queued" and redis_conn.llen("rq:queue:async-task:process") == 1
    imports = start_node(["runworkers", "--burst"], "async-task:process", **{**env, "NODE_NAME": "imports"})
    assert imports.wait(60) == 0, imports.log
    task.refresh_from_db()
    assert (task.status, task.node_name, task.summary["created"]) == ("succeeded", "imports", 50)
    assert task.worker.startswith("imports.")


@pytest.mark.processes
@pytest.mark.parametrize("policy", ["retry", "fail"])
def test_the_task_of_a_killed_worker_is_retried_or_failed(start_node, env, policy):
    task = new_import(20000, mode="update")
    node = start_node(
        ["runworkers"],
        "async-task:process",
        **{
            **env,
            "NODE_NAME": "victim",
            "ASYNC_TASKS_BATCH_SIZE": "100",
            "ASYNC_TASKS_RECOVERY": policy,
        },
    )

    def running_with_progress():
        task.refresh_from_db()
        return task.status == "running" and task.done >= 300

    wait_until(running_with_progress, timeout=45)
    assert task.status == "running", task.status  # killed mid-import, like the OOM killer
    killed = task.pid
    os.kill(killed, signal.SIGKILL)

    def finished():
        task.refresh_from_db()
        return task.status in AsyncTask.FINISHED

    wait_until(finished, timeout=60)
    if policy == "retry":
        assert (task.status, task.attempts) == ("succeeded", 2), (task.error, node.log)
        assert Product.objects.count() == 20000  # the re-run updated what the first run wrote
        assert f"queued again (attempt 1 of 3 done): its process (pid {killed})" in node.log
    else:
        assert task.status == "failed"
        assert task.error.startswith(f"Abandoned: its process (pid {killed}) on this node is gone")
        assert task.error.endswith(f"(worker victim.shared.0.{killed}, attempt 1).")
        assert 0 < Product.objects.count() < 20000  # the batches committed before the kill stay
    node.stop()


def test_a_queued_task_whose_message_was_lost_is_enqueued_again(redis_conn):
    task = new_import(3)
    redis_conn.flushdb()  # Redis restarted empty
    assert claims.requeue_lost(AsyncTask, grace=0) == 1
    assert claims.requeue_lost(AsyncTask, grace=0) == 0  # its message is queued now
    drain("async-task:process")
    task.refresh_from_db()
    assert task.status == "succeeded" and Product.objects.count() == 3


def test_redis_down_when_a_task_is_created_loses_nothing(settings, redis_conn):
    good_url = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    task = new_import(4)  # the request succeeds; the enqueue at commit fails and is logged
    settings.REDIS_URL = good_url
    assert redis_conn.llen("rq:queue:async-task:process") == 0
    task.refresh_from_db()
    assert task.status == "queued"
    assert claims.requeue_lost(AsyncTask, grace=0) == 1
    drain("async-task:process")
    task.refresh_from_db()
    assert task.status == "succeeded" and Product.objects.count() == 4


def running(task: AsyncTask, *, pid: int, cancel_requested: bool = False) -> None:
    AsyncTask.objects.filter(pk=task.pk).update(
        status="running", node_name=worker_conf.WORKER_MODE_NODE_NAME, pid=pid, worker=f"w.{pid}",
        host=claims.process_namespace(),
        attempts=1, claim_token="t" * 32, lease_expires_at=timezone.now() + datetime.timedelta(seconds=30),
        heartbeat_at=timezone.now(), cancel_requested=cancel_requested,
    )  # fmt: skip


def test_a_running_task_of_a_dead_process_on_this_node_is_failed():
    dead = subprocess.Popen(["true"])
    dead.wait()
    task = new_import(3, dispatch=False)
    running(task, pid=dead.pid)
    assert claims.recover(AsyncTask) == {"retried": 0, "failed": 1}
    task.refresh_from_db()
    assert task.status == "failed" and task.finished_at and task.expires_at
    assert claims.recover(AsyncTask) == {"retried": 0, "failed": 0}


def test_a_task_whose_owner_died_while_canceling_ends_canceled(settings):
    settings.ASYNC_TASKS_RECOVERY = "retry"
    dead = subprocess.Popen(["true"])
    dead.wait()
    task = new_import(3, dispatch=False)
    running(task, pid=dead.pid, cancel_requested=True)
    assert claims.recover(AsyncTask) == {"retried": 0, "failed": 1}
    task.refresh_from_db()
    assert task.status == "canceled" and "on this node is gone" in task.error


def test_a_running_task_of_a_live_process_is_left_alone():
    task = new_import(3, dispatch=False)
    running(task, pid=os.getpid())
    assert claims.recover(AsyncTask) == {"retried": 0, "failed": 0}
    task.refresh_from_db()
    assert task.status == "running"


def test_expired_tasks_and_their_files_are_deleted(task_storage):
    task = new_import(2, dispatch=False)
    tasks.run(task.pk)
    task.refresh_from_db()
    kept = new_import(2, dispatch=False)
    tasks.run(kept.pk)
    path = task_storage / task.source_file
    assert path.is_file() and task.expires_at > timezone.now()
    assert tasks.cleanup() == 0
    assert tasks.cleanup(now=task.expires_at + datetime.timedelta(seconds=1)) == 2
    assert not AsyncTask.objects.exists() and not path.exists()
    assert not storage.get_storage().exists(kept.source_file)
