"""`make run`'s helpers: the private redis-server it starts is stopped when the node ends (Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_until

pytestmark = [pytest.mark.processes, pytest.mark.engine_independent]  # make run uses SQLite


@pytest.fixture
def project(tmp_path):
    """A copy of the scripts beside this checkout's virtualenv, so var/redis is the test's own."""
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    yield tmp_path
    pidfile = tmp_path / "var" / "redis" / "redis.pid"
    if pidfile.exists():  # never leave a server behind, whatever the test did
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    return "Z" not in open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]


def node_started(script_pid: int) -> bool:
    children = Path(f"/proc/{script_pid}/task/{script_pid}/children").read_text().split()
    for child in children:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] == b"sleep":
                return True
    return False


def test_ctrl_c_stops_the_node_and_the_private_redis_it_started(project):
    url = f"redis://127.0.0.1:{free_port()}/0"
    subprocess.run([project / "scripts" / "ensure_redis.sh", "start", url], check=True, timeout=30)
    pid = int((project / "var" / "redis" / "redis.pid").read_text())
    assert alive(pid)
    node = subprocess.Popen(
        [project / "scripts" / "run_node.sh", "sleep", "60"], start_new_session=True
    )  # its own process group, like a terminal's foreground job
    # The script has set its traps and started the node (its child runs `sleep`): then Ctrl-C.
    # (Any child is not enough: the script's `$(cat …)` forks one before the traps are set.)
    wait_until(lambda: node_started(node.pid), timeout=10)
    os.killpg(node.pid, signal.SIGINT)  # what Ctrl-C does
    assert node.wait(timeout=20) == 130
    wait_until(lambda: not alive(pid), timeout=10)


def test_stop_leaves_a_redis_it_did_not_start_alone(project, redis_server):
    # A Redis answers already (the test session's): `start` uses it and `stop` has nothing to stop.
    out = subprocess.run(
        [project / "scripts" / "ensure_redis.sh", "start", redis_server], capture_output=True, text=True
    )
    assert out.returncode == 0 and "Redis answers at" in out.stdout
    out = subprocess.run([project / "scripts" / "ensure_redis.sh", "stop"], capture_output=True, text=True)
    assert out.returncode == 0 and "No private redis-server" in out.stdout
    import redis

    assert redis.Redis.from_url(redis_server).ping()
