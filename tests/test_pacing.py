"""Pacing: request nodes publish pressure; background work charges its database time to one shared
budget and yields while there is pressure; no pressure or pacing off = no yielding.

These check the mechanism only (what is published, who waits, who does not); how much it buys in
request latency is measured by bench/isolation.py, never asserted here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from fractions import Fraction

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import override_settings

from tests.conftest import check_error_codes, free_port, http_get, is_postgres, wait_for_http, wait_until
from worker_mode import pacing

PACED = {"WORKER_MODE": "", "WORKER_MODE_PACING_BUDGET": 0.5}


@pytest.fixture
def fresh(redis_conn, monkeypatch):
    """A new Pacer and Pressure for this process, and no state left in Redis. Entries may expire up
    to a minute ahead (``press`` publishes for 30 s: tests take their time)."""
    monkeypatch.setattr(pacing, "PRESSURE_HORIZON", 60.0, raising=False)
    monkeypatch.setattr(pacing, "PACE_HORIZON", 60.0, raising=False)
    pacing._forget()
    yield redis_conn
    pacing._forget()


def press(level: float = 1.0, node: str = "web-test", ttl: float = 30.0) -> None:
    """Publish request pressure as a request process does (a long TTL: tests take their time)."""
    pacing._script(pacing._PRESSURE_SCRIPT)(
        keys=[pacing.PRESSURE_KEY, pacing.BUDGET_KEY], args=[f"{node}:1", f"{level}", int(ttl * 1000)]
    )


def spend(pacer: pacing.Pacer, seconds: float) -> None:
    """Database time, as the meter counts it."""
    with pacer.meter.measure():
        time.sleep(seconds)


def tat(redis_conn) -> float:
    value = redis_conn.hget(pacing.BUDGET_KEY, "tat")
    return float(value) if value else 0.0


def synchronous_commit() -> str:
    """The session's ``synchronous_commit`` on the default connection (PostgreSQL)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


#: Relaxed commits set PostgreSQL's ``synchronous_commit``, a session setting SQLite has no
#: counterpart of: there is nothing to observe on SQLite but that the wrapper leaves it alone
#: (test_relaxed_commits_touch_postgresql_sessions_only). CI's second pass, on PostgreSQL, runs these.
postgres_only = pytest.mark.skipif(
    not is_postgres(),
    reason="synchronous_commit exists on PostgreSQL only (on SQLite relaxed commits do nothing, "
    "which test_relaxed_commits_touch_postgresql_sessions_only checks); CI's PostgreSQL pass runs this",
)


# -- request pressure ---------------------------------------------------------------------------


def test_the_level_is_the_busy_share_raised_by_latency_over_the_idle_baseline():
    pressure = pacing.Pressure()
    pressure._thread = object()  # no publishing thread in this test
    assert pressure.sample() == 0.0  # no request: no pressure
    pressure.background_active = False  # idle: requests teach the baseline
    now = time.monotonic()
    for _ in range(5):
        pressure.record(now, now + 0.010, "api/tasks")
    pressure.sample()
    assert pressure.baselines["api/tasks"] == pytest.approx(0.010)
    pressure.background_active = True  # now requests are measured against it, not learned from
    # A one-second window busy a quarter of it, its requests 1.25x their idle baseline:
    now = time.monotonic()
    pressure._window_start = now - 1.0
    for k in range(20):
        pressure.record(now - 1.0 + k * 0.05, now - 1.0 + k * 0.05 + 0.0125, "api/tasks")
    assert pressure.sample() == pytest.approx(0.25 * (1 + 0.25 / pacing.LATENCY_SPAN), abs=0.01)
    assert pressure.baselines["api/tasks"] == pytest.approx(0.010)  # unchanged while background ran
    # Overlapping requests count once (the union of their times); a view without baseline adds none.
    now = time.monotonic()
    pressure._window_start = now - 1.0
    pressure.record(now - 1.0, now - 0.9, "other")
    pressure.record(now - 0.95, now - 0.85, "other")
    assert pressure.sample() == pytest.approx(0.15, abs=0.01)


