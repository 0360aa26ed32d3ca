"""One supervisor for every process a node runs, described by data (:class:`Child`).

``runnode`` and ``runworkers`` both hand it a list of children: gunicorn (a
program), the periodic-work process and the RQ worker processes (functions run
in a forked process). For each child the data says how to start it, which
signal asks it to stop warm and which one cold, how long its warm stop may take,
and what its exit means: restart it within a crash budget, stop the node, or an
expected end (``--burst``).

Stopping: the first SIGTERM/SIGINT sends every child its warm signal; a child
still running after its grace, or a second SIGTERM/SIGINT, gets its cold signal;
one still running ``COLD_STOP_TIMEOUT`` seconds after that is killed. SIGHUP is
passed on to the children that take it (gunicorn's reload). Every child runs in
its own process group (a terminal's Ctrl-C reaches the supervisor only, which
then stops the children in order) and gets SIGTERM if the supervisor dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

from django.db import connections

logger = logging.getLogger(__name__)

#: rq ignores a second stop signal that arrives within 1 s of the first: a cold signal waits this long.
DUPLICATE_SIGNAL_WINDOW = 1.1
#: How long a child gets after its cold signal before SIGKILL.
COLD_STOP_TIMEOUT = 10.0
#: The supervisor's loop period (seconds): how soon it notices exits, signals and due restarts.
TICK = 0.1

_FORK = multiprocessing.get_context("fork")

OnExit = Literal["restart", "stop", "finish"]


@dataclass(frozen=True)
class Restart:
    """A crash budget: ``limit`` exits within ``window`` seconds fail the node."""

    limit: int
    window: float


@dataclass(frozen=True)
class Child:
    """A process the supervisor starts and watches.

    Exactly one of ``argv`` (a program) and ``target`` (a function, called in a
    forked process with ``args``) is given. ``on_exit``: ``restart`` (with
    back-off, within ``restart``'s budget), ``stop`` (the node stops and fails)
    or ``finish`` (an expected end; non-zero fails the node). A ``helper`` does
    not keep the node alive: once every other child has ended it is stopped. A
    ``gate`` is called with a ``ready`` callback as its last argument; the
    children after it start once it has called it.
    """

    name: str
    argv: tuple[str, ...] = ()
    target: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    detail: str = ""
    warm_signal: int = signal.SIGTERM
    cold_signal: int = signal.SIGTERM
    grace: float = 25.0
    hangup_signal: int | None = None
    #: Sent to this child when another child has been replaced (e.g. "recover its work now").
    wake_signal: int | None = None
    on_exit: OnExit = "restart"
    restart: Restart = Restart(limit=5, window=60.0)
    helper: bool = False
    gate: bool = False

    def __post_init__(self) -> None:
        if bool(self.argv) == (self.target is not None):
            raise ValueError(f"Child {self.name}: give argv or target, not both or neither.")
        if self.gate and self.target is None:
            raise ValueError(f"Child {self.name}: only a function child can be a gate.")


def set_parent_death_signal(sig: int) -> None:
    """Linux: get ``sig`` when the parent dies, so no child outlives its supervisor unnoticed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descending from it (read from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        found.append(current)
        todo.extend(children.get(current, []))
    return found


_early_stops = 0


def _count_early_stop(signum: int, frame: Any) -> None:
    global _early_stops
    _early_stops += 1


def catch_stop_signals() -> None:
    """Count SIGTERM/SIGINT from now on, before the supervisor runs: a stop during start-up (the
    checks, the plan) is then not lost; as PID 1 in a container an unhandled SIGTERM is ignored."""
    signal.signal(signal.SIGTERM, _count_early_stop)
    signal.signal(signal.SIGINT, _count_early_stop)


def _child_main(child: Child, ready: Connection | None) -> None:
    """In the forked child: its own process group, SIGTERM when the supervisor dies, default
    signal handling; then exec the program or call the function."""
    os.setpgid(0, 0)
    set_parent_death_signal(signal.SIGTERM)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    if child.argv:
        # A SIGHUP passed on before the program has set its own handler (gunicorn's reload) must
        # not end it; an ignored signal stays ignored across exec until the program handles it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.execvp(child.argv[0], child.argv)
    assert child.target is not None
    if ready is None:
        child.target(*child.args)
        return

    def say_ready() -> None:
        ready.send_bytes(b"ready")
        ready.close()

    child.target(*child.args, say_ready)


class _Process:
    """A started child, forked (and, for a program, exec'd)."""

    def __init__(self, child: Child) -> None:
        connections.close_all()  # a forked child must not share the supervisor's database sockets
        self.ready: Connection | None = None
        writer = None
        if child.gate:
            self.ready, writer = _FORK.Pipe(duplex=False)
        self._forked = _FORK.Process(target=_child_main, args=(child, writer), name=child.name, daemon=False)
        self._forked.start()
        if writer is not None:
            writer.close()
        self.pid = self._forked.pid or 0

    def poll(self) -> int | None:
        """The exit code once it has ended (negative: killed by that signal), else None."""
        if self._forked.is_alive():
            return None
        self._forked.join()
        return self._forked.exitcode

    def said_ready(self) -> bool:
        if self.ready is None:
            return False
        try:
            said = self.ready.poll() and self.ready.recv_bytes() == b"ready"
        except (EOFError, OSError):
            said = False
        if said or self.poll() is not None:
            self.ready.close()
            self.ready = None
        return bool(said)

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the child and everything it started (a fork worker's work horse, gunicorn's
        workers), so nothing of it outlives the node."""
        for pid in process_tree(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class _Slot:
    child: Child
    process: _Process | None = None
    started: bool = False
    ready: bool = False
    ended: bool = False
    restart_at: float | None = None
    crashes: deque[float] = field(default_factory=deque)
    warm_at: float | None = None
    cold_at: float | None = None
    killed: bool = False

    @property
    def live(self) -> bool:
        return self.process is not None


class Supervisor:
    """Starts ``children`` in order and keeps them running until told to stop; ``run()`` returns
    the node's exit code."""

    def __init__(
        self,
        children: Sequence[Child],
        *,
        cold_stop_timeout: float = COLD_STOP_TIMEOUT,
        when_started: Callable[[], Any] | None = None,
    ) -> None:
        self.slots = [_Slot(child) for child in children]
        self.cold_stop_timeout = cold_stop_timeout
        #: Called once every child has been started (every gate has opened): e.g. announce the
        #: node's workers only once they run.
        self.when_started = when_started
        self._all_started = False
        self.stop_requests = 0
        self.hangups = 0
        self.exit_code = 0
        self._stopping_since: float | None = None
        self._cold_requested = False

    # -- signals ------------------------------------------------------------------
    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stop_requests += 1

    def _on_hangup(self, signum: int, frame: Any) -> None:
        self.hangups += 1

    # -- state --------------------------------------------------------------------
    def _live(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.live]

    @property
    def stopping(self) -> bool:
        return self._stopping_since is not None

    def _fail(self, code: int | None) -> None:
        if not self.exit_code:
            self.exit_code = code if code and code > 0 else 1

    def _start(self, slot: _Slot, now: float) -> None:
        child = slot.child
        slot.process = _Process(child)
        slot.started, slot.ready, slot.restart_at = True, False, None
        logger.info(
            "Started %s (pid %s)%s", child.name, slot.process.pid, f" {child.detail}" if child.detail else ""
        )

    def _start_pending(self, now: float) -> None:
        """Start children not started yet, in order, up to the first gate that is not ready."""
        if self._all_started:
            return
        for slot in self.slots:
            if not slot.started:
                self._start(slot, now)
            if slot.child.gate and not slot.ready:
                return
        self._all_started = True
        if self.when_started is not None:
            self.when_started()

    def _check_ready(self) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.ready is not None and slot.process.said_ready():
                slot.ready = True

    def _reap(self, now: float) -> None:
        for slot in self.slots:
            if slot.process is None:
                continue
            code = slot.process.poll()
            if code is None:
                continue
            slot.process = None
            child = slot.child
            if self.stopping:
                logger.info("%s stopped (exit %s)", child.name, code)
                slot.ended = True
            elif child.on_exit == "finish":
                slot.ended = True
                if code != 0:
                    logger.error("%s exited with %s; stopping the node", child.name, code)
                    self._fail(code)
            elif child.on_exit == "stop":
                logger.error("%s exited with %s; stopping the node", child.name, code)
                slot.ended = True
                self._fail(code)
            else:
                self._schedule_restart(slot, code, now)

    def _schedule_restart(self, slot: _Slot, code: int | None, now: float) -> None:
        budget = slot.child.restart
        slot.crashes.append(now)
        while slot.crashes and slot.crashes[0] < now - budget.window:
            slot.crashes.popleft()
        if len(slot.crashes) >= budget.limit:
            logger.error(
                "%s exited with %s: %d crashes within %.0f s, giving up and stopping the node",
                slot.child.name, code, len(slot.crashes), budget.window,
            )  # fmt: skip
            slot.ended = True
            self._fail(1)
            return
        delay = min(0.5 * 2 ** (len(slot.crashes) - 1), 30.0)
        slot.restart_at = now + delay
        logger.warning("%s exited with %s; restarting in %.1f s", slot.child.name, code, delay)

    def _restart_due(self, now: float) -> None:
        due = [
            s for s in self.slots if s.process is None and s.restart_at is not None and s.restart_at <= now
        ]
        for slot in due:
            self._start(slot, now)
        if due:
            # A replaced child may have left work half done: those that recover it are told at once.
            replaced = {slot.child.name for slot in due}
            for slot in self._live():
                if slot.child.wake_signal is not None and slot.child.name not in replaced:
                    slot.process.send(slot.child.wake_signal)  # type: ignore[union-attr]

    def _all_essential_ended(self) -> bool:
        essential = [slot for slot in self.slots if not slot.child.helper]
        return bool(essential) and all(slot.ended for slot in essential)

    # -- stopping -----------------------------------------------------------------
    def _advance_shutdown(self, now: float) -> None:
        if self._stopping_since is None:
            self._stopping_since = now
            if self.stop_requests:
                logger.info(
                    "Warm shutdown of %s: running work may finish",
                    ", ".join(s.child.name for s in self._live()),
                )
            for slot in self._live():
                slot.warm_at = now
                slot.process.send(slot.child.warm_signal)  # type: ignore[union-attr]
            return
        if self.stop_requests > 1 and not self._cold_requested:
            self._cold_requested = True
            logger.warning("Stop requested again: cold shutdown")
        cold = []
        for slot in self._live():
            if slot.cold_at is not None or slot.warm_at is None:
                continue
            due = slot.warm_at + slot.child.grace
            if self._cold_requested:
                due = min(due, slot.warm_at + DUPLICATE_SIGNAL_WINDOW)
            if now >= max(due, slot.warm_at + DUPLICATE_SIGNAL_WINDOW):
                cold.append(slot)
        self._escalate(cold, now, "Cold shutdown: interrupting %d worker(s) still running: %s")
        stubborn = [
            slot
            for slot in self._live()
            if slot.cold_at is not None and not slot.killed and now >= slot.cold_at + self.cold_stop_timeout
        ]
        self._escalate(stubborn, now, "Killing %d worker(s) that ignored the cold shutdown: %s", kill=True)

    def _escalate(self, slots: list[_Slot], now: float, message: str, *, kill: bool = False) -> None:
        """Send ``slots`` their cold signal (or SIGKILL), saying so once."""
        if not slots:
            return
        names = ", ".join(slot.child.name for slot in slots)
        logger.log(logging.ERROR if kill else logging.WARNING, message, len(slots), names)
        for slot in slots:
            if kill:
                slot.killed = True
                slot.process.kill()  # type: ignore[union-attr]
            else:
                slot.cold_at = now
                slot.process.send(slot.child.cold_signal)  # type: ignore[union-attr]

    # -- the loop -----------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        global _early_stops
        self.stop_requests, _early_stops = self.stop_requests + _early_stops, 0
        if not self.stop_requests:
            self._start_pending(time.monotonic())
        while True:
            now = time.monotonic()
            self._reap(now)
            while self.hangups:
                self.hangups -= 1
                for slot in self._live():
                    if slot.child.hangup_signal is not None:
                        logger.info("Passing SIGHUP on to %s", slot.child.name)
                        slot.process.send(slot.child.hangup_signal)  # type: ignore[union-attr]
            if self.stop_requests or self.exit_code or self._all_essential_ended() or self.stopping:
                self._advance_shutdown(now)
                if not self._live():
                    return self.exit_code
            else:
                self._check_ready()
                self._start_pending(now)
                self._restart_due(now)
            time.sleep(TICK)
