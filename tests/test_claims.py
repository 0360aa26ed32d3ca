"""worker_mode.claims in-process: claim, renew, fence, finish, release, liveness, recovery, checks.

Executions and tasks are the claimed-work models at hand; what is tested here is the
mechanism they share (the apps' own use of it is in their tests and the process tests).
"""

from __future__ import annotations

import datetime
import io
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.utils import timezone

from async_tasks import tasks
from async_tasks.models import AsyncTask
from tests.conftest import build_workflow, check_error_codes, is_postgres, product_csv, wait_until
from worker_mode import checks, claims, presence
from worker_mode.claims import ClaimLost, Owner
from workflows import triggers
from workflows.models import Execution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_conn")]


@pytest.fixture(autouse=True)
def no_outage_noted(monkeypatch):
    """What a test notes of database outages (claims._unreachable_at) stays in it: a sweep of a later
    test would leave lapsed leases alone for a lease."""
    monkeypatch.setattr(claims, "_unreachable_at", -claims.math.inf)


CALC = [{"key": "n", "type": "calculation", "config": {"expression": "{{ $context.data.n }} * 2"}}]


def queued_execution(n: int = 1) -> Execution:
    return triggers.trigger_manually(build_workflow(CALC), {"n": n})


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def row(**values):
    """A running claim as recovery reads it."""
    now = timezone.now()
    base = {
        "pk": 1, "node_name": "node-b", "worker": "node-b.shared.0.1", "pid": 1, "claim_token": "t",
        "host": claims.process_namespace(),
        "attempts": 1, "lease_expires_at": now + datetime.timedelta(seconds=20), "heartbeat_at": now,
        "started_at": now,
    }  # fmt: skip
    return {**base, **values}


# -- claiming and fenced writes -------------------------------------------------------------


def test_a_claim_takes_a_queued_row_once_and_records_its_owner(settings):
    settings.WORKER_MODE_LEASE = 30
    execution = queued_execution()
    before = timezone.now()
    claim = claims.claim(Execution, execution.pk, owner=Owner("node-a", 4242, "node-a.shared.0.4242"))
    assert claim is not None and claim.instance.status == "running"
    assert claims.claim(Execution, execution.pk) is None  # a duplicate message finds nothing
    execution.refresh_from_db()
    assert (execution.node_name, execution.pid, execution.worker) == ("node-a", 4242, "node-a.shared.0.4242")
    assert execution.claim_token == claim.token and execution.attempts == 1
    assert execution.started_at >= before and execution.heartbeat_at >= before
    assert 29 <= (execution.lease_expires_at - execution.heartbeat_at).total_seconds() <= 31


def test_work_that_is_not_due_yet_cannot_be_claimed():
    execution = queued_execution()
    later = timezone.now() + datetime.timedelta(minutes=5)
    Execution.objects.filter(pk=execution.pk).update(run_after=later)
    assert claims.claim(Execution, execution.pk) is None
    Execution.objects.filter(pk=execution.pk).update(run_after=timezone.now())
    assert claims.claim(Execution, execution.pk) is not None


def test_writes_of_a_claim_that_was_taken_over_change_nothing():
    execution = queued_execution()
    first = claims.claim(Execution, execution.pk)
    # Recovery gives it to another owner (its lease lapsed while the first was frozen).
    Execution.objects.filter(pk=execution.pk).update(status="queued", claim_token="")
    second = claims.claim(Execution, execution.pk, owner=Owner("node-b", 7, "node-b.shared.0.7"))
    with pytest.raises(ClaimLost):
        first.fence()
    with pytest.raises(ClaimLost):
        first.check()  # once lost, every safe point says so
    assert first.finish("resolved", error="") is False
    assert first.release() is False
    second.fence()
    assert second.finish("resolved", error="x\x00y") is True
    execution.refresh_from_db()
    assert (execution.status, execution.node_name, execution.error) == ("resolved", "node-b", "x\ufffdy")
    assert execution.lease_expires_at is None and execution.finished_at is not None


def test_release_queues_it_again_and_can_refund_the_attempt():
    execution = queued_execution()
    claim = claims.claim(Execution, execution.pk)
    until = timezone.now() + datetime.timedelta(seconds=60)
    assert claim.release(run_after=until, refund_attempt=True)
    execution.refresh_from_db()
    assert (execution.status, execution.attempts, execution.claim_token, execution.pid) == (
        "queued",
        0,
        "",
        None,
    )
    assert execution.run_after == until