def test_a_request_still_in_flight_makes_pressure():
    pressure = pacing.Pressure()
    pressure._thread = object()
    started = time.monotonic() - 5.0  # stuck in the database for 5 s, say
    token = 1
    pressure.begin(token, started)
    pressure._window_start = time.monotonic() - 1.0
    assert pressure.sample() == pytest.approx(1.0, abs=0.01)  # busy the whole window
    time.sleep(0.01)
    assert pressure.sample() == pytest.approx(1.0, abs=0.01)  # and the next: it does not lapse
    pressure.record(started, time.monotonic(), "api/tasks", token)
    assert not pressure.active and len(pressure.requests) == 1


@override_settings(**PACED)
def test_requests_publish_pressure_and_a_quiet_window_takes_it_back(client, fresh):
    with override_settings(WORKER_MODE_PACING_BUDGET=0):
        # A process's first request loads the middleware and the URLs before any middleware runs:
        # time in the window that no request covers (the level could fall below the floor).
        client.get("/admin/login/")
    pressure = pacing._pressure = pacing.Pressure()
    pressure._thread = object()  # published by the test, not by the thread
    client.get("/admin/login/")
    assert len(pressure.requests) == 1
    pressure.publish()
    report = pacing.report()
    node = pacing.member().rsplit(":", 1)[0]
    assert report["pressure"][node] > 0
    pressure.publish()  # a quiet window takes the entry back
    assert node not in pacing.report()["pressure"]


@override_settings(**PACED)
def test_a_request_is_served_when_the_pressure_thread_cannot_start(client, fresh, monkeypatch, caplog):
    with override_settings(WORKER_MODE_PACING_BUDGET=0):
        client.get("/admin/login/")  # the first request loads the URLs
    pressure = pacing._pressure = pacing.Pressure()
    start = threading.Thread.start

    def refuse(thread):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with caplog.at_level(logging.WARNING, logger="worker_mode.pacing"):
        assert client.get("/admin/login/").status_code == 200  # before: the RuntimeError was the answer
        assert client.get("/admin/login/").status_code == 200
    assert pressure._thread is None and len(pressure.requests) == 2  # counted all the same
    assert sum("Could not start publishing" in record.getMessage() for record in caplog.records) == 1
    # The thread limit lifted: the next request after the retry delay starts the thread.
    monkeypatch.setattr(threading.Thread, "start", start)
    monkeypatch.setattr(pacing.Pressure, "_run", lambda self: None)  # a thread that ends at once
    assert client.get("/admin/login/").status_code == 200
    assert pressure._thread is None  # within the retry delay: not tried again
    pressure._thread_retry_at = time.monotonic() - 1
    assert client.get("/admin/login/").status_code == 200
    assert isinstance(pressure._thread, threading.Thread)


def test_fractions_are_numbers_at_run_time_as_for_the_checks():
    """E017/E018 accept any real number; before, pacing read a Fraction as 0 (off, opted out)."""
    with override_settings(WORKER_MODE_PACING_BUDGET=Fraction(3, 10),
                           WORKER_MODE_PACING={"workflow:process": Fraction(1, 2)}):  # fmt: skip
        assert not [m for m in run_checks() if m.id in ("worker_mode.E017", "worker_mode.E018")]
        assert pacing.budget() == 0.3 and pacing.enabled()
        assert pacing.weight_of("workflow:process") == 0.5


@override_settings(WORKER_MODE="", WORKER_MODE_PACING_BUDGET=0)
def test_pacing_off_counts_no_request(client, fresh):
    client.get("/admin/login/")
    assert pacing._pressure is None
    assert fresh.hlen(pacing.PRESSURE_KEY) == 0


# -- the pace of background work ----------------------------------------------------------------


@override_settings(**PACED)
def test_no_pressure_no_charge_and_no_wait(fresh):
    pacer = pacing.Pacer()
    with pacer.job("workflow:process"):
        spend(pacer, 0.05)
    assert pacer.yielding is False and pacer.pace == 1.0
    assert tat(fresh) == 0.0  # nothing charged
    assert fresh.hget(pacing.BUDGET_KEY, "active")  # but background work is known to run


