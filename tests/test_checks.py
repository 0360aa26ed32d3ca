from __future__ import annotations

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from worker_mode import checks
from worker_mode.exceptions import WorkerModeError
from worker_mode.startup import validate

from .conftest import check_error_codes

MW = checks.MIDDLEWARE_PATH


def all_messages():
    return [
        *checks.check_worker_mode(),
        *checks.check_queues(),
        *checks.check_process_settings(),
        *checks.check_middleware(),
    ]


def test_the_site_is_clean():
    assert check_error_codes(all_messages()) == []


@pytest.mark.parametrize("mode", ["", "!", "*", "-", "!,*", "workflow:process", " ! , async-task:process "])
def test_valid_modes_pass(mode):
    with override_settings(WORKER_MODE=mode):
        assert check_error_codes(checks.check_worker_mode()) == []


@override_settings(WORKER_MODE="-,workflow:process")
def test_e001_unparsable():
    [error] = checks.check_worker_mode()
    assert error.id == "worker_mode.E001"
    assert error.msg == "WORKER_MODE '-,workflow:process' is invalid."
    assert "must stand alone" in error.hint


@override_settings(WORKER_MODE=" , ")
def test_e001_separators_only():
    [error] = checks.check_worker_mode()
    assert error.id == "worker_mode.E001" and "has separators but no items" in error.hint


@override_settings(WORKER_MODE="!,workflow:proces,reports:x")
def test_e002_unknown_keys_each_named_with_registered_keys():
    errors = checks.check_worker_mode()
    assert check_error_codes(errors) == ["worker_mode.E002", "worker_mode.E002"]
    assert errors[0].msg == "WORKER_MODE names unknown service key 'workflow:proces'."
    assert errors[0].hint.startswith("Did you mean 'workflow:process'? Registered keys: workflow:process,")
    assert "Did you mean" not in errors[1].hint
    assert len(errors[0].msg) < 80


@override_settings(WORKER_MODE="workflow:proces")
def test_check_command_refuses_a_typo():
    with pytest.raises(SystemCheckError, match=r"worker_mode\.E002.*workflow:proces"):
        call_command("check")


@override_settings(WORKER_MODE="workflow:proces")
def test_startup_validation_refuses_a_typo():
    with pytest.raises(WorkerModeError, match="E002.*Did you mean 'workflow:process'"):
        validate()


@override_settings(RQ_QUEUES={"workflow:process": {"URL": "redis://127.0.0.1:1/0"}})
def test_e003_site_queues_missing_a_service():
    errors = checks.check_queues()
    assert check_error_codes(errors) == ["worker_mode.E003"]
    assert "'async-task:process'" in errors[0].msg


def test_e003_no_queues_at_all(settings):
    del settings.RQ_QUEUES
    errors = checks.check_queues()
    assert check_error_codes(errors) == ["worker_mode.E003"]
    assert errors[0].msg == "RQ_QUEUES is not set." and "ServiceQueues()" in errors[0].hint


def test_the_site_wires_one_queue_per_key():
    assert checks.check_queues() == []


@pytest.mark.parametrize("value", [-1, "2", 1.5, True])
def test_e004_processes(value):
    with override_settings(WORKER_MODE_PROCESSES=value):
        assert check_error_codes(checks.check_process_settings()) == ["worker_mode.E004"]


@pytest.mark.parametrize(
    "value",
    [["workflow:process"], {"workflow:proces": 1}, {"workflow:process": 0}, {"workflow:process": "2"}],
)
def test_e005_service_processes(value):
    with override_settings(WORKER_MODE_SERVICE_PROCESSES=value):
        assert check_error_codes(checks.check_process_settings()) == ["worker_mode.E005"]


@pytest.mark.parametrize("value", [-1, "30", None])
def test_e006_grace(value):
    with override_settings(WORKER_MODE_SHUTDOWN_GRACE=value):
        assert check_error_codes(checks.check_process_settings()) == ["worker_mode.E006"]


@override_settings(WORKER_MODE_EXEMPT_PATHS=["/healthz", "readyz"])
def test_e007_exempt_paths():
    assert check_error_codes(checks.check_process_settings()) == ["worker_mode.E007"]


def test_w001_middleware_missing(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != MW]
    assert check_error_codes(checks.check_middleware()) == ["worker_mode.W001"]


def test_w002_middleware_below_one_that_answers(settings):
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "whitenoise.middleware.WhiteNoiseMiddleware",
        MW,
    ]
    [warning] = checks.check_middleware()
    assert warning.id == "worker_mode.W002"
    assert "WhiteNoiseMiddleware" in warning.msg
    assert "SessionMiddleware" not in warning.hint


