"""worker_mode.supervisor with real processes: each test runs a supervisor in a forked process
over small function children that write what happens to them into a file."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from worker_mode.supervisor import Child, Restart, Supervisor, catch_stop_signals, process_tree

from .conftest import wait_until

pytestmark = [pytest.mark.processes, pytest.mark.engine_independent]


def note(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(f"{line}\n")


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def stay(path: Path, name: str, *signals: int) -> None:
    """Note every signal in ``signals`` as it arrives; SIGTERM ends it (after noting)."""

    def on_signal(signum: int, frame: object) -> None:
        note(path, f"{name}:{signal.Signals(signum).name}")
        if signum == signal.SIGTERM:
            raise SystemExit(0)

    for sig in (signal.SIGTERM, *signals):
        signal.signal(sig, on_signal)
    note(path, f"{name}:started")
    while True:  # a child's idle life: signals are what it waits for, and they interrupt the sleep
        time.sleep(0.05)


def gate(path: Path, ready) -> None:
    note(path, "gate:begun")
    time.sleep(0.3)  # the gate's first run (recovery) takes a while: later children must wait it out
    note(path, "gate:ready")
    ready()
    stay(path, "gate", signal.SIGUSR1)


def finish(path: Path, code: int) -> None:
    note(path, f"finish:{code}")
    raise SystemExit(code)


def crash_once(path: Path) -> None:
    if "crash:started" in lines(path):
        stay(path, "again")
    note(path, "crash:started")
    os._exit(1)


def deaf(path: Path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    note(path, "deaf:started")
    while True:  # a child that ignores the stop signals: only SIGKILL ends this loop
        time.sleep(0.05)


def parent_of_a_deaf_grandchild(path: Path) -> None:
    """Start a grandchild in a session of its own (like rq's work horse) that ignores stop signals;
    ignore them too."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        deaf(path)
    note(path, f"grandchild:{pid}")
    deaf(path)


class Running:
    def __init__(self, children: list[Child], log: Path, *, early_stop: bool = False, **options) -> None:
        def main() -> None:
            handler = logging.FileHandler(log.with_suffix(".supervisor"))
            logging.getLogger("worker_mode.supervisor").addHandler(handler)
            if early_stop:  # a stop that arrives while the node is still starting up
                catch_stop_signals()
                os.kill(os.getpid(), signal.SIGTERM)
            os._exit(Supervisor(children, **options).run())

        self.process = multiprocessing.get_context("fork").Process(target=main)
        self.process.start()

    def signal(self, sig: int) -> None:
        os.kill(self.process.pid, sig)

    def wait(self, timeout: float = 30) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode


@pytest.fixture
def log(tmp_path):
    return tmp_path / "log"


@pytest.fixture
def running(log):
    started: list[Running] = []

    def start(children: list[Child], **options) -> Running:
        started.append(Running(children, log, **options))
        return started[-1]

    yield start
    for supervisor in started:  # never leave a supervisor (and its children) behind
        if supervisor.process.is_alive():
            supervisor.signal(signal.SIGKILL)
            supervisor.wait()


def test_a_gate_holds_the_later_children_and_a_helper_ends_with_the_others(running, log):
    node = running(
        [
            Child("gate", target=gate, args=(log,), gate=True, helper=True),
            Child("finish", target=finish, args=(log, 0), on_exit="finish"),
        ]
    )
    assert node.wait() == 0
    order = lines(log)
    assert order[:2] == ["gate:begun", "gate:ready"] and order[-1] == "gate:SIGTERM"
    assert order.index("gate:ready") < order.index("finish:0")


def test_a_finishing_child_that_fails_fails_the_node_with_its_code(running, log):
    node = running(
        [
            Child("stay", target=stay, args=(log, "stay"), helper=True),
            Child("finish", target=finish, args=(log, 3), on_exit="finish"),
        ]
    )
    assert node.wait() == 3
    assert "stay:SIGTERM" in lines(log)


def test_a_stop_child_that_exits_stops_the_node(running, log):
    node = running(
        [
            Child("stay", target=stay, args=(log, "stay")),
            Child("finish", target=finish, args=(log, 4), on_exit="stop"),
        ]
    )
    assert node.wait() == 4
    assert "stay:SIGTERM" in lines(log)


def test_a_replaced_child_wakes_the_others_that_ask_for_it(running, log):
    node = running(
        [
            Child("gate", target=gate, args=(log,), gate=True, wake_signal=signal.SIGUSR1),
            Child("crash", target=crash_once, args=(log,)),
        ]
    )
    wait_until(lambda: "again:started" in lines(log), timeout=10)
    wait_until(lambda: "gate:SIGUSR1" in lines(log), timeout=10)
    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    assert lines(log).count("crash:started") == 1 and "again:SIGTERM" in lines(log)


def test_a_crash_loop_exhausts_the_budget_and_fails_the_node(running, log):
    node = running([Child("finish", target=finish, args=(log, 2), restart=Restart(limit=3, window=60))])
    assert node.wait() == 1
    assert lines(log) == ["finish:2"] * 3


def test_a_second_stop_signal_sends_the_cold_signal(running, log):
    node = running(
        [
            Child(
                "stay",
                target=stay,
                args=(log, "stay", signal.SIGUSR1),
                warm_signal=signal.SIGUSR1,
                cold_signal=signal.SIGTERM,
            )
        ]
    )
    wait_until(lambda: "stay:started" in lines(log), timeout=10)
    node.signal(signal.SIGTERM)
    wait_until(lambda: "stay:SIGUSR1" in lines(log), timeout=10)
    node.signal(signal.SIGINT)
    assert node.wait() == 0
    assert lines(log) == ["stay:started", "stay:SIGUSR1", "stay:SIGTERM"]


def test_grace_then_cold_then_kill_for_a_child_that_ignores_both(running, log):
    node = running([Child("deaf", target=deaf, args=(log,), grace=0.2)], cold_stop_timeout=0.5)
    wait_until(lambda: "deaf:started" in lines(log), timeout=10)
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=15) == 0  # stopped as asked: the kill is not a failure of the node
    err = log.with_suffix(".supervisor").read_text()
    assert "Cold shutdown: interrupting 1 worker(s) still running: deaf" in err
    assert "Killing 1 worker(s) that ignored the cold shutdown: deaf" in err
    assert "deaf stopped (exit -9)" in err


