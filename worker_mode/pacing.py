"""Background work yields the database to requests while requests are waiting for it.

Splitting gives the request nodes their own CPUs, but not their own database: an import's
COPY and the executions' writes keep the shared PostgreSQL busy, and the pages that query it
wait. Pacing shares the database between the two, as PostgreSQL's cost-based vacuum delay does
between maintenance and queries:

- **Pressure.** Every request-serving process records its requests (``WorkerModeMiddleware``
  appends their times to a deque, well under a microsecond per request). A daemon thread turns
  them into the share of time a request was in flight and their latency against the process's
  own idle baseline per view (learned from requests served while no background work ran), and
  publishes the level, 0 to 1, beside the node's presence in Redis (``REDIS_URL``) every ``PUBLISH_INTERVAL``
  while there is traffic; an entry lapses ``PRESSURE_TTL`` after its last publication.
  ``level = busy share x (1 + latency inflation / LATENCY_SPAN)``, capped at 1.
- **Pace.** Every rq job of a served service runs under ``job()``: the database time it spends
  (each SQL statement, and ``measure()`` blocks such as a COPY) is charged, after the job and at
  each ``checkpoint()`` a long job calls (an import batch, an export chunk), to one budget shared by
  every background process of the cluster: ``WORKER_MODE_PACING_BUDGET`` seconds of database time
  per second at full pressure, ``budget / pressure`` at lower pressure. A process whose charge runs
  ahead of the budget sleeps at the checkpoint (outside any transaction) until it is paid; with no
  pressure nothing is charged and nobody sleeps. ``WORKER_MODE_PACING`` weights a service (its
  database time costs ``1 / weight``) or opts it out (weight 0).
- **Commits.** Optionally (``WORKER_MODE_PACING_ASYNC_COMMIT``, per service key), a job that starts
  under pressure commits without waiting for PostgreSQL's WAL flush (``RelaxedCommits``): on a
  database crash the last moments of its commits may be lost and its work is run again by
  recovery, as after a lost worker. Off by default.
- **Visible.** Each paced process records its pace (the share of its time it works rather than
  yields) for the Cluster page and ``/metrics``; an async task's progress carries it.

Periodic tasks (``worker_mode.periodic``: recovery sweeps, schedules) are not paced: they are
short, and recovering a lost node's work must not wait behind request pressure.

Redis is consulted at most every ``SYNC_INTERVAL`` while there is no pressure; if it does not
answer, background work runs unpaced (requests are never slowed by pacing's own failures).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import numbers
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.core.signals import setting_changed
from redis import RedisError

from .conf import conf

logger = logging.getLogger(__name__)

PRESSURE_KEY = "worker_mode:pressure"  # member -> "level expires_ms" (Redis clock)
BUDGET_KEY = "worker_mode:pacing"  # tat (the shared budget's clock, ms), active (ms)
PACE_KEY = "worker_mode:pace"  # member -> "service pace expires_ms"

#: Seconds between a request process's publications of its pressure (while there is traffic).
PUBLISH_INTERVAL = 0.25
#: Levels below this are published as none (background work then skips Redis between looks).
PRESSURE_FLOOR = 0.05
#: Seconds a published pressure holds without a newer one.
PRESSURE_TTL = 1.0
#: An entry expiring further ahead than this (seconds) was written under a clock that has since
#: stepped back (Redis restarted or failed over to another host), or by no request process: dropped,
#: or it would hold its pressure for as long as the step, past its writer's death or freeze.
PRESSURE_HORIZON = PRESSURE_TTL
#: Latency inflation over the idle baseline that doubles a busy share's pressure.
LATENCY_SPAN = 0.25
#: Weight of a new idle sample in a view's baseline (an exponential moving average).
BASELINE_ALPHA = 0.05
#: Views whose baselines a process keeps (the first ones seen; the rest count by busy share only).
MAX_BASELINES = 500
#: Seconds between a background process's look at the pressure while there is none.
SYNC_INTERVAL = 0.25
#: Longest single sleep before the pressure is looked at again.
WAIT_SLICE = 0.25
#: Longest yield at one checkpoint: the work goes on after it whatever the budget says.
MAX_WAIT = 10.0
#: Database time (seconds) a process may run ahead of the budget before it yields.
BURST = 0.005
#: Seconds background work counts as active (for the baselines) after its last charge.
ACTIVE_HOLD = 1.0
#: Seconds a process's published pace holds without a newer one.
PACE_TTL = 3.0
#: As PRESSURE_HORIZON, for the published paces.
PACE_HORIZON = PACE_TTL
#: While yielding, a long job's units (import batches) aim at this many seconds of writing...
UNIT_SECONDS = 0.02
#: ...with at least this many rows.
MIN_UNIT = 50
#: Seconds of recent work and yielding a process's pace is computed over.
PACE_MEMORY = 5.0
#: Seconds pacing stays off after Redis failed to answer.
RETRY_AFTER = 5.0

# KEYS: pressure, budget, pace. ARGV: member, service, cost (ms, weighted), budget (ms per ms at full
# pressure), burst (ms), pace, active hold (ms), pace ttl (ms), pressure horizon (ms), longest wait (ms).
# Returns {wait ms, pressure} as strings (Lua numbers would be truncated to integers).
_PACE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local pressure = 0
local horizon = now + tonumber(ARGV[9])
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local level, expires = string.match(entries[i + 1], '^(%S+) (%S+)$')
  level = tonumber(level)
  expires = tonumber(expires)
  -- only what a request process writes counts: a level of 0 to 1 (tonumber takes 'nan' and 'inf')
  if not level or not expires or expires < now or not (expires <= horizon)
     or not (level >= 0 and level <= 1) then
    redis.call('HDEL', KEYS[1], entries[i])
  elseif level > pressure then
    pressure = level
  end
end
redis.call('HSET', KEYS[2], 'active', tostring(now + tonumber(ARGV[7])))
local budget = tonumber(ARGV[4])
if pressure <= 0 or budget <= 0 then
  redis.call('HDEL', KEYS[2], 'tat')
  redis.call('HDEL', KEYS[3], ARGV[1])
  return {'0', '0'}
end
local rate = budget / pressure
local tat = tonumber(redis.call('HGET', KEYS[2], 'tat') or '0') or 0
-- the clock only runs ahead of now by finite amounts: 'nan' or 'inf' (from a charge or anyone) resets it
if not (tat >= now and tat < math.huge) then tat = now end
local cost = tonumber(ARGV[3]) or 0
if not (cost >= 0) then cost = 0 elseif cost > 3600000 then cost = 3600000 end
tat = tat + cost / rate
-- the budget's debt is at most one checkpoint's longest yield: beyond it, work goes on whatever the
-- budget says, so a larger debt (a huge charge, a clock set ahead by hand or a clock stepped back)
-- would only make every process of the cluster yield that longest wait at every checkpoint
local limit = now + tonumber(ARGV[10]) + tonumber(ARGV[5]) / rate
if tat > limit then tat = limit end
redis.call('HSET', KEYS[2], 'tat', tostring(tat))
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ' ' .. ARGV[6] .. ' ' .. tostring(now + tonumber(ARGV[8])))
local wait = tat - now - tonumber(ARGV[5]) / rate
if wait < 0 then wait = 0 end
return {tostring(wait), tostring(pressure)}
"""

