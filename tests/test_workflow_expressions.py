from __future__ import annotations

import pytest

from workflows.exceptions import ExpressionError
from workflows.expressions import compile_check, evaluate, render

SCOPE = {
    "$context": {"data": {"quantity": 3, "name": "Mug", "tags": ["a", "b"]}},
    "$jobs": {"product": {"quantity": 5}, "total": 12.5},
    "$system": {"now": "2026-11-22T10:00:00+00:00"},
}


def test_a_lone_placeholder_keeps_its_type():
    assert render("{{ $context.data.quantity }}", SCOPE) == 3
    assert render({"q": ["{{ $jobs.product }}"]}, SCOPE) == {"q": [{"quantity": 5}]}


def test_placeholders_in_text_render_as_text():
    assert (
        render("Order of {{ $context.data.quantity }} x {{$context.data.name}}", SCOPE) == "Order of 3 x Mug"
    )
    assert render("{{ $context.data.missing }}!", SCOPE) == "!"
    assert render("{{ $context.data.tags.1 }}", SCOPE) == "b"


def test_expressions_bind_placeholders_as_values():
    assert evaluate("{{ $jobs.product.quantity }} >= {{ $context.data.quantity }}", SCOPE) is True
    assert evaluate("{{ $jobs.product.quantity }} - {{ $context.data.quantity }}", SCOPE) == 2
    assert evaluate("round({{ $jobs.total }} * 2)", SCOPE) == 25
    assert evaluate("upper({{ $context.data.name }})", SCOPE) == "MUG"


def test_a_value_is_never_read_as_code():
    scope = {**SCOPE, "$context": {"data": {"name": "__import__('os').system('false')"}}}
    assert evaluate("len({{ $context.data.name }})", scope) == len(scope["$context"]["data"]["name"])


@pytest.mark.parametrize(
    "expression",
    [
        "().__class__.__bases__",
        "open('/etc/passwd')",
        "__import__('os')",
        "{{ $context.data.name }}.__class__",
    ],
)
def test_unsafe_expressions_fail(expression):
    with pytest.raises(ExpressionError):
        evaluate(expression, SCOPE)


def test_unknown_variables_and_bad_syntax_are_config_errors():
    with pytest.raises(ExpressionError, match=r"Unknown variable \{\{ \$env.SECRET \}\}"):
        compile_check("{{ $env.SECRET }} > 1")
    with pytest.raises(ExpressionError, match="Invalid expression"):
        compile_check("1 +")
    with pytest.raises(ExpressionError, match="empty"):
        compile_check("  ")
    compile_check("{{ $jobs.a.b }} > 1 and {{ $context.data.x }} != 'y'")
