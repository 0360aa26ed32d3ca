"""Values the database can store: the guard between poison input and a row that must reach a final state.

PostgreSQL's ``jsonb`` and ``text`` refuse NaN and Infinity, the NUL character and
lone UTF-16 surrogates; Python's ``json`` cannot write integers of more than 4,300
digits and recurses on deep nesting. A request body, a node's result or an error
message carrying one of these must be refused with a message (an API answers 400,
a node fails) or cleaned, never crash the code that records the outcome.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput, JSONString

#: Deepest nesting of arrays and objects accepted in a JSON body or a stored value.
MAX_DEPTH = 64
#: Integers whose decimal form Python's ``json`` can write (``sys.int_info.default_max_str_digits``).
MAX_INT_DIGITS = getattr(sys.int_info, "default_max_str_digits", 4300) or 4300
_MAX_INT_BITS = int(MAX_INT_DIGITS * 3.32)  # a little under 10**MAX_INT_DIGITS
#: Stored reasons (errors of final states) are cut to this many characters.
MAX_TEXT = 10_000

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class NotStorable(ValueError):
    """The value cannot be stored as JSON in the database; the message names what and where."""


class InvalidJSON(NotStorable):
    """The text is not JSON at all."""


def _text_problem(text: str) -> str | None:
    found = _BAD_TEXT.search(text)
    if found is None:
        return None
    return "the NUL character (\\u0000)" if found.group() == "\x00" else "a lone surrogate (\\ud800-\\udfff)"


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise NotStorable unless ``value`` (plain JSON types) can be stored; the message names the path."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                raise NotStorable(f"The text at {path} contains {problem}.")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise NotStorable(f"The number at {path} is {item!r}; only finite numbers can be stored.")
        elif isinstance(item, int):
            if item.bit_length() > _MAX_INT_BITS:
                raise NotStorable(f"The integer at {path} has more than {MAX_INT_DIGITS} digits.")
        elif isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                raise NotStorable(f"The value at {path} is nested deeper than {max_depth} levels.")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise NotStorable(f"The key {key!r} at {path} is not text.")
                    problem = _text_problem(key)
                    if problem:
                        raise NotStorable(f"A key at {path} contains {problem}.")
                    stack.append((child, f"{path}.{key}", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        else:
            raise NotStorable(f"The value at {path} is a {type(item).__name__}, not a JSON value.")


def _refuse_constant(name: str) -> Any:
    raise NotStorable(f"{name} is not a number JSON or the database can store.")


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH, what: str = "The body") -> Any:
    """Parse JSON and ``check`` it; NotStorable with a readable message for anything refused."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except NotStorable:
        raise
    except RecursionError:
        raise NotStorable(f"The JSON is nested deeper than {max_depth} levels.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc}.") from None
    except ValueError as exc:  # e.g. an integer over the digit limit
        raise NotStorable(f"The JSON has a number that cannot be read: {exc}.") from None
    check(value, max_depth=max_depth)
    return value


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as text the database stores: NUL and lone surrogates replaced, cut to ``limit``."""
    result = _BAD_TEXT.sub("\ufffd", str(value))
    if len(result) > limit:
        result = result[: limit - 1] + "…"
    return result


def validate_storable_json(value: Any) -> None:
    """A model/form field validator: a ValidationError naming the problem."""
    try:
        check(value)
    except NotStorable as exc:
        raise ValidationError(str(exc), code="not_storable") from None


class StorableJSONFormField(forms.JSONField):
    """A form's JSON field that refuses what the database cannot store with a message, never a 500.

    Django's own field lets NaN and Infinity through, and raises (a 500) on an integer over the
    digit limit, on deep nesting, and when a lone surrogate is shown again in the form.
    """

    def to_python(self, value: Any) -> Any:
        if self.disabled or value in self.empty_values or not isinstance(value, str):
            return super().to_python(value)
        try:
            converted = loads(value, what="The value")
        except NotStorable as exc:
            raise ValidationError(str(exc), code="invalid") from None
        return JSONString(converted) if isinstance(converted, str) else converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        if self.disabled or data is None:
            return super().bound_data(data, initial)
        try:
            return loads(data, what="The value")
        except NotStorable:
            return InvalidJSONInput(text(data))
