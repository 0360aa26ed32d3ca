from __future__ import annotations

import json
import logging

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, override_settings

from worker_mode.middleware import WorkerModeMiddleware

REJECTING = ["*", "workflow:process", "-", "workflow:process,async-task:process"]
SERVING = ["", "!", "!,workflow:process", "!,*"]


def assert_rejected(response, mode):
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = json.loads(response.content)
    assert body == {
        "error": "service_unavailable",
        "detail": "This node does not serve HTTP requests.",
        "worker_mode": mode,
    }


@pytest.mark.parametrize("mode", REJECTING)
def test_rejects_requests(client, mode):
    with override_settings(WORKER_MODE=mode):
        assert_rejected(client.get("/"), mode)
        assert_rejected(client.post("/admin/login/", {"username": "x"}), mode)


def async_get(path: str, mode: str):
    """A request through Django's ASGI handler, where the middleware runs in async mode."""

    async def get():
        with override_settings(WORKER_MODE=mode):
            return await AsyncClient().get(path)

    return async_to_sync(get)()


@pytest.mark.parametrize("mode", REJECTING)
def test_rejects_requests_async(mode):
    assert_rejected(async_get("/admin/", mode), mode)


def test_middleware_runs_natively_async():
    async def view(request):
        return "from the view"

    middleware = WorkerModeMiddleware(view)
    assert middleware.async_mode
    with override_settings(WORKER_MODE="!"):
        assert async_to_sync(middleware)(None) == "from the view"


@pytest.mark.parametrize("mode", SERVING)
def test_serves_requests(client, mode):
    with override_settings(WORKER_MODE=mode):
        response = client.get("/")
    assert response.status_code == 200
    assert b"Sign in to the admin" in response.content


@pytest.mark.parametrize("mode", SERVING)
def test_serves_requests_async(mode):
    assert async_get("/", mode).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("mode", REJECTING + SERVING)
def test_health_paths_are_exempt(client, redis_conn, mode):
    with override_settings(WORKER_MODE=mode):
        assert client.get("/healthz").json() == {"status": "ok"}
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


@pytest.mark.parametrize("mode", REJECTING)
def test_health_paths_are_exempt_async(mode):
    assert async_get("/healthz", mode).status_code == 200


@pytest.mark.django_db
def test_readyz_names_a_dead_redis(client):
    with override_settings(WORKER_MODE="*", REDIS_URL="redis://127.0.0.1:1/0"):
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failing"
    assert body["failing"] == ["redis"]
    assert body["checks"] == {"database": "ok", "redis": "failing"}


def test_exempt_paths_are_a_setting_and_prefixes_end_in_slash(client):
    with override_settings(WORKER_MODE="*", WORKER_MODE_EXEMPT_PATHS=["/admin/"]):
        assert client.get("/healthz").status_code == 503
        assert client.get("/admin/login/").status_code == 200
    with override_settings(WORKER_MODE="*", WORKER_MODE_EXEMPT_PATHS=["/admin"]):
        assert client.get("/admin/login/").status_code == 503


def test_health_endpoints_refuse_writes(client):
    assert client.post("/healthz").status_code == 405


def test_rejection_is_not_logged_as_a_server_error(client, caplog):
    with override_settings(WORKER_MODE="*"), caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get("/").status_code == 503
    assert not [r for r in caplog.records if r.name == "django.request"]