@override_settings(**PACED)
def test_pressure_applies_a_pace_and_its_end_lifts_it(fresh):
    press(1.0)
    pacer = pacing.pacer()
    with pacer.job("async-task:process"):
        spend(pacer, 0.1)  # 0.1 s of database time at a budget of 0.5 s/s: ~0.2 s to yield
        waited = pacer.checkpoint()
        assert waited > 0 and pacer.yielding
        assert pacer.pace < 1 and pacing.current_pace() is not None
        assert pacing.report()["services"]["async-task:process"]["pace"] < 1
        fresh.delete(pacing.PRESSURE_KEY)  # the requests are gone
        spend(pacer, 0.1)
        assert pacer.checkpoint() == 0.0
    assert pacer.pace == 1.0 and pacing.current_pace() is None
    assert "async-task:process" not in pacing.report()["services"]  # full speed again


@override_settings(**PACED)
def test_the_budget_is_shared_across_services(fresh):
    press(1.0)
    imports, executions = pacing.Pacer(), pacing.Pacer()
    imports.service = "async-task:process"
    imports._pending = 0.2  # an import batch's 0.2 s of database time, charged without yielding here
    imports._sync(pacing.budget())  # the shared budget is now ahead by ~0.4 s
    with executions.job("workflow:process"):
        spend(executions, 0.001)  # a tiny execution of another service...
    assert executions.yielding  # ...still waits: the import already spent the cluster's budget


@override_settings(WORKER_MODE_PACING={"async-task:process": 0, "workflow:process": 2}, **PACED)
def test_a_weight_scales_the_charge_and_zero_opts_out(fresh):
    press(1.0)
    opted_out = pacing.Pacer()
    with opted_out.job("async-task:process"):
        spend(opted_out, 0.1)
    assert not opted_out.yielding and tat(fresh) == 0.0  # weight 0: never charged, never waits
    light = pacing.Pacer()
    light.service, light.weight = "workflow:process", pacing.weight_of("workflow:process")
    before = time.time() * 1000
    light._pending = 0.1 / light.weight  # what checkpoint() charges for 0.1 s at weight 2
    light._sync(pacing.budget())
    ahead = tat(fresh) - before
    assert 50 <= ahead < 150  # 0.05 s at 0.5 s/s = 100 ms of the budget's clock, not 200


@override_settings(WORKER_MODE="", WORKER_MODE_PACING_BUDGET=0)
def test_budget_zero_turns_pacing_off_under_pressure(fresh):
    press(1.0)
    pacer = pacing.Pacer()
    with pacer.job("workflow:process"):
        spend(pacer, 0.05)
    assert not pacer.yielding and tat(fresh) == 0.0


@override_settings(**PACED)
def test_outside_a_job_a_checkpoint_does_nothing(fresh):
    press(1.0)
    pacer = pacing.Pacer()
    spend(pacer, 0.05)
    assert pacer.checkpoint() == 0.0 and tat(fresh) == 0.0


