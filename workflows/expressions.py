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

import ast
import datetime
import functools
import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression, safe_add, safe_mult, safe_power

from .exceptions import ExpressionError

#: Longest expression text accepted (a deeper parse tree than this allows is refused too).
MAX_EXPRESSION_LENGTH = 10_000
#: Characters (or items) of text, lists and dicts one evaluation may build in all: a budget, so
#: that neither a format width ("%0100000000d") nor a comprehension of long strings takes memory.
MAX_BUILT = 1_000_000
#: Digits of the largest integer an evaluation may compute (a result is stored with at most 4,300).
MAX_INT_DIGITS = 10_000
_MAX_INT_BITS = int(MAX_INT_DIGITS * 3.33)
#: Width or precision of a format ("%5d", f"{x:.3f}") above this is refused.
MAX_FORMAT_WIDTH = 1_000
_FORMAT_NUMBERS = re.compile(r"(\d+)")

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


def _shown(expression: str) -> str:
    return repr(expression if len(expression) <= 200 else expression[:200] + "…")


def compile_check(expression: str) -> None:
    """Raise ExpressionError if ``expression`` is not a valid expression (values are not needed)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("The expression is empty.")
    check_placeholders(expression)
    text, _ = _bind(expression, None)
    _parsed(text, expression)


def _parsed(text: str, expression: str) -> ast.AST:
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"The expression has {len(text):,} characters; at most {MAX_EXPRESSION_LENGTH:,}."
        )
    try:
        return _parse(text)
    except (SyntaxError, InvalidExpression, ValueError) as exc:
        raise ExpressionError(f"Invalid expression {_shown(expression)}: {exc}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"The expression {_shown(expression)} is nested too deeply.") from None


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> ast.AST:
    """A node's expression text is the same at every run (values are bound as names): parsed once."""
    tree = ast.parse(text.strip())
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        raise InvalidExpression("write one expression (no ';', no assignment, no statement)")
    return EvalWithCompoundTypes.parse(text)


def _size(value: Any) -> int:
    if isinstance(value, str | bytes | list | tuple | dict | set):
        return len(value)
    return 0


class _BoundedEval(EvalWithCompoundTypes):
    """simpleeval, with one budget for everything an evaluation builds and bounded integers.

    simpleeval bounds each repetition of a string (100,000 characters) and each comprehension
    (10,000 items), but not ``%``/format widths, not what a comprehension of long strings adds
    up to, and not the product of two huge integers.
    """

    def __init__(self, names: dict[str, Any]) -> None:
        self._built = 0
        functions = {name: self._counted(func) for name, func in FUNCTIONS.items()}
        super().__init__(names=names, functions=functions)
        self.operators.update(
            {
                ast.Add: self._counted(safe_add, self._check_add),
                ast.Mult: self._counted(safe_mult, self._check_mult),
                ast.Pow: self._counted(safe_power, self._check_power),
                ast.Mod: self._counted(_mod),
            }
        )

    def _spend(self, value: Any) -> Any:
        self._built += _size(value)
        if self._built > MAX_BUILT:
            raise ExpressionError(f"The expression builds more than {MAX_BUILT:,} characters or items.")
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_INT_BITS:
            raise ExpressionError(f"The expression computes a number of more than {MAX_INT_DIGITS:,} digits.")
        return value

    def _counted(
        self, func: Callable[..., Any], check: Callable[..., None] | None = None
    ) -> Callable[..., Any]:
        @functools.wraps(func)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if check is not None:
                check(*args)
            return self._spend(func(*args, **kwargs))

        return counted

    @staticmethod
    def _check_add(a: Any, b: Any) -> None:
        if isinstance(a, int) and isinstance(b, int) and max(a.bit_length(), b.bit_length()) > _MAX_INT_BITS:
            raise ExpressionError(f"The expression computes a number of more than {MAX_INT_DIGITS:,} digits.")

    @staticmethod
    def _check_mult(a: Any, b: Any) -> None:
        if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > _MAX_INT_BITS:
            raise ExpressionError(f"The expression computes a number of more than {MAX_INT_DIGITS:,} digits.")

    @staticmethod
    def _check_power(a: Any, b: Any) -> None:
        huge = isinstance(a, int) and isinstance(b, int) and b > 0 and a.bit_length() * b > _MAX_INT_BITS
        if huge and abs(a) > 1:
            raise ExpressionError(f"The expression computes a number of more than {MAX_INT_DIGITS:,} digits.")

    def _eval_call(self, node: Any) -> Any:
        """Functions as simpleeval calls them; methods only from ``METHODS``, their results
        predicted and refused before they are built when they would exceed the budget."""
        if not isinstance(node.func, ast.Attribute):
            return super()._eval_call(node)
        target = self._eval(node.func.value)
        name = node.func.attr
        allowed = _methods_of(target)
        if name not in allowed:
            kind = type(target).__name__
            names = ", ".join(sorted(allowed)) or "none"
            raise ExpressionError(f"The method .{name}() is not allowed on {kind}; allowed: {names}.")
        args = [self._eval(a) for a in node.args]
        kwargs = dict(self._eval(k) for k in node.keywords)
        if self._built + _predicted_size(target, name, args, kwargs) > MAX_BUILT:
            raise ExpressionError(f"The expression builds more than {MAX_BUILT:,} characters or items.")
        return self._spend(getattr(target, name)(*args, **kwargs))

    def _eval_formattedvalue(self, node: Any) -> Any:
        if node.format_spec:
            spec = str(self._eval(node.format_spec))
            _check_widths(spec)
            return self._spend(("{:" + spec + "}").format(self._eval(node.value)))
        return self._eval(node.value)

    def _eval_joinedstr(self, node: Any) -> Any:
        return self._spend(super()._eval_joinedstr(node))

    def _eval_comprehension(self, node: Any) -> Any:
        return self._spend(super()._eval_comprehension(node))

    def _eval_list(self, node: Any) -> Any:
        return self._spend(super()._eval_list(node))

    def _eval_dict(self, node: Any) -> Any:
        return self._spend(super()._eval_dict(node))


