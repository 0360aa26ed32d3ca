"""Triggers: collection events (after commit for async workflows), schedules, manual/API.

Collection config: ``{"collection": "catalog.Order", "events": ["created"],
"changed_fields": ["status"], "condition": "{{ $context.data.quantity }} > 5"}``.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Model
from django.db.models.signals import post_delete, post_save, pre_save
from django.utils import timezone

from worker_mode import storable

from . import engine, schedule
from .exceptions import ConfigError, ExpressionError
from .expressions import compile_check, evaluate
from .models import Execution, Workflow
from .records import allowed_labels, get_model, record_to_dict

logger = logging.getLogger(__name__)

EVENTS = ("created", "updated", "deleted")
COLLECTION_KEYS = {"collection", "events", "changed_fields", "condition"}


def check_config(trigger_type: str, config: Any, *, sync: bool = False) -> None:
    """Raise ConfigError if ``config`` does not fit the trigger type."""
    if not isinstance(config, dict):
        raise ConfigError("The trigger config must be a JSON object.")
    if trigger_type == Workflow.Trigger.COLLECTION:
        unknown = sorted(set(config) - COLLECTION_KEYS)
        if unknown:
            keys = ", ".join(sorted(COLLECTION_KEYS))
            raise ConfigError(f"Unknown key(s) {', '.join(unknown)}; collection trigger keys: {keys}.")
        if not config.get("collection"):
            names = ", ".join(allowed_labels()) or "none (WORKFLOWS_COLLECTIONS)"
            raise ConfigError(f"Choose a collection ('collection'): one of {names}.")
        model = get_model(config.get("collection"))
        events = config.get("events")
        if not isinstance(events, list) or not events or not set(events) <= set(EVENTS):
            raise ConfigError(f"'events' must be a non-empty list of {', '.join(EVENTS)}.")
        changed = config.get("changed_fields", [])
        if not isinstance(changed, list):
            raise ConfigError("'changed_fields' must be a list of field names.")
        names = {f.name for f in model._meta.concrete_fields}
        bad = sorted(set(changed) - names)
        if bad:
            raise ConfigError(f"{model._meta.label} has no field(s) {', '.join(bad)}.")
        if config.get("condition"):
            try:
                compile_check(config["condition"])
            except ExpressionError as exc:
                raise ConfigError(str(exc)) from None
    elif trigger_type == Workflow.Trigger.SCHEDULE:
        if sync:
            raise ConfigError("A scheduled workflow has no request to run in; make it asynchronous.")
        schedule.check(config)
    elif trigger_type == Workflow.Trigger.MANUAL:
        if config:
            raise ConfigError("A manual trigger takes no config; leave it {}.")
    else:
        raise ConfigError(f"Unknown trigger type {trigger_type!r}.")


# -- collection events ------------------------------------------------------------------------


#: How long a process reuses the list of workflows listening to a collection. A save of a
#: workflow in this process clears it at once; other processes see the change within this time.
LISTENERS_TTL = 1.0
_listeners: dict[str, tuple[float, list[Workflow]]] = {}


def _workflows_for(label: str) -> list[Workflow]:
    now = time.monotonic()
    cached = _listeners.get(label)
    if cached is not None and cached[0] > now:
        return cached[1]
    workflows = list(
        Workflow.objects.filter(
            enabled=True, trigger_type=Workflow.Trigger.COLLECTION, trigger_config__collection=label
        )
    )
    if now >= _hold_cache_until:
        _listeners[label] = (now + LISTENERS_TTL, workflows)
    return workflows


#: While a transaction that saved a workflow is open, a list read in it may be rolled back: not cached.
_hold_cache_until = 0.0


def _release_cache() -> None:
    global _hold_cache_until
    _hold_cache_until = 0.0


def forget_listeners(**kwargs: Any) -> None:
    global _hold_cache_until
    _listeners.clear()
    if transaction.get_connection().in_atomic_block:
        _hold_cache_until = time.monotonic() + 60.0  # released at commit; a rollback lets it lapse
        transaction.on_commit(_release_cache)


def _matches(workflow: Workflow, context: dict[str, Any]) -> bool:
    config = workflow.trigger_config
    if context["event"] not in config.get("events", ()):
        return False
    wanted = config.get("changed_fields") or []
    if context["event"] == "updated" and wanted and not set(wanted) & set(context.get("changed") or ()):
        return False
    condition = config.get("condition")
    if condition:
        try:
            return bool(
                evaluate(condition, {"$context": context, "$jobs": {}, "$system": engine.system_scope()})
            )
        except ExpressionError as exc:
            logger.warning("Workflow %s: trigger condition failed, not triggered: %s", workflow.key, exc)
            return False
    return True


def fire_collection_event(
    instance: Model, event: str, *, previous: dict[str, Any] | None = None, changed: list[str] | None = None
) -> list[Execution]:
    """Trigger the enabled workflows listening to ``event`` on ``instance``'s collection."""
    label = instance._meta.label
    workflows = getattr(instance, "_workflows_listening", None)
    if workflows is None:
        workflows = _workflows_for(label)
    context: dict[str, Any] = {"collection": label, "event": event, "data": record_to_dict(instance)}
    if event == "updated":
        context["changed"] = changed
        if previous is not None:
            context["previous"] = previous
    executions = []
    for workflow in workflows:
        if _matches(workflow, context):
            try:
                execution = engine.start(workflow, event=event, context=context)
            except storable.NotStorable as exc:
                if workflow.sync:
                    raise  # a sync workflow guards the write: it cannot be skipped
                # The record's own save must not fail because a workflow cannot record it.
                logger.error("Workflow %s not triggered for %s %s: %s", workflow.key, label, instance.pk, exc)
                continue
            if execution is not None:
                executions.append(execution)
    return executions