def test_middleware_below_passive_middleware_is_fine(settings):
    settings.MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", MW]
    assert checks.check_middleware() == []


def test_silenced_errors_do_not_stop_startup(settings):
    settings.WORKER_MODE = "nope:x"
    settings.SILENCED_SYSTEM_CHECKS = ["worker_mode.E002"]
    validate()


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        ("WORKER_MODE_WORKER_CLASS", "nope.Nope", "worker_mode.E013"),
        ("WORKER_MODE_WORKER_CLASS", "collections.OrderedDict", "worker_mode.E013"),
        ("WORKER_MODE_RESTART_LIMIT", 0, "worker_mode.E014"),
        ("WORKER_MODE_RESTART_LIMIT", "5", "worker_mode.E014"),
        ("WORKER_MODE_RESTART_WINDOW", 0, "worker_mode.E014"),
        ("WORKER_MODE_WORKER_NICE", "high", "worker_mode.E015"),
        ("WORKER_MODE_WORKER_NICE", 20, "worker_mode.E015"),
    ],
)
def test_e013_e015_worker_settings(settings, setting, value, code):
    assert check_error_codes(checks.check_worker_settings()) == []
    setattr(settings, setting, value)
    assert check_error_codes(checks.check_worker_settings()) == [code]


@pytest.mark.parametrize(
    ("setting", "value"), [("WORKFLOWS_MAX_RECORDS", 0), ("WORKFLOWS_HTTP_MAX_RESPONSE_BYTES", "x")]
)
def test_workflows_e004_whole_numbers(settings, setting, value):
    from workflows import checks as workflow_checks

    setattr(settings, setting, value)
    assert check_error_codes(workflow_checks.check_settings()) == ["workflows.E004"]


@pytest.mark.parametrize("app", ["worker_mode", "workflows", "async_tasks"])
def test_every_default_has_a_typed_property_and_nothing_else(app):
    import importlib

    defaults = importlib.import_module(f"{app}.defaults")
    conf = importlib.import_module(f"{app}.conf").conf
    names = {name for name in vars(defaults) if name.isupper()}
    properties = {name for name, value in vars(type(conf)).items() if isinstance(value, property)}
    assert names == properties  # one typed property per setting, its default in defaults.py
    assert not hasattr(type(conf), "__getattr__")  # no setting read by name at run time


@pytest.mark.parametrize(
    "value, message",
    [
        (["redis://h:6379/0"], "must be a dict"),
        ({"async-task:proces": "redis://h:6379/0"}, "Did you mean 'async-task:process'"),
        ({"async-task:process": "http://h:6379/0"}, "is not a Redis URL"),
        ({"async-task:process": None}, "is not a Redis URL"),
        ({"async-task:process": "redis://h:notaport/0"}, "Port could not be cast to integer"),
        ({"async-task:process": "redis://h:99999/0"}, "Port out of range"),
        (
            {"async-task:process": "redis://h:6379/0?socket_timeout=soon"},
            "Invalid value for 'socket_timeout'",
        ),
        ({"async-task:process": "rediss://"}, "it names no host"),
        ({"async-task:process": "redis://h:6379/0?foo=bar"}, "unexpected keyword argument 'foo'"),
        ({"async-task:process": "redis://h:6379/abc"}, "its database 'abc' is not a number"),
        ({"async-task:process": "redis:///0"}, "it names no host"),
        ({"async-task:process": "unix://"}, "it names no socket path"),
    ],
)
def test_e016_redis_urls(value, message):
    with override_settings(WORKER_MODE_REDIS_URLS=value):
        errors = checks.check_queues()
    assert check_error_codes(errors) == ["worker_mode.E016"]
    assert message in errors[0].msg + errors[0].hint


@pytest.mark.parametrize(
    "url", ["rediss://redis-b:6380/0", "unix:///run/redis/redis.sock", "redis://:pw@h/1"]
)
def test_e016_takes_every_form_of_redis_url(url):
    with override_settings(WORKER_MODE_REDIS_URLS={"async-task:process": url}):
        assert checks.check_queues() == []


def test_a_service_key_on_its_own_redis():
    from django_rq.settings import QUEUES

    from worker_mode.queues import get_connection, server_of

    with override_settings(WORKER_MODE_REDIS_URLS={"async-task:process": "redis://10.0.0.9:6390/2"}):
        assert checks.check_queues() == []
        assert QUEUES["async-task:process"]["URL"] == "redis://10.0.0.9:6390/2"
        assert QUEUES["workflow:process"]["URL"] == settings.REDIS_URL
        assert server_of("async-task:process") != server_of("workflow:process")
        kwargs = get_connection("async-task:process").connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.9", 6390, 2)
