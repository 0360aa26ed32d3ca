"""`make cluster`: the README's three-node example on this machine, for humans.

node1 '!' (HTTP on 127.0.0.1:8000), node2 'workflow:process' (:8001, health and 503
only), node3 'async-task:process' (:8002), sharing PostgreSQL (DATABASE_URL, default: a
database nocobase_cluster on the local server, created if missing), REDIS_URL and a
task-file folder. Output lines are prefixed with the node's name; Ctrl-C stops all three
with a warm shutdown.
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODES = [("node1", "!", 8000), ("node2", "workflow:process", 8001), ("node3", "async-task:process", 8002)]


def database_url() -> str:
    """DATABASE_URL, its database created if missing; any URL Django accepts, sockets included."""
    url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/nocobase_cluster"
    if not url.startswith("postgres"):
        return url
    import dj_database_url
    import psycopg
    from psycopg import sql

    config = dj_database_url.parse(url)
    name = config["NAME"]
    params = {
        "dbname": "postgres",  # the maintenance database, to create the cluster's one
        "host": config.get("HOST") or None,  # empty: the local socket
        "port": config.get("PORT") or None,
        "user": config.get("USER") or None,  # empty: the operating-system user's role
        "password": config.get("PASSWORD") or None,
        **{k: v for k, v in config.get("OPTIONS", {}).items() if isinstance(v, str)},
    }
    try:
        with psycopg.connect(**{k: v for k, v in params.items() if v is not None}, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        role = params.get("user") or getpass.getuser()
        sys.exit(
            f"error: cannot reach PostgreSQL at {url} as role {role!r} to create database {name!r}:\n"
            f"  {str(exc).strip()}\n"
            "  A URL without a user connects as the operating-system user's role. Name a role that may\n"
            "  create databases, e.g. DATABASE_URL=postgres://postgres@/nocobase_cluster (socket) or\n"
            "  postgres://postgres@127.0.0.1:5432/nocobase_cluster (TCP), or create the role:\n"
            f"  sudo -u postgres createuser --createdb {role}"
        )
    return url


def pump(name: str, stream) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{name} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def main() -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_MODE")}
    env.update(
        DATABASE_URL=database_url(),
        ASYNC_TASKS_DIR=str(ROOT / "var" / "cluster-tasks"),
        WORKFLOWS_HTTP_ALLOWED_NETWORKS=env.get("WORKFLOWS_HTTP_ALLOWED_NETWORKS", "127.0.0.1"),
        PYTHONUNBUFFERED="1",
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    one_off = {**env, "WORKER_MODE": "-"}
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=one_off, check=True)
    subprocess.run(
        [*manage, "loaddemo", "--webhook-url", "http://127.0.0.1:8000/catalog/webhook"],
        env=one_off,
        check=True,
    )
    processes = []
    for name, mode, port in NODES:
        process = subprocess.Popen(
            [*manage, "runnode", "--bind", f"127.0.0.1:{port}"],
            env={**env, "WORKER_MODE": mode, "NODE_NAME": name},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=pump, args=(name, process.stdout), daemon=True).start()
        processes.append(process)
    print(
        "Three nodes: http://127.0.0.1:8000/admin/ (node1 '!'); node2 runs workflows, node3 imports/exports."
    )
    print("Watch them: python manage.py workermode --cluster   (Ctrl-C stops all three)")

    stopping = threading.Event()

    def stop(signum=None, frame=None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping.wait(0.5):
        for process in processes:
            if process.poll() is not None:
                print(f"a node exited with {process.returncode}; stopping the others", file=sys.stderr)
                code = 1
                stopping.set()
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
