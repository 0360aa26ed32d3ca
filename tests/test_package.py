"""django-worker-mode as a stranger's project gets it: the wheel, built from the sdist, installed
with its ``tasks`` extra into a fresh virtualenv; a project made by ``django-admin startproject``
with one small app that registers two service keys and defines a task; and real processes run
from that project with a clean environment.

Nothing of this repository may be on the children's ``sys.path``: the project's app refuses to
start if it is, and ``worker_mode`` must come from the virtualenv. pip takes the dependencies
from the package index (or its cache), as a user's pip would: a dependency missing from the
metadata fails here. Without the index (or a cache holding what it needs) the test fails, saying
so, rather than skipping: `make install` needs the same index.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import django
import pytest
import redis

import worker_mode
from tests.conftest import ROOT, free_port, http_get, wait_until
from worker_mode.supervisor import process_tree

# Runs once in CI: no database engine of this suite plays a part (the project has its own SQLite).
pytestmark = [pytest.mark.processes, pytest.mark.engine_independent, pytest.mark.timeout(600)]

PACKAGE = ROOT / "packaging" / "django-worker-mode"
DIST = f"django_worker_mode-{worker_mode.__version__}"

#: The fresh project's app: two service keys, a job, a view, and a guard that runs in every
#: process that sets Django up (manage.py, gunicorn's workers, rq's workers).
THUMBS = {
    "__init__.py": "",
    "apps.py": """
        import os
        import sys
        from pathlib import Path

        from django.apps import AppConfig
        from django.core.exceptions import ImproperlyConfigured


        class ThumbsConfig(AppConfig):
            name = "thumbs"

            def ready(self):
                import worker_mode
                from worker_mode import register_service

                forbidden = Path(os.environ["NOT_ON_SYS_PATH"]).resolve()
                leaked = [p for p in sys.path if Path(p or ".").resolve().is_relative_to(forbidden)]
                if leaked:
                    raise ImproperlyConfigured(f"{forbidden} is on sys.path: {leaked}")
                if not Path(worker_mode.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()):
                    raise ImproperlyConfigured(f"worker_mode comes from {worker_mode.__file__}")
                register_service("thumbs:process", description="Thumbnails")
                register_service("other:process", description="Something else")
    """,
    "jobs.py": """
        from pathlib import Path


        def make(path, text):
            Path(path).write_text(text)
    """,
    "tasks.py": """
        from worker_mode.tasks import task


        @task(queue_name="thumbs:process")
        def make_thumbnail(image_id: int) -> str:
            return f"thumbnail of {image_id}"
    """,
    "views.py": """
        from django.http import HttpResponse


        def hello(request):
            return HttpResponse("hello")
    """,
}

SETTINGS = """

# worker_mode, as django-worker-mode's README says.
import os

from worker_mode.queues import ServiceQueues

INSTALLED_APPS += ["django_rq", "worker_mode", "thumbs"]
MIDDLEWARE = ["worker_mode.middleware.WorkerModeMiddleware", *MIDDLEWARE]
WORKER_MODE = os.environ.get("WORKER_MODE", "")
REDIS_URL = os.environ["REDIS_URL"]
RQ_QUEUES = ServiceQueues()

# Django's Tasks API, as the README's "Background work" section says.
TASKS = {"default": {"BACKEND": "worker_mode.tasks.RQBackend"}}
import django

if django.VERSION < (6, 0):
    INSTALLED_APPS += ["django_tasks"]  # the backport, from the `tasks` extra
"""

URLS = """

from django.urls import include

import thumbs.views

urlpatterns += [path("hello", thumbs.views.hello), path("", include("worker_mode.urls"))]
"""

WSGI = """

from worker_mode.startup import validate

validate()
"""

PROBE = """
import django, importlib.metadata, json, sys, worker_mode
print(json.dumps({"file": worker_mode.__file__, "version": worker_mode.__version__,
                  "installed": importlib.metadata.version("django-worker-mode"), "path": sys.path,
                  "django": django.__version__}))