def test_check_renews_the_lease_when_a_third_of_it_has_passed(settings):
    settings.WORKER_MODE_LEASE = 30
    claim = claims.claim(Execution, queued_execution().pk, heartbeat=False)
    first = Execution.objects.get(pk=claim.pk).lease_expires_at
    claim.check()  # not due: no write
    assert Execution.objects.get(pk=claim.pk).lease_expires_at == first
    claim.renewed_at -= 11
    claim.check()
    assert Execution.objects.get(pk=claim.pk).lease_expires_at > first


def test_the_heartbeat_thread_renews_while_the_work_blocks(settings):
    settings.WORKER_MODE_LEASE = 3  # renewed every second
    claim = claims.claim(Execution, queued_execution().pk)
    assert claim.heartbeat  # claimed outside a transaction: the thread may renew it
    first = Execution.objects.get(pk=claim.pk).lease_expires_at
    with claim:
        assert claim in claims.active_claims()
        # A long HTTP call or import batch: the work itself never calls check(), only the thread renews.
        lease = Execution.objects.filter(pk=claim.pk).values_list("lease_expires_at", flat=True)
        wait_until(lambda: lease.get() > first + datetime.timedelta(seconds=1), timeout=10)
    assert claim not in claims.active_claims()


def test_a_run_that_reaches_no_step_stops_being_renewed(settings, monkeypatch, caplog):
    settings.WORKER_MODE_LEASE = 3
    monkeypatch.setattr(claims, "STALL_LEASES", 1)  # stalled after one lease without a step
    claim = claims.claim(Execution, queued_execution().pk)
    with claim:  # a hung run: no node, no batch, nothing
        wait_until(lambda: "has reached no step for" in caplog.text, timeout=10)
        lease = Execution.objects.filter(pk=claim.pk).values_list("lease_expires_at", flat=True)
        wait_until(lambda: lease.get() <= timezone.now(), timeout=10)  # lapsed: recovery may take it
        assert claims.why_abandoned(Execution.objects.filter(pk=claim.pk).values()[0], timezone.now())


def test_the_heartbeat_thread_notices_a_lost_claim(settings):
    settings.WORKER_MODE_LEASE = 3
    claim = claims.claim(Execution, queued_execution().pk)
    with claim:
        Execution.objects.filter(pk=claim.pk).update(status="canceled")
        wait_until(lambda: claim.lost, timeout=5)
        with pytest.raises(ClaimLost):
            claim.check()


def test_an_error_that_escapes_the_work_still_ends_the_row(caplog):
    execution = queued_execution()
    claim = claims.claim(Execution, execution.pk)
    with claim:
        raise ValueError("Out of range float values are not JSON compliant")
    execution.refresh_from_db()
    assert execution.status == "error"
    assert execution.error == "ValueError: Out of range float values are not JSON compliant"
    assert "an error escaped its run" in caplog.text


def test_a_finish_rolled_back_by_an_error_still_ends_the_row():
    from django.db import transaction

    execution = queued_execution()
    claim = claims.claim(Execution, execution.pk)
    with claim, transaction.atomic():
        assert claim.finish("resolved", error="")
        raise RuntimeError("the commit failed")  # the finish is undone with it
    execution.refresh_from_db()
    assert (execution.status, execution.error) == ("error", "RuntimeError: the commit failed")


def test_a_lost_claim_escaping_the_work_writes_nothing():
    execution = queued_execution()
    claim = claims.claim(Execution, execution.pk)
    Execution.objects.filter(pk=execution.pk).update(status="canceled")
    with claim:
        claim.fence()  # raises ClaimLost, which the block swallows after logging
    assert Execution.objects.get(pk=execution.pk).status == "canceled"


@pytest.mark.parametrize(("policy", "status"), [("retry", "queued"), ("fail", "aborted")])
def test_a_process_stopping_mid_work_applies_the_policy_at_once(settings, redis_conn, policy, status):
    settings.WORKFLOWS_RECOVERY = policy
    execution = queued_execution()
    redis_conn.flushdb()
    claim = claims.claim(Execution, execution.pk)
    with pytest.raises(SystemExit), claim:
        raise SystemExit(0)  # rq's cold shutdown, in the job's own process
    execution.refresh_from_db()
    assert execution.status == status
    if policy == "retry":
        assert execution.attempts == 0  # a stop is not an attempt cut short
        assert redis_conn.llen("rq:queue:workflow:process") == 1  # dispatched again
    else:
        assert "Stopped before it was done" in execution.error


