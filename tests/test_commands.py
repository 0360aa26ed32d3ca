"""Management commands: `workermode` (this node; the cluster with --cluster), --help everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from worker_mode import coverage, presence

from .conftest import ROOT


def run_command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@override_settings(WORKER_MODE="!,workflow:process", WORKER_MODE_NODE_NAME="web-1")
def test_workermode_for_humans():
    lines = run_command("workermode").splitlines()
    assert lines == [
        "Node                  web-1",
        "WORKER_MODE           '!,workflow:process'",
        "Serves HTTP requests  yes",
        "Services              workflow:process",
        "Queues                workflow:process",
        "Transient             no",
        "Registered services   workflow:process, async-task:process",
    ]


@pytest.mark.parametrize(
    ("mode", "requests", "services", "transient"),
    [
        ("", True, ["workflow:process", "async-task:process"], False),
        ("*", False, ["workflow:process", "async-task:process"], False),
        ("async-task:process", False, ["async-task:process"], False),
        ("-", False, [], True),
    ],
)
def test_workermode_json(mode, requests, services, transient):
    with override_settings(WORKER_MODE=mode):
        info = json.loads(run_command("workermode", "--json"))
    assert info["worker_mode"] == mode
    assert info["serves_requests"] is requests
    assert info["services"] == services
    assert info["queues"] == services
    assert info["transient"] is transient


@pytest.mark.parametrize("command", ["runnode", "runworkers", "workermode"])
def test_every_command_has_help(command):
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "WORKER_MODE" in result.stdout or "serves" in result.stdout
    assert "--verbosity" in result.stdout


def test_workermode_refuses_a_typo_in_a_real_process(site_env):
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "workermode"],
        cwd=ROOT,
        env=dict(site_env, WORKER_MODE="async-task:procss"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "worker_mode.E002" in result.stderr
    assert "Did you mean 'async-task:process'?" in result.stderr


def test_workermode_cluster_lists_nodes_services_and_uncovered_keys(redis_conn):
    redis_conn.rpush("rq:queue:async-task:process", "job")
    heartbeat = presence.announce("workers", processes=2, services=["workflow:process"])
    try:
        out = StringIO()
        with pytest.raises(CommandError, match="^Uncovered service keys: async-task:process$"):
            call_command("workermode", "--cluster", stdout=out)
        text = out.getvalue()
        assert "Live node processes: 1" in text and "workers" in text and "x2" in text
        assert "async-task:process     queued 1" in text and "UNCOVERED" in text
        out = StringIO()
        with pytest.raises(CommandError):
            call_command("workermode", "--cluster", "--json", stdout=out)
        report = json.loads(out.getvalue())
        assert report["uncovered"] == ["async-task:process"]
        assert [e["role"] for e in report["entries"]] == ["workers"]
        assert {r["key"]: r["nodes"] for r in report["services"]}["workflow:process"] == [
            report["entries"][0]["node"]
        ]
    finally:
        heartbeat.stop()


def test_workermode_cluster_exits_non_zero_while_a_key_is_uncovered(redis_conn):
    from worker_mode.management.commands.workermode import UNCOVERED_EXIT

    out = StringIO()
    call_command("workermode", "--cluster", stdout=out)  # nothing queued: exit 0
    redis_conn.rpush("rq:queue:workflow:process", "job")
    coverage.forget()
    for args in (["--cluster"], ["--cluster", "--json"]):
        out = StringIO()
        with pytest.raises(CommandError) as raised:
            call_command("workermode", *args, stdout=out)
        assert raised.value.returncode == UNCOVERED_EXIT == 3
        assert "workflow:process" in str(raised.value)
        assert "workflow:process" in out.getvalue()  # the report is printed before the exit