# KEYS: pressure, budget. ARGV: member, level, ttl (ms). Returns 1 while background work is active.
_PRESSURE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. tostring(now + tonumber(ARGV[3])))
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local active = tonumber(redis.call('HGET', KEYS[2], 'active') or '0') or 0
if active > now then return 1 end
return 0
"""

# KEYS: pressure, pace. ARGV: pressure horizon (ms), pace horizon (ms).
# Returns {now ms, {pressure fields and values...}, {pace fields and values...}};
# removes the pace entries that lapsed (a process that ended under pressure leaves one behind).
_REPORT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local pressure = redis.call('HGETALL', KEYS[1])
for i = 1, #pressure, 2 do
  local expires = tonumber(string.match(pressure[i + 1], '^%S+ (%S+)$'))
  if expires and (expires < now or not (expires <= now + tonumber(ARGV[1]))) then
    redis.call('HDEL', KEYS[1], pressure[i])
  end
end
local live = {}
local paces = redis.call('HGETALL', KEYS[2])
for i = 1, #paces, 2 do
  local expires = tonumber(string.match(paces[i + 1], '(%S+)$'))
  if not expires or expires < now or not (expires <= now + tonumber(ARGV[2])) then
    redis.call('HDEL', KEYS[2], paces[i])
  else
    table.insert(live, paces[i])
    table.insert(live, paces[i + 1])
  end
end
return {tostring(now), redis.call('HGETALL', KEYS[1]), live}
"""


#: Seconds pacing waits for Redis to connect or answer (on its own connection): a Redis that hangs
#: costs a background job at most this per look, and a publishing thread no more.
SOCKET_TIMEOUT = 0.5

