from __future__ import annotations

import dataclasses

import pytest

from worker_mode.mode import WorkerModeSyntaxError, parse

pytestmark = pytest.mark.engine_independent  # parsing only

REGISTERED = ("workflow:process", "async-task:process")


# Every row of the SPEC table: (WORKER_MODE, serves requests, served keys, transient)
SPEC_TABLE = [
    (None, True, REGISTERED, False),
    ("", True, REGISTERED, False),
    ("!", True, (), False),
    ("workflow:process,async-task:process", False, REGISTERED, False),
    ("*", False, REGISTERED, False),
    ("!,workflow:process", True, ("workflow:process",), False),
    ("workflow:process,!", True, ("workflow:process",), False),
    ("!,*", True, REGISTERED, False),
    ("*,!", True, REGISTERED, False),
    ("-", False, (), True),
]


@pytest.mark.parametrize(("raw", "requests", "keys", "transient"), SPEC_TABLE)
def test_spec_table(raw, requests, keys, transient):
    mode = parse(raw)
    assert mode.serves_requests is requests
    assert mode.served_keys(REGISTERED) == keys
    assert mode.transient is transient
    assert mode.serves_services is bool(keys)


def test_only_the_named_key_is_served():
    mode = parse("async-task:process")
    assert mode.serves("async-task:process")
    assert not mode.serves("workflow:process")
    assert not mode.serves_requests


def test_whitespace_around_items_is_ignored():
    assert parse("  ! ,  workflow:process  ") == dataclasses.replace(
        parse("!,workflow:process"), raw="  ! ,  workflow:process  "
    )


@pytest.mark.parametrize("raw", ["", "  ", None])
def test_empty_or_blank_means_everything(raw):
    mode = parse(raw)
    assert mode.serves_requests and mode.serves_all_services and not mode.transient


@pytest.mark.parametrize("raw", [",", " , ,", ",,,", " ,"])
def test_separators_only_are_an_error_not_everything(raw):
    # A templating slip (WORKER_MODE="${ROLE},") must not make a worker an all-in-one node.
    with pytest.raises(WorkerModeSyntaxError, match="has separators but no items"):
        parse(raw)


def test_empty_and_repeated_items_are_ignored():
    mode = parse("workflow:process,,workflow:process, ,!,!")
    assert mode.keys == ("workflow:process",)
    assert mode.serves_requests


def test_keys_keep_their_order_and_served_keys_follow_registration_order():
    mode = parse("async-task:process,workflow:process")
    assert mode.keys == ("async-task:process", "workflow:process")
    assert mode.served_keys(REGISTERED) == REGISTERED


def test_keys_are_case_sensitive():
    assert parse("Workflow:Process").served_keys(REGISTERED) == ()


def test_unregistered_keys_parse_the_registry_judges_them():
    mode = parse("my-plugin:process")
    assert mode.keys == ("my-plugin:process",)
    assert mode.served_keys(REGISTERED) == ()


def test_star_with_keys_serves_all():
    assert parse("*,workflow:process").served_keys(REGISTERED) == REGISTERED


@pytest.mark.parametrize("raw", ["-,!", "!,-", "-,*", "-,workflow:process", " - , workflow:process"])
def test_transient_must_stand_alone(raw):
    with pytest.raises(WorkerModeSyntaxError, match="must stand alone"):
        parse(raw)


def test_repeated_transient_alone_is_fine():
    assert parse("-,-").transient


@pytest.mark.parametrize(
    "raw", ["workflow process", "workflow;process", "!workflow", "**", "ü:process", ":x"]
)
def test_items_that_are_not_keys_are_errors(raw):
    with pytest.raises(WorkerModeSyntaxError, match="is not a service key"):
        parse(raw)


@pytest.mark.parametrize("raw", [1, ["!"], b"!"])
def test_non_strings_are_errors(raw):
    with pytest.raises(WorkerModeSyntaxError, match="must be a string"):
        parse(raw)


def test_mode_is_immutable():
    mode = parse("!")
    with pytest.raises(dataclasses.FrozenInstanceError):
        mode.serves_requests = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("", "requests + all services"),
        ("!", "requests"),
        ("*", "all services"),
        ("!,workflow:process", "requests + workflow:process"),
        ("-", "transient: no requests, no services"),
    ],
)
def test_describe(raw, text):
    assert parse(raw).describe() == text


def test_mode_module_does_not_import_django():
    """gunicorn.conf.py parses WORKER_MODE before Django is configured."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "worker_mode" / "mode.py"
    # Load the file alone, so the package __init__ (which does use Django) stays out of it.
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('wm_mode', {str(path)!r}); "
        "m = importlib.util.module_from_spec(spec); sys.modules['wm_mode'] = m; spec.loader.exec_module(m); "
        "assert m.parse('!').serves_requests; "
        "print(any(n == 'django' or n.startswith('django.') for n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
