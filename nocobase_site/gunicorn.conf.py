"""gunicorn settings for every node: `gunicorn -c nocobase_site/gunicorn.conf.py nocobase_site.wsgi`.

A node that does not serve requests (WORKER_MODE '*' or service keys) runs one
worker: it only answers health probes and 503s. WORKER_MODE is validated in
the arbiter before any worker starts, so a typo stops gunicorn at once.
"""

import multiprocessing
import os
import sys

from worker_mode.mode import WorkerModeSyntaxError, parse

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:" + os.environ.get("PORT", "8000"))

try:
    _serves_requests = parse(os.environ.get("WORKER_MODE", "")).serves_requests
except WorkerModeSyntaxError:
    _serves_requests = False  # on_starting reports the error and stops

if _serves_requests:
    workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
else:
    workers = 1

timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# Matches the workers' warm shutdown, below Kubernetes' default 30 s grace.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "25"))
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = "nocobase-site"
# gunicorn >= 25 opens a control socket at one fixed path per user; several nodes
# on one host would fight over it, and nothing here uses it.
control_socket_disable = True


def on_starting(server):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nocobase_site.settings")
    import django
    from django.core.exceptions import ImproperlyConfigured

    django.setup()
    from worker_mode.node import current_mode, served_keys
    from worker_mode.startup import validate

    try:
        validate()
    except ImproperlyConfigured as exc:
        server.log.error("%s", exc)
        sys.exit(1)
    mode = current_mode()
    from nocobase_site.checks import secret_key_errors

    for error in secret_key_errors(server.cfg.bind, mode.serves_requests):
        server.log.error("%s: %s %s", error.id, error.msg, error.hint)
        sys.exit(1)
    server.log.info(
        "WORKER_MODE=%r: serves requests: %s; services: %s",
        mode.raw,
        "yes" if mode.serves_requests else "no (health probes and 503 only)",
        ", ".join(served_keys(mode)) or "none",
    )


_heartbeat = None


def when_ready(server):
    # The arbiter announces this node's HTTP side in the cluster's presence registry.
    global _heartbeat
    from worker_mode import presence

    _heartbeat = presence.announce("http", processes=server.num_workers)


def on_exit(server):
    if _heartbeat is not None:
        _heartbeat.stop()
