"""Claimed work: one lifecycle for background work whose database row is the truth.

Every model that inherits :class:`worker_mode.models.ClaimedWork` (workflow
executions, import/export tasks, a third-party app's work) goes through::

    queued --claim--> running --finish--> a final status of the model
                         |--release--> queued (a pause, or a node stopping first)
                         `--owner gone: recovery--> queued again (retry) or ended (fail)

- **claim**: one conditional ``UPDATE ... RETURNING``: queued -> running with a new
  claim token, the owner's node, pid and worker name, a lease of WORKER_MODE_LEASE
  seconds and ``attempts + 1``. A duplicate message finds nothing to claim.
- **renew**: while the work runs, a thread of the owning process extends the lease
  every third of WORKER_MODE_LEASE (also during a long import batch or an HTTP
  call); ``check()`` does the same at the work's own safe points.
- **fence / finish / release**: every write of the owner is conditional on its token
  and on the row still running. A process frozen or cut off past its lease, whose
  work recovery gave to another, finds nothing to update: it commits nothing more.
- **recover** (nodes serving the key, every WORKER_MODE_RECOVERY_INTERVAL seconds):
  running work whose lease lapsed, whose process on this node is gone, or whose node
  left the cluster (no presence in Redis and no heartbeat for two renewals) is queued
  again or ended with the reason, by the model's policy (``<PREFIX>_RECOVERY``,
  ``<PREFIX>_MAX_ATTEMPTS``). **requeue_lost** (every WORKER_MODE_REQUEUE_INTERVAL
  seconds) enqueues again queued work whose message Redis lost.
- **a database outage** is not an error of the work: work whose database connection is
  lost waits for the database (WORKER_MODE_DATABASE_WAIT), then writes its interrupted
  transaction again (``retry_after_database_loss``) or is queued again or ended by its
  policy, with that reason; and a sweeper that could not reach the database within the
  last lease leaves lapsed leases alone for a lease, so owners can renew them first.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, DatabaseError, InterfaceError, OperationalError, connections, router
from django.db.models import F, Q
from django.utils import timezone
from redis import RedisError

from . import storable
from .conf import conf
from .models import ClaimedWork

logger = logging.getLogger(__name__)

RETRY, FAIL = "retry", "fail"
POLICIES = (RETRY, FAIL)
QUEUED, RUNNING = ClaimedWork.QUEUED, ClaimedWork.RUNNING

W = TypeVar("W", bound=ClaimedWork)
T = TypeVar("T")


class ClaimLost(Exception):
    """This process no longer holds the claim: the work was canceled, or recovery gave it to another."""


@functools.cache
def process_namespace() -> str:
    """This process's pid namespace, machine-wide unique: the boot id and the namespace's inode.

    Process ids are compared only between processes of one namespace: two containers (or two
    machines) given the same NODE_NAME have different namespaces.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        return f"{boot_id}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: the host name is the best there is
        import socket

        return socket.gethostname()


@dataclass(frozen=True)
class Owner:
    """Who claims: the node (WORKER_MODE_NODE_NAME), the process id, the worker's display name, and
    the pid namespace the process id belongs to."""

    node: str
    pid: int
    worker: str
    host: str = ""

    def __post_init__(self) -> None:
        if not self.host:
            object.__setattr__(self, "host", process_namespace())


def current_owner() -> Owner:
    from .cluster import current_worker_name

    return Owner(conf.WORKER_MODE_NODE_NAME, os.getpid(), current_worker_name())


def lease_seconds() -> float:
    return float(conf.WORKER_MODE_LEASE)


def renew_interval() -> float:
    """How often an owner renews its lease: a third of it, so two renewals may fail before it lapses."""
    return lease_seconds() / 3


#: The heartbeat thread stops renewing a claim whose work has reached no safe point (a node, a batch,
#: a progress write) for this many leases (5 minutes by default): a hung run must not hold its work
#: for ever. The lease then lapses, recovery takes the work over, and fencing keeps the hung run from
#: writing should it wake up.
STALL_LEASES = 10


# -- SQL of the hot path ------------------------------------------------------------------
# Claims and finishes run once per job; built through the ORM's compiler each would cost
# the worker more CPU than the database spends on it, so they are written once per model
# from its meta (columns, each field's own value preparation) and run on a plain cursor.
# Standard SQL that PostgreSQL and SQLite (3.35+, for RETURNING) accept.


