"""Refuse to start a server process with a bad WORKER_MODE.

manage.py commands get this from Django's system checks; WSGI/ASGI servers
(gunicorn, uvicorn, ...) never run them, so the site's wsgi.py/asgi.py and
gunicorn's ``on_starting`` hook call :func:`validate`.
"""

from __future__ import annotations

import logging

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
