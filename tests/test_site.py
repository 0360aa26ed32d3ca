"""The site's own guards: no public node on a secret everyone knows; production settings pass
`check --deploy`; NUL in query strings."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from nocobase_site import checks as site_checks
from tests.conftest import ROOT, check_error_codes, free_port, wait_until
from worker_mode import checks

STRONG = secrets.token_urlsafe(50)


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("[::1]:8000", True),
        ("127.0.0.2:80", True),
        ("0.0.0.0:8000", False),
        ("[::]:8000", False),
        ("10.0.0.5:8000", False),
        ("site.example:80", False),
        ("unix:/run/site.sock", False),
    ],
)
def test_which_binds_reach_only_this_machine(bind, loopback):
    assert site_checks.is_loopback(bind) is loopback


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (site_checks.DEFAULT_SECRET_KEY, "public laptop default"),
        ("change-me", "placeholder"),
        ("change-me-in-production-please-this-is-long-enough-now!", "placeholder"),
        ("x" * 60, "fewer than 5 distinct"),
        ("short-but-random-9f3K", "shorter than 50"),
        (STRONG, ""),
    ],
)
def test_weak_secrets_are_named(key, why):
    assert why in site_checks.weak_secret(key) if why else site_checks.weak_secret(key) == ""


def test_a_public_request_node_needs_a_real_secret(settings):
    settings.SECRET_KEY = site_checks.DEFAULT_SECRET_KEY
    assert check_error_codes(site_checks.secret_key_errors(["0.0.0.0:8000"])) == ["nocobase_site.E001"]
    assert site_checks.secret_key_errors(["127.0.0.1:8000"]) == []  # a laptop
    assert site_checks.secret_key_errors(["0.0.0.0:8000"], serves_requests=False) == []  # probes only
    settings.SECRET_KEY = STRONG
    assert site_checks.secret_key_errors(["0.0.0.0:8000", "unix:/run/s.sock"]) == []


@pytest.mark.parametrize("token", ["change-me-too", "short", "my-secret-metrics-token-0123456789"])
def test_a_guessable_metrics_token_is_refused(settings, token):
    settings.WORKER_MODE_METRICS_TOKEN = token
    assert check_error_codes(checks.check_metrics_token()) == ["worker_mode.E012"]
    settings.WORKER_MODE_METRICS_TOKEN = secrets.token_urlsafe(32)
    assert checks.check_metrics_token() == []


def site_process_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "WORKER_MODE", "SECURE", "SECRET"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="nocobase_site.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'site.sqlite3'}",
        VAR_DIR=str(tmp_path / "var"),
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``manage.py *args`` in a process of its own with ``env``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_documented_production_settings_pass_check_deploy(tmp_path):
    env = site_process_env(
        tmp_path,
        SECRET_KEY=STRONG,
        ALLOWED_HOSTS="site.example",
        CSRF_TRUSTED_ORIGINS="https://site.example",
        SECURE_COOKIES="true",
        SECURE_SSL_REDIRECT="true",
        SECURE_PROXY_SSL_HEADER="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_HSTS_PRELOAD="true",
    )
    done = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_the_laptop_defaults_fail_check_deploy(tmp_path):
    done = manage(site_process_env(tmp_path), "check", "--deploy")
    assert done.returncode != 0 and "nocobase_site.E001" in done.stderr


def test_a_service_key_on_its_own_redis_from_the_environment(tmp_path):
    """WORKER_MODE_REDIS_URLS as an environment variable; a malformed one stops the process, naming it."""
    code = "from django_rq.settings import QUEUES; print(QUEUES['async-task:process']['URL'])"
    env = site_process_env(tmp_path, WORKER_MODE_REDIS_URLS="async-task:process=redis://10.0.0.9:6390/2?x=1")
    done = manage(env, "shell", "--no-imports", "-c", code)
    assert done.stdout.strip() == "redis://10.0.0.9:6390/2?x=1", done.stderr
    env["WORKER_MODE_REDIS_URLS"] = "redis://10.0.0.9:6390/2"
    done = manage(env, "check")
    assert done.returncode != 0
    assert "WORKER_MODE_REDIS_URLS: 'redis://10.0.0.9:6390/2' is not KEY=VALUE" in done.stderr


@pytest.mark.processes
def test_gunicorn_refuses_to_serve_others_on_the_default_secret(tmp_path, redis_server):
    env = site_process_env(tmp_path, REDIS_URL=redis_server)
    public = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "nocobase_site" / "gunicorn.conf.py"),
         "--bind", f"0.0.0.0:{free_port()}", "nocobase_site.wsgi:application"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert public.returncode != 0
    assert "nocobase_site.E001: SECRET_KEY is not a secret (it is the public laptop default)" in public.stderr
    # The same on loopback (a laptop): it starts.
    port = free_port()
    laptop = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "nocobase_site" / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{port}", "nocobase_site.wsgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        from tests.conftest import http_get

        def up():
            try:
                return http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(up, timeout=30, interval=0.2)
    finally:
        laptop.terminate()
        laptop.wait(30)


@pytest.mark.processes
def test_runnode_refuses_a_public_bind_on_the_default_secret_before_any_worker_starts(tmp_path, redis_server):
    import redis

    env = site_process_env(tmp_path, REDIS_URL=redis_server, WORKER_MODE="")
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runnode", "--bind", f"0.0.0.0:{free_port()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "nocobase_site.E001: SECRET_KEY is not a secret (it is the public laptop default)" in done.stderr
    assert "Listening on" not in done.stderr and "gunicorn" not in done.stderr.lower()  # nothing started
    assert not redis.Redis.from_url(redis_server).keys("rq:worker:*")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WORKER_MODE_PROCESSES", "abc", "worker_mode.E"),  # text reaches the system checks
        ("ASYNC_TASKS_BATCH_SIZE", "x", "async_tasks.E"),
        ("CONN_MAX_AGE", "q", "CONN_MAX_AGE='q' is not a whole number."),  # no check reads it
        ("WORKER_MODE_RESTART_LIMIT", "many", "worker_mode.E014"),
        ("WORKER_MODE_WORKER_NICE", "high", "worker_mode.E015"),
    ],
)
def test_environment_values_that_are_not_numbers_are_named(tmp_path, variable, value, expected):
    done = manage(site_process_env(tmp_path, **{variable: value}), "check")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert expected in output and variable in output
    if expected.endswith("."):  # stopped at settings: the last line says why
        assert output.strip().splitlines()[-1].endswith(expected)


def test_a_refused_request_is_logged_in_one_line(client, caplog, db):
    import logging

    from django.contrib.auth.models import User

    from nocobase_site.log import RefusalsWithoutTraceback

    staff = User.objects.create_user("plain-staff", password="pw-plain-12345", is_staff=True)
    client.force_login(staff)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get("/admin/worker_mode/cluster/").status_code == 403
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    # Django attaches the PermissionDenied's traceback; the site's console handler drops it.
    assert record.exc_info is None and "Forbidden (Permission denied)" in record.getMessage()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        crash = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "x", (), sys.exc_info())
    crash.status_code = 500
    RefusalsWithoutTraceback().filter(crash)
    assert crash.exc_info is not None  # a 500 keeps its traceback


def test_settings_come_from_the_environment_only_when_set(tmp_path):
    script = (
        "import django; django.setup(); from django.conf import settings; from worker_mode.conf import conf; "
        "print(conf.WORKER_MODE_NODE_NAME, conf.WORKER_MODE_RESTART_LIMIT, "
        "hasattr(settings, 'WORKER_MODE_RESTART_LIMIT'), hasattr(settings, 'RQ'))"
    )

    def run(**env):
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=site_process_env(tmp_path, **env),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    # Unset: the app's default (one place), nothing in the site's settings; RQ (no effect) is gone.
    assert run(WORKER_MODE_NODE_NAME="n1")[1:] == ["5", "False", "False"]
    assert run(WORKER_MODE_NODE_NAME="n1", WORKER_MODE_RESTART_LIMIT="7")[:3] == ["n1", "7", "True"]
    assert run(NODE_NAME="short-alias")[0] == "short-alias"  # the documented alias
    assert run(NODE_NAME="alias", WORKER_MODE_NODE_NAME="full")[0] == "full"  # the setting's name wins


def test_a_service_key_given_twice_in_the_environment_stops_the_process(tmp_path):
    env = site_process_env(
        tmp_path,
        WORKER_MODE_REDIS_URLS="async-task:process=redis://a:6379/0,async-task:process=redis://b:6379/0",
    )
    done = manage(env, "check")
    assert done.returncode != 0
    assert "WORKER_MODE_REDIS_URLS: 'async-task:process' is given twice." in done.stderr


def test_postgresql_connections_give_up_on_a_silent_database_host(tmp_path):
    """connect_timeout for new connections; keepalives and tcp_user_timeout for open ones (a host
    cut off sends no reset: the OS alone would wait minutes to hours)."""
    code = "from django.conf import settings; print(sorted(settings.DATABASES['default']['OPTIONS'].items()))"
    env = {**site_process_env(tmp_path), "DATABASE_URL": "postgres://u@db.invalid:5432/site"}
    done = manage(env, "shell", "--no-imports", "-c", code)
    assert done.stdout.strip() == (
        "[('connect_timeout', 10), ('keepalives', 1), ('keepalives_count', 3), ('keepalives_idle', 10), "
        "('keepalives_interval', 5), ('tcp_user_timeout', 30000)]"
    ), done.stderr
