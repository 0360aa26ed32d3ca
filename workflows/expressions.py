"""Variables and expressions in node configs.

A config value may hold placeholders: ``{{ $context.data.quantity }}``,
``{{ $jobs.<node key>.field }}``, ``{{ $system.now }}``. A string that is one
placeholder becomes the variable's value with its type; placeholders inside
longer text are rendered as text. Nothing is ever passed to ``eval``:
expressions (conditions, calculations) are parsed by simpleeval, and each
placeholder becomes a plain name bound to its value, so a value can never be
read as code.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from decimal import Decimal
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

from .exceptions import ExpressionError

ROOTS = ("$context", "$jobs", "$system")
PLACEHOLDER = re.compile(r"\{\{\s*(\$[A-Za-z_]\w*(?:\.[\w-]+)*)\s*\}\}")

#: Functions expressions may call. Nothing that touches the system.
FUNCTIONS = {
    "abs": abs,
    "bool": bool,
    "float": float,
    "int": int,
    "len": len,
    "lower": lambda s: str(s).lower(),
    "max": max,
    "min": min,
    "round": round,
    "str": str,
    "sum": sum,
    "upper": lambda s: str(s).upper(),
}


def check_placeholders(text: str) -> None:
    """Raise ExpressionError naming a placeholder whose root is not $context, $jobs or $system."""
    for match in PLACEHOLDER.finditer(text):
        root = match.group(1).split(".", 1)[0]
        if root not in ROOTS:
            raise ExpressionError(f"Unknown variable {match.group(0)}: use {', '.join(ROOTS)}.")


def resolve(path: str, scope: dict[str, Any]) -> Any:
    """The value at ``$root.a.b`` in ``scope``; None where a step is missing."""
    root, *steps = path.split(".")
    if root not in scope:
        raise ExpressionError(f"Unknown variable {path}: use {', '.join(ROOTS)}.")
    value = scope[root]
    for step in steps:
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def render(value: Any, scope: dict[str, Any]) -> Any:
    """``value`` with every placeholder replaced, recursively through dicts and lists."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value.strip())
        if whole:
            return resolve(whole.group(1), scope)
        return PLACEHOLDER.sub(lambda m: _as_text(resolve(m.group(1), scope)), value)
    if isinstance(value, dict):
        return {key: render(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, scope) for item in value]
    return value


def _bind(expression: str, scope: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    names: dict[str, Any] = {}
    by_path: dict[str, str] = {}

    def substitute(match: re.Match[str]) -> str:
        path = match.group(1)
        if path not in by_path:
            by_path[path] = f"_v{len(by_path)}"
            names[by_path[path]] = None if scope is None else resolve(path, scope)
        return f" {by_path[path]} "

    return PLACEHOLDER.sub(substitute, expression), names


def compile_check(expression: str) -> None:
    """Raise ExpressionError if ``expression`` is not a valid expression (values are not needed)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("The expression is empty.")
    check_placeholders(expression)
    text, names = _bind(expression, None)
    try:
        EvalWithCompoundTypes(names=names, functions=FUNCTIONS).parse(text)
    except (SyntaxError, InvalidExpression) as exc:
        raise ExpressionError(f"Invalid expression {expression!r}: {exc}") from None


#: A node's expression text is the same at every run (values are bound as names), so parse it once.
_parse = functools.lru_cache(maxsize=1024)(EvalWithCompoundTypes.parse)


def evaluate(expression: str, scope: dict[str, Any]) -> Any:
    """Evaluate ``expression`` with its placeholders bound to values from ``scope``."""
    check_placeholders(expression)
    text, names = _bind(expression, scope)
    try:
        evaluator = EvalWithCompoundTypes(names=names, functions=FUNCTIONS)
        return jsonable(evaluator.eval(text, previously_parsed=_parse(text)))
    except ExpressionError:
        raise
    except Exception as exc:  # simpleeval raises many kinds; all mean "this expression failed"
        raise ExpressionError(f"Expression {expression!r} failed: {type(exc).__name__}: {exc}") from None


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (Decimal -> float, dates -> ISO text, tuples -> lists)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