def _q(using: str, name: str) -> str:
    return connections[using].ops.quote_name(name)


def _column(model: type[ClaimedWork], using: str, name: str) -> str:
    return _q(using, model._meta.get_field(name).column)


@functools.cache
def _claim_sql(model: type[ClaimedWork], using: str) -> str:
    c = functools.partial(_column, model, using)
    returning = ", ".join(_q(using, f.column) for f in model._meta.concrete_fields)
    return (
        f"UPDATE {_q(using, model._meta.db_table)} SET {c('status')} = %s, {c('node_name')} = %s, "
        f"{c('worker')} = %s, {c('pid')} = %s, {c('host')} = %s, {c('claim_token')} = %s, "
        f"{c('lease_expires_at')} = %s, "
        f"{c('heartbeat_at')} = %s, {c('attempts')} = {c('attempts')} + 1, "
        f"{c('started_at')} = COALESCE({c('started_at')}, %s), {c('run_after')} = NULL, "
        f"{c('finished_at')} = NULL "
        f"WHERE {_q(using, model._meta.pk.column)} = %s AND {c('status')} = %s "
        f"AND ({c('run_after')} IS NULL OR {c('run_after')} <= %s) RETURNING {returning}"
    )


@functools.cache
def _fenced_sql(model: type[ClaimedWork], using: str, names: tuple[str, ...]) -> str:
    c = functools.partial(_column, model, using)
    sets = ", ".join(f"{c(name)} = %s" for name in names)
    return (
        f"UPDATE {_q(using, model._meta.db_table)} SET {sets} "
        f"WHERE {_q(using, model._meta.pk.column)} = %s AND {c('status')} = %s AND {c('claim_token')} = %s"
    )


@functools.cache
def _converters(model: type[ClaimedWork], using: str) -> list[tuple[Any, tuple[Any, ...]]]:
    """Per concrete field: its column expression and what the ORM applies to values read back."""
    connection = connections[using]
    result = []
    for field in model._meta.concrete_fields:
        column = field.get_col(model._meta.db_table)
        result.append(
            (column, (*connection.ops.get_db_converters(column), *field.get_db_converters(connection)))
        )
    return result


def _from_db(model: type[W], using: str, row: tuple[Any, ...]) -> W:
    connection = connections[using]
    values = []
    for value, (column, converters) in zip(row, _converters(model, using), strict=True):
        for converter in converters:
            value = converter(value, column, connection)
        values.append(value)
    return model.from_db(using, [f.attname for f in model._meta.concrete_fields], values)


def new_token() -> str:
    return uuid.uuid4().hex


# -- claiming -----------------------------------------------------------------------------


def claim(
    model: type[W], pk: Any, *, owner: Owner | None = None, heartbeat: bool | None = None
) -> Claim | None:
    """queued -> running for this process, in one statement; the Claim, or None if not queued.

    ``heartbeat``: renew the lease from a thread while the claim is held. By default
    yes, unless the caller is inside a transaction (other connections could not see
    the row yet); ``check()`` renews at the work's own steps in any case.
    """
    owner = owner or current_owner()
    using = router.db_for_write(model)
    connection = connections[using]
    _bound_session(connection)
    adapt = connection.ops.adapt_datetimefield_value
    now = timezone.now()
    token = new_token()
    params = [
        RUNNING,
        owner.node,
        owner.worker,
        owner.pid,
        owner.host,
        token,
        adapt(now + datetime.timedelta(seconds=lease_seconds())),
        adapt(now),
        adapt(now),
        pk,
        QUEUED,
        adapt(now),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(model, using), params)
        row = cursor.fetchone()
    if row is None:
        return None
    instance = _from_db(model, using, row)
    instance.first_claim = instance.started_at == now  # type: ignore[attr-defined]
    if heartbeat is None:
        heartbeat = not connection.in_atomic_block
    return Claim(instance, heartbeat=heartbeat)


