"""Which models may be imported and exported, with which fields (the ASYNC_TASKS_MODELS setting).

``{"catalog.Product": {"fields": ["sku", "name", "price"], "identifier": "sku"}}``: the
fields in column order, and the unique field that identifies a record for duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from django.db import models

from worker_mode.storable import text

from .conf import conf
from .exceptions import NotAllowed


@dataclass(frozen=True)
class ModelSpec:
    model: type[models.Model]
    fields: tuple[models.Field, ...]
    identifier: models.Field | None

    @property
    def label(self) -> str:
        return self.model._meta.label

    def field(self, name: str) -> models.Field:
        for field in self.fields:
            if field.name == name:
                return field
        raise NotAllowed(
            f"Field {text(name, 60)!r} is not exported from {self.label}; allowed: {self.field_names}."
        )

    @property
    def field_names(self) -> str:
        return ", ".join(f.name for f in self.fields)

    def required(self) -> list[models.Field]:
        """Fields an inserted row must have a column for: no default, and neither null nor blank."""
        return [f for f in self.fields if not f.has_default() and not f.null and not f.blank]


def allowed_labels() -> list[str]:
    return list(conf.ASYNC_TASKS_MODELS)


def _resolve(label: str, entry: dict) -> ModelSpec:
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise NotAllowed(f"ASYNC_TASKS_MODELS names {label!r}, which is not an installed model.") from None
    concrete = {f.name: f for f in model._meta.concrete_fields}
    names = entry.get("fields") or [f.name for f in model._meta.concrete_fields if not f.primary_key]
    unknown = [n for n in names if n not in concrete]
    if unknown:
        raise NotAllowed(f"{label} has no field(s) {', '.join(unknown)} (ASYNC_TASKS_MODELS).")
    identifier = entry.get("identifier") or None
    if identifier is not None:
        if identifier not in names:
            raise NotAllowed(f"The identifier {identifier!r} of {label} must be one of its fields.")
        if not (concrete[identifier].unique or concrete[identifier].primary_key):
            raise NotAllowed(f"The identifier {identifier!r} of {label} must be a unique field.")
    return ModelSpec(
        model=model,
        fields=tuple(concrete[n] for n in names),
        identifier=concrete[identifier] if identifier else None,
    )


def get_spec(label: str) -> ModelSpec:
    """The allowed model ``label`` ("app_label.ModelName", any case); NotAllowed names the allowed ones."""
    for allowed, entry in conf.ASYNC_TASKS_MODELS.items():
        if allowed.lower() == str(label).lower():
            return _resolve(allowed, entry)
    raise NotAllowed(
        f"Model {text(label, 60)!r} may not be imported or exported; "
        f"allowed: {', '.join(allowed_labels()) or 'none'}."
    )