def test_sighup_reaches_the_children_that_take_it(running, log):
    node = running(
        [
            Child("takes", target=stay, args=(log, "takes", signal.SIGUSR2), hangup_signal=signal.SIGUSR2),
            Child("other", target=stay, args=(log, "other", signal.SIGUSR2)),
        ]
    )
    wait_until(lambda: {"takes:started", "other:started"} <= set(lines(log)), timeout=10)
    node.signal(signal.SIGHUP)
    wait_until(lambda: "takes:SIGUSR2" in lines(log), timeout=10)
    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    assert "takes:SIGUSR2" in lines(log) and "other:SIGUSR2" not in lines(log)


def test_when_started_runs_once_every_gate_has_opened(running, log):
    node = running(
        [
            Child("gate", target=gate, args=(log,), gate=True, helper=True),
            Child("stay", target=stay, args=(log, "stay")),
        ],
        when_started=lambda: note(log, "all:started"),
    )
    wait_until(lambda: "stay:started" in lines(log), timeout=10)
    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    order = lines(log)
    assert order.count("all:started") == 1 and order.index("gate:ready") < order.index("all:started")


def test_a_stop_during_start_up_starts_nothing(running, log):
    node = running([Child("stay", target=stay, args=(log, "stay"))], early_stop=True)
    assert node.wait() == 0
    assert lines(log) == []


def test_a_program_survives_a_hangup_before_it_handles_one(running, log):
    node = running([Child("sleep", argv=("sleep", "30"), hangup_signal=signal.SIGHUP, on_exit="stop")])

    def sleep_pid() -> int | None:
        for pid in process_tree(node.process.pid)[1:]:
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
                    return pid
            except OSError:
                pass
        return None

    pid = wait_until(sleep_pid, timeout=10)
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGHUP - 1))  # until the program installs its own handler
    node.signal(signal.SIGHUP)
    wait_until(lambda: "Passing SIGHUP on to sleep" in log.with_suffix(".supervisor").read_text(), timeout=10)
    node.signal(signal.SIGTERM)
    assert node.wait() == 0


def test_the_kill_reaches_what_the_child_started(running, log):
    node = running(
        [Child("parent", target=parent_of_a_deaf_grandchild, args=(log,), grace=0.2)], cold_stop_timeout=0.5
    )
    grandchild = int(
        wait_until(lambda: [x for x in lines(log) if x.startswith("grandchild:")], timeout=10)[0][11:]
    )
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=15) == 0

    def gone() -> bool:
        try:
            return "Z" in Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True

    wait_until(gone, timeout=5)


def test_a_child_is_described_by_a_program_or_a_function():
    with pytest.raises(ValueError, match="argv or target"):
        Child("both", argv=("true",), target=print)
    with pytest.raises(ValueError, match="only a function child can be a gate"):
        Child("gate", argv=("true",), gate=True)
