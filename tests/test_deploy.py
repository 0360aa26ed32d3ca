"""The deployment files: every manifest parses, every WORKER_MODE is valid, the roles of each
example cover every registered service key, probes, the Service and grace periods fit."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from worker_mode import parse, services
from worker_mode.defaults import WORKER_MODE_SHUTDOWN_GRACE

pytestmark = pytest.mark.engine_independent  # files of deploy/ only

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_EXAMPLES = ["three-node.yaml", "four-node.yaml"]


def k8s_documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if doc]


def deployments(name: str) -> list[dict]:
    return [doc for doc in k8s_documents(name) if doc["kind"] == "Deployment"]


def container_env(deployment: dict) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def check_mode(raw: str) -> set[str]:
    """The service keys ``raw`` serves; fails on a syntax error or an unregistered key."""
    mode = parse(raw)
    unknown = [key for key in mode.keys if key not in services]
    assert not unknown, f"WORKER_MODE {raw!r} names unregistered keys {unknown}"
    return set(mode.served_keys(services.keys()))


def test_every_manifest_file_parses():
    files = sorted((DEPLOY / "k8s").glob("*.yaml")) + [DEPLOY / "docker-compose.yml"]
    assert len(files) == 4
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert documents, path


#: The oldest Kubernetes release kubernetes-validate has schemas for, and its newest.
K8S_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml")))
def test_kubernetes_manifests_match_the_kubernetes_schemas(name, version):
    checked = 0
    for doc in k8s_documents(name):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a KEDA custom resource: no schema ships with Kubernetes (its names are checked below)
        kubernetes_validate.validate(doc, version, strict=True)  # strict: unknown fields are errors
        checked += 1
    assert checked or name == "keda.yaml"


def test_the_schema_check_refuses_a_misspelt_field():
    deployment = copy.deepcopy(deployments("three-node.yaml")[0])
    deployment["spec"]["replica"] = 2  # "replicas"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_kubernetes_roles_are_valid_and_cover_every_service(name):
    covered: set[str] = set()
    for deployment in deployments(name):
        covered |= check_mode(container_env(deployment)["WORKER_MODE"])
    assert covered == set(services.keys())


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_kubernetes_deployments_probe_run_and_stop_like_the_workers(name):
    for deployment in deployments(name):
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["command"] == ["python", "manage.py", "runnode"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = container_env(deployment)
        grace = float(env.get("WORKER_MODE_SHUTDOWN_GRACE") or WORKER_MODE_SHUTDOWN_GRACE)
        # The orchestrator's kill must come after the workers' warm shutdown.
        assert spec["terminationGracePeriodSeconds"] > grace, deployment["metadata"]["name"]
        assert "NODE_NAME" in env  # from the pod name: recovery tells nodes apart by it
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_the_service_selects_only_request_nodes(name):
    documents = k8s_documents(name)
    (service,) = [d for d in documents if d["kind"] == "Service"]
    selector = service["spec"]["selector"].items()
    selected = [
        d for d in deployments(name) if selector <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert selected
    for deployment in deployments(name):
        serves_requests = parse(container_env(deployment)["WORKER_MODE"]).serves_requests
        assert (deployment in selected) == serves_requests, deployment["metadata"]["name"]


def test_keda_scales_worker_deployments_on_their_own_queues():
    targets = {d["metadata"]["name"]: d for d in deployments("three-node.yaml")}
    scaled = k8s_documents("keda.yaml")
    assert len(scaled) == 2
    for item in scaled:
        target = targets[item["spec"]["scaleTargetRef"]["name"]]
        keys = check_mode(container_env(target)["WORKER_MODE"])
        (trigger,) = item["spec"]["triggers"]
        assert trigger["metadata"]["listName"] in {f"rq:queue:{services.get(k).queue_name}" for k in keys}


def test_the_migrate_job_is_transient():
    (job,) = [d for d in k8s_documents("three-node.yaml") if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert parse(env["WORKER_MODE"]).transient and "migrate" in container["command"]


def test_compose_runs_the_three_node_example():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    nodes = {name: svc for name, svc in compose["services"].items() if name.startswith("node")}
    modes = {name: svc["environment"]["WORKER_MODE"] for name, svc in nodes.items()}
    assert modes == {"node1": "!", "node2": "workflow:process", "node3": "async-task:process"}
    covered = set().union(*(check_mode(mode) for mode in modes.values()))
    assert covered == set(services.keys())
    assert parse(compose["services"]["migrate"]["environment"]["WORKER_MODE"]).transient
    assert list(nodes["node1"]["ports"]) == ["8000:8000"] and "ports" not in nodes["node2"]
    for svc in nodes.values():
        grace = float(svc["environment"].get("WORKER_MODE_SHUTDOWN_GRACE", WORKER_MODE_SHUTDOWN_GRACE))
        assert float(svc["stop_grace_period"].rstrip("s")) > grace
        assert "tasks:/data/tasks" in svc["volumes"]


def test_procfile_roles_are_valid_and_cover_every_service():
    covered: set[str] = set()
    text = (DEPLOY / "Procfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    for line in lines:
        kind, _, command = line.partition(":")
        match = re.search(r"WORKER_MODE=(\S+)", command)
        assert match, line
        (raw,) = shlex.split(match.group(1))
        keys = check_mode(raw)
        if kind != "release":
            covered |= keys
    assert covered == set(services.keys())


def test_the_dockerfile_runs_runnode_and_stops_warmly():
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'CMD ["python", "manage.py", "runnode"]' in text
    assert "STOPSIGNAL SIGTERM" in text and "USER site" in text
    assert "/healthz" in text


def test_the_dockerfile_installs_both_distributions_from_the_checkout():
    import tomllib

    text = (DEPLOY / "Dockerfile").read_text()
    site = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    for pattern in site["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY {package} ./{package}" in text
    # django-worker-mode's project, and worker_mode/, its symlink's target.
    assert "COPY packaging/django-worker-mode ./packaging/django-worker-mode" in text
    assert "COPY worker_mode ./worker_mode" in text
    # One command: the site's requirement on django-worker-mode is met by the checkout's.
    assert "pip install ./packaging/django-worker-mode . " in text


def _cluster_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster_script", DEPLOY.parent / "scripts" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres:///shop", {"dbname": "postgres"}),  # the socket, as the OS user
        ("postgres://postgres@/shop", {"dbname": "postgres", "user": "postgres"}),
        (
            "postgres://app:s3cret@10.0.0.5:6432/shop",
            {"dbname": "postgres", "host": "10.0.0.5", "port": 6432, "user": "app", "password": "s3cret"},
        ),
    ],
)
def test_make_cluster_takes_any_postgres_url_django_takes(url, expected, monkeypatch):
    import psycopg

    seen = []

    class Connection:
        def __init__(self, **kwargs):
            seen.append(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def execute(self, query, params=None):
            seen.append(params or str(query))
            return self

        def fetchone(self):
            return None  # missing: created

    monkeypatch.setattr(psycopg, "connect", lambda **kwargs: Connection(**kwargs))
    monkeypatch.setenv("DATABASE_URL", url)
    assert _cluster_script().database_url() == url
    assert {k: v for k, v in seen[0].items() if k != "autocommit"} == expected
    assert seen[1] == ["shop"]


def test_make_cluster_names_the_role_when_postgres_refuses_it(monkeypatch):
    import psycopg

    def refuse(**kwargs):
        raise psycopg.OperationalError('FATAL:  role "nobody" does not exist')

    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setenv("DATABASE_URL", "postgres://nobody@/shop")
    with pytest.raises(SystemExit) as raised:
        _cluster_script().database_url()
    message = str(raised.value)
    assert "as role 'nobody'" in message and "postgres://postgres@/nocobase_cluster" in message
    assert "createuser --createdb nobody" in message
