"""The shape of a workflow: a chain of nodes, with true/false branches under conditions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

SYNC_HTTP = (
    "Node {key!r}: a synchronous workflow cannot call HTTP (it would hold the request's database "
    "transaction open while the peer answers); make the workflow asynchronous."
)


class NodeLike(Protocol):
    key: str
    type: str
    upstream: str
    branch: str


class Graph:
    def __init__(self, nodes: Iterable[NodeLike]) -> None:
        self.nodes = list(nodes)
        self.by_slot = {(n.upstream, n.branch): n for n in self.nodes}
        self.head = self.by_slot.get(("", ""))

    def next(self, node: NodeLike) -> NodeLike | None:
        """The node after ``node`` on its own line (after a condition: after both branches)."""
        return self.by_slot.get((node.key, ""))

    def branch_head(self, node: NodeLike, branch: str) -> NodeLike | None:
        return self.by_slot.get((node.key, branch))


def check(nodes: Iterable[NodeLike], *, sync: bool = False) -> list[str]:
    """Problems that would stop the chain from running as drawn; empty when it is sound."""
    nodes = list(nodes)
    problems: list[str] = []
    keys = [n.key for n in nodes]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        problems.append(f"Node keys must be unique: {', '.join(duplicates)}.")
    by_key = {n.key: n for n in nodes}
    slots: dict[tuple[str, str], str] = {}
    for node in nodes:
        slot = (node.upstream, node.branch)
        if slot in slots:
            where = f"after {node.upstream!r}" if node.upstream else "at the start"
            branch = f" on the {node.branch!r} branch" if node.branch else ""
            problems.append(f"Nodes {slots[slot]!r} and {node.key!r} are both {where}{branch}.")
        slots[slot] = node.key
        if node.upstream and node.upstream not in by_key:
            problems.append(f"Node {node.key!r} follows {node.upstream!r}, which does not exist.")
        if node.branch:
            upstream = by_key.get(node.upstream)
            if upstream is None or upstream.type != "condition":
                problems.append(
                    f"Node {node.key!r} is on a {node.branch!r} branch but does not follow a condition."
                )
        if sync and node.type == "delay":
            problems.append(f"Node {node.key!r}: a synchronous workflow cannot pause (delay).")
        if sync and node.type == "http":
            # It would run inside the request's transaction: row locks (and SQLite's only write lock)
            # held while a peer answers, so every other writer of the site would wait for it.
            problems.append(SYNC_HTTP.format(key=node.key))
    if nodes and ("", "") not in slots:
        problems.append("No first node: exactly one node must have no upstream.")
    if problems:
        return problems
    graph = Graph(nodes)
    seen: set[str] = set()
    pending = [graph.head] if graph.head else []
    while pending:
        node = pending.pop()
        if node.key in seen:  # a loop (e.g. through an empty key): walked once
            continue
        seen.add(node.key)
        pending.extend(
            n
            for n in (graph.next(node), graph.branch_head(node, "true"), graph.branch_head(node, "false"))
            if n
        )
    unreachable = sorted(set(by_key) - seen)
    if unreachable:
        problems.append(f"Node(s) {', '.join(unreachable)} cannot be reached from the first node.")
    return problems