def test_a_claim_inside_a_transaction_has_no_heartbeat_thread():
    from django.db import transaction

    execution = queued_execution()
    with transaction.atomic():
        claim = claims.claim(Execution, execution.pk)
        assert claim is not None and not claim.heartbeat
        transaction.set_rollback(True)


# -- liveness -----------------------------------------------------------------------------


def test_lapsed_lease_means_the_owner_is_gone():
    now = timezone.now()
    lapsed = row(lease_expires_at=now - datetime.timedelta(seconds=1))
    assert claims.why_abandoned(lapsed, now, lambda: None).startswith("its lease lapsed at ")
    assert claims.why_abandoned(row(lease_expires_at=None), now, lambda: None).startswith("its lease lapsed")


def test_a_process_of_this_node_is_judged_by_its_pid(settings):
    settings.WORKER_MODE_NODE_NAME = "node-a"
    now = timezone.now()
    gone = dead_pid()
    reason = claims.why_abandoned(row(node_name="node-a", pid=gone), now, lambda: {"node-a"})
    assert reason == f"its process (pid {gone}) on this node is gone"
    assert claims.why_abandoned(row(node_name="node-a", pid=os.getpid()), now, lambda: {"node-a"}) is None


def test_a_namesake_node_in_another_container_is_not_judged_by_pid(settings):
    # Two containers given the same NODE_NAME (a compose service scaled to two): the same pid
    # means different processes, so only the lease (or presence) may tell that one is gone.
    settings.WORKER_MODE_NODE_NAME = "node-a"
    now = timezone.now()
    elsewhere = row(node_name="node-a", pid=dead_pid(), host="another-boot-id:4026531836")
    assert claims.why_abandoned(elsewhere, now, lambda: {"node-a"}) is None
    assert claims.process_namespace().count(":") == 1  # boot id and pid-namespace inode


def test_a_node_whose_name_extends_this_ones_is_another_node(settings):
    # "node" and "node.b" used to be confused (worker names were parsed with startswith("node.")).
    settings.WORKER_MODE_NODE_NAME = "node"
    now = timezone.now()
    other = row(node_name="node.b", pid=dead_pid(), worker="node.b.shared.0.1")
    assert claims.why_abandoned(other, now, lambda: {"node", "node.b"}) is None


def test_a_node_that_left_the_cluster_loses_its_claims_once_they_stop_renewing(settings):
    settings.WORKER_MODE_LEASE = 30  # renewals every 10 s: two missed after 20 s
    now = timezone.now()
    fresh = row(heartbeat_at=now - datetime.timedelta(seconds=5))
    stale = row(heartbeat_at=now - datetime.timedelta(seconds=21))
    assert claims.why_abandoned(fresh, now, lambda: set()) is None  # still renewing: alive
    assert claims.why_abandoned(stale, now, lambda: {"node-b"}) is None  # still announced: alive
    assert claims.why_abandoned(stale, now, lambda: None) is None  # Redis cannot tell: the lease decides
    reason = claims.why_abandoned(stale, now, lambda: {"node-a"})
    assert reason.startswith("its node 'node-b' has no live presence in the cluster and it stopped renewing")


def test_live_nodes_reads_the_presence_entries(settings):
    settings.WORKER_MODE_NODE_NAME = "node-p"
    heartbeat = presence.announce("workers", services=["workflow:process"])
    try:
        assert "node-p" in claims.live_nodes()
    finally:
        heartbeat.stop()
    assert "node-p" not in claims.live_nodes()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    assert claims.live_nodes() is None


# -- recovery -----------------------------------------------------------------------------


def claimed_by_dead_process(execution: Execution, settings, attempts: int = 1) -> None:
    settings.WORKER_MODE_NODE_NAME = "node-a"
    pid = dead_pid()
    claim = claims.claim(
        execution.__class__, execution.pk, owner=Owner("node-a", pid, f"node-a.shared.0.{pid}")
    )
    Execution.objects.filter(pk=claim.pk).update(attempts=attempts)