@override_settings(**PACED, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
def test_without_redis_work_runs_unpaced(fresh):
    pacer = pacing.Pacer()
    with pacer.job("workflow:process"):
        spend(pacer, 0.01)
    assert not pacer.yielding and pacer._failing_until > time.monotonic()


@pytest.mark.django_db
def test_an_exports_fetches_are_metered(monkeypatch):
    """Besides its one query, each chunk's fetch counts (from a server-side cursor on PostgreSQL,
    which no execute wrapper sees)."""
    from async_tasks import exporter
    from async_tasks.spec import get_spec
    from catalog.models import Product

    Product.objects.bulk_create(Product(sku=f"S{i:03d}", name="n", price=1, quantity=i) for i in range(25))
    pacer = pacing.pacer()
    measured = []
    measure = pacer.meter.measure
    monkeypatch.setattr(pacer.meter, "measure", lambda: measured.append(1) or measure())
    fields = list(get_spec("catalog.Product").fields)
    with pacer.job("async-task:process"):
        written = exporter.export(Product.objects.order_by("pk"), fields, "csv", io.BytesIO(), chunk=10)
    assert written == 25
    # At least 1 SQL statement, then 4 fetches: three chunks and the empty one that ends the rows.
    assert len(measured) >= 1 + 4


@pytest.mark.django_db
def test_sql_statements_of_a_job_are_metered():
    from django.db import connection

    pacer = pacing.Pacer()
    with pacer.job("workflow:process"), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert pacer.meter.seconds > 0


@override_settings(**PACED, WORKER_MODE_METRICS_TOKEN="t0ken")
@pytest.mark.django_db(transaction=True)  # a checkpoint inside the test's transaction would not yield
def test_the_cluster_page_metrics_and_workermode_show_pace_and_pressure(admin_client, client, fresh):
    press(0.8, node="web-a")
    pacer = pacing.pacer()
    with pacer.job("workflow:process"):
        spend(pacer, 0.05)  # charged under pressure: the process yields, and says so
    assert pacer.pace < 1
    page = admin_client.get("/admin/worker_mode/cluster/").content.decode()
    assert "yielding to requests" in page and "full speed" in page  # workflows yield, imports do not
    metrics = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken").content.decode()
    assert 'worker_mode_request_pressure{node="web-a"} 0.8' in metrics
    pace = next(
        line
        for line in metrics.splitlines()
        if line.startswith('worker_mode_service_pace{service="workflow:process"}')
    )
    assert 0 < float(pace.split()[-1]) < 1
    assert 'worker_mode_service_pace{service="async-task:process"} 1.0' in metrics
    out = io.StringIO()
    call_command("workermode", "--cluster", stdout=out)
    assert "yielding to requests" in out.getvalue() and "web-a 0.80" in out.getvalue()


@pytest.mark.django_db
def test_a_yielding_task_says_so_in_the_api_and_the_admin(admin_client, admin_user):
    from async_tasks.models import AsyncTask

    running = AsyncTask.objects.create(kind="import", model="catalog.Product", format="csv", owner=admin_user,
                                       status="running", done=10, total=100, pace=0.42)  # fmt: skip
    progress = admin_client.get(f"/api/tasks/{running.pk}").json()["progress"]
    assert (progress["yielding"], progress["pace"]) == (True, 0.42)
    page = admin_client.get("/admin/async_tasks/asynctask/").content.decode()
    assert "yielding to requests (at 42% of full speed)" in page
    running.status, running.pace = "succeeded", None
    running.save()
    progress = admin_client.get(f"/api/tasks/{running.pk}").json()["progress"]
    assert (progress["yielding"], progress["pace"]) == (False, None)


@override_settings(**PACED)
@pytest.mark.django_db(transaction=True)
def test_an_import_in_a_worker_yields_between_batches_under_pressure(fresh, admin_user, task_storage):
    from async_tasks import tasks
    from tests.conftest import product_csv
    from worker_mode import get_queue
    from worker_mode.queues import get_connection
    from worker_mode.workers import DjangoWorker

    press(1.0)
    with override_settings(ASYNC_TASKS_BATCH_SIZE=50, WORKER_MODE_PACING_BUDGET=0.1):
        task = tasks.create_import(admin_user, "catalog.Product", io.BytesIO(product_csv(600)), name="p.csv")
        other = pacing.Pacer()  # another background process has just spent the cluster's budget
        other.service, other._pending = "workflow:process", 0.05
        other._sync(pacing.budget())
        pacer = pacing.pacer()
        seen: list[float | None] = []
        original = pacer.checkpoint

        def checkpoint() -> float:
            waited = original()
            if waited:  # one yield is enough to see: then the requests end
                seen.append(pacing.current_pace())
                fresh.delete(pacing.PRESSURE_KEY)
            return waited

        pacer.checkpoint = checkpoint
        try:
            key = "async-task:process"  # the site's worker class: every job runs under pacing.job()
            DjangoWorker([get_queue(key)], connection=get_connection(key)).work(burst=True)
        finally:
            del pacer.checkpoint
    task.refresh_from_db()
    assert task.status == "succeeded" and task.done == 600
    assert seen and seen[0] is not None and seen[0] < 1  # it yielded between batches, and said so


@override_settings(**PACED, WORKER_MODE_PACING_ASYNC_COMMIT=("workflow:process",))
@pytest.mark.django_db(transaction=True)
def test_relaxed_commits_touch_postgresql_sessions_only(fresh):
    """On either engine: a listed key under pressure relaxes the PostgreSQL session it uses, and
    leaves an SQLite one alone (it has no such setting)."""
    from django.db import connection, transaction

    press(1.0)
    pacer = pacing.Pacer()
    pacer.pressure, pacer._synced_at = 1.0, time.monotonic()
    with pacer.job("workflow:process"):
        assert pacer.commits.wanted  # a listed key under pressure
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    relaxed = pacer.commits._relaxed | pacer.commits._unsettled
    assert relaxed == ({id(connection.connection)} if is_postgres() else set())


@postgres_only
@override_settings(**PACED, WORKER_MODE_PACING_ASYNC_COMMIT=("workflow:process",))
@pytest.mark.django_db(transaction=True)  # the batch's transaction is the real one, not a savepoint
def test_listed_keys_commit_without_waiting_for_the_flush_under_pressure_only(fresh):
    from django.db import transaction

    from worker_mode.claims import transaction_id

    press(1.0)
    pacer = pacing.Pacer()
    pacer.pressure, pacer._synced_at = 1.0, time.monotonic()  # as after its last look at Redis
    with pacer.job("workflow:process"):
        assert synchronous_commit() == "off"
        with transaction.atomic():
            transaction_id()  # a commit whose outcome may be asked about is durable all the same
            assert synchronous_commit() == "on"
        assert synchronous_commit() == "off"
    with pacer.job("async-task:process"):  # not listed
        assert synchronous_commit() == "on"
    fresh.delete(pacing.PRESSURE_KEY)
    pacer.pressure = 0.0
    with pacer.job("workflow:process"):  # no pressure: durable again
        assert synchronous_commit() == "on"


@postgres_only
@override_settings(**PACED, WORKER_MODE_PACING_ASYNC_COMMIT=("workflow:process",))
@pytest.mark.django_db(transaction=True)
def test_a_reset_undone_by_a_rollback_is_sent_again(fresh):
    from django.db import transaction

    pacer = pacing.Pacer()
    pacer.pressure, pacer._synced_at = 1.0, time.monotonic()
    with pacer.job("workflow:process"):
        assert synchronous_commit() == "off"
    pacer.pressure = 0.0
    with pacer.job("workflow:process"):  # durable again, first asked inside a transaction that fails
        with contextlib.suppress(RuntimeError), transaction.atomic():
            assert synchronous_commit() == "on"
            raise RuntimeError  # the rollback undoes the RESET
        assert synchronous_commit() == "on"
        with transaction.atomic():
            assert synchronous_commit() == "on"
    with pacer.job("async-task:process"):  # not listed: never off
        assert synchronous_commit() == "on"
    pacer.pressure, pacer._synced_at = 1.0, time.monotonic()
    # relaxed first inside a transaction that fails
    with pacer.job("workflow:process"), contextlib.suppress(RuntimeError), transaction.atomic():
        assert synchronous_commit() == "off"
        raise RuntimeError
    pacer.pressure = 0.0
    with pacer.job("async-task:process"), transaction.atomic():
        assert synchronous_commit() == "on"


@override_settings(**PACED, WORKER_MODE_PACING_ASYNC_COMMIT=("workflow:process",))
def test_a_pressure_seen_long_ago_does_not_relax_the_next_jobs_commits(fresh):
    pacer = pacing.Pacer()
    pacer.pressure, pacer._synced_at = 1.0, time.monotonic() - 3600  # its last look, an hour ago
    with pacer.job("workflow:process"):
        assert pacer.commits.wanted is False
    pacer.pressure, pacer._synced_at = 1.0, time.monotonic()
    with pacer.job("workflow:process"):
        assert pacer.commits.wanted is True


@override_settings(**PACED, WORKER_MODE_PACING_ASYNC_COMMIT=("workflow:process",))
@pytest.mark.django_db(transaction=True)
def test_a_nested_job_of_a_listed_key_leaves_the_outer_jobs_commits_durable(fresh):
    pacer = pacing.Pacer()
    pacer.pressure, pacer._synced_at = 1.0, time.monotonic()  # under pressure, seen just now
    with pacer.job("async-task:process"):  # not listed: durable commits
        with pacer.job("workflow:process"):  # listed: relaxed while it runs
            assert pacer.commits.wanted is True
        # before: still relaxed for the rest of the outer, unlisted job
        assert pacer.commits.wanted is False
        if is_postgres():
            assert synchronous_commit() == "on"


@override_settings(**PACED)
def test_units_shrink_to_a_target_duration_only_while_yielding(fresh):
    pacer = pacing.pacer()
    assert pacing.unit_size(2000, 0.2, 2000) == 2000  # outside a job
    pacer.service, pacer.pressure = "async-task:process", 1.0
    try:
        assert pacing.unit_size(2000, 0.2, 2000) == 200  # 0.02 s is a tenth of 0.2 s
        assert pacing.unit_size(200, 0.001, 2000) == 2000  # never above the configured size
        assert pacing.unit_size(100, 1.0, 2000) == pacing.MIN_UNIT
        pacer.pressure = 0.0
        assert pacing.unit_size(200, 0.2, 2000) == 2000  # full speed again
    finally:
        pacer.service = None


def test_the_report_skips_malformed_entries_and_drops_lapsed_paces(fresh):
    fresh.hset(pacing.PRESSURE_KEY, "bad:1", "garbage")
    fresh.hset(pacing.PACE_KEY, "gone:1", "workflow:process 0.5 1")  # its process ended long ago
    fresh.hset(pacing.PACE_KEY, "odd:1", "workflow:process fast never")
    fresh.hset(pacing.PRESSURE_KEY, "ended:1", "0.5 1")  # a request process that ended long ago
    assert pacing.report() == {"pressure": {}, "services": {}}
    assert not fresh.hexists(pacing.PACE_KEY, "gone:1")
    assert not fresh.hexists(pacing.PRESSURE_KEY, "ended:1")


@override_settings(**PACED)
@pytest.mark.parametrize("level", ["inf", "1000", "nan", "-1"])
def test_a_pressure_no_request_process_writes_is_dropped_not_obeyed(fresh, level):
    far = (time.time() + 3600) * 1000
    fresh.hset(pacing.PRESSURE_KEY, "evil:1", f"{level} {far}")
    pacer = pacing.Pacer()
    with pacer.job("workflow:process"):
        spend(pacer, 0.01)
    assert pacer.pressure == 0.0 and pacer.pace == 1.0 and not pacer.yielding
    assert not fresh.hexists(pacing.PRESSURE_KEY, "evil:1")
    assert pacing.report()["pressure"] == {}


@override_settings(**PACED)
def test_an_entry_expiring_further_ahead_than_its_ttl_is_dropped(fresh, monkeypatch):
    # A request process frozen (or dead) just after Redis's clock stepped back an hour: its entry
    # would hold its pressure for the hour. Nothing a request process writes expires that far ahead.
    monkeypatch.setattr(pacing, "PRESSURE_HORIZON", pacing.PRESSURE_TTL, raising=False)
    monkeypatch.setattr(pacing, "PACE_HORIZON", pacing.PACE_TTL, raising=False)
    far = (time.time() + 3600) * 1000
    fresh.hset(pacing.PRESSURE_KEY, "frozen:1", f"0.9 {far}")
    fresh.hset(pacing.PACE_KEY, "frozen:2", f"workflow:process 0.5 {far}")
    assert pacing.report() == {"pressure": {}, "services": {}}
    fresh.hset(pacing.PRESSURE_KEY, "frozen:1", f"0.9 {far}")
    pacer = pacing.Pacer()
    with pacer.job("workflow:process"):
        spend(pacer, 0.01)
    assert pacer.pressure == 0.0 and not pacer.yielding
    assert not fresh.hexists(pacing.PRESSURE_KEY, "frozen:1")
    press(0.9, ttl=pacing.PRESSURE_TTL)  # what a live request process writes still counts
    assert pacing.report()["pressure"] == {"web-test": 0.9}


@override_settings(**PACED)
@pytest.mark.parametrize("clock", ["inf", "nan"])
def test_a_budget_clock_that_is_not_finite_starts_again(fresh, clock):
    press(1.0)
    fresh.hset(pacing.BUDGET_KEY, "tat", clock)  # before: every checkpoint yielded MAX_WAIT for ever
    pacer = pacing.Pacer()
    started = time.monotonic()
    with pacer.job("workflow:process"):
        spend(pacer, 0.01)
    assert time.monotonic() - started < 1.0
    assert 0 < tat(fresh) < float("inf")


@override_settings(**PACED)
def test_the_budgets_debt_is_at_most_one_longest_wait(fresh):
    press(1.0)
    fresh.hset(pacing.BUDGET_KEY, "tat", str((time.time() + 10**7) * 1000))  # clock stepped back
    pacer = pacing.Pacer()
    pacer.service, pacer._pending = "workflow:process", 0.001
    wait = pacer._sync(pacing.budget())
    # before: 10**7 s owed, so every checkpoint of every process yielded MAX_WAIT for months
    assert wait <= pacing.MAX_WAIT
    assert tat(fresh) <= (time.time() + pacing.MAX_WAIT + 1) * 1000
    pacer._pending = 3600.0  # an hour of database time charged at once: the same bound
    assert pacing.MAX_WAIT - 0.1 <= pacer._sync(pacing.budget()) <= pacing.MAX_WAIT


@override_settings(WORKER_MODE="", WORKER_MODE_PACING_BUDGET=1e-7)
def test_a_tiny_budget_is_not_rounded_to_off(fresh):
    press(1.0)
    pacer = pacing.Pacer()
    pacer.service, pacer._pending = "workflow:process", 0.01
    assert pacer._sync(pacing.budget()) > 0  # before: sent as "0.000000", read as pacing off


@override_settings(**PACED)
def test_an_infinite_charge_does_not_stop_the_budget_for_ever(fresh):
    press(1.0)
    pacer = pacing.Pacer()
    pacer.service, pacer.weight = "workflow:process", 1e-320  # a weight E018 lets through
    pacer.meter.seconds = 0.01  # / 1e-320: inf
    assert pacer.checkpoint() <= pacing.MAX_WAIT + 0.5
    assert tat(fresh) < float("inf")


@override_settings(**PACED, WORKER_MODE_METRICS_TOKEN="t0ken")
@pytest.mark.django_db
def test_hostile_entries_do_not_break_the_report_page_or_metrics(admin_client, client, fresh):
    far = (time.time() + 20) * 1000
    fresh.hset(pacing.PRESSURE_KEY, b"\xff\xfe:1", f"0.5 {far}")  # not UTF-8
    fresh.hset(pacing.PRESSURE_KEY, "a:1", "|")  # the old reply's separator
    fresh.hset(pacing.PACE_KEY, "|", f"workflow:process 0.5 {far}")
    fresh.hset(pacing.PACE_KEY, "b:1", f"workflow:process nan {far}")
    report = pacing.report()
    assert list(report["pressure"].values()) == [0.5]
    assert report["services"] == {"workflow:process": {"pace": 0.5, "yielding": 1}}
    fresh.delete(pacing.PRESSURE_KEY)
    fresh.set(pacing.PRESSURE_KEY, "not a hash")  # WRONGTYPE: pacing unknown, the rest still shows
    assert admin_client.get("/admin/worker_mode/cluster/").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken").status_code == 200
    out = io.StringIO()
    call_command("workermode", "--cluster", stdout=out)
    assert "Request pressure: none" in out.getvalue()


@contextlib.contextmanager
def without_atomic():
    """A transaction no atomic block shows: autocommit off, a statement, then a rollback."""
    from django.db import connection, transaction

    transaction.set_autocommit(False)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        yield
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)


