"""The service registry: the background services installed apps provide.

An app registers its key in ``AppConfig.ready()``::

    from worker_mode import register_service

    class MyPluginConfig(AppConfig):
        def ready(self):
            register_service("my-plugin:process", description="My plugin's jobs")

Each key gets an RQ queue of the same name. A service may also name periodic
tasks (recovery, schedules) that ``runworkers`` runs on the nodes serving it,
at start and every ``every`` seconds, one node at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .exceptions import ServiceAlreadyRegistered, UnknownServiceKey, WorkerModeError
from .mode import ALL_SERVICES, KEY_PATTERN, REQUESTS, TRANSIENT


@dataclass(frozen=True)
class PeriodicTask:
    """A function (dotted path) that nodes serving a service run every ``every`` seconds, with ``args``.

    A Redis lock makes one node at a time run it; it must still be safe to run
    twice (claim rows with a conditional UPDATE), since a lock can expire.
    """

    func: str
    every: float
    args: tuple[str, ...] = ()
    #: Safe to run on several nodes at once (conditional updates only): when Redis, which holds
    #: the lock, does not answer, it runs without the lock instead of not at all.
    lock_optional: bool = False
    #: After a forced run (at start, when a worker was replaced), run again this soon rather than
    #: a whole interval later (e.g. once queued work found too young to judge is old enough).
    first_repeat: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.func, str) or "." not in self.func:
            raise WorkerModeError(f"PeriodicTask func must be a dotted path, got {self.func!r}.")
        if not self.every > 0:
            raise WorkerModeError(f"PeriodicTask {self.func} needs every > 0 seconds, got {self.every!r}.")

    @property
    def name(self) -> str:
        """The task's name in logs and its lock: the function, and its arguments if any."""
        return f"{self.func}({', '.join(self.args)})" if self.args else self.func


@dataclass(frozen=True)
class Service:
    """A background service: its key (also its queue's name) and how to run its jobs."""

    key: str
    description: str = ""
    #: Default RQ job timeout in seconds for this service's queue (None: rq's default).
    default_timeout: int | None = None
    #: Tasks the nodes serving this service run periodically (and once at start).
    periodic: tuple[PeriodicTask, ...] = ()

    @property
    def queue_name(self) -> str:
        return self.key


class ServiceRegistry:
    """Registered services in registration order."""

    def __init__(self) -> None:
        self._services: dict[str, Service] = {}

    def register(
        self,
        key: str,
        *,
        description: str = "",
        default_timeout: int | None = None,
        periodic: tuple[PeriodicTask, ...] | list[PeriodicTask] = (),
    ) -> Service:
        if (
            not isinstance(key, str)
            or key in (REQUESTS, ALL_SERVICES, TRANSIENT)
            or not KEY_PATTERN.fullmatch(key)
        ):
            raise WorkerModeError(
                f"Cannot register service key {key!r}: use letters, digits and '_.:@/-', "
                "for example 'my-plugin:process'."
            )
        service = Service(
            key=key, description=description, default_timeout=default_timeout, periodic=tuple(periodic)
        )
        existing = self._services.get(key)
        if existing is not None and existing != service:
            raise ServiceAlreadyRegistered(
                f"Service key {key!r} is already registered with a different definition: {existing}."
            )
        self._services[key] = service
        return service

    def unregister(self, key: str) -> None:
        self._services.pop(key, None)

    def get(self, key: str) -> Service:
        try:
            return self._services[key]
        except KeyError:
            raise UnknownServiceKey(key, self._services) from None

    def keys(self) -> tuple[str, ...]:
        return tuple(self._services)

    def __contains__(self, key: object) -> bool:
        return key in self._services

    def __iter__(self) -> Iterator[Service]:
        return iter(tuple(self._services.values()))

    def __len__(self) -> int:
        return len(self._services)


#: The process-wide registry that ``register_service`` writes to.
services = ServiceRegistry()


def register_service(
    key: str,
    *,
    description: str = "",
    default_timeout: int | None = None,
    periodic: tuple[PeriodicTask, ...] | list[PeriodicTask] = (),
) -> Service:
    """Register a background service key; call it from your ``AppConfig.ready()``.

    Registering the same key twice with the same definition is harmless.
    """
    return services.register(key, description=description, default_timeout=default_timeout, periodic=periodic)
