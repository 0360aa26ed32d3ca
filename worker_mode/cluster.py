"""This process's worker name, as shown on the work it claims.

A worker process is named ``{node}.{group}.{index}.{pid}`` (see ``workers``);
work run in-process (a management command, a request) is claimed by
``{node}.inline.0.{pid}``. The name is for people reading the admin and logs:
recovery never parses it, it reads the claim's node and pid columns
(``worker_mode.claims``).
"""

from __future__ import annotations

import os

from .conf import conf

_current_worker_name: str | None = None


def set_current_worker_name(name: str) -> None:
    global _current_worker_name
    _current_worker_name = name


def current_worker_name() -> str:
    """This process's worker name; outside ``runworkers``: ``{node}.inline.0.{pid}``."""
    return _current_worker_name or f"{conf.WORKER_MODE_NODE_NAME}.inline.0.{os.getpid()}"
