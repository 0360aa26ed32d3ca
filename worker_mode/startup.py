"""Refuse to start a server process with a bad WORKER_MODE; wait for a migrated database.

manage.py commands get the configuration checks from Django's system checks;
WSGI/ASGI servers (gunicorn, uvicorn, ...) never run them, so the site's
wsgi.py/asgi.py and gunicorn's ``on_starting`` hook call :func:`validate`.
Workers wait for the database's migrations (:func:`wait_for_migrations`) and
``/readyz`` reports pending ones (:func:`pending_migrations`).
"""

from __future__ import annotations

import logging
import time

from .checks import startup_errors
from .exceptions import WorkerModeError
from .node import current_mode, served_keys

logger = logging.getLogger(__name__)


def validate() -> None:
    """Raise WorkerModeError listing every worker_mode configuration error."""
    errors = startup_errors()
    if errors:
        details = " ".join(f"{e.id}: {e.msg} {e.hint or ''}".strip() for e in errors)
        raise WorkerModeError(f"This node cannot start: {details}")
    mode = current_mode()
    logger.debug(
        "WORKER_MODE=%r: serves requests: %s; services: %s",
        mode.raw,
        "yes" if mode.serves_requests else "no",
        ", ".join(served_keys(mode)) or "none",
    )


_migrated: set[str] = set()


def pending_migrations(using: str = "default") -> list[str]:
    """Migrations of installed apps not applied to the database ``using`` ("app.name" each).

    Once a database is found fully migrated, the answer is kept for the process's
    life (a deploy that adds migrations restarts the processes). Raises
    DatabaseError when the database does not answer.
    """
    if using in _migrated:
        return []
    from django.db import connections
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[using])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    pending = [f"{migration.app_label}.{migration.name}" for migration, backwards in plan if not backwards]
    if not pending:
        _migrated.add(using)
    return pending


def wait_for_migrations(*, using: str = "default", interval: float = 5.0, stop=None) -> None:
    """Block until the database answers and has every migration; one log line per state, not a loop
    of tracebacks. ``stop()`` returning True ends the wait early (a shutdown)."""
    from django.db import DatabaseError, connections

    said = ""
    while True:
        try:
            pending = pending_migrations(using)
        except DatabaseError as exc:
            state = f"The database does not answer ({str(exc).strip().splitlines()[0][:200]}); waiting"
        else:
            if not pending:
                if said:
                    logger.info("The database is ready; starting")
                return
            shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
            state = (
                f"The database lacks {len(pending)} migration(s) ({shown}): run `manage.py migrate`; waiting"
            )
        finally:
            connections[using].close()
        if state != said:
            logger.warning("%s", state)
            said = state
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline:
            if stop is not None and stop():
                return
            time.sleep(0.2)