def _allowed(sender: type[Model]) -> bool:
    return sender._meta.label in allowed_labels()


def _on_pre_save(sender: type[Model], instance: Model, raw: bool = False, **kwargs: Any) -> None:
    if raw or not _allowed(sender) or instance._state.adding:
        return
    workflows = _workflows_for(sender._meta.label)
    instance._workflows_listening = workflows  # type: ignore[attr-defined]
    update_fields = kwargs.get("update_fields")
    wants_previous = any(
        "updated" in w.trigger_config.get("events", ()) and w.trigger_config.get("changed_fields")
        for w in workflows
    )
    instance._workflows_previous = None  # type: ignore[attr-defined]
    if wants_previous and instance.pk is not None:
        row = sender._default_manager.filter(pk=instance.pk).first()
        if row is not None:
            instance._workflows_previous = record_to_dict(row)  # type: ignore[attr-defined]
    instance._workflows_update_fields = update_fields  # type: ignore[attr-defined]


def _on_post_save(
    sender: type[Model], instance: Model, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    if raw or not _allowed(sender):
        return
    if created:
        fire_collection_event(instance, "created")
        return
    previous = getattr(instance, "_workflows_previous", None)
    current = record_to_dict(instance)
    if previous is not None:
        changed = sorted(name for name, value in current.items() if previous.get(name) != value)
    elif kwargs.get("update_fields"):
        names = {f.attname: f.name for f in sender._meta.concrete_fields}
        changed = sorted(names.get(n, n) for n in kwargs["update_fields"])
    else:
        changed = None  # unknown: a changed-fields filter then does not match
    try:
        fire_collection_event(instance, "updated", previous=previous, changed=changed)
    finally:
        for attr in ("_workflows_listening", "_workflows_previous", "_workflows_update_fields"):
            instance.__dict__.pop(attr, None)


def _on_post_delete(sender: type[Model], instance: Model, **kwargs: Any) -> None:
    if _allowed(sender):
        fire_collection_event(instance, "deleted")


def connect_signals() -> None:
    pre_save.connect(_on_pre_save, dispatch_uid="workflows.pre_save")
    post_save.connect(_on_post_save, dispatch_uid="workflows.post_save")
    post_delete.connect(_on_post_delete, dispatch_uid="workflows.post_delete")
    post_save.connect(forget_listeners, sender=Workflow, dispatch_uid="workflows.forget_listeners")
    post_delete.connect(forget_listeners, sender=Workflow, dispatch_uid="workflows.forget_listeners_delete")


# -- schedules -----------------------------------------------------------------------------


def fire_schedules(now: datetime.datetime | None = None) -> int:
    """Start one execution per due scheduled workflow; returns how many started.

    The due time is claimed by moving ``next_run_at`` forward with a
    conditional UPDATE, and each (workflow, due time) is unique in the
    database: however many nodes tick at once, a due time runs once. Missed
    due times (all nodes down) fire once, not once each.
    """
    now = now or timezone.now()
    started = 0
    due = Workflow.objects.filter(enabled=True, trigger_type=Workflow.Trigger.SCHEDULE, next_run_at__lte=now)
    for workflow in due:
        due_at = workflow.next_run_at
        following = schedule.next_time(workflow.trigger_config, now)
        try:
            with transaction.atomic():
                claimed = Workflow.objects.filter(pk=workflow.pk, next_run_at=due_at).update(
                    next_run_at=following
                )
                if not claimed:
                    continue
                context = {"scheduled_for": due_at.isoformat(), "fired_at": now.isoformat()}
                if engine.start(workflow, event="schedule", context=context, scheduled_for=due_at):
                    started += 1
        except IntegrityError:
            logger.info("Schedule of %s at %s already fired elsewhere", workflow.key, due_at)
    return started


# -- manual --------------------------------------------------------------------------------


def manual_context(
    workflow: Workflow, data: dict[str, Any] | None = None, record: Model | None = None
) -> dict:
    """The context of a manual run, shaped like a collection event's: ``$context.data`` is the
    given data, or the record (for a collection workflow run on one of its records)."""
    context: dict[str, Any] = {"event": "manual"}
    if record is not None:
        context["collection"] = record._meta.label
        context["data"] = record_to_dict(record)
    else:
        if workflow.trigger_type == Workflow.Trigger.COLLECTION:
            context["collection"] = workflow.trigger_config.get("collection")
        context["data"] = data if data is not None else {}
    return context


def trigger_manually(
    workflow: Workflow, data: dict[str, Any] | None = None, user: Any = None, *, record: Model | None = None
) -> Execution | None:
    """Trigger any enabled workflow by hand (admin actions, API); sync ones run now.

    ``data`` becomes ``$context.data``; or ``record``, a record of the workflow's collection, as
    a collection event would give it."""
    if record is not None:
        collection = workflow.trigger_config.get("collection")
        if workflow.trigger_type != Workflow.Trigger.COLLECTION or record._meta.label != collection:
            raise ConfigError(
                f"Workflow {workflow.key!r} does not listen to {record._meta.label}: not run on its records."
            )
    return engine.start(workflow, event="manual", context=manual_context(workflow, data, record), user=user)
