from __future__ import annotations

import logging

import pytest
from django.db import transaction
from django.test import override_settings
from rq import Queue

from worker_mode import UnknownServiceKey, enqueue, get_queue, register_service, services
from worker_mode.queues import ServiceQueues, get_connection


def test_one_queue_per_registered_key_on_redis_url(redis_server):
    from django.conf import settings

    assert isinstance(settings.RQ_QUEUES, ServiceQueues)
    assert dict(settings.RQ_QUEUES) == {
        "workflow:process": {"URL": redis_server},
        "async-task:process": {"URL": redis_server, "DEFAULT_TIMEOUT": 3600},
    }


def test_queues_follow_settings_and_registrations():
    queues = ServiceQueues()
    register_service("my-plugin:process")
    try:
        with override_settings(REDIS_URL="redis://example.invalid:6379/3"):
            assert queues["my-plugin:process"] == {"URL": "redis://example.invalid:6379/3"}
    finally:
        services.unregister("my-plugin:process")
    assert "my-plugin:process" not in queues


def test_get_queue_is_named_after_the_key(redis_conn):
    queue = get_queue("async-task:process")
    assert isinstance(queue, Queue)
    assert queue.name == "async-task:process"
    assert queue._default_timeout == 3600
    assert queue.connection.ping()


def test_connections_are_shared_per_process(redis_conn):
    assert get_connection("workflow:process") is get_connection("async-task:process")


def test_unknown_key_fails_in_the_caller():
    with pytest.raises(UnknownServiceKey, match="Did you mean 'workflow:process'"):
        enqueue("workflow:proces", "tests.jobs.mark", "x")


@pytest.mark.django_db(transaction=True)
def test_enqueue_waits_for_the_commit(redis_conn):
    queue = get_queue("workflow:process")
    with transaction.atomic():
        job_id = enqueue("workflow:process", "tests.jobs.mark", "a")
        assert queue.count == 0
    assert queue.job_ids == [job_id]
    assert queue.fetch_job(job_id).args == ("a",)


@pytest.mark.django_db(transaction=True)
def test_rolled_back_enqueue_sends_nothing(redis_conn):
    queue = get_queue("workflow:process")
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue("workflow:process", "tests.jobs.mark", "a")
        raise RuntimeError("roll back")
    assert queue.count == 0


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_enqueues_at_once(redis_conn):
    job_id = enqueue("async-task:process", "tests.jobs.mark", "b", job_timeout=5)
    job = get_queue("async-task:process").fetch_job(job_id)
    assert job.timeout == 5


@pytest.mark.django_db(transaction=True)
def test_redis_down_at_commit_does_not_break_the_caller(caplog):
    with (
        override_settings(REDIS_URL="redis://127.0.0.1:1/0"),
        caplog.at_level(logging.ERROR, "worker_mode"),
        transaction.atomic(),
    ):
        job_id = enqueue("workflow:process", "tests.jobs.mark", "c")
    assert f"Could not enqueue job {job_id} on workflow:process" in caplog.text