#: Methods an expression may call, per type: none that changes a value in place (a list that
#: grows while a comprehension walks it) and none that formats with widths taken from values.
_STR_METHODS = frozenset(
    [
        "capitalize",
        "casefold",
        "center",
        "count",
        "endswith",
        "expandtabs",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "islower",
        "isnumeric",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "ljust",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rjust",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        "zfill",
    ]
)
METHODS: dict[type, frozenset[str]] = {
    str: _STR_METHODS,
    list: frozenset({"count", "index"}),
    tuple: frozenset({"count", "index"}),
    dict: frozenset({"get", "keys", "values", "items"}),
    int: frozenset({"bit_length"}),
    float: frozenset({"is_integer"}),
}


def _methods_of(value: Any) -> frozenset[str]:
    for kind, names in METHODS.items():
        if type(value) is kind:
            return names
    return frozenset()


def _int_arg(args: list[Any], kwargs: dict[str, Any], index: int, name: str, default: int) -> int:
    value = args[index] if len(args) > index else kwargs.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _predicted_size(target: Any, name: str, args: list[Any], kwargs: dict[str, Any]) -> int:
    """An upper bound of what ``target.name(*args)`` builds, computed without building it."""
    if not isinstance(target, str):
        return 0
    size = len(target)
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(size, _int_arg(args, kwargs, 0, "width", 0))
    if name == "expandtabs":
        return size + target.count("\t") * max(_int_arg(args, kwargs, 0, "tabsize", 8), 0)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        times = target.count(old) if old else size + 1
        limit = _int_arg(args, kwargs, 2, "count", -1)
        if limit >= 0:
            times = min(times, limit)
        return size + times * max(len(new) - len(old), 0)
    if name == "join" and args:
        items = args[0]
        if isinstance(items, str | list | tuple | dict | set):
            texts = [len(item) for item in items if isinstance(item, str)]
            return sum(texts) + size * max(len(items) - 1, 0)
        return MAX_BUILT + 1  # nothing else is iterable here; refuse rather than guess
    return size


#: A printf width or precision taken from the values ("%*d", "%.*f"): not checkable beforehand.
_STAR_WIDTH = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d*\.\*)")


def _check_widths(spec: str) -> None:
    if any(int(number) > MAX_FORMAT_WIDTH for number in _FORMAT_NUMBERS.findall(spec)):
        raise ExpressionError(f"A format width or precision above {MAX_FORMAT_WIDTH:,} is not allowed.")


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):  # "%5d" % x: printf-style formatting, whose widths are checked first
        if _STAR_WIDTH.search(a.replace("%%", "")):
            raise ExpressionError("A '*' width or precision is not allowed in a format; write the number.")
        _check_widths(a)
    return a % b


def evaluate(expression: str, scope: dict[str, Any]) -> Any:
    """Evaluate ``expression`` with its placeholders bound to values from ``scope``."""
    check_placeholders(expression)
    text, names = _bind(expression, scope)
    parsed = _parsed(text, expression)
    try:
        return jsonable(_BoundedEval(names).eval(text, previously_parsed=parsed))
    except ExpressionError:
        raise
    except RecursionError:
        raise ExpressionError(f"The expression {_shown(expression)} is nested too deeply.") from None
    except MemoryError:
        raise ExpressionError(
            f"The expression {_shown(expression)} needs more memory than there is."
        ) from None
    except Exception as exc:  # simpleeval raises many kinds; all mean "this expression failed"
        raise ExpressionError(
            f"Expression {_shown(expression)} failed: {type(exc).__name__}: {exc}"
        ) from None


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