def test_recovery_retries_by_policy_and_dispatches_again(settings, redis_conn):
    execution = queued_execution()
    claimed_by_dead_process(execution, settings)
    redis_conn.flushdb()
    assert claims.recover(Execution) == {"retried": 1, "failed": 0}
    execution.refresh_from_db()
    assert (execution.status, execution.node_name, execution.pid, execution.claim_token) == (
        "queued",
        "",
        None,
        "",
    )
    job = redis_conn.hgetall(f"rq:job:{execution.job_id}")
    assert job and redis_conn.llen("rq:queue:workflow:process") == 1
    assert claims.recover(Execution) == {"retried": 0, "failed": 0}


def test_recovery_ends_work_after_max_attempts(settings):
    settings.WORKFLOWS_MAX_ATTEMPTS = 2
    execution = queued_execution()
    claimed_by_dead_process(execution, settings, attempts=2)
    assert claims.recover(Execution) == {"retried": 0, "failed": 1}
    execution.refresh_from_db()
    assert execution.status == "aborted" and execution.finished_at and execution.lease_expires_at is None
    assert "gave up after 2 attempt(s) (WORKFLOWS_MAX_ATTEMPTS)" in execution.error


def test_recovery_never_takes_work_whose_owner_finished_meanwhile(settings):
    execution = queued_execution()
    claimed_by_dead_process(execution, settings)
    Execution.objects.filter(pk=execution.pk).update(claim_token="another-claim")  # a newer claim won
    rows = list(Execution.objects.filter(pk=execution.pk).values())
    assert rows[0]["status"] == "running"
    # The sweep read the old token before the new claim: its conditional UPDATE finds nothing.
    stale = {**row(pk=execution.pk, claim_token="t" * 32, node_name="node-a", pid=dead_pid())}
    assert claims._retry(Execution, stale, "test", 3) == 0
    assert Execution.objects.get(pk=execution.pk).claim_token == "another-claim"


def test_a_queued_row_whose_job_is_stuck_started_counts_as_lost(redis_conn):
    execution = queued_execution()
    # A worker took the message and died before claiming the row: rq still says "started".
    redis_conn.hset(
        f"rq:job:{execution.job_id}", mapping={"status": "started", "started_at": "2020-01-01T00:00:00Z"}
    )
    assert claims.requeue_lost(Execution, grace=0) == 1
    assert redis_conn.hget(f"rq:job:{execution.job_id}", "status") == b"queued"


def test_tasks_recover_through_the_same_sweep(settings, task_storage):
    settings.ASYNC_TASKS_RECOVERY = "retry"
    task = tasks.create_import(
        None, "catalog.Product", io.BytesIO(product_csv(3)), name="p.csv", dispatch=False
    )
    pid = dead_pid()
    settings.WORKER_MODE_NODE_NAME = "node-a"
    claims.claim(AsyncTask, task.pk, owner=Owner("node-a", pid, f"node-a.inline.0.{pid}"))
    AsyncTask.objects.filter(pk=task.pk).update(done=2)
    assert claims.sweep("async-task:process") == {"retried": 1, "failed": 0}
    task.refresh_from_db()
    assert (task.status, task.done) == ("queued", 0)
    assert tasks.run(task.pk) == "succeeded"


# -- checks -------------------------------------------------------------------------------


def test_claim_settings_are_checked(settings, monkeypatch):
    assert check_error_codes(checks.check_claim_settings()) == []
    settings.WORKER_MODE_LEASE = 1
    settings.WORKER_MODE_RECOVERY_INTERVAL = 0
    settings.WORKER_MODE_QUEUED_GRACE = "10"
    settings.WORKER_MODE_REQUEUE_INTERVAL = float("inf")
    settings.WORKFLOWS_RECOVERY = "resume"
    settings.ASYNC_TASKS_MAX_ATTEMPTS = 0
    monkeypatch.setattr(Execution, "service_key", "workflow:proces")
    codes = check_error_codes(checks.check_claim_settings())
    assert codes == [
        "worker_mode.E008",
        "worker_mode.E009",
        "worker_mode.E009",
        "worker_mode.E009",
        "worker_mode.E010",
        "worker_mode.E011",
        "worker_mode.E011",
    ]
    messages = " ".join(m.msg for m in checks.check_claim_settings())
    assert "WORKFLOWS_RECOVERY is 'resume'" in messages
    assert "'workflow:proces' is not a registered" in messages
    settings.WORKER_MODE_LEASE = 1e12  # PostgreSQL's millisecond settings would overflow
    assert "worker_mode.E008" in check_error_codes(checks.check_claim_settings())


