"""A workflow's chain drawn by the server as HTML/CSS: the trigger on top, nodes below, a
condition's two branches side by side, then the chain that follows them. With an
execution's jobs, each node shows its job's status, duration and result; failed ones stand
out."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from . import nodes as node_types
from .graph import Graph
from .models import Job, Workflow

#: Characters of a config or result shown in a box (the execution page has them whole).
SHOWN = 160


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"


def trigger_summary(workflow: Workflow) -> str:
    config = workflow.trigger_config if isinstance(workflow.trigger_config, dict) else {}
    if workflow.trigger_type == Workflow.Trigger.COLLECTION:
        events = ", ".join(config.get("events") or []) or "no events"
        text = f"{config.get('collection') or '?'}: {events}"
        if config.get("condition"):
            text += f" if {config['condition']}"
        return text
    if workflow.trigger_type == Workflow.Trigger.SCHEDULE:
        if "cron" in config:
            return f"cron {config['cron']}" + (f" ({config['timezone']})" if config.get("timezone") else "")
        return f"every {config.get('interval')} s"
    return "by hand: admin action or API"


def node_summary(node: Any) -> str:
    config = node.config if isinstance(node.config, dict) else {}
    if node.type in ("condition", "calculation"):
        return str(config.get("expression", ""))
    if node.type in ("query", "create", "update", "delete"):
        parts = [str(config.get("collection", "?"))]
        if config.get("filter"):
            parts.append("where " + ", ".join(f"{k} = {_short(v)}" for k, v in config["filter"].items()))
        if config.get("values"):
            parts.append("set " + ", ".join(f"{k} = {_short(v)}" for k, v in config["values"].items()))
        return "; ".join(parts)
    if node.type == "http":
        return f"{config.get('method', 'POST')} {config.get('url', '')}"
    if node.type == "delay":
        return f"{config.get('seconds')} s"
    if node.type == "end":
        return config.get("status", "resolved") + (f": {config['message']}" if config.get("message") else "")
    return ""


def _duration(job: Job) -> str:
    if job.finished_at and job.started_at:
        return f"{(job.finished_at - job.started_at).total_seconds():.3f} s"
    return "running" if job.status == Job.Status.PENDING else ""


def _box(node: Any, job: Job | None, executed: bool) -> SafeString:
    label = node_types.TYPES[node.type].label if node.type in node_types.TYPES else node.type
    status = job.status if job is not None else ("not-run" if executed else "")
    details = format_html('<div class="wf-summary">{}</div>', _short(node_summary(node)))
    if job is not None:
        details += format_html(
            '<div class="wf-job"><span class="wf-badge wf-badge-{}">{}</span> {}{}</div>',
            job.status,
            job.status,
            _duration(job),
            format_html(" · runs {}", job.runs) if job.runs > 1 else "",
        )
        if job.result is not None:
            details += format_html('<div class="wf-result">→ {}</div>', _short(job.result))
        if job.error:
            details += format_html('<div class="wf-error">{}</div>', _short(job.error))
    elif executed:
        details += mark_safe('<div class="wf-job"><span class="wf-badge">not run</span></div>')
    return format_html(
        '<div class="wf-node wf-type-{} {}" data-key="{}"><div class="wf-title"><b>{}</b> '
        '<span class="wf-kind">{}</span> <code>{}</code></div>{}</div>',
        node.type,
        f"wf-status-{status}" if status else "",
        node.key,
        node.title or node.key,
        label,
        node.key,
        details,
    )


def _chain(graph: Graph, node: Any, jobs: dict[str, Job], executed: bool, seen: set[str]) -> SafeString:
    parts: list[SafeString] = []
    while node is not None and node.key not in seen:
        seen.add(node.key)
        parts.append(_box(node, jobs.get(node.key), executed))
        if node.type == "condition":
            branches = []
            for branch in ("true", "false"):
                head = graph.branch_head(node, branch)
                inner = (
                    _chain(graph, head, jobs, executed, seen)
                    if head
                    else mark_safe('<div class="wf-empty">(nothing)</div>')
                )
                branches.append(
                    format_html(
                        '<div class="wf-branch wf-branch-{}">'
                        '<div class="wf-branch-label">if {}</div>{}</div>',
                        branch,
                        branch,
                        inner,
                    )
                )
            parts.append(format_html('<div class="wf-branches">{}</div>', mark_safe("".join(branches))))  # noqa: S308
        node = graph.next(node)
        if node is not None:
            parts.append(mark_safe('<div class="wf-arrow" aria-hidden="true">↓</div>'))
    return mark_safe("".join(parts))  # noqa: S308 (every part is built with format_html)


def render(workflow: Workflow, nodes: Iterable[Any], jobs: Iterable[Job] | None = None) -> SafeString:
    """The diagram of ``workflow``'s ``nodes``; with ``jobs``, an execution's run of it."""
    nodes = list(nodes)
    by_job = {job.node_key: job for job in jobs} if jobs is not None else {}
    executed = jobs is not None
    graph = Graph(nodes)
    trigger = format_html(
        '<div class="wf-node wf-trigger"><div class="wf-title"><b>Trigger</b> <span class="wf-kind">{}</span>'
        '</div><div class="wf-summary">{}</div></div>',
        workflow.get_trigger_type_display(),
        _short(trigger_summary(workflow)),
    )
    seen: set[str] = set()
    body = (
        _chain(graph, graph.head, by_job, executed, seen)
        if graph.head
        else mark_safe('<div class="wf-empty">No nodes yet.</div>')
    )
    unreachable = [n for n in nodes if n.key not in seen]
    rest = format_html_join("", "{}", ((_box(n, by_job.get(n.key), executed),) for n in unreachable))
    if unreachable:
        rest = format_html(
            '<div class="wf-unreachable"><div class="wf-branch-label">not reachable</div>{}</div>', rest
        )
    return format_html(
        '<div class="wf-diagram" id="wf-diagram">{}'
        '<div class="wf-arrow" aria-hidden="true">↓</div>{}{}</div>',
        trigger,
        body,
        rest,
    )