def _bound_session(connection: Any) -> None:
    """PostgreSQL: the server ends what a frozen or cut-off process of this session holds.

    A process frozen in the middle of a transaction keeps its row locks (the claimed
    row's after a fence, the unique-index entries of a half-sent COPY) for as long as
    its session lives, which for a partition is until TCP gives up (hours). So the
    sessions of processes that claim work end a transaction left idle for a lease
    (``idle_in_transaction_session_timeout``) and cancel a statement that runs for
    ``STALL_LEASES`` leases (``statement_timeout``: a COPY waiting on a frozen client
    is a running statement) — the same bound after which a run is taken for hung.
    """
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    connection.ensure_connection()
    raw = connection.connection
    if getattr(connection, "_worker_mode_bounded", None) is raw:
        return
    lease_ms = int(lease_seconds() * 1000)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false), "
            "set_config('statement_timeout', %s, false)",
            [str(lease_ms), str(lease_ms * STALL_LEASES)],
        )
    connection._worker_mode_bounded = raw


def claim_new(instance: W, *, owner: Owner | None = None) -> Claim:
    """Save a new row as already running for this process (work run at once, e.g. in a request)."""
    owner = owner or current_owner()
    now = timezone.now()
    instance.status = RUNNING
    instance.node_name, instance.pid, instance.worker = owner.node, owner.pid, owner.worker
    instance.host = owner.host
    instance.claim_token = new_token()
    instance.attempts = 1
    instance.started_at = instance.heartbeat_at = now
    instance.lease_expires_at = now + datetime.timedelta(seconds=lease_seconds())
    instance.save()
    using = instance._state.db or router.db_for_write(type(instance))
    return Claim(instance, heartbeat=not connections[using].in_atomic_block)