def test_claim_checks_are_bound_and_stop_a_node(settings):
    from worker_mode.exceptions import WorkerModeError
    from worker_mode.startup import validate

    settings.ASYNC_TASKS_RECOVERY = "sometimes"
    with pytest.raises(Exception, match="worker_mode.E011"):
        call_command("check")
    with pytest.raises(WorkerModeError, match="ASYNC_TASKS_RECOVERY is 'sometimes'"):
        validate()


@pytest.mark.skipif(not is_postgres(), reason="PostgreSQL session settings; SQLite has no sessions to bound")
def test_sessions_that_claim_work_are_bounded_on_postgres(settings):
    from django.db import connection

    settings.WORKER_MODE_LEASE = 30
    connection.close()  # a fresh session, as a worker's first claim has
    claims.claim(Execution, queued_execution().pk)
    with connection.cursor() as cursor:
        cursor.execute("SHOW idle_in_transaction_session_timeout")
        idle = cursor.fetchone()[0]
        cursor.execute("SHOW statement_timeout")
        statement = cursor.fetchone()[0]
    assert (idle, statement) == ("30s", "5min")


@pytest.mark.skipif(not is_postgres(), reason="row locks held by another session need PostgreSQL")
def test_recovery_skips_a_row_its_owner_holds_locked(settings):
    import threading

    from django.db import connections, transaction

    execution = queued_execution()
    claimed_by_dead_process(execution, settings)
    locked, release = threading.Event(), threading.Event()

    def owner_mid_commit():  # e.g. frozen between its fence and its COMMIT
        try:
            with transaction.atomic():
                Execution.objects.select_for_update().get(pk=execution.pk)
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=owner_mid_commit)
    thread.start()
    try:
        assert locked.wait(10)
        # Skipped, not waited for: waiting would have ended with the lock, and then retried it.
        assert claims.recover(Execution) == {"retried": 0, "failed": 0}
    finally:
        release.set()
        thread.join(10)
    assert claims.recover(Execution) == {"retried": 1, "failed": 0}


def test_settings_of_earlier_versions_are_refused_not_ignored(settings):
    from async_tasks import checks as task_checks
    from workflows import checks as workflow_checks

    settings.WORKFLOWS_RECOVER_STARTED = "fail"  # a site that chose "fail" must not silently get "retry"
    settings.ASYNC_TASKS_PENDING_GRACE = 30
    assert check_error_codes(workflow_checks.check_settings()) == ["workflows.E005"]
    assert "use WORKFLOWS_RECOVERY ('retry' or 'fail')" in workflow_checks.check_settings()[0].msg
    assert check_error_codes(task_checks.check_settings()) == ["async_tasks.E005"]
    with pytest.raises(Exception, match="workflows.E005"):
        call_command("check")


# -- database outages -------------------------------------------------------------------------

ON_POSTGRES = pytest.mark.skipif(
    not is_postgres(), reason="a lost database connection (a server terminating the session) needs PostgreSQL"
)


def lose_the_connection():
    """The server ends this process's session, as a restarting database does; the next statement fails."""
    import psycopg
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    settings_dict = connection.settings_dict
    with psycopg.connect(
        host=settings_dict["HOST"] or None, port=settings_dict["PORT"] or None, user=settings_dict["USER"],
        password=settings_dict["PASSWORD"] or None, dbname=settings_dict["NAME"], autocommit=True,
    ) as other:  # fmt: skip
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


@ON_POSTGRES
def test_a_lost_connection_is_told_from_an_error_of_the_work():
    from django.db import DatabaseError, IntegrityError, connection

    lose_the_connection()
    with pytest.raises(DatabaseError) as lost:
        Execution.objects.count()
    assert claims.connection_lost(lost.value)
    connection.close()
    from catalog.models import Product

    Product.objects.create(sku="P-1", name="Mug", price=1, quantity=1)
    with pytest.raises(IntegrityError) as refused:
        Product.objects.create(sku="P-1", name="Mug", price=1, quantity=1)
    assert not claims.connection_lost(refused.value)
    with pytest.raises(DatabaseError) as cancelled, connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 50")
        cursor.execute("SELECT pg_sleep(1)")  # an OperationalError of the work: a statement timeout
    assert not claims.connection_lost(cancelled.value)
    connection.close()  # not this session's timeout for the rest of the test


