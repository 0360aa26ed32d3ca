from __future__ import annotations

import pytest
from django.test import override_settings

from worker_mode import InvalidWorkerMode, UnknownServiceKey, register_service, services, serving
from worker_mode.node import describe, served_keys

WF, AT = "workflow:process", "async-task:process"

# (WORKER_MODE, serving(), serving(WF), serving(AT))
MODES = [
    ("", True, True, True),
    ("!", True, False, False),
    ("workflow:process,async-task:process", False, True, True),
    ("*", False, True, True),
    ("!,workflow:process", True, True, False),
    ("async-task:process", False, False, True),
    ("!,*", True, True, True),
    ("-", False, False, False),
]


@pytest.mark.parametrize(("mode", "requests", "workflow", "async_task"), MODES)
def test_serving_follows_the_setting(mode, requests, workflow, async_task):
    with override_settings(WORKER_MODE=mode):
        assert serving() is requests
        assert serving(WF) is workflow
        assert serving(AT) is async_task


def test_none_setting_means_everything():
    with override_settings(WORKER_MODE=None):
        assert serving() and serving(WF)


def test_serving_an_unregistered_key_raises():
    with (
        override_settings(WORKER_MODE="*"),
        pytest.raises(UnknownServiceKey, match="Did you mean 'workflow:process'"),
    ):
        serving("workflow:proces")


def test_serving_under_an_unparsable_mode_raises():
    with override_settings(WORKER_MODE="-,!"), pytest.raises(InvalidWorkerMode, match="must stand alone"):
        serving()


def test_third_party_key():
    register_service("my-plugin:process")
    try:
        with override_settings(WORKER_MODE="my-plugin:process"):
            assert serving("my-plugin:process")
            assert not serving(WF)
            assert served_keys() == ("my-plugin:process",)
        with override_settings(WORKER_MODE="*"):
            assert serving("my-plugin:process")
    finally:
        services.unregister("my-plugin:process")


@override_settings(WORKER_MODE="!,async-task:process,nope:x", WORKER_MODE_NODE_NAME="node-7")
def test_describe():
    info = describe()
    assert info["node"] == "node-7"
    assert info["serves_requests"] is True
    assert info["services"] == [AT]
    assert info["queues"] == [AT]
    assert info["unknown"] == ["nope:x"]
    assert info["transient"] is False
    assert info["registered"][:2] == [WF, AT]
