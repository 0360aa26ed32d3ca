"""Service splitting for Django sites, driven by the WORKER_MODE setting.

``serving()`` tells whether this node serves HTTP requests; ``serving(key)``
whether it processes a background service. Apps register their keys with
``register_service()`` and enqueue work with ``enqueue()``. Background work
whose row must never be lost, stuck or run twice inherits
``worker_mode.models.ClaimedWork`` and runs under ``worker_mode.claims``.
"""

from .cluster import current_worker_name
from .exceptions import InvalidWorkerMode, ServiceAlreadyRegistered, UnknownServiceKey, WorkerModeError
from .mode import WorkerMode, parse
from .node import current_mode, served_keys, serving
from .queues import enqueue, get_queue
from .registry import PeriodicTask, Service, register_service, services

#: The release of the django-worker-mode distribution; its build reads it from here (the one place).
__version__ = "0.1.0"

__all__ = [
    "InvalidWorkerMode",
    "PeriodicTask",
    "Service",
    "ServiceAlreadyRegistered",
    "UnknownServiceKey",
    "WorkerMode",
    "WorkerModeError",
    "current_mode",
    "current_worker_name",
    "enqueue",
    "get_queue",
    "parse",
    "register_service",
    "served_keys",
    "services",
    "serving",
]
