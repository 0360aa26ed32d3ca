"""The site's cluster on lab hosts: PostgreSQL on ``db``, Redis on ``redis-a`` and ``redis-b``, and
nodes running ``manage.py runnode`` with their own WORKER_MODE, as the README's cluster examples do.

    with Lab(directory) as lab:
        cluster = Cluster(lab)            # db, redis-a, redis-b; migrated; an admin and a token
        cluster.start_node("web", "!")    # a host named web, gunicorn on <its address>:8000
        cluster.start_node("wf", "workflow:process")
        cluster.api("GET", "/api/tasks")  # over HTTP to the web host, from this machine

Every node shares DATABASE_URL (the db host), REDIS_URL (redis-a: presence and every queue) and,
with ``own_redis={"async-task:process": "redis-b"}`` (the default), that key's queue on redis-b.
Task files live in a directory every host sees (the lab's ``shared/``), as a shared volume would.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import psycopg

from . import Host, Lab, wait_port

ROOT = Path(__file__).resolve().parent.parent
PORT = 8000
#: The hosts every cluster has, in address order (db is .2, web .5, ...); more are added on demand.
HOSTS = ("db", "redis-a", "redis-b", "web", "wf", "tasks")


def multipart(filename: str, content: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and the file ``content`` as "file"; and its type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: text/csv\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def postgres_bin() -> Path:
    """The newest PostgreSQL server installed from Debian's packages."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
    )
    if not found:
        raise RuntimeError("PostgreSQL is not installed (Debian: postgresql)")
    return found[-1].parent


