"""The site's own checks: no node serves requests to others on a secret everyone knows.

``nocobase_site.E001``: ``SECRET_KEY`` is the laptop default or a placeholder (``change-me``,
shorter than 50 characters, fewer than 5 distinct characters, Django's ``django-insecure-``
prefix) while this node serves requests on an address other than loopback. Sessions,
password resets and the demo webhook's token all derive from it. gunicorn's start-up
(``gunicorn.conf.py``) refuses to serve then, whatever the command that started it;
``manage.py check --deploy`` reports it for the bind in ``GUNICORN_BIND`` / ``PORT``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

DEFAULT_SECRET_KEY = "django-insecure-laptop-only-set-SECRET_KEY-in-production"
PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "secret", "insecure")
GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(50))'"


def weak_secret(key: Any) -> str:
    """Why ``key`` is not a secret ("" when it is one)."""
    if not isinstance(key, str) or not key:
        return "it is empty"
    if key == DEFAULT_SECRET_KEY or key.startswith("django-insecure-"):
        return "it is the public laptop default"
    if any(word in key.lower() for word in PLACEHOLDERS):
        return "it is a placeholder"
    if len(key) < 50 or len(set(key)) < 5:
        return "it is shorter than 50 characters or has fewer than 5 distinct ones"
    return ""


def is_loopback(bind: str) -> bool:
    """Does gunicorn's ``bind`` (``host:port``, ``[v6]:port``, ``unix:path``) reach this machine only?"""
    if bind.startswith(("unix:", "fd://")):
        return False  # behind a proxy that serves others
    host = bind.rsplit(":", 1)[0] if bind.count(":") == 1 or bind.startswith("[") else bind
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_binds() -> list[str]:
    """The addresses gunicorn binds with this environment (as nocobase_site/gunicorn.conf.py does)."""
    value = os.environ.get("GUNICORN_BIND") or "0.0.0.0:" + os.environ.get("PORT", "8000")
    return [item.strip() for item in value.split(",") if item.strip()]


def secret_key_errors(binds: Iterable[str], serves_requests: bool = True) -> list[CheckMessage]:
    public = [bind for bind in binds if not is_loopback(bind)]
    problem = weak_secret(settings.SECRET_KEY)
    if not (serves_requests and public and problem):
        return []
    return [
        Error(
            f"SECRET_KEY is not a secret ({problem}); this node serves {', '.join(public)}.",
            hint=f"Set SECRET_KEY (the same on every node) to the output of: {GENERATE}",
            id="nocobase_site.E001",
        )
    ]


def refuse_weak_secret(sender: Any, bind: str | None, mode: Any, **kwargs: Any) -> None:
    """``runnode``'s start (worker_mode's ``node_starting``): refused before any worker starts,
    as gunicorn's own start refuses it (a worker could otherwise take jobs meanwhile)."""
    from worker_mode.exceptions import WorkerModeError

    binds = [item.strip() for item in bind.split(",")] if bind else default_binds()
    for error in secret_key_errors(binds, mode.serves_requests):
        raise WorkerModeError(f"{error.id}: {error.msg} {error.hint}")


@register(deploy=True)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from worker_mode.node import current_mode

    return secret_key_errors(default_binds(), current_mode().serves_requests)