_connections: dict[str, Any] = {}


def _connection():
    """Pacing's own connection to ``REDIS_URL`` (one per process), with short timeouts."""
    from redis import Redis

    url = conf.REDIS_URL
    connection = _connections.get(url)
    if connection is None:
        connection = _connections[url] = Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
        )
    return connection


_scripts: dict[tuple[str, int], Any] = {}


def _script(source: str) -> Any:
    """``source`` registered on the presence Redis (EVALSHA, loaded again if Redis lost it)."""
    connection = _connection()
    script = _scripts.get((source, id(connection)))
    if script is None:
        script = _scripts[(source, id(connection))] = connection.register_script(source)
    return script


def member() -> str:
    return f"{conf.WORKER_MODE_NODE_NAME}:{os.getpid()}"


def budget() -> float:
    """Seconds of background database time per second at full pressure (0: pacing is off)."""
    value = conf.WORKER_MODE_PACING_BUDGET
    return float(value) if _is_number(value) and value > 0 else 0.0


@functools.cache
def enabled() -> bool:
    """Pacing is on (``budget() > 0``): read once per process, on the request path (a setting read
    costs more than the counting itself); ``override_settings`` clears it."""
    return budget() > 0


def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("WORKER_MODE_PACING"):
        enabled.cache_clear()


setting_changed.connect(_setting_changed)


def weight_of(service: str) -> float:
    weights = conf.WORKER_MODE_PACING
    value = weights.get(service, 1.0) if isinstance(weights, dict) else 1.0
    return float(value) if _is_number(value) and value >= 0 else 1.0


def relaxed_keys() -> tuple[str, ...]:
    """Service keys whose jobs commit without waiting for the WAL flush while under pressure."""
    value = conf.WORKER_MODE_PACING_ASYNC_COMMIT
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def _is_number(value: Any) -> bool:
    """A finite real number (as checks E017/E018 accept: ``Fraction`` too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# -- the request side ---------------------------------------------------------------------------


class Pressure:
    """This request process's load: busy share and latency over the idle baseline, published to Redis.

    A request costs only an append to a deque (``record``); the publishing thread does the rest.
    """

    def __init__(self) -> None:
        #: (started, ended, view) of each request served, drained by ``sample`` (bounded: a dead
        #: thread cannot make it grow without end).
        self.requests: collections.deque[tuple[float, float, str]] = collections.deque(maxlen=100_000)
        #: Requests in flight: token -> start. A request stuck in the database still makes pressure.
        self.active: dict[int, float] = {}
        self._window_start = time.monotonic()
        self.baselines: dict[str, float] = {}
        #: Whether background work ran lately (the last publication's answer): requests served
        #: meanwhile do not teach the baseline. Unknown until the first answer: assume it did.
        self.background_active = True
        self.level = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failing_until = 0.0
        self._thread_retry_at = 0.0

    def begin(self, token: int, started: float) -> None:
        """Request ``token`` (e.g. ``id(request)``) starts at ``started`` (monotonic)."""
        self.active[token] = started

    def record(self, started: float, ended: float, view: str, token: int | None = None) -> None:
        """One request served (monotonic times). WorkerModeMiddleware does the same inline."""
        if token is not None:
            self.active.pop(token, None)
        self.requests.append((started, ended, view))
        if self._thread is None:
            self._start_thread()

    def sample(self) -> float:
        """The level over the time since the last sample (0 to 1), and a new window."""
        now = time.monotonic()
        start, self._window_start = self._window_start, now
        served: list[tuple[float, float, str | None]] = []
        while self.requests:
            served.append(self.requests.popleft())
        # Requests still in flight count as busy up to now (their latency is not known yet).
        served += [(began, now, None) for began in list(self.active.values())]
        if not served:
            return 0.0
        busy, covered = 0.0, start  # the union of the requests' times within the window
        ratio_sum, ratio_count = 0.0, 0
        for began, ended, view in sorted(served, key=lambda request: request[0]):
            seconds = ended - began
            clipped = max(began, covered)
            if ended > clipped:
                busy += ended - clipped
                covered = ended
            if view is None:
                continue
            base = self.baselines.get(view)
            if not self.background_active:
                if base is not None:
                    self.baselines[view] = base + BASELINE_ALPHA * (seconds - base)
                elif len(self.baselines) < MAX_BASELINES:
                    self.baselines[view] = seconds
            if base:
                ratio_sum += seconds / base
                ratio_count += 1
        share = min(busy / max(now - start, 1e-6), 1.0)
        ratio = ratio_sum / ratio_count if ratio_count else 1.0
        return min(1.0, share * (1 + max(0.0, ratio - 1) / LATENCY_SPAN))

    def publish(self) -> None:
        level = self.sample()
        if level < PRESSURE_FLOOR:
            level = 0.0  # a page now and then: the budget would be unlimited anyway
        if level <= 0 and self.level <= 0:
            return  # nothing to say, and nothing said that needs taking back
        now = time.monotonic()
        if now < self._failing_until:
            return
        try:
            active = _script(_PRESSURE_SCRIPT)(keys=[PRESSURE_KEY, BUDGET_KEY],
                            args=[member(), f"{level:.4f}", int(PRESSURE_TTL * 1000)])  # fmt: skip
        except RedisError as exc:
            if not self._failing_until:  # once per outage
                logger.warning(
                    "Could not publish request pressure (retrying every %.0f s): %s", RETRY_AFTER, exc
                )
            self._failing_until = now + RETRY_AFTER
            return
        if self._failing_until:
            logger.info("Request pressure is published again")
            self._failing_until = 0.0
        self.level = level
        self.background_active = bool(active)

    def _run(self) -> None:
        while True:
            time.sleep(PUBLISH_INTERVAL)
            try:
                self.publish()
            except Exception:  # never let the thread die: pressure would silently stop
                logger.exception("Publishing request pressure failed")

    def _start_thread(self) -> None:
        """Start the publishing thread; never raises (it runs after every request). A process that
        cannot start a thread (at its limit) tries again ``RETRY_AFTER`` later, saying so once."""
        now = time.monotonic()
        with self._lock:
            if self._thread is not None or now < self._thread_retry_at:
                return
            thread = threading.Thread(target=self._run, name="worker-mode-pressure", daemon=True)
            self._thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread"
            if not self._thread_retry_at:
                logger.warning("Could not start publishing request pressure (retrying every %.0f s): %s",
                               RETRY_AFTER, exc)  # fmt: skip
            self._thread_retry_at = now + RETRY_AFTER
            self._thread = None


_pressure: Pressure | None = None


def request_pressure() -> Pressure:
    """This process's ``Pressure`` (one per process; a forked child starts its own)."""
    return _pressure or _new_pressure()


