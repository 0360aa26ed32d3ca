"""The service registry: the background services installed apps provide.

An app registers its key in ``AppConfig.ready()``::

    from worker_mode import register_service

    class MyPluginConfig(AppConfig):
        def ready(self):
            register_service("my-plugin:process", description="My plugin's jobs")

Each key gets an RQ queue of the same name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .exceptions import ServiceAlreadyRegistered, UnknownServiceKey, WorkerModeError
from .mode import ALL_SERVICES, KEY_PATTERN, REQUESTS, TRANSIENT


@dataclass(frozen=True)
class Service:
    """A background service: its key (also its queue's name) and how to run its jobs."""

    key: str
    description: str = ""
    #: Default RQ job timeout in seconds for this service's queue (None: rq's default).
    default_timeout: int | None = None

    @property
    def queue_name(self) -> str:
        return self.key


class ServiceRegistry:
    """Registered services in registration order."""

    def __init__(self) -> None:
        self._services: dict[str, Service] = {}

    def register(self, key: str, *, description: str = "", default_timeout: int | None = None) -> Service:
        if (
            not isinstance(key, str)
            or key in (REQUESTS, ALL_SERVICES, TRANSIENT)
            or not KEY_PATTERN.fullmatch(key)
        ):
            raise WorkerModeError(
                f"Cannot register service key {key!r}: use letters, digits and '_.:@/-', "
                "for example 'my-plugin:process'."
            )
        service = Service(key=key, description=description, default_timeout=default_timeout)
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


def register_service(key: str, *, description: str = "", default_timeout: int | None = None) -> Service:
    """Register a background service key; call it from your ``AppConfig.ready()``.

    Registering the same key twice with the same definition is harmless.
    """
    return services.register(key, description=description, default_timeout=default_timeout)
