from __future__ import annotations

import pytest

from worker_mode import (
    ServiceAlreadyRegistered,
    UnknownServiceKey,
    WorkerModeError,
    register_service,
    services,
)
from worker_mode.registry import ServiceRegistry


def test_builtin_services_are_registered_by_their_apps():
    assert services.keys()[:2] == ("workflow:process", "async-task:process")
    assert services.get("workflow:process").queue_name == "workflow:process"
    assert services.get("async-task:process").default_timeout == 3600


def test_register_and_get():
    registry = ServiceRegistry()
    service = registry.register("my-plugin:process", description="Mine")
    assert registry.get("my-plugin:process") is service
    assert "my-plugin:process" in registry
    assert len(registry) == 1


def test_registering_the_same_definition_twice_is_harmless():
    registry = ServiceRegistry()
    registry.register("a:process", description="A")
    registry.register("a:process", description="A")
    assert registry.keys() == ("a:process",)


def test_conflicting_registration_is_an_error():
    registry = ServiceRegistry()
    registry.register("a:process", description="A")
    with pytest.raises(ServiceAlreadyRegistered, match="'a:process' is already registered"):
        registry.register("a:process", description="B")


@pytest.mark.parametrize("key", ["!", "*", "-", "", "has space", "a,b", None])
def test_invalid_keys_cannot_be_registered(key):
    with pytest.raises(WorkerModeError, match="Cannot register service key"):
        ServiceRegistry().register(key)


def test_unknown_key_names_the_registered_ones_and_suggests():
    registry = ServiceRegistry()
    registry.register("workflow:process")
    with pytest.raises(UnknownServiceKey) as info:
        registry.get("workflow:proces")
    assert str(info.value) == (
        "Unknown service key 'workflow:proces'; registered keys: 'workflow:process'. "
        "Did you mean 'workflow:process'?"
    )


def test_unknown_key_far_from_any_has_no_suggestion():
    registry = ServiceRegistry()
    registry.register("workflow:process")
    with pytest.raises(UnknownServiceKey) as info:
        registry.get("zzz")
    assert "Did you mean" not in str(info.value)


def test_third_party_key_through_the_public_function(third_party_key):
    assert third_party_key in services
    assert services.keys()[-1] == third_party_key


@pytest.fixture
def third_party_key():
    register_service("my-plugin:process", description="A third-party app's jobs")
    yield "my-plugin:process"
    services.unregister("my-plugin:process")