@pytest.mark.skipif(
    is_postgres(),
    reason="checks the SQLite side of connection_lost (the vendor of the test database decides); the "
    "PostgreSQL side is checked by the tests that terminate a real session",
)
def test_on_sqlite_every_database_error_is_the_work_s():
    from django.db import OperationalError

    assert not claims.connection_lost(OperationalError("database is locked"))


@ON_POSTGRES
@pytest.mark.parametrize(("policy", "status"), [("retry", "queued"), ("fail", "error")])
def test_work_that_loses_its_database_is_queued_again_or_ended_by_policy(
    settings, redis_conn, policy, status
):
    settings.WORKFLOWS_RECOVERY = policy
    execution = queued_execution()
    redis_conn.flushdb()
    claim = claims.claim(Execution, execution.pk)
    with claim:
        lose_the_connection()
        Execution.objects.count()  # the work's next statement finds the session gone
    execution.refresh_from_db()
    assert execution.status == status
    if policy == "retry":
        assert execution.attempts == 0  # an outage is not the work's attempt
        assert redis_conn.llen("rq:queue:workflow:process") == 1  # dispatched again
    else:
        assert execution.error.startswith("The database connection was lost during the run: ")


@ON_POSTGRES
def test_an_import_batch_whose_connection_is_lost_is_written_again_once(task_storage):
    from async_tasks.importer import Importer
    from async_tasks.spec import get_spec
    from catalog.models import Product

    fences = []

    def fence(summary):  # inside each batch's transaction; the first time, the database goes away
        fences.append(summary.created)
        if len(fences) == 1:
            lose_the_connection()
        Product.objects.count()

    rows = [(n + 2, [f"S-{n}", f"Product {n}", "1.00", "1", "true", "2024-01-01"]) for n in range(30)]
    header = ["sku", "name", "price", "quantity", "active", "created"]
    importer = Importer(get_spec("catalog.Product"), header, batch_size=20, fence=fence)
    summary = importer.run(iter(rows))
    assert fences == [20, 20, 30]  # the first batch twice (rolled back, then written), then the second
    assert (summary.created, summary.failed, Product.objects.count()) == (30, 0, 30)


