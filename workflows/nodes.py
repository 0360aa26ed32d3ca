"""Node types: how each validates its config and what it does when an execution reaches it."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from . import outbound, records
from .conf import conf
from .exceptions import ConfigError, ExpressionError, NodeFailed
from .expressions import check_placeholders, compile_check, evaluate, render


@dataclass
class Outcome:
    """What a node produced and where the execution goes next."""

    result: Any = None
    #: For conditions: "true" or "false", the branch to run.
    branch: str | None = None
    #: For end nodes: the execution's final status.
    end: str | None = None
    end_message: str = ""
    #: For delays: pause the execution until then.
    pause_until: datetime.datetime | None = None


@dataclass(frozen=True)
class NodeType:
    name: str
    label: str
    keys: frozenset[str]
    required: frozenset[str]
    check: Callable[[dict[str, Any]], None]
    run: Callable[[dict[str, Any], dict[str, Any]], Outcome]
    #: Config keys that hold expressions (their placeholders are bound, not rendered as text).
    expression_keys: frozenset[str] = frozenset()
    #: Acts outside the database (HTTP): the engine records the attempt before it, since a
    #: rollback cannot undo it and a re-run after a crash must show.
    external: bool = False
    #: No effects at all (condition, calculation, end): safe to compute again after a crash.
    pure: bool = False


def _check_expression(config: dict[str, Any]) -> None:
    try:
        compile_check(config["expression"])
    except ExpressionError as exc:
        raise ConfigError(str(exc)) from None


def _run_condition(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    value = bool(evaluate(config["expression"], scope))
    if not value and config.get("reject_on_false"):
        raise NodeFailed("The condition is false and the node rejects the execution.", result=value)
    return Outcome(result=value, branch="true" if value else "false")


def _run_calculation(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    return Outcome(result=evaluate(config["expression"], scope))


def _check_positive_int(config: dict[str, Any], key: str, upper: int) -> None:
    value = config.get(key)
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= upper
    ):
        raise ConfigError(f"'{key}' must be a whole number from 1 to {upper}.")


def _check_query(config: dict[str, Any]) -> None:
    model = records.get_model(config["collection"])
    records.check_filter(model, config.get("filter", {}))
    fields = config.get("fields", [])
    if not isinstance(fields, list):
        raise ConfigError("'fields' must be a list of field names.")
    for name in fields:
        records._field(model, name)
    order_by = config.get("order_by", [])
    if not isinstance(order_by, list):
        raise ConfigError("'order_by' must be a list such as [\"-created\"].")
    for name in order_by:
        records._field(model, str(name).lstrip("-"))
    _check_positive_int(config, "limit", conf.WORKFLOWS_MAX_RECORDS)


def _queryset(config: dict[str, Any]):
    model = records.get_model(config["collection"])
    return model._default_manager.filter(records.build_filter(model, config.get("filter") or {}))


def _run_query(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    queryset = _queryset(config).order_by(*(config.get("order_by") or ["pk"]))
    fields = config.get("fields") or None
    if config.get("multiple"):
        limit = config.get("limit") or conf.WORKFLOWS_MAX_RECORDS
        found = [_pick(records.record_to_dict(obj), fields) for obj in queryset[:limit]]
        return Outcome(result=found)
    record = queryset.first()
    return Outcome(result=None if record is None else _pick(records.record_to_dict(record), fields))


def _pick(record: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    return record if not fields else {name: record.get(name) for name in fields}


def _check_create(config: dict[str, Any]) -> None:
    records.check_values(records.get_model(config["collection"]), config["values"])


def _run_create(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    model = records.get_model(config["collection"])
    instance = model()
    records.apply_values(instance, config["values"])
    records.full_clean(instance)
    instance.save()
    return Outcome(result=records.record_to_dict(instance))


def _check_filtered(config: dict[str, Any]) -> None:
    model = records.get_model(config["collection"])
    if not config.get("filter"):
        raise ConfigError("'filter' is required, so a node never touches every record by mistake.")
    records.check_filter(model, config["filter"])


def _check_update(config: dict[str, Any]) -> None:
    _check_filtered(config)
    records.check_values(records.get_model(config["collection"]), config["values"])


def _bounded(queryset, action: str) -> list:
    limit = conf.WORKFLOWS_MAX_RECORDS
    matched = list(queryset.order_by("pk")[: limit + 1])
    if len(matched) > limit:
        raise NodeFailed(f"The filter matches more than {limit} records to {action} (WORKFLOWS_MAX_RECORDS).")
    return matched


def _run_update(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    # Record by record through save(), so collection events (and their workflows) fire for each.
    matched = _bounded(_queryset(config), "update")
    for record in matched:
        names = records.apply_values(record, config["values"])
        records.full_clean(record, names)
        record.save(update_fields=names)
    return Outcome(result={"updated": len(matched), "ids": [r.pk for r in matched]})


def _run_delete(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    matched = _bounded(_queryset(config), "delete")
    ids = [r.pk for r in matched]
    for record in matched:
        record.delete()
    return Outcome(result={"deleted": len(ids), "ids": ids})


def _run_http(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    timeout = min(float(config.get("timeout", 10)), conf.WORKFLOWS_HTTP_MAX_TIMEOUT)
    response = outbound.request(
        config.get("method", "POST"),
        str(config["url"]),
        headers={str(k): str(v) for k, v in (config.get("headers") or {}).items()},
        body=config.get("body"),
        timeout=timeout,
    )
    result = {"status": response.status, "data": response.data}
    if response.status >= 400 and not config.get("ignore_fail"):
        raise NodeFailed(f"HTTP {response.status} from {config['url']}", result=result)
    return Outcome(result=result)


def _check_delay(config: dict[str, Any]) -> None:
    seconds = config["seconds"]
    if isinstance(seconds, str):
        check_placeholders(seconds)
    elif not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        raise ConfigError("'seconds' must be a number of seconds (or a {{ variable }}).")


def _run_delay(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    try:
        seconds = float(config["seconds"])
    except (TypeError, ValueError):
        raise NodeFailed(f"Delay seconds is not a number: {config['seconds']!r}.") from None
    until = timezone.now() + datetime.timedelta(seconds=max(seconds, 0))
    return Outcome(result={"until": until.isoformat()}, pause_until=until)


END_STATUSES = ("resolved", "failed")


def _check_end(config: dict[str, Any]) -> None:
    if config.get("status", "resolved") not in END_STATUSES:
        raise ConfigError(f"'status' must be one of {', '.join(END_STATUSES)}.")


def _run_end(config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    status = config.get("status", "resolved")
    return Outcome(result={"status": status}, end=status, end_message=str(config.get("message", "")))


def _type(
    name, label, keys, required, check, run, expression_keys=(), external=False, pure=False
) -> NodeType:
    return NodeType(
        name,
        label,
        frozenset(keys),
        frozenset(required),
        check,
        run,
        frozenset(expression_keys),
        external,
        pure,
    )


TYPES: dict[str, NodeType] = {
    t.name: t
    for t in (
        _type(
            "condition",
            "Condition",
            {"expression", "reject_on_false"},
            {"expression"},
            _check_expression,
            _run_condition,
            {"expression"},
            pure=True,
        ),
        _type(
            "calculation",
            "Calculation",
            {"expression"},
            {"expression"},
            _check_expression,
            _run_calculation,
            {"expression"},
            pure=True,
        ),
        _type(
            "query",
            "Query record(s)",
            {"collection", "filter", "multiple", "fields", "order_by", "limit"},
            {"collection"},
            _check_query,
            _run_query,
        ),
        _type(
            "create",
            "Create record",
            {"collection", "values"},
            {"collection", "values"},
            _check_create,
            _run_create,
        ),
        _type(
            "update",
            "Update record(s)",
            {"collection", "filter", "values"},
            {"collection", "filter", "values"},
            _check_update,
            _run_update,
        ),
        _type(
            "delete",
            "Delete record(s)",
            {"collection", "filter"},
            {"collection", "filter"},
            _check_filtered,
            _run_delete,
        ),
        _type(
            "http",
            "HTTP request",
            {"method", "url", "headers", "body", "timeout", "ignore_fail"},
            {"url"},
            outbound.check_config,
            _run_http,
            external=True,
        ),
        _type("delay", "Delay", {"seconds"}, {"seconds"}, _check_delay, _run_delay),
        _type("end", "End", {"status", "message"}, set(), _check_end, _run_end, pure=True),
    )
}

CHOICES = [(t.name, t.label) for t in TYPES.values()]


def check_config(type_name: str, config: Any) -> None:
    """Raise ConfigError with a readable message if ``config`` does not fit node type ``type_name``."""
    node_type = TYPES.get(type_name)
    if node_type is None:
        raise ConfigError(f"Unknown node type {type_name!r}; types: {', '.join(TYPES)}.")
    if not isinstance(config, dict):
        raise ConfigError("The config must be a JSON object.")
    unknown = sorted(set(config) - node_type.keys)
    if unknown:
        keys = ", ".join(sorted(node_type.keys))
        raise ConfigError(f"Unknown key(s) {', '.join(unknown)} for a {type_name} node; keys: {keys}.")
    missing = sorted(node_type.required - set(config))
    if missing:
        raise ConfigError(f"Missing key(s) {', '.join(missing)} for a {type_name} node.")
    try:
        check_placeholders(str({k: v for k, v in config.items() if k not in node_type.expression_keys}))
    except ExpressionError as exc:
        raise ConfigError(str(exc)) from None
    node_type.check(config)


def run(type_name: str, config: dict[str, Any], scope: dict[str, Any]) -> Outcome:
    node_type = TYPES[type_name]
    rendered = {
        key: value if key in node_type.expression_keys else render(value, scope)
        for key, value in config.items()
    }
    return node_type.run(rendered, scope)