def atomic():
    from django.db import transaction

    return transaction.atomic()


@override_settings(**PACED)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("opened", [atomic, without_atomic], ids=["atomic", "set_autocommit"])
def test_a_checkpoint_inside_a_transaction_charges_but_does_not_yield(fresh, opened):
    press(1.0)
    pacer = pacing.Pacer()
    with pacer.job("workflow:process"):
        with opened():
            spend(pacer, 0.1)
            # No sleep holding the transaction's locks (set_autocommit: before, it slept ~0.2 s).
            assert pacer.checkpoint() == 0.0
        assert tat(fresh) > 0  # but charged: the next checkpoint outside pays for it
        assert pacer.checkpoint() > 0


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, "fast", float("inf"), True])
def test_a_bad_budget_is_e017(value):
    with override_settings(WORKER_MODE_PACING_BUDGET=value):
        assert "worker_mode.E017" in check_error_codes(run_checks())


@pytest.mark.parametrize(
    "value", [{"workflow:proces": 1}, {"workflow:process": -1}, {"workflow:process": "x"}, ["x"]]
)
def test_bad_weights_are_e018(value):
    with override_settings(WORKER_MODE_PACING=value):
        assert "worker_mode.E018" in check_error_codes(run_checks())


@pytest.mark.parametrize("value", [["workflow:proces"], "workflow:process", [1]])
def test_bad_async_commit_keys_are_e019(value):
    with override_settings(WORKER_MODE_PACING_ASYNC_COMMIT=value):
        assert "worker_mode.E019" in check_error_codes(run_checks())