class Postgres:
    """A PostgreSQL server of its own on ``host``, listening on the host's address only."""

    def __init__(self, host: Host, *, settings: dict[str, str] | None = None) -> None:
        self.host = host
        # Its own directory outside the lab's (which may be private to root, as pytest's are).
        base = Path(tempfile.mkdtemp(prefix=f"{host.lab.name}-pg-"))
        base.chmod(0o711)
        host.lab.on_close(lambda: shutil.rmtree(base, ignore_errors=True))
        self.dir = base / "data"
        self.bin = postgres_bin()
        self.settings = {"max_connections": "200", **(settings or {})}
        self.url = f"postgres://postgres@{host.ip}:5432/postgres"
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres")
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / "initdb"), "-D", str(self.dir), "-A", "trust",
             "-U", "postgres"], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        with (self.dir / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {host.lab.subnet}.0/24 trust\n")

    def start(self) -> None:
        options = [f"-c{name}={value}" for name, value in self.settings.items()]
        argv = [str(self.bin / "postgres"), "-D", str(self.dir), "-k", str(self.dir), "-p", "5432",
                f"-clisten_addresses={self.host.ip}", *options]  # fmt: skip
        process = self.host.spawn("postgres", argv, user="postgres", cwd=self.dir)
        wait_port(self.host.ip, 5432, alive=lambda: process.popen.poll() is None)
        deadline = time.monotonic() + 30
        while True:  # accepting connections is not yet accepting queries (crash recovery)
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def reboot(self) -> None:
        """The database host goes down hard and boots again: PostgreSQL recovers from its WAL."""
        self.host.lose()
        self.host.processes.clear()
        self.start()


class Redis:
    """A redis-server on ``host`` that keeps nothing on disk (a restart brings it back empty)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.url = f"redis://{host.ip}:6379/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure_redis.sh install)")
        argv = [binary, "--bind", self.host.ip, "--port", "6379", "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--dir", str(self.host.lab.directory)]  # fmt: skip
        process = self.host.spawn("redis", argv)
        wait_port(self.host.ip, 6379, alive=lambda: process.popen.poll() is None)

    def stop(self) -> None:
        self.host.stop("redis")


class Cluster:
    """The database and Redis hosts, migrated, with an administrator and an API token; nodes are
    started with :meth:`start_node` on hosts of their own."""

    def __init__(
        self,
        lab: Lab,
        *,
        settings_module: str = "nocobase_site.settings",
        own_redis: dict[str, str] | None = None,
        cpus: dict[str, float | None] | None = None,
        env: dict[str, str] | None = None,
        postgres_settings: dict[str, str] | None = None,
    ) -> None:
        self.lab = lab
        self.cpus = cpus or {}
        self.shared = lab.directory / "shared"
        self.shared.mkdir(exist_ok=True)
        self.extra_env = env or {}
        self.settings_module = settings_module
        self.secret_key = secrets.token_urlsafe(50)
        for name in HOSTS:
            self._host(name)
        self.db = Postgres(self._host("db"), settings=postgres_settings)
        self.db.start()
        self.redis = {name: Redis(self._host(name)) for name in ("redis-a", "redis-b")}
        for server in self.redis.values():
            server.start()
        self.own_redis = {"async-task:process": "redis-b"} if own_redis is None else own_redis
        self.nodes: dict[str, str] = {}  # host name -> WORKER_MODE
        self.admin_password = secrets.token_urlsafe(12)
        self.token = self.setup()

    def _host(self, name: str) -> Host:
        return self.lab.hosts.get(name) or self.lab.add_host(name, cpus=self.cpus.get(name))

    @property
    def redis_url(self) -> str:
        return self.redis["redis-a"].url

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        """What every node of this cluster is started with, as its deployment would set it."""
        own = ",".join(f"{key}={self.redis[server].url}" for key, server in self.own_redis.items())
        addresses = ",".join(h.ip for h in self.lab.hosts.values())
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": self.settings_module,
            "SECRET_KEY": self.secret_key,
            "ALLOWED_HOSTS": f"{addresses},{self.lab.gateway}",
            "DATABASE_URL": self.db.url,
            "REDIS_URL": self.redis_url,
            "WORKER_MODE_REDIS_URLS": own,
            "ASYNC_TASKS_DIR": str(self.shared),
            "VAR_DIR": str(self.lab.directory / "var" / host.name),
            "WORKFLOWS_HTTP_ALLOWED_NETWORKS": f"{self.lab.subnet}.0/24",
            "NODE_NAME": host.name,
            **self.extra_env,
            **extra,
        }

    def manage(self, host: Host, *args: str, timeout: float = 180) -> str:
        return host.run([sys.executable, str(ROOT / "manage.py"), *args], env=self.env(host), timeout=timeout)

    def django(self, code: str, *, host: str = "web") -> Any:
        """Run ``code`` in the site's Django on ``host`` (a process of its own beside the node);
        what it assigns to ``result`` comes back (as JSON)."""
        script = f"import json\nresult = None\n{code}\nprint('\\n' + json.dumps(result, default=str))"
        output = self.manage(self.lab.hosts[host], "shell", "--no-imports", "-c", script)
        return json.loads(output.strip().splitlines()[-1])

    def setup(self) -> str:
        """Migrate, load the demo (its webhook on the web host), make an administrator and a token."""
        web = self.lab.hosts["web"]
        self.manage(web, "migrate", "--noinput", "-v", "0")
        self.manage(web, "loaddemo", "--webhook-url", f"{self.url('web')}/catalog/webhook")
        return self.django(
            "from django.contrib.auth.models import User\n"
            "from api_tokens.models import ApiToken\n"
            f"admin = User.objects.create_superuser('admin', 'admin@lab.invalid', {self.admin_password!r})\n"
            "result = ApiToken.issue(admin, 'lab')[1]"
        )

    def start_node(
        self, host_name: str, worker_mode: str, *args: str, cpus: float | None = None, wait: bool = True,
        **extra: str,
    ) -> Host:  # fmt: skip
        """``runnode`` on the host ``host_name`` (made on first use), serving ``worker_mode``; with
        ``wait``, returns once its gunicorn answers (see :meth:`wait_node`)."""
        host = self.lab.hosts.get(host_name) or self.lab.add_host(
            host_name, cpus=cpus or self.cpus.get(host_name)
        )
        argv = [sys.executable, str(ROOT / "manage.py"), "runnode", "--bind", f"{host.ip}:{PORT}", *args]
        host.spawn("node", argv, env={**self.env(host, **extra), "WORKER_MODE": worker_mode})
        self.nodes[host_name] = worker_mode
        if wait:
            self.wait_node(host_name)
        return host

    def wait_node(self, host_name: str, timeout: float = 60) -> None:
        host = self.lab.hosts[host_name]
        process = host.processes["node"]
        wait_port(host.ip, PORT, timeout=timeout, alive=lambda: process.popen.poll() is None)

    def url(self, host_name: str = "web") -> str:
        return f"http://{self.lab.hosts[host_name].ip}:{PORT}"

    # -- over the network, from this machine ----------------------------------------------------
    def api(self, method: str, path: str, data: Any = None, *, host: str = "web", raw: bytes | None = None,
            content_type: str = "", timeout: float = 30) -> tuple[int, Any]:  # fmt: skip
        """One request to a node's JSON API with the cluster's token: (status, decoded JSON or bytes)."""
        body = raw if raw is not None else (json.dumps(data).encode() if data is not None else None)
        request = urllib.request.Request(self.url(host) + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if content_type or data is not None:
            request.add_header("Content-Type", content_type or "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload

    def upload(self, path: str, filename: str, content: bytes, fields: dict[str, str] | None = None):
        body, content_type = multipart(filename, content, fields or {})
        return self.api("POST", path, raw=body, content_type=content_type)

    def admin_page(self, path: str, *, host: str = "web") -> str:
        """An admin page as the administrator sees it (logged in through the login form)."""
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        login = self.url(host) + "/admin/login/"
        opener.open(login, timeout=30).read()
        csrf = next(c.value for c in jar if c.name == "csrftoken")
        form = urllib.parse.urlencode(
            {"username": "admin", "password": self.admin_password, "csrfmiddlewaretoken": csrf, "next": path}
        ).encode()
        request = urllib.request.Request(login, data=form, headers={"Referer": login})
        with opener.open(request, timeout=30) as response:
            return response.read().decode()

    def sql(self, query: str, *params: Any) -> list[tuple]:
        """Rows of ``query`` on the db host, read over the lab network."""
        with psycopg.connect(self.db.url, connect_timeout=5) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def map(self) -> str:
        roles = {"db": "PostgreSQL", "redis-a": "Redis: presence, every other queue"}
        for key, server in self.own_redis.items():
            roles[server] = f"Redis: {key}"
        roles.update({name: f"WORKER_MODE={mode!r}" for name, mode in self.nodes.items()})
        lines = [self.lab.map(), "", "roles:"]
        lines += [f"  {name:<8} {role}" for name, role in roles.items()]
        return "\n".join(lines)
