from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys

import pytest
from rq import Worker as RqWorker

from worker_mode import get_queue, parse
from worker_mode.launcher import plan_children

from .conftest import ROOT, free_port, http_get, wait_for_http, wait_until

WF, AT = "workflow:process", "async-task:process"


# -- planning ----------------------------------------------------------------------
def names(mode: str) -> list[str]:
    return [child.name for child in plan_children(parse(mode), processes=1)]


@pytest.mark.parametrize(
    ("mode", "children"),
    [
        ("", ["gunicorn", "periodic", "worker shared#0"]),
        ("!", ["gunicorn"]),
        ("*", ["gunicorn", "periodic", "worker shared#0"]),
        ("workflow:process", ["gunicorn", "periodic", "worker shared#0"]),
        ("!,workflow:process", ["gunicorn", "periodic", "worker shared#0"]),
        ("-", []),
    ],
)
def test_what_each_mode_starts(mode, children):
    assert names(mode) == children


def test_non_request_nodes_run_one_gunicorn_worker():
    gunicorn = plan_children(parse("*"), bind="127.0.0.1:9000", http_workers=8)[0]
    argv = gunicorn.argv
    assert argv[argv.index("--workers") + 1] == "1"
    assert argv[argv.index("--bind") + 1] == "127.0.0.1:9000"
    assert argv[-1] == "nocobase_site.wsgi:application"


def test_request_nodes_take_the_http_worker_count():
    [gunicorn] = plan_children(parse("!"), http_workers=3)
    assert gunicorn.argv[gunicorn.argv.index("--workers") + 1] == "3"


def test_worker_options_are_passed_on(settings):
    settings.WORKER_MODE_SERVICE_PROCESSES = {AT: 2}
    children = plan_children(parse("*"), processes=3, with_scheduler=True, log_level="DEBUG")
    workers = [child for child in children if child.name.startswith("worker ")]
    assert [w.name for w in workers] == [f"worker shared#{i}" for i in range(3)] + [
        f"worker {AT}#{i}" for i in range(2)
    ]
    # args: group, index, burst, with_scheduler (the first of each group), worker class, log level
    assert [w.args[3] for w in workers] == [True, False, False, True, False]
    assert {w.args[5] for w in workers} == {"DEBUG"}
    assert {w.on_exit for w in workers} == {"restart"}


def test_gunicorn_is_stopped_cold_only_after_its_own_graceful_timeout(monkeypatch):
    monkeypatch.setenv("GUNICORN_GRACEFUL_TIMEOUT", "40")  # read by nocobase_site/gunicorn.conf.py
    [gunicorn] = plan_children(parse("!"))
    assert gunicorn.grace == 45.0


def test_gunicorn_stops_the_node_and_the_periodic_process_gates_the_workers():
    gunicorn, periodic, worker = plan_children(parse("*"), processes=1)
    assert (gunicorn.on_exit, gunicorn.cold_signal, gunicorn.hangup_signal) == (
        "stop",
        signal.SIGINT,
        signal.SIGHUP,
    )
    assert periodic.gate and periodic.helper and periodic.wake_signal == signal.SIGUSR1
    assert worker.on_exit == "restart" and not worker.helper


# -- real nodes ----------------------------------------------------------------------
def start(start_node, mode: str, **env: str):
    port = free_port()
    node = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], worker_mode=mode, **env)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(base + "/healthz", node)
    return node, base


@pytest.mark.processes
def test_request_node_serves_pages_and_processes_no_job(start_node, redis_conn):
    get_queue(WF).enqueue("tests.jobs.mark", "never")
    node, base = start(start_node, "!")
    status, body = http_get(base + "/")
    assert status == 200 and b"Sign in to the admin" in body
    assert http_get(base + "/admin/login/")[0] == 200
    assert http_get(base + "/readyz")[0] == 200
    # The supervisor starts every child it plans (the periodic process that gates the workers
    # included) before gunicorn has booted, whose banner says what the node serves: once that is in
    # the log, a node with no periodic process and no worker will never start one.
    wait_until(lambda: "services: none" in node.log, timeout=10)
    assert re.findall(r"supervisor: Started (\S+) \(pid", node.log) == ["gunicorn"], node.log
    assert RqWorker.all(redis_conn) == []
    assert get_queue(WF).count == 1
    assert redis_conn.get("test:done:never") is None
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=40) == 0, node.log