"""


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")


#: What pip says when it could not get a distribution (from the index, or its cache).
_NOT_DOWNLOADED = (
    "Could not find a version",
    "No matching distribution",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
)


def _run(argv: list[str], what: str, **kwargs) -> None:
    """Run a step that needs the package index (or pip's cache), as `make install` does. It never
    skips: a machine that installed this suite reached the same index, and a test that skipped
    without it could pass a broken package unseen. A failure for want of the index says so."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, **kwargs)
    if done.returncode == 0:
        return
    output = (done.stdout + done.stderr)[-4000:]
    if any(sign in done.stdout + done.stderr for sign in _NOT_DOWNLOADED):
        output = f"pip could not get a distribution from {_index_url()} or its cache:\n{output}"
    raise AssertionError(f"{what} failed (exit {done.returncode}):\n{output}")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The sdist and the wheel built from it (``python -m build`` does both, in that order)."""
    out = tmp_path_factory.mktemp("dist")
    try:
        _run([sys.executable, "-m", "build", "--outdir", str(out), str(PACKAGE)], "python -m build")
        yield out / f"{DIST}.tar.gz", out / f"{DIST}-py3-none-any.whl"
    finally:
        shutil.rmtree(out, ignore_errors=True)


@dataclass
class Project:
    directory: Path
    venv: Path
    redis_url: str

    def env(self, worker_mode: str) -> dict[str, str]:
        """A clean environment: no PYTHONPATH, nothing of the test session's."""
        return {
            "PATH": f"{self.venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.directory),
            "LANG": "C.UTF-8",
            "REDIS_URL": self.redis_url,
            "WORKER_MODE": worker_mode,
            "NOT_ON_SYS_PATH": str(ROOT),
        }

    def argv(self, *args: str) -> list[str]:
        return [str(self.venv / "bin" / "python"), "manage.py", *args]

    def manage(self, *args: str, worker_mode: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args),
            cwd=self.directory,
            env=self.env(worker_mode),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def shell(self, code: str, worker_mode: str = "!") -> str:
        """The last line ``code`` printed (Django 5.2's shell may print what it imported first)."""
        done = self.manage("shell", "-c", code, worker_mode=worker_mode)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    @contextlib.contextmanager
    def runnode(self, port: int, worker_mode: str, log_path: Path) -> Iterator[subprocess.Popen]:
        """``runnode`` in a process group of its own, stopped warm and then killed with everything
        it started, whatever the test did."""
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                self.argv("runnode", "--bind", f"127.0.0.1:{port}"),
                cwd=self.directory,
                env=self.env(worker_mode),
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
            try:
                yield process
            finally:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=30)
                if process.poll() is None:  # its children have process groups of their own
                    for pid in process_tree(process.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _outside_the_repository(directory: Path) -> Path:
    """``directory``, or a new one under /tmp when it lies inside this repository (nox points TMPDIR
    at the repository's .nox/): the fresh project must have no path of the repository about it."""
    if not directory.resolve().is_relative_to(ROOT.resolve()):
        return directory
    directory.rmdir()
    return Path(tempfile.mkdtemp(prefix="worker-mode-fresh-", dir="/tmp"))


@pytest.fixture(scope="module")
def project(
    built: tuple[Path, Path], redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    """A fresh virtualenv with the wheel, and a migrated ``startproject`` project that uses it."""
    _, wheel = built
    base = _outside_the_repository(tmp_path_factory.mktemp("fresh"))
    # A Redis database of its own on the session's private server (the suite's tests use 0).
    fresh = Project(base / "project", base / "venv", redis_server.rsplit("/", 1)[0] + "/7")
    client = redis.Redis.from_url(fresh.redis_url)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(fresh.venv)], check=True, timeout=120)
        # The Django of this session, so a version matrix proves each of its Djangos here too.
        _run(
            [
                str(fresh.venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                f"{wheel}[tasks]",  # the backport of django.tasks on Django 5.2, as the README says
                f"Django=={django.__version__}",
            ],
            "pip install django-worker-mode",
        )
        fresh.directory.mkdir()
        subprocess.run(
            [str(fresh.venv / "bin" / "django-admin"), "startproject", "mysite", str(fresh.directory)],
            env=fresh.env(""),
            check=True,
            timeout=60,
        )
        (fresh.directory / "thumbs").mkdir()
        for name, text in THUMBS.items():
            (fresh.directory / "thumbs" / name).write_text(textwrap.dedent(text).lstrip())
        for name, addition in (("settings.py", SETTINGS), ("urls.py", URLS), ("wsgi.py", WSGI)):
            with open(fresh.directory / "mysite" / name, "a") as module:
                module.write(addition)
        migrated = fresh.manage("migrate", "--noinput", worker_mode="-", timeout=120)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        client.flushdb()
        yield fresh
    finally:
        client.flushdb()
        client.close()
        shutil.rmtree(base, ignore_errors=True)


def test_the_distribution_holds_worker_mode_alone(built):
    sdist, wheel = built
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"worker_mode", f"{DIST}.dist-info"}  # nothing of the site, the demo or the tests
    for needed in (
        "worker_mode/py.typed",
        "worker_mode/migrations/0001_initial.py",
        "worker_mode/templates/admin/worker_mode/cluster.html",
        "worker_mode/templatetags/worker_mode.py",
        "worker_mode/management/commands/runnode.py",
        f"{DIST}.dist-info/licenses/LICENSE",
    ):
        assert needed in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    with tarfile.open(sdist) as archive:
        members = {m.name.removeprefix(f"{DIST}/") for m in archive.getmembers() if m.isfile()}
        assert not [m.name for m in archive.getmembers() if m.issym()]  # the link is followed
    assert {"pyproject.toml", "README.md", "LICENSE", "worker_mode/py.typed"} <= members
    assert {m.split("/", 1)[0] for m in members} <= {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "PKG-INFO",
        "setup.cfg",
        "worker_mode",
        "django_worker_mode.egg-info",
    }
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_sites_wheel_holds_its_templates_and_static_files(tmp_path):
    """The site's distribution (make dist) too: its packages' data files are in its wheel. Built
    from a copy of the tracked files, as in a fresh clone: a checkout's egg-info from an earlier
    build would list them for setuptools."""
    packages = ["workflows", "async_tasks", "catalog", "api_tokens", "nocobase_site"]
    tracked = subprocess.run(
        ["git", "ls-files", "pyproject.toml", "README.md", "LICENSE", *packages],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    _run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(source)],
        "python -m build",
    )
    [wheel] = (tmp_path / "dist").glob("nocobase_site-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [name for name in tracked if name.split("/")[0] in packages and not name.endswith(".py")]
    assert data and [name for name in data if name not in names] == []


def test_worker_mode_comes_from_the_wheel_and_nothing_of_this_repository(project):
    seen = json.loads(project.shell(PROBE))
    assert Path(seen["file"]).resolve().is_relative_to(project.venv.resolve())
    assert not [p for p in seen["path"] if Path(p or project.directory).resolve().is_relative_to(ROOT)]
    assert seen["version"] == seen["installed"] == worker_mode.__version__  # one source: __version__
    assert seen["django"] == django.__version__
    site = project.shell("import importlib.util; print(importlib.util.find_spec('workflows'))")
    assert site == "None"  # the site's apps stay in the site


def test_check_refuses_a_typo_and_names_the_registered_keys(project):
    refused = project.manage("check", worker_mode="thumbs:proces")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "(worker_mode.E002) WORKER_MODE names unknown service key 'thumbs:proces'." in refused.stderr
    assert "Did you mean 'thumbs:process'? Registered keys: thumbs:process, other:process." in refused.stderr
    accepted = project.manage("check", worker_mode="thumbs:process")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "System check identified no issues" in accepted.stdout  # W001/W002: the middleware is first


def test_runworkers_burst_runs_only_the_served_queues(project, tmp_path):
    thumbs, other = tmp_path / "thumbs.txt", tmp_path / "other.txt"
    project.shell(
        "from worker_mode import enqueue\n"
        f"enqueue('thumbs:process', 'thumbs.jobs.make', {str(thumbs)!r}, 'thumbs')\n"
        f"enqueue('other:process', 'thumbs.jobs.make', {str(other)!r}, 'other')\n"
    )
    done = project.manage("runworkers", "--burst", worker_mode="thumbs:process", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert thumbs.read_text() == "thumbs"
    assert not other.exists()
    counts = project.shell(
        "from worker_mode import get_queue\n"
        "print(get_queue('thumbs:process').count, get_queue('other:process').count)"
    )
    assert counts.split() == ["0", "1"]  # the other key's job waits for a node that serves it


def test_a_task_runs_on_a_node_serving_its_key_and_any_process_reads_its_result(project):
    enqueued = project.shell(
        "from django.db import transaction\n"
        "from thumbs.tasks import make_thumbnail\n"
        "with transaction.atomic():\n"
        "    result = make_thumbnail.enqueue(7)\n"
        "print(result.id)"
    )
    done = project.manage("runworkers", "--burst", worker_mode="thumbs:process", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = project.shell(
        "import json\n"
        "from thumbs.tasks import make_thumbnail\n"
        f"result = make_thumbnail.get_result({enqueued!r})\n"
        "print(json.dumps([result.status, result.return_value, result.worker_ids]))"
    )
    status, value, workers = json.loads(seen)
    assert (status, value) == ("SUCCESSFUL", "thumbnail of 7")
    assert len(workers) == 1


def test_runnode_serves_requests_on_a_request_node_and_503s_on_a_worker_node(project, tmp_path):
    def answer(url: str, node: subprocess.Popen, log: Path) -> tuple[int, bytes]:
        def answered():
            if node.poll() is not None:
                raise AssertionError(f"runnode exited with {node.returncode}; log:\n{log.read_text()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                return http_get(url, timeout=2)
            return None

        return wait_until(answered, timeout=60, interval=0.2)

    port = free_port()
    log = tmp_path / "requests.log"
    with project.runnode(port, "!", log) as node:
        assert answer(f"http://127.0.0.1:{port}/hello", node, log) == (200, b"hello")

    port = free_port()
    log = tmp_path / "worker.log"
    with project.runnode(port, "thumbs:process", log) as node:
        assert answer(f"http://127.0.0.1:{port}/healthz", node, log)[0] == 200  # probes are exempt
        status, body = http_get(f"http://127.0.0.1:{port}/hello")
    assert status == 503
    assert json.loads(body) == {
        "error": "service_unavailable",
        "detail": "This node does not serve HTTP requests.",
        "worker_mode": "thumbs:process",
    }


def test_the_readme_of_the_distribution_names_every_setting_and_check():
    from worker_mode import defaults

    readme = (PACKAGE / "README.md").read_text()
    settings = [name for name in vars(defaults) if name.isupper()]
    assert settings and [name for name in settings if f"`{name}`" not in readme] == []
    source = " ".join(path.read_text() for path in (ROOT / "worker_mode").glob("*.py"))
    ids = set(re.findall(r"worker_mode\.[EW]\d{3}", source))
    assert ids and sorted(i for i in ids if f"`{i}`" not in readme) == []


def _imported_by_worker_mode() -> dict[str, set[str]]:
    """Top-level modules worker_mode imports (absolute imports), each with the files that do."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "worker_mode").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_worker_mode_imports_nothing_of_the_site_and_only_its_dependencies():
    imported = _imported_by_worker_mode()
    site = {"workflows", "async_tasks", "api_tokens", "catalog", "nocobase_site", "tests", "lab", "bench"}
    assert {name: files for name, files in imported.items() if name in site} == {}
    declared = {
        "worker_mode",
        "django",
        "asgiref",  # Django's own dependency
        "django_rq",
        "rq",
        "redis",
        "prometheus_client",  # django-rq[prometheus]
        "psycopg",  # only on a PostgreSQL connection, whose Django backend needs it anyway
        "django_tasks",  # worker_mode.tasks on Django 5.2: the `tasks` extra (django.tasks on 6)
    }
    third_party = {name: files for name, files in imported.items() if name not in sys.stdlib_module_names}
    assert {name: files for name, files in third_party.items() if name not in declared} == {}
