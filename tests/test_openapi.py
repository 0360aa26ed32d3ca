"""The OpenAPI document of the JSON API: it covers every /api/ URL with its methods, it is served,
and schemathesis — a client nobody here wrote — runs it against a live node: no 5xx, every answer
as documented, schema-violating requests refused, unauthenticated ones too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from nocobase_site.openapi import document
from tests.conftest import ROOT, free_port, wait_for_http

pytestmark = pytest.mark.django_db


def api_routes(patterns=None, prefix: str = "") -> dict[str, object]:
    """Every URL under /api/ (an OpenAPI path such as /api/tasks/{pk}) and its view."""
    routes: dict[str, object] = {}
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes.update(api_routes(pattern.url_patterns, route))
        elif isinstance(pattern, URLPattern) and route.startswith("api/"):
            routes["/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)] = pattern.callback
    return routes


def test_the_document_describes_every_api_url_and_method():
    paths = document()["paths"]
    routes = api_routes()
    routes.pop("/api/openapi.json")
    assert sorted(paths) == sorted(routes)
    for path, view in routes.items():
        documented = sorted(method.upper() for method in paths[path])
        assert documented == sorted(view.allowed_methods), path


def test_the_document_is_served_to_anyone(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.json()["openapi"] == "3.0.3"
    assert response.json() == json.loads(json.dumps(document()))


def test_unknown_api_urls_answer_json(client):
    response = client.get("/api/nothing/here")
    assert response.status_code == 404 and response.json() == {"error": "Not found."}
    assert client.get("/api/tasks/not-a-number").json() == {"error": "Not found."}


SETUP = """
from django.contrib.auth.models import User
from api_tokens.models import ApiToken
from workflows.models import Node, Workflow
user = User.objects.create_superuser("client", "client@example.com", "pw-client-12345")
flow = Workflow.objects.create(key="double", title="double", enabled=True, trigger_type="manual")
expression = "{{ $context.data.n }} * 2"
Node.objects.create(workflow=flow, key="n", type="calculation", config={"expression": expression})
print(ApiToken.issue(user, "schemathesis")[1])
"""

CONFIG = """
[[operations]]
include-name = "POST /api/workflows/{key}/trigger"
parameters = { key = "double" }
"""


@pytest.mark.processes
def test_schemathesis_finds_nothing_against_a_live_node(start_node, site_env, tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", SETUP],
        cwd=ROOT, env=site_env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    token = done.stdout.strip().splitlines()[-1]
    port = free_port()
    node = start_node(["runnode", "--bind", f"127.0.0.1:{port}"], "!", **site_env)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", node)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or "schemathesis",
        "--config-file", str(config), "run", f"http://127.0.0.1:{port}/api/openapi.json",
        "-H", f"Authorization: Bearer {token}",
        # Everything but "schema-valid data must be accepted": the API checks more than a schema
        # can say (a file's contents, a field's name, a workflow key that exists).
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "30"),
        "--seed", os.environ.get("SCHEMATHESIS_SEED", "20261201"),
        "--workers", "1",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and "0 failures" not in run.stdout or "passed" in run.stdout
    assert "Internal server error" not in node.log


@pytest.mark.django_db
def test_a_request_django_refuses_answers_json_under_api(client, task_storage):
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-12345"))
    fields = {f"f{i}": "x" for i in range(1500)}  # over DATA_UPLOAD_MAX_NUMBER_FIELDS: Django's 400
    response = client.post("/api/import/catalog.Product", fields)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json" and "error" in response.json()
    page = client.post("/admin/catalog/product/import/", fields)
    assert page.status_code == 400 and "json" not in page["Content-Type"]
