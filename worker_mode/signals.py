"""Signals of a node's life.

``node_starting`` is sent by ``runnode`` after ``WORKER_MODE`` is validated and before any
child process starts, with ``bind`` (gunicorn's ``--bind``, or None for its config's) and
``mode`` (the parsed ``WorkerMode``). A receiver that raises ``WorkerModeError`` refuses the
start: the node exits with its message, having started nothing (no worker took a job).
"""

from __future__ import annotations

from django.dispatch import Signal

node_starting = Signal()