def _new_pressure() -> Pressure:
    global _pressure
    _pressure = Pressure()
    return _pressure


# -- the background side ------------------------------------------------------------------------


class Meter:
    """Database time of this process's background work: SQL statements (as an execute wrapper) and
    ``measure()`` blocks; nested measurements count once."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._started = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        if self._depth == 0:
            self._started = time.perf_counter()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.seconds += time.perf_counter() - self._started

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        with self.measure():
            return execute(sql, params, many, context)

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class RelaxedCommits:
    """While a job of a key in ``WORKER_MODE_PACING_ASYNC_COMMIT`` runs under pressure, its PostgreSQL
    sessions commit without waiting for the WAL flush (``synchronous_commit = off``): the requests'
    commits no longer queue behind a disk flush per background transaction. Set (or reset) before a
    connection's first statement of a job, only when the wanted state changes."""

    def __init__(self) -> None:
        self.wanted = False
        self._relaxed: set[int] = set()  # raw connections set to off, or possibly off (ids)
        self._unsettled: set[int] = set()  # of those, the ones whose last change a rollback may undo

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        connection = context["connection"]
        raw = connection.connection
        if connection.vendor == "postgresql" and raw is not None:
            key = id(raw)
            if (key in self._relaxed) != self.wanted and (key not in self._unsettled or _idle(raw)):
                statement = "SET synchronous_commit TO off" if self.wanted else "RESET synchronous_commit"
                with connection.wrap_database_errors:
                    raw.execute(statement)
                if raw.autocommit:
                    (self._relaxed.add if self.wanted else self._relaxed.discard)(key)
                    self._unsettled.discard(key)
                else:
                    # Inside a transaction, whose rollback would undo it: counted as possibly off (a
                    # RESET is sent again at the next transaction's start) until set outside one.
                    self._relaxed.add(key)
                    self._unsettled.add(key)
        return execute(sql, params, many, context)


def _idle(raw: Any) -> bool:
    """The raw psycopg connection is between transactions."""
    from psycopg.pq import TransactionStatus

    return raw.info.transaction_status == TransactionStatus.IDLE


