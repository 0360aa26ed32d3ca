from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

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
