"""The models workflows may touch (WORKFLOWS_COLLECTIONS), records as JSON, and safe filters."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models

from .conf import conf
from .exceptions import ConfigError
from .expressions import jsonable

#: Lookups a filter may use; no relation traversal beyond a foreign key's own id.
LOOKUPS = frozenset(
    {"exact", "iexact", "contains", "icontains", "in", "gt", "gte", "lt", "lte", "startswith", "isnull"}
)


def allowed_labels() -> tuple[str, ...]:
    return conf.WORKFLOWS_COLLECTIONS


def get_model(label: Any) -> type[models.Model]:
    """The allowed model named ``label`` ("app_label.Model"); ConfigError otherwise."""
    allowed = allowed_labels()
    if not isinstance(label, str) or label not in allowed:
        names = ", ".join(allowed) or "none (WORKFLOWS_COLLECTIONS)"
        raise ConfigError(f"Collection {label!r} is not allowed; allowed: {names}.")
    return apps.get_model(label)


def _field(model: type[models.Model], name: str) -> models.Field:
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        field = None
    if field is None or not getattr(field, "concrete", False):
        # A foreign key may also be named by its column, e.g. "product_id".
        for candidate in model._meta.concrete_fields:
            if candidate.attname == name:
                return candidate
        names = ", ".join(f.name for f in model._meta.concrete_fields)
        raise ConfigError(f"{model._meta.label} has no field {name!r}; fields: {names}.")
    return field


def record_to_dict(instance: models.Model) -> dict[str, Any]:
    """A record's concrete fields as JSON values; a foreign key appears under its name as the id."""
    return {
        field.name: jsonable(getattr(instance, field.attname)) for field in instance._meta.concrete_fields
    }


def check_filter(model: type[models.Model], spec: Any) -> None:
    """Validate a filter: {"field" or "field__lookup": value, ...} with allowed lookups only."""
    if not isinstance(spec, dict):
        raise ConfigError('\'filter\' must be an object of field lookups, e.g. {"sku": "A-1"}.')
    for key in spec:
        name, _, lookup = str(key).partition("__")
        _field(model, name)
        if lookup and lookup not in LOOKUPS:
            raise ConfigError(f"Lookup {lookup!r} is not allowed; use one of {', '.join(sorted(LOOKUPS))}.")


def build_filter(model: type[models.Model], spec: dict[str, Any]) -> models.Q:
    check_filter(model, spec)
    query = models.Q()
    for key, value in spec.items():
        name, _, lookup = key.partition("__")
        field = _field(model, name)
        column = field.name if not field.is_relation else field.attname
        query &= models.Q(**{f"{column}__{lookup or 'exact'}": value})
    return query


def check_values(model: type[models.Model], values: Any) -> None:
    if not isinstance(values, dict) or not values:
        raise ConfigError("'values' must be a non-empty object of field: value.")
    for name in values:
        field = _field(model, name)
        if field.primary_key:
            raise ConfigError(f"{model._meta.label}.{name} is the primary key and cannot be set.")


def apply_values(instance: models.Model, values: dict[str, Any]) -> list[str]:
    """Set ``values`` on ``instance`` through each field's own conversion; returns the attnames set."""
    model = type(instance)
    names = []
    for name, value in values.items():
        field = _field(model, name)
        converted = field.to_python(value) if value is not None or not field.null else None
        setattr(instance, field.attname, converted)
        names.append(field.attname)
    return names


def full_clean(instance: models.Model, fields: list[str] | None = None) -> None:
    """Run the model's validation; a ValidationError becomes one readable message."""
    try:
        if fields is None:
            instance.full_clean(validate_unique=True)
        else:
            exclude = {f.name for f in instance._meta.concrete_fields if f.attname not in fields}
            instance.full_clean(exclude=exclude, validate_unique=True)
    except ValidationError as exc:
        raise ConfigError(
            "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
        ) from None