class Pacer:
    """Charges this process's background database time to the shared budget and yields when due."""

    def __init__(self) -> None:
        self.meter = Meter()
        self.commits = RelaxedCommits()
        self.service: str | None = None
        self.weight = 1.0
        self.pressure = 0.0
        #: The share of its time this process worked rather than yielded, lately (1: full speed).
        self.pace = 1.0
        self.yielding = False
        self._pending = 0.0
        self._synced_at = -math.inf
        self._work_since = time.monotonic()
        self._worked = self._waited = 0.0  # decaying sums behind ``pace``
        self._failing_until = 0.0
        self._outage = False

    @contextlib.contextmanager
    def job(self, service: str) -> Iterator[None]:
        """Run one job of ``service`` under pacing (the worker classes do this for every rq job)."""
        from django.db import connections

        previous, previous_weight, previous_wanted = self.service, self.weight, self.commits.wanted
        self.service, self.weight = service, weight_of(service)
        # Only a pressure looked at lately counts: after an idle spell the last look may be hours old.
        recent = time.monotonic() - self._synced_at <= SYNC_INTERVAL + PRESSURE_TTL
        self.commits.wanted = recent and self.pressure > 0 and budget() > 0 and service in relaxed_keys()
        try:
            with contextlib.ExitStack() as stack:
                for connection in connections.all():
                    stack.enter_context(connection.execute_wrapper(self.meter))
                    stack.enter_context(connection.execute_wrapper(self.commits))
                yield
        finally:
            try:
                self.checkpoint()
            finally:
                # A nested job hands the outer one back its own commits: a listed key's job inside an
                # unlisted one must not leave the rest of the outer job relaxed (nor the reverse).
                self.service, self.weight = previous, previous_weight
                self.commits.wanted = previous_wanted

    def checkpoint(self) -> float:
        """Charge the database time spent since the last checkpoint; yield if the budget says so.
        Returns the seconds yielded. Call it outside transactions; outside a job it does nothing."""
        if self.service is None:
            return 0.0
        cost = self.meter.take()
        share = budget()
        if self.weight <= 0 or share <= 0:
            return 0.0
        self._pending += cost / self.weight
        now = time.monotonic()
        if now < self._failing_until or (self.pressure <= 0 and now - self._synced_at < SYNC_INTERVAL):
            return 0.0
        wait = self._sync(share)
        if wait > 0 and _in_transaction():
            # A sleep here would hold the transaction's locks (and end the session after a lease's
            # idle_in_transaction_session_timeout): charged, but the yield waits for a checkpoint outside.
            logger.debug("Pacing checkpoint inside a transaction: not yielding here")
            wait = 0.0
        self._account(max(now - self._work_since, 0.0), 0.0)
        waited = 0.0
        deadline = now + MAX_WAIT
        while wait > 0 and time.monotonic() < deadline:
            self.yielding = True
            step = min(wait, WAIT_SLICE, deadline - time.monotonic())
            if step > 0:
                time.sleep(step)
                waited += step
                self._account(0.0, step)  # the pace published at the next look says so
            wait = self._sync(share)
        self.yielding = waited > 0
        self._work_since = time.monotonic()
        return waited

    def _account(self, worked: float, waited: float) -> None:
        """``pace``: worked / (worked + yielded) over the last ``PACE_MEMORY`` seconds or so."""
        if self.pressure <= 0:
            self._worked = self._waited = 0.0
            self.pace = 1.0
            return
        keep = math.exp(-(worked + waited) / PACE_MEMORY)
        self._worked = self._worked * keep + worked
        self._waited = self._waited * keep + waited
        total = self._worked + self._waited
        self.pace = self._worked / total if total > 0 else 1.0

    def _sync(self, share: float) -> float:
        """Charge what is pending; the seconds to yield (0 when Redis does not answer)."""
        try:
            wait, pressure = _script(_PACE_SCRIPT)(
                keys=[PRESSURE_KEY, BUDGET_KEY, PACE_KEY],
                args=[member(), self.service, f"{self._pending * 1000:.3f}", repr(share),
                      f"{BURST * 1000:.3f}", f"{self.pace:.3f}", int(ACTIVE_HOLD * 1000),
                      int(PACE_TTL * 1000), int(PRESSURE_HORIZON * 1000),
                      int(MAX_WAIT * 1000)],
            )  # fmt: skip
        except RedisError as exc:
            if not self._outage:  # once per outage
                logger.warning("Pacing is off while Redis does not answer (trying every %.0f s): %s",
                               RETRY_AFTER, exc)  # fmt: skip
            self._outage = True
            self._failing_until = time.monotonic() + RETRY_AFTER
            self._pending, self.pressure = 0.0, 0.0
            return 0.0
        if self._outage:
            logger.info("Pacing works again: Redis answers")
            self._outage = False
        self._pending = 0.0
        self._synced_at = time.monotonic()
        self.pressure = float(pressure)
        return float(wait) / 1000