@pytest.mark.processes
def test_worker_node_answers_503_keeps_probes_and_processes_jobs(start_node, redis_conn):
    node, base = start(start_node, "*")
    status, body = http_get(base + "/")
    assert status == 503
    assert json.loads(body)["worker_mode"] == "*"
    assert http_get(base + "/admin/")[0] == 503
    assert http_get(base + "/healthz") == (200, b'{"status": "ok"}')
    status, body = http_get(base + "/readyz")
    assert status == 200 and json.loads(body)["services"] == [WF, AT]
    get_queue(AT).enqueue("tests.jobs.mark", "done-on-star")
    wait_until(lambda: redis_conn.get("test:done:done-on-star"), timeout=30)
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=40) == 0, node.log


@pytest.mark.processes
def test_sigterm_to_the_node_lets_the_running_job_finish(start_node, redis_conn):
    node, _ = start(start_node, WF)
    get_queue(WF).enqueue("tests.jobs.slow_mark", "node-slow", 2.0)
    wait_until(lambda: redis_conn.get("test:started:node-slow"), timeout=30)
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=40) == 0, node.log
    assert redis_conn.get("test:done:node-slow")


@pytest.mark.processes
def test_transient_node_starts_nothing(start_node):
    node = start_node(["runnode"], worker_mode="-")
    assert node.wait(timeout=30) == 0
    assert "transient: this node starts nothing" in node.log


@pytest.mark.processes
def test_typo_stops_the_node_with_the_valid_keys(start_node):
    node = start_node(["runnode"], worker_mode="!,workflow:proces")
    assert node.wait(timeout=30) == 1
    assert "worker_mode.E002" in node.log
    assert "unknown service key 'workflow:proces'" in node.log
    assert "Did you mean 'workflow:process'?" in node.log
    assert "Registered keys: workflow:process, async-task:process" in node.log


@pytest.mark.processes
def test_node_exits_non_zero_when_a_child_fails_for_good(start_node, redis_conn):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], worker_mode="")
        code = node.wait(timeout=90)
    assert code != 0, node.log
    assert "gunicorn exited with" in node.log
    assert "stopping the node" in node.log
    assert RqWorker.all(redis_conn) == []  # the workers were stopped too


@pytest.mark.processes
def test_readyz_names_a_dead_database(start_node, redis_conn):
    node, base = start(start_node, "!", DATABASE_URL="postgres://nobody@127.0.0.1:1/none")
    status, body = http_get(base + "/readyz", timeout=15)
    assert status == 503
    assert json.loads(body)["failing"] == ["database"]
    assert http_get(base + "/healthz")[0] == 200


@pytest.mark.processes
def test_gunicorn_started_directly_validates_worker_mode(site_env):
    env = dict(site_env, WORKER_MODE="workflow:proces", GUNICORN_BIND=f"127.0.0.1:{free_port()}")
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "nocobase_site/gunicorn.conf.py", "nocobase_site.wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "unknown service key 'workflow:proces'" in result.stderr
    assert "Did you mean 'workflow:process'?" in result.stderr


@pytest.mark.processes
def test_gunicorn_started_directly_on_a_worker_node(site_env):
    port = free_port()
    env = dict(site_env, WORKER_MODE="*", GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="4")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "nocobase_site/gunicorn.conf.py", "nocobase_site.wsgi"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        assert http_get(f"http://127.0.0.1:{port}/")[0] == 503
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert stderr.count("Booting worker") == 1, stderr


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout=1)[0] == 200
    except OSError:
        return False