class Claim:
    """This process's hold on one row: renew it, fence writes with it, finish or release it.

    Use it as a context manager around the work: the lease is renewed from a thread
    meanwhile, and an error that escapes the work still ends the row — with the
    model's ``error_status`` and the error as its reason — so no row stays running.
    """

    def __init__(self, instance: ClaimedWork, *, heartbeat: bool = True) -> None:
        self.instance = instance
        self.model = type(instance)
        self.pk = instance.pk
        self.token = instance.claim_token
        self.using = instance._state.db or router.db_for_write(self.model)
        self.lease = datetime.timedelta(seconds=lease_seconds())
        self.renew_every = self.lease.total_seconds() / 3
        self.renewed_at = self.stepped_at = time.monotonic()
        self.heartbeat = heartbeat
        self.lost = False
        self.done = False
        self.stalled = False

    def __repr__(self) -> str:
        return f"<Claim {self.label} {self.token[:8]}>"

    @property
    def label(self) -> str:
        return f"{self.model._meta.label} {self.pk}"

    # -- fenced writes ------------------------------------------------------------------

    def mine(self):
        """The row, as long as it is still running under this claim (a queryset)."""
        return self.model._base_manager.using(self.using).filter(
            pk=self.pk, status=RUNNING, claim_token=self.token
        )

    def _write(self, values: dict[str, Any]) -> int:
        connection = connections[self.using]
        names = tuple(values)
        params = [
            self.model._meta.get_field(name).get_db_prep_save(value, connection)
            for name, value in values.items()
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                _fenced_sql(self.model, self.using, names), [*params, self.pk, RUNNING, self.token]
            )
            return cursor.rowcount

    def _lose(self) -> ClaimLost:
        self.lost = True
        return ClaimLost(
            f"{self.label} is no longer claimed by this process: it was canceled, or recovery gave "
            "it to another after its lease lapsed."
        )

    def fence(self, **fields: Any) -> None:
        """Write ``fields`` and renew the lease if the claim still holds, else raise ClaimLost.

        Inside the transaction of the work's effects it makes them conditional on
        the claim: the row is locked until the commit, so recovery cannot take the
        work over in between, and a lost claim rolls the effects back.
        """
        self.step()
        self._renew(fields)

    def _renew(self, fields: dict[str, Any]) -> None:
        now = timezone.now()
        self.renewed_at = time.monotonic()
        if not self._write({**fields, "lease_expires_at": now + self.lease, "heartbeat_at": now}):
            raise self._lose()

    def renew(self) -> None:
        """Extend the lease (ClaimLost if the claim is gone); what the heartbeat thread calls."""
        self._renew({})

    def step(self) -> None:
        """The work reached a safe point: it is making progress (see ``STALL_LEASES``)."""
        self.stepped_at = time.monotonic()
        self.stalled = False

    def renew_due(self) -> bool:
        return not self.done and not self.lost and time.monotonic() - self.renewed_at >= self.renew_every

    def stalled_for(self) -> float:
        """Seconds since the work's last safe point, if longer than ``STALL_LEASES`` leases; else 0."""
        idle = time.monotonic() - self.stepped_at
        return idle if idle >= STALL_LEASES * self.lease.total_seconds() else 0.0

    def check(self) -> None:
        """At a safe point of the work: raise ClaimLost if the claim is gone; renew the lease when due."""
        self.step()
        if self.lost:
            raise self._lose()
        if self.renew_due():
            self.renew()

    def still_mine(self) -> bool:
        """Read the row: does this claim still hold it? (A cancel or a takeover makes it False.)"""
        if not self.lost and not self.mine().exists():
            self.lost = True
        return not self.lost

    def finish(self, status: str, **fields: Any) -> bool:
        """running -> ``status`` (with ``fields``) if the claim still holds; False if it does not."""
        values: dict[str, Any] = {"status": status, "finished_at": timezone.now(), "lease_expires_at": None}
        values.update(fields)
        if "error" in values:
            values["error"] = storable.text(values["error"])
        finished = bool(self._write(values))
        if finished:
            self.done = True
        else:
            self.lost = True
        return finished

    def release(self, *, run_after: datetime.datetime | None = None, refund_attempt: bool = False,
                **fields: Any) -> bool:  # fmt: skip
        """running -> queued (claimable again after ``run_after``); False if the claim is gone.

        ``refund_attempt``: this run does not count as an attempt (a pause, a stop).
        """
        values: dict[str, Any] = {
            "status": QUEUED,
            "claim_token": "",
            "pid": None,
            "host": "",
            "worker": "",
            "node_name": "",
            "lease_expires_at": None,
            "heartbeat_at": None,
            "run_after": run_after,
            **fields,
        }
        if refund_attempt:
            values["attempts"] = F("attempts") - 1
        released = bool(self.mine().update(**values))
        self.done = True
        if not released:
            self.lost = True
        return released

    # -- the work's lifetime ---------------------------------------------------------------

    def __enter__(self) -> Claim:
        if self.heartbeat:
            _renewer.add(self)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc is None:
                return False
            lost = connection_lost(exc, self.using)
            if self.done:
                if lost:  # did the finish commit? Ask once the database answers
                    wait_for_database(self.using)
                if not self._finish_rolled_back():
                    return False
            if lost:
                self._after_database_loss(exc)
                return True
            if isinstance(exc, ClaimLost):
                logger.warning("%s stopped: %s", self.label, exc)
                return True
            if isinstance(exc, Exception):
                self._end_after_error(exc)
                return True
            self._stop_before_done(exc)  # SystemExit, KeyboardInterrupt: the process is stopping
            return False
        finally:
            _renewer.remove(self)

    def _finish_rolled_back(self) -> bool:
        """After an error: was this claim's finish (or release) undone with its transaction?"""
        try:
            rolled_back = self.mine().exists()
        except DatabaseError:
            return False
        if rolled_back:
            self.done = False
        return rolled_back

    def _end_after_error(self, exc: BaseException) -> None:
        logger.error("%s: an error escaped its run", self.label, exc_info=exc)
        reason = f"{type(exc).__name__}: {exc}"
        try:
            if not self.finish(self.model.error_status, error=reason):
                logger.warning(
                    "%s was no longer this process's when its error was to be recorded", self.label
                )
        except DatabaseError:
            logger.exception("%s: could not record its error; recovery will end it", self.label)

    def _stop_before_done(self, exc: BaseException) -> None:
        """The process stops (a cold shutdown) before the work is done: apply the model's policy now."""
        try:
            self._by_policy(
                "this process stopped before it was done",
                f"Stopped before it was done: the process got {type(exc).__name__} (a cold shutdown).",
                self.model.abandoned_status,
            )
        except Exception:
            logger.exception("%s: could not release it while stopping; recovery will", self.label)

    def _after_database_loss(self, exc: BaseException) -> None:
        """The database went away under the work: once it answers again, the work is queued again
        (its policy retries) or ended with that reason; its committed effects stay, as after a stop."""
        wait = conf.WORKER_MODE_DATABASE_WAIT
        logger.warning("%s: the database connection was lost (%s); waiting up to %.0f s for it",
                       self.label, _first_line(exc), wait)  # fmt: skip
        if not wait_for_database(self.using, wait):
            logger.error("%s: the database did not answer within %.0f s; recovery takes the work over",
                         self.label, wait)  # fmt: skip
            return
        try:
            if self._by_policy(
                "its database connection was lost",
                f"The database connection was lost during the run: {_first_line(exc)}",
                self.model.error_status,
            ) is None:  # fmt: skip
                logger.warning("%s was no longer this process's when the database came back", self.label)
        except DatabaseError:
            logger.exception("%s: could not record the database outage; recovery will end it", self.label)

    def _by_policy(self, why: str, reason: str, status: str) -> bool | None:
        """Queue the work again now if its model's policy retries (refunding this attempt), else end
        it with ``status`` and ``reason``. True if queued again, False if ended, None if not ours."""
        policy, _ = self.model.recovery_policy()
        if policy == RETRY:
            if not self.release(refund_attempt=True):
                return None
            logger.warning("%s queued again: %s", self.label, why)
            self.model.for_dispatch(self.model._base_manager.using(self.using)).get(pk=self.pk).dispatch()
            return True
        if not self.finish(status, error=reason):
            return None
        logger.warning("%s %s: %s", self.label, status, reason)
        return False


