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


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("'%0100000000d' % 1", "format width or precision above 1,000"),
        ("f'{1:0100000000}'", "format width or precision above 1,000"),
        ("['x' * 100000 for i in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]", "builds more than 1,000,000"),
        ("[[i] * 90000 for i in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]", "builds more than 1,000,000"),
        ("(9 ** 400000) * (9 ** 400000)", "more than 10,000 digits"),
        ("9 ** 4000000", "more than 10,000 digits"),
        ("2 ** 40000 + 1", "more than 10,000 digits"),
        ("(" * 250 + "1" + ")" * 250, "too many nested parentheses"),
        ("not " * 2400 + "1", "nested too deeply"),
        ("1" + "+1" * 20000, "at most 10,000"),
        ("-" * 5000 + "1", "nested too deeply"),
        # String methods are counted like the operators, and refused before they build anything.
        ("len('a'.ljust(3000000000))", "builds more than 1,000,000"),
        ("'a'.rjust(2000000)", "builds more than 1,000,000"),
        ("'a'.center(2000000)", "builds more than 1,000,000"),
        ("'1'.zfill(10 ** 9)", "builds more than 1,000,000"),
        ("('\\t' * 100000).expandtabs(100)", "builds more than 1,000,000"),
        ("('a' * 100000).replace('', 'b' * 3000)", "builds more than 1,000,000"),
        ("('a' * 90000).join(['x'] * 20)", "builds more than 1,000,000"),
        ("'%0*d' % (999999999, 1)", "'\\*' width or precision is not allowed"),
        ("'%.*f' % (999999999, 1.5)", "'\\*' width or precision is not allowed"),
        ("'{:>{}}'.format(1, 999999999)", r"\.format\(\) is not allowed"),
        ("[l.count(1) for l in [[1]]] and {'a': [1]}.get('a').append(2)", r"\.append\(\) is not allowed"),
        ("'abc'.__class__", "not allowed|Sorry|private"),
    ],
)
def test_expressions_are_bounded_and_every_failure_is_an_expression_error(expression, message):
    with pytest.raises(ExpressionError, match=message):
        evaluate(expression, SCOPE)


@pytest.mark.parametrize(
    "expression", ["(" * 300 + "1" + ")" * 300, "1" + "+1" * 20000, "'a\x00b'", "1; 2", "x = 1", "import os"]
)
def test_bad_expressions_are_refused_when_saved(expression):
    with pytest.raises(ExpressionError):
        compile_check(expression)


def test_ordinary_expressions_still_work():
    assert evaluate("'%05.1f' % 3.14159", SCOPE) == "003.1"
    assert evaluate("f'{2:>5}'", SCOPE) == "    2"
    assert evaluate("len(['x' * 1000 for i in [1, 2, 3]])", SCOPE) == 3
    assert evaluate("2 ** 100", SCOPE) == 2**100
    assert evaluate("'a,b'.split(',')", SCOPE) == ["a", "b"]
    assert evaluate("'-'.join(['x', 'y']).upper().ljust(5, '.')", SCOPE) == "X-Y.."
    assert evaluate("{'a': 1}.get('b', 2)", SCOPE) == 2
    assert evaluate("'%5.1f|%%*' % 2.25", SCOPE) == "  2.2|%*"