def _in_transaction() -> bool:
    from django.db import connections

    # An atomic block, or a transaction opened with set_autocommit(False) (no atomic block shows it).
    return any(
        connection.in_atomic_block or (connection.connection is not None and not connection.get_autocommit())
        for connection in connections.all(initialized_only=True)
    )


_pacer: Pacer | None = None


def pacer() -> Pacer:
    """This process's ``Pacer`` (one per process; a forked child starts its own)."""
    global _pacer
    if _pacer is None:
        _pacer = Pacer()
    return _pacer


def job(service: str) -> contextlib.AbstractContextManager[None]:
    """Run a unit of ``service``'s background work under pacing (rq jobs of worker nodes already do)."""
    return pacer().job(service)


def checkpoint() -> float:
    """A long job's safe point outside transactions (an import batch, an export chunk): charge its
    database time so far and yield if the budget says so. Seconds yielded; 0 outside a job."""
    return pacer().checkpoint()


def measure() -> contextlib.AbstractContextManager[None]:
    """Count a block as database time (for database work no SQL statement shows, e.g. a COPY)."""
    return pacer().meter.measure()


def unit_size(size: int, seconds: float, largest: int) -> int:
    """The size of a long job's next unit (rows of a batch): ``largest`` at full speed; while the
    process yields to requests, the size whose write takes about ``UNIT_SECONDS`` (as GitLab's
    batched migrations aim at a duration), from the last unit's ``size`` and ``seconds``. Short
    units keep each background write's share of the database, and of a WAL flush, small."""
    current = pacer()
    if current.service is None or current.pressure <= 0 or budget() <= 0 or current.weight <= 0:
        return largest
    wanted = size * UNIT_SECONDS / max(seconds, 1e-6)
    return int(min(largest, max(MIN_UNIT, wanted)))


def current_pace() -> float | None:
    """This process's pace while it yields (0 to 1), else None (full speed)."""
    current = pacer()
    return round(current.pace, 3) if current.pressure > 0 and current.pace < 1 else None


def _forget() -> None:
    global _pacer, _pressure
    _pacer = _pressure = None
    _connections.clear()
    _scripts.clear()


os.register_at_fork(after_in_child=_forget)


# -- what the Cluster page and /metrics show -----------------------------------------------------


def report() -> dict[str, Any]:
    """Live pressure per request node and pace per service: ``{"pressure": {node: level},
    "services": {key: {"pace": mean, "yielding": processes}}}`` (raises RedisError)."""
    raw_now, raw_pressure, raw_paces = _script(_REPORT_SCRIPT)(
        keys=[PRESSURE_KEY, PACE_KEY], args=[int(PRESSURE_HORIZON * 1000), int(PACE_HORIZON * 1000)]
    )
    now = float(_text(raw_now))
    pressure: dict[str, float] = {}
    for field, value in _pairs(raw_pressure):
        with contextlib.suppress(ValueError):  # an entry nobody could have written: not shown
            level, expires = (float(part) for part in value.split(" "))
            if expires >= now and 0 <= level <= 1:
                node = field.rsplit(":", 1)[0]
                pressure[node] = max(pressure.get(node, 0.0), level)
    paces: dict[str, list[float]] = {}
    for _field, value in _pairs(raw_paces):
        with contextlib.suppress(ValueError):
            service, pace, expires = value.rsplit(" ", 2)
            if float(expires) >= now and 0 <= float(pace) <= 1:
                paces.setdefault(service, []).append(float(pace))
    return {
        "pressure": pressure,
        "services": {
            key: {"pace": sum(items) / len(items), "yielding": sum(1 for p in items if p < 1)}
            for key, items in paces.items()
        },
    }


def _text(item: Any) -> str:
    """A Redis reply as text (bytes nobody here wrote are replaced, not raised on)."""
    return item.decode(errors="replace") if isinstance(item, bytes) else str(item)


def _pairs(items: list[Any]) -> Iterator[tuple[str, str]]:
    """A flat HGETALL reply as (field, value) pairs of text."""
    texts = [_text(item) for item in items]
    return zip(texts[::2], texts[1::2], strict=False)