def test_good_pacing_settings_pass():
    with override_settings(
        WORKER_MODE_PACING_BUDGET=0.3,
        WORKER_MODE_PACING={"workflow:process": 0},
        WORKER_MODE_PACING_ASYNC_COMMIT=["async-task:process"],
    ):
        codes = check_error_codes(run_checks())
        assert not {"worker_mode.E017", "worker_mode.E018", "worker_mode.E019"} & set(codes)


# -- across real processes ----------------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_worker_node_yields_while_a_request_node_is_busy(start_node, site_env, redis_conn):
    from tests.conftest import build_workflow, shared_database_url
    from workflows import triggers
    from workflows.models import Execution

    TOTAL = 200  # noqa: N806 (a few ms of SQLite time: more than the burst a process may run ahead)
    env = {**site_env, "DATABASE_URL": shared_database_url(), "CONN_MAX_AGE": "0",
           "WORKER_MODE_PACING_BUDGET": "0.002"}  # fmt: skip
    workflow = build_workflow(
        [{"key": "n", "type": "calculation", "config": {"expression": "{{ $context.data.n }} + 1"}}]
    )
    port = free_port()
    web = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "!", **{**env, "NODE_NAME": "web"})
    wait_for_http(f"http://127.0.0.1:{port}/healthz", web)
    stop = threading.Event()

    def load() -> None:  # a bounded stream of requests on loopback
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                http_get(f"http://127.0.0.1:{port}/admin/login/")

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        wait_until(lambda: pacing.report()["pressure"].get("web", 0) > 0, timeout=15)
        for n in range(TOTAL):
            triggers.trigger_manually(workflow, {"n": n})
        start_node(["runworkers"], "workflow:process", **{**env, "NODE_NAME": "flows"})
        # Under pressure the worker charges its executions and yields: its pace is published.
        wait_until(
            lambda: pacing.report()["services"].get("workflow:process", {}).get("yielding"), timeout=30
        )
        resolved_under_pressure = Execution.objects.filter(status="resolved").count()
        assert resolved_under_pressure < TOTAL
    finally:
        stop.set()
        loader.join(10)
    # The requests stop: the pressure lapses, the pace is lifted and the rest runs at full speed.
    wait_until(lambda: not pacing.report()["pressure"], timeout=15)
    wait_until(lambda: Execution.objects.filter(status="resolved").count() == TOTAL, timeout=60)
    assert "workflow:process" not in pacing.report()["services"]