def test_recovery_leaves_lapsed_leases_alone_just_after_a_database_outage(settings, monkeypatch):
    execution = queued_execution()
    claim = claims.claim(Execution, execution.pk, owner=Owner("node-a", 4242, "node-a.shared.0.4242"))
    Execution.objects.filter(pk=claim.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    monkeypatch.setattr(claims, "_unreachable_at", claims.time.monotonic())  # this sweeper just lost it
    assert claims.recover(Execution) == {"retried": 0, "failed": 0}  # its owner may renew it now
    monkeypatch.setattr(claims, "_unreachable_at", claims.time.monotonic() - claims.lease_seconds())
    assert claims.recover(Execution) == {"retried": 1, "failed": 0}


def test_a_sweeper_notes_when_it_cannot_reach_the_database(settings, monkeypatch):
    from django.db import connection

    assert claims.database_answers()
    before = claims._unreachable_at
    monkeypatch.setitem(connection.settings_dict, "NAME", "/nonexistent/dir/db.sqlite3")
    if is_postgres():
        monkeypatch.setitem(connection.settings_dict, "NAME", "no_such_database_here")
    connection.close()
    assert not claims.database_answers() and claims.recently_unreachable()
    assert claims._unreachable_at > before
    monkeypatch.undo()
    connection.close()
    assert claims.database_answers()


def commit_then_lose_the_reply(monkeypatch):
    """The next COMMIT reaches the server and commits, but its answer never comes back: the client
    sees its connection lost, as when the network fails at that instant."""
    from django.db import OperationalError, connections

    wrapper = type(connections["default"])
    real = wrapper._commit
    state = {"done": False}

    def commit(self):
        real(self)
        if not state["done"]:
            state["done"] = True
            self.connection.close()
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(wrapper, "_commit", commit)
    return state


@ON_POSTGRES
@pytest.mark.parametrize("label", ["catalog.Product", "catalog.Order"])
def test_an_import_batch_whose_commit_answer_is_lost_is_not_written_twice(task_storage, monkeypatch, label):
    """The COMMIT of a batch reached the server, its answer did not: the batch is not written again
    (Order has no identifier: its rows would be doubled; Product's would be reported as existing)."""
    from async_tasks.importer import Importer
    from async_tasks.spec import get_spec
    from catalog.models import Order, Product

    fences = []
    if label == "catalog.Product":
        rows = [(n + 2, [f"S-{n}", f"Product {n}", "1.00", "1", "true", "2024-01-01"]) for n in range(30)]
        header, model = ["sku", "name", "price", "quantity", "active", "created"], Product
    else:
        product = Product.objects.create(sku="P-1", name="Mug", price=1, quantity=1)
        rows = [(n + 2, [str(product.pk), "1", f"customer {n}", "pending"]) for n in range(30)]
        header, model = ["product", "quantity", "customer", "status"], Order
    importer = Importer(get_spec(label), header, batch_size=20, fence=lambda s: fences.append(s.as_dict()))
    lost = commit_then_lose_the_reply(monkeypatch)
    summary = importer.run(iter(rows))
    assert lost["done"]
    assert (summary.created, summary.failed, summary.skipped) == (30, 0, 0)
    assert (model.objects.count(), importer.errors.count) == (30, 0)
    assert fences[-1] == summary.as_dict()


@ON_POSTGRES
def test_whether_a_lost_transaction_committed_is_asked_of_the_database():
    import psycopg
    from django.db import OperationalError, connection, transaction

    from catalog.models import Product

    with transaction.atomic():
        Product.objects.create(sku="P-1", name="Mug", price=1, quantity=1)
        kept = claims.transaction_id()
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(sku="P-2", name="Mug", price=1, quantity=1)
        undone = claims.transaction_id()
        raise RuntimeError("rolled back")
    assert claims.transaction_id() is None  # no transaction: nothing to ask about later
    assert claims.transaction_committed(kept) and not claims.transaction_committed(undone)
    params = connection.get_connection_params()
    with psycopg.connect(**params) as other:  # a session the server still runs, its client gone
        running = other.execute("SELECT txid_current()").fetchone()[0]
        with pytest.raises(OperationalError, match="still in progress"):
            claims.transaction_committed(running, timeout=0)


def test_a_sweeper_whose_database_answered_only_after_a_partition_leaves_lapsed_leases_alone(
    settings, monkeypatch
):
    """Cut off, a probe on an open connection does not fail: it waits until the network is back,
    then answers. The owners could not renew meanwhile either: that counts as unreachable."""
    import time

    from django.db import connection

    settings.WORKER_MODE_LEASE = 0.6  # renewed every 0.2 s
    monkeypatch.setattr(claims, "_unreachable_at", -claims.math.inf)
    assert claims.database_answers() and not claims.recently_unreachable()  # a quick answer
    usable = connection.is_usable
    monkeypatch.setattr(connection, "is_usable", lambda: time.sleep(0.3) or usable())
    assert claims.database_answers()  # it answered, after longer than a renewal
    assert claims.recently_unreachable()
    time.sleep(0.6)
    assert not claims.recently_unreachable()


def test_just_after_a_database_outage_a_lapsed_presence_and_a_stopped_heartbeat_prove_nothing():
    now = timezone.now()
    stale = row(node_name="node-a", lease_expires_at=now - datetime.timedelta(seconds=60),
                heartbeat_at=now - datetime.timedelta(seconds=90))  # fmt: skip
    assert claims.why_abandoned(stale, now, lambda: set()).startswith("its lease lapsed")
    # the sweeper's node was cut off with node-a: node-a's presence lapsed, as its lease did
    assert claims.why_abandoned(stale, now, lambda: set(), trust_leases=False) is None
    gone = row(node_name=conf_node_name(), pid=dead_pid(), lease_expires_at=now, heartbeat_at=now)
    assert claims.why_abandoned(gone, now, lambda: set(), trust_leases=False).startswith("its process")


def conf_node_name() -> str:
    from worker_mode.conf import conf

    return conf.WORKER_MODE_NODE_NAME


@ON_POSTGRES
def test_a_connection_lost_after_the_work_finished_is_not_swallowed(redis_conn):
    from django.db import DatabaseError

    execution = queued_execution()
    claim = claims.claim(Execution, execution.pk)
    with pytest.raises(DatabaseError), claim:
        claim.finish("resolved")
        lose_the_connection()
        Execution.objects.count()
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == ("resolved", 1)  # the finish stands; nothing queued
