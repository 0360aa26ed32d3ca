"""The variables a node's config may use: the trigger's context, each upstream node's result,
and ``$system``. The admin's variable picker lists them beside each field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigError
from .models import Workflow
from .records import get_model


@dataclass(frozen=True)
class Variable:
    path: str
    label: str

    @property
    def placeholder(self) -> str:
        return "{{ " + self.path + " }}"

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "placeholder": self.placeholder, "label": self.label}


@dataclass(frozen=True)
class NodeShape:
    """What the picker needs of a node (saved or still in the form)."""

    key: str
    type: str
    upstream: str = ""
    branch: str = ""
    config: Any = None


SYSTEM = [
    Variable("$system.now", "the time the node runs (ISO)"),
    Variable("$system.node", "the name of the node (host) running it"),
    Variable("$system.execution", "this execution's id"),
    Variable("$system.workflow", "this workflow's key"),
]


def _fields(label: Any) -> list[str]:
    try:
        model = get_model(label)
    except ConfigError:
        return []
    return [field.name for field in model._meta.concrete_fields]


def trigger_variables(trigger_type: str, config: Any) -> list[Variable]:
    config = config if isinstance(config, dict) else {}
    if trigger_type == Workflow.Trigger.COLLECTION:
        label = config.get("collection")
        out = [
            Variable("$context.data", f"the {label or 'record'} (all its fields)"),
            *(Variable(f"$context.data.{name}", f"{label}.{name}") for name in _fields(label)),
            Variable("$context.event", "created, updated, deleted (or manual)"),
            Variable("$context.collection", "the record's collection"),
        ]
        if "updated" in (config.get("events") or []):
            out.append(Variable("$context.changed", "the fields an update changed"))
            out += [
                Variable(f"$context.previous.{name}", f"{name} before the update (with changed fields)")
                for name in _fields(label)
            ]
        return out
    if trigger_type == Workflow.Trigger.SCHEDULE:
        return [
            Variable("$context.scheduled_for", "the due time of this run (ISO)"),
            Variable("$context.fired_at", "when it fired (ISO)"),
        ]
    return [
        Variable("$context.data", "the JSON object the run was given (API body, or the record)"),
        Variable("$context.data.<key>", "one key of it"),
        Variable("$context.event", "manual"),
    ]


def result_variables(node: NodeShape) -> list[Variable]:
    """What ``$jobs.<key>`` holds after ``node`` ran."""
    config = node.config if isinstance(node.config, dict) else {}
    base = f"$jobs.{node.key}"
    kind = node.type
    if kind == "query":
        model_fields = _fields(config.get("collection"))
        chosen = config.get("fields") if isinstance(config.get("fields"), list) else []
        # Only the model's own fields: what a query can return (and a bound on what is listed).
        names = [name for name in model_fields if name in chosen] or model_fields
        if config.get("multiple"):
            return [
                Variable(base, f"the matching {config.get('collection')} records (a list)"),
                *(Variable(f"{base}.0.{name}", f"{name} of the first one") for name in names),
            ]
        return [
            Variable(base, f"the first matching {config.get('collection')} record, or null"),
            *(Variable(f"{base}.{name}", f"its {name}") for name in names),
        ]
    if kind == "create":
        return [
            Variable(base, "the created record"),
            *(Variable(f"{base}.{name}", f"its {name}") for name in _fields(config.get("collection"))),
        ]
    if kind == "update":
        return [Variable(f"{base}.updated", "how many were updated"), Variable(f"{base}.ids", "their ids")]
    if kind == "delete":
        return [Variable(f"{base}.deleted", "how many were deleted"), Variable(f"{base}.ids", "their ids")]
    if kind == "http":
        return [Variable(f"{base}.status", "the HTTP status"), Variable(f"{base}.data", "the response body")]
    if kind == "condition":
        return [Variable(base, "true or false")]
    if kind == "calculation":
        return [Variable(base, "the value it computed")]
    if kind == "delay":
        return [Variable(f"{base}.until", "when the pause ended (ISO)")]
    return []


#: Upstream nodes listed in a picker, nearest first (a longer chain lists its nearest ones).
MAX_UPSTREAM = 30


def upstream_of(key: str, nodes: Iterable[NodeShape]) -> list[NodeShape]:
    """The nodes that ran before ``key`` on its way from the first node, nearest first."""
    by_key = {node.key: node for node in nodes}
    chain: list[NodeShape] = []
    seen = {key}
    current = by_key.get(key)
    while (
        current is not None
        and current.upstream
        and current.upstream not in seen
        and len(chain) < MAX_UPSTREAM
    ):
        seen.add(current.upstream)
        current = by_key.get(current.upstream)
        if current is not None:
            chain.append(current)
    return chain


def for_node(
    trigger_type: str, trigger_config: Any, nodes: Iterable[NodeShape], key: str
) -> dict[str, list[dict[str, str]]]:
    """The picker's groups for node ``key``: context, each upstream node, system."""
    nodes = list(nodes)
    groups: dict[str, list[dict[str, str]]] = {
        "Trigger context": [v.as_json() for v in trigger_variables(trigger_type, trigger_config)]
    }
    for upstream in upstream_of(key, nodes):
        variables = result_variables(upstream)
        if variables:
            groups[f"Node {upstream.key} ({upstream.type})"] = [v.as_json() for v in variables]
    groups["System"] = [v.as_json() for v in SYSTEM]
    return groups


def for_workflow(trigger_type: str, trigger_config: Any, nodes: Iterable[NodeShape]) -> dict[str, Any]:
    """Every node's groups, and the trigger condition's (the context only)."""
    nodes = list(nodes)
    return {
        "trigger": {
            "Trigger context": [v.as_json() for v in trigger_variables(trigger_type, trigger_config)]
        },
        "nodes": {
            node.key: for_node(trigger_type, trigger_config, nodes, node.key) for node in nodes if node.key
        },
    }