# -- database outages ------------------------------------------------------------------------

#: SQLSTATE classes of PostgreSQL errors that mean the session ended, not the statement failed:
#: connection exceptions; admin/crash shutdown, "starting up" (a restarting server); the server's
#: idle-in-transaction and idle-session timeouts (a frozen owner's session was ended).
_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03", "57P05", "25P03")

#: When this process last failed to reach the database (time.monotonic()).
_unreachable_at = -math.inf


def connection_lost(exc: BaseException, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether ``exc`` is the database going away (down, restarting, unreachable) rather than an
    error of the work (a constraint, a deadlock, a statement timeout). PostgreSQL only: on other
    databases every error counts as the work's."""
    if not isinstance(exc, (OperationalError, InterfaceError)) or connections[using].vendor != "postgresql":
        return False
    state = getattr(exc.__cause__, "sqlstate", None)
    return state is None or state.startswith(_CONNECTION_SQLSTATES)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def database_answers(using: str = DEFAULT_DB_ALIAS) -> bool:
    """One ``SELECT 1`` on a working connection (a broken one is replaced); notes a failure, and
    an answer that took longer than a renewal interval: a partition does not fail a statement on an
    open connection, it holds it until the network is back, and owners could not renew meanwhile."""
    global _unreachable_at
    connection = connections[using]
    began = time.monotonic()
    try:
        if connection.connection is not None and not connection.is_usable():
            connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        _unreachable_at = time.monotonic()
        connection.close()
        return False
    answered = time.monotonic()
    if answered - began > renew_interval():
        _unreachable_at = answered
    return True


def wait_for_database(using: str = DEFAULT_DB_ALIAS, timeout: float | None = None) -> bool:
    """Wait until the database answers again, up to ``timeout`` seconds (WORKER_MODE_DATABASE_WAIT);
    False if it did not."""
    deadline = time.monotonic() + (conf.WORKER_MODE_DATABASE_WAIT if timeout is None else timeout)
    delay = 0.2
    while not database_answers(using):
        if time.monotonic() + delay > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    return True


def recently_unreachable() -> bool:
    """Whether this process failed to reach the database within the last lease: leases that lapsed
    meanwhile say nothing about their owners, who could not renew them either."""
    return time.monotonic() - _unreachable_at < lease_seconds()


def transaction_id(using: str = DEFAULT_DB_ALIAS) -> int | None:
    """PostgreSQL's id of the transaction in progress, taken just before it commits: if the answer
    to its COMMIT is lost with the connection, ``transaction_committed`` tells whether it committed.
    None outside a transaction and on other databases (where no loss is retried)."""
    connection = connections[using]
    if connection.vendor != "postgresql" or not connection.in_atomic_block:
        return None
    with connection.cursor() as cursor:
        # This commit must be durable when it returns, whatever the session says (pacing may relax
        # a background session's commits): an answer lost with the connection is asked about later,
        # and only a flushed commit keeps its transaction id from being handed out again by a
        # database that crashed meanwhile.
        cursor.execute("SELECT txid_current(), set_config('synchronous_commit', 'on', true)")
        return cursor.fetchone()[0]


def transaction_committed(txid: int, using: str = DEFAULT_DB_ALIAS, timeout: float | None = None) -> bool:
    """Whether transaction ``txid`` (``transaction_id``) committed, once the database answers again.

    While the server still runs it (it has not yet noticed the session is gone) this waits, up to
    ``timeout`` seconds (WORKER_MODE_DATABASE_WAIT plus a lease: a session idle in its transaction
    ends after a lease); then an OperationalError says that nothing can be told yet."""
    limit = conf.WORKER_MODE_DATABASE_WAIT + lease_seconds() if timeout is None else timeout
    deadline = time.monotonic() + limit
    while True:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT txid_status(%s)", [txid])
            status = cursor.fetchone()[0]
        if status != "in progress":
            return status == "committed"
        if time.monotonic() > deadline:
            raise OperationalError(
                f"Transaction {txid} is still in progress on the database after its connection was "
                f"lost ({limit:.0f} s): whether it commits cannot be told yet."
            )
        time.sleep(0.5)


def retry_after_database_loss(
    write: Callable[[], T],
    *,
    using: str = DEFAULT_DB_ALIAS,
    attempts: int = 3,
    committed: Callable[[], T | None] | None = None,
) -> T:
    """Run ``write`` (a transaction of its own, e.g. one batch of an import); if the database
    connection is lost meanwhile, wait for the database and run it again, up to ``attempts`` times.
    Inside an outer transaction nothing is retried (that transaction is gone too).

    A lost connection does not tell whether the COMMIT reached the server (only its answer may be
    lost): ``committed()``, asked once the database answers, returns what the lost attempt
    committed (then it is not written again), or None if it did not commit (``transaction_id``
    and ``transaction_committed`` tell). Without it, ``write`` must be safe to run twice."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except DatabaseError as exc:
            if attempt == attempts or not connection_lost(exc, using) or connections[using].in_atomic_block:
                raise
            logger.warning("The database connection was lost (%s); written again once it answers",
                           _first_line(exc))  # fmt: skip
            if not wait_for_database(using):
                raise
            if committed is not None:
                done = committed()
                if done is not None:
                    logger.warning("The lost transaction had committed all the same: not written again")
                    return done
    raise AssertionError("unreachable")


class _Renewer:
    """One thread per process renews the leases of its claims that are due (usually none or one)."""

    TICK = 1.0

    def __init__(self) -> None:
        self._claims: set[Claim] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connected = False

    def add(self, item: Claim) -> None:
        with self._lock:
            self._claims.add(item)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="worker-mode-claims", daemon=True)
                self._thread.start()

    def remove(self, item: Claim) -> None:
        with self._lock:
            self._claims.discard(item)

    def active(self) -> list[Claim]:
        with self._lock:
            return list(self._claims)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            with self._lock:
                due = [item for item in self._claims if item.renew_due()]
                idle = not self._claims
            for item in due:
                stalled = item.stalled_for()
                if stalled:
                    if not item.stalled:
                        item.stalled = True
                        logger.error(
                            "%s has reached no step for %.0f s: its lease is no longer renewed, so "
                            "recovery takes it over when it lapses",
                            item.label,
                            stalled,
                        )
                    continue
                self._connected = True
                try:
                    item.renew()
                except ClaimLost as exc:
                    logger.warning("%s; it stops at its next step", exc)
                except DatabaseError as exc:
                    logger.warning("Could not renew the lease of %s (will retry): %s", item.label, exc)
                    connections[item.using].close()
                except Exception:
                    logger.exception("Could not renew the lease of %s", item.label)
            if idle and self._connected:
                connections.close_all()  # this thread's connections only
                self._connected = False
            elif self._connected:
                for connection in connections.all(initialized_only=True):
                    connection.close_if_unusable_or_obsolete()

    def reset(self) -> None:
        """In a forked child: the parent's thread does not exist here, nor do its claims."""
        self.__init__()  # type: ignore[misc]


_renewer = _Renewer()
os.register_at_fork(after_in_child=_renewer.reset)


def active_claims() -> list[Claim]:
    """The claims this process holds now with a heartbeat (for diagnostics)."""
    return _renewer.active()


# -- recovery -----------------------------------------------------------------------------


def work_models(key: str | None = None) -> list[type[ClaimedWork]]:
    """Installed ClaimedWork models (of service ``key``)."""
    return [
        model
        for model in apps.get_models()
        if issubclass(model, ClaimedWork) and (key is None or model.service_key == key)
    ]


def live_nodes() -> set[str] | None:
    """Names of the nodes with a live presence entry; None when Redis cannot tell."""
    from .presence import live_entries

    try:
        return {entry["node"] for entry in live_entries()}
    except (RedisError, ValueError, KeyError) as exc:
        logger.warning("Cannot read the cluster's presence (%s); judging claims by their leases only", exc)
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clock(value: datetime.datetime | None) -> str:
    return timezone.localtime(value).strftime("%H:%M:%S") if value else "never"


def why_abandoned(
    row: dict[str, Any],
    now: datetime.datetime,
    nodes: Callable[[], set[str] | None] = live_nodes,
    *,
    trust_leases: bool = True,
) -> str | None:
    """Why the owner of running ``row`` is gone, or None while it may be alive.

    ``nodes()`` gives the names of the nodes with presence (``live_nodes``); it is
    called only when the lease and the process id leave the question open. Without
    ``trust_leases`` (the database was just unreachable) a lapsed lease proves nothing, nor
    does a heartbeat that stopped: owners could not write either (a presence that lapsed
    meanwhile is the same partition's, and comes back before their next renewal).
    """
    lease = row["lease_expires_at"]
    if trust_leases and (lease is None or lease <= now):
        return f"its lease lapsed at {_clock(lease)} (last heartbeat {_clock(row['heartbeat_at'])})"
    same_node = row["node_name"] == conf.WORKER_MODE_NODE_NAME and row["host"] == process_namespace()
    if same_node and row["pid"] and not _pid_alive(row["pid"]):
        return f"its process (pid {row['pid']}) on this node is gone"
    heartbeat = row["heartbeat_at"] or row["started_at"]
    if trust_leases and heartbeat is not None and (now - heartbeat).total_seconds() > 2 * renew_interval():
        live = nodes()
        if live is not None and row["node_name"] not in live:
            return (
                f"its node {row['node_name']!r} has no live presence in the cluster and it stopped "
                f"renewing (last heartbeat {_clock(heartbeat)})"
            )
    return None


def recover(model: type[ClaimedWork], now: datetime.datetime | None = None) -> dict[str, int]:
    """Queue again or end the running work of ``model`` whose owner is gone; counts of each."""
    now = now or timezone.now()
    policy, max_attempts = model.recovery_policy()
    columns = (
        "pk", "node_name", "worker", "pid", "host", "claim_token", "attempts", "lease_expires_at",
        "heartbeat_at", "started_at", *model.recovery_columns,
    )  # fmt: skip
    counts = {"retried": 0, "failed": 0}
    read: list[set[str] | None] = []

    def nodes() -> set[str] | None:  # read once per sweep, and only if a row needs it
        if not read:
            read.append(live_nodes())
        return read[0]

    trust_leases = not recently_unreachable()
    for row in model._base_manager.filter(status=RUNNING).values(*columns):
        reason = why_abandoned(row, now, nodes, trust_leases=trust_leases)
        if reason is None:
            continue
        if policy == RETRY and row["attempts"] < max_attempts and model.may_retry(row):
            counts["retried"] += _retry(model, row, reason, max_attempts)
        else:
            if policy == RETRY and row["attempts"] >= max_attempts:
                reason += f"; gave up after {row['attempts']} attempt(s) ({model.recovery_settings()[1]})"
            counts["failed"] += _abandon(model, row, reason, now)
    return counts


def _owned(model: type[ClaimedWork], row: dict[str, Any]):
    return model._base_manager.filter(pk=row["pk"], status=RUNNING, claim_token=row["claim_token"])


def _lock_owned(model: type[ClaimedWork], row: dict[str, Any]) -> bool:
    """Lock the row if it is still held by the claim recovery read; False if it is not, or if the
    owner holds it locked (it is committing, or frozen mid-transaction until its session ends):
    the sweep must never wait on a lost owner, the next one looks again."""
    return (
        _owned(model, row).select_for_update(skip_locked=True).values_list("pk", flat=True).first()
        is not None
    )


def _retry(model: type[ClaimedWork], row: dict[str, Any], reason: str, max_attempts: int) -> int:
    from django.db import transaction

    with transaction.atomic(using=router.db_for_write(model)):
        if not _lock_owned(model, row):
            return 0
        return _requeue(model, row, reason, max_attempts)


def _requeue(model: type[ClaimedWork], row: dict[str, Any], reason: str, max_attempts: int) -> int:
    updated = _owned(model, row).update(
        status=QUEUED,
        claim_token="",
        pid=None,
        host="",
        worker="",
        node_name="",
        lease_expires_at=None,
        heartbeat_at=None,
        **model.retry_fields(row),
    )
    if not updated:
        return 0
    owner = row["worker"] or row["node_name"]
    logger.warning(
        "%s %s queued again (attempt %d of %d done): %s (%s)",
        model._meta.label, row["pk"], row["attempts"], max_attempts, reason, owner,
    )  # fmt: skip
    model.for_dispatch(model._base_manager.all()).get(pk=row["pk"]).dispatch()
    return 1


def _abandon(model: type[ClaimedWork], row: dict[str, Any], reason: str, now: datetime.datetime) -> int:
    from django.db import transaction

    text = storable.text(f"Abandoned: {reason} (worker {row['worker'] or '?'}, attempt {row['attempts']}).")
    values: dict[str, Any] = {
        "status": model.abandoned_status,
        "error": text,
        "finished_at": now,
        "lease_expires_at": None,
        "claim_token": "",
    }
    values.update(model.abandon_fields(row, now))
    with transaction.atomic(using=router.db_for_write(model)):
        if not _lock_owned(model, row) or not _owned(model, row).update(**values):
            return 0
        model.abandoned(row["pk"], text, now)
    logger.error("%s %s %s: %s", model._meta.label, row["pk"], values["status"], text)
    return 1


def requeue_lost(model: type[ClaimedWork], now: datetime.datetime | None = None, *,
                 grace: float | None = None, batch: int = 500) -> int:  # fmt: skip
    """Enqueue again the queued work of ``model`` older than ``grace`` whose message is gone."""
    from .queues import requeue_lost as requeue

    now = now or timezone.now()
    grace = conf.WORKER_MODE_QUEUED_GRACE if grace is None else grace
    waiting = model.for_dispatch(
        model._base_manager.filter(
            status=QUEUED, created_at__lte=now - datetime.timedelta(seconds=grace)
        ).filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
    )
    return requeue(model.service_key, waiting, lambda row: row.dispatch(), batch=batch, stale_after=grace)


def dispatch_due(model: type[ClaimedWork], now: datetime.datetime | None = None, *, batch: int = 500) -> int:
    """Enqueue queued work whose ``run_after`` has come (a finished delay); returns how many."""
    now = now or timezone.now()
    dispatched = 0
    due = model.for_dispatch(model._base_manager.filter(status=QUEUED, run_after__lte=now))
    for row in due.order_by("run_after")[:batch]:
        # Clearing run_after claims the dispatch, so two nodes never both enqueue it.
        if model._base_manager.filter(pk=row.pk, status=QUEUED, run_after=row.run_after).update(
            run_after=None
        ):
            row.dispatch()
            dispatched += 1
    return dispatched


# -- the periodic tasks of the nodes serving a key -------------------------------------------


def sweep(key: str) -> dict[str, int]:
    """Recover the claimed work of every model of service ``key`` (a periodic task)."""
    totals = {"retried": 0, "failed": 0}
    for model in work_models(key):
        for name, count in recover(model).items():
            totals[name] += count
    return totals


def sweep_lost(key: str) -> int:
    """Enqueue again the queued work of ``key`` whose messages are gone (a periodic task)."""
    total = 0
    for model in work_models(key):
        try:
            count = requeue_lost(model)
        except RedisError as exc:
            logger.warning("Lost-message check of %s skipped: Redis is unavailable (%s)", key, exc)
            return total
        if count:
            logger.warning(
                "%s: %d queued row(s) had lost their message; enqueued again", model._meta.label, count
            )
        total += count
    return total


def periodic_tasks(keys: Iterable[str]):
    """The recovery tasks worker_mode runs for ``keys`` that have claimed-work models."""
    from .registry import PeriodicTask

    tasks = []
    for key in keys:
        if work_models(key):
            tasks.append(
                PeriodicTask(
                    "worker_mode.claims.sweep", conf.WORKER_MODE_RECOVERY_INTERVAL, (key,), lock_optional=True
                )
            )
            tasks.append(
                PeriodicTask(
                    "worker_mode.claims.sweep_lost",
                    conf.WORKER_MODE_REQUEUE_INTERVAL,
                    (key,),
                    # Queued work too young to judge at start is judged as soon as it is old enough.
                    first_repeat=conf.WORKER_MODE_QUEUED_GRACE + 1,
                )
            )
    return tasks
