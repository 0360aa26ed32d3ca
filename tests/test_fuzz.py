"""Property-based tests (hypothesis) of the parsers users feed: the CSV and XLSX readers with the
importer behind them, and the expression evaluator. Whatever the input, nothing but the parser's
own error escapes, and memory stays bounded. Bounded in examples and time."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tracemalloc
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_tasks import formats
from async_tasks.exceptions import FileRejected
from async_tasks.importer import Importer, Mode
from async_tasks.spec import get_spec
from workflows.exceptions import ExpressionError
from workflows.expressions import evaluate

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),  # more, e.g. 5000, for a longer hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Text the way files carry it: any character, favouring the troublesome ones.
cells = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "=1+2",
            "'=x",
            "-5",
            "1e400",
            "nan",
            "\x00",
            "é",
            "\ufeff",
            '"',
            "\r\n",
            "true",
            "2024-13-40",
        ]
    ),
)


def peak_of(function) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def read_all(reader) -> list:
    return list(reader)


@FUZZ
@given(st.binary(max_size=8192))
def test_any_bytes_as_csv_read_or_refused(data):
    def run():
        try:
            reader = formats.CsvReader(io.BytesIO(data))
            for number, row in reader:
                assert isinstance(number, int)
                assert isinstance(row, formats.RowProblem) or all(isinstance(v, str) for v in row)
        except FileRejected:
            pass

    assert peak_of(run) < 16 * 1024 * 1024


@FUZZ
@given(st.binary(max_size=8192))
def test_any_bytes_as_xlsx_refused_cleanly(data):
    with pytest.raises(FileRejected):
        formats.XlsxReader(io.BytesIO(data))


@st.composite
def zips(draw) -> bytes:
    """Archives with workbook-like members of random content: damaged workbooks."""
    out = io.BytesIO()
    names = [
        "[Content_Types].xml",
        "_rels/.rels",
        "xl/workbook.xml",
        "xl/worksheets/sheet1.xml",
        "xl/sharedStrings.xml",
    ]
    with zipfile.ZipFile(out, "w") as archive:
        for name in draw(st.lists(st.sampled_from(names), unique=True)):
            archive.writestr(name, draw(st.binary(max_size=512)))
    return out.getvalue()


@FUZZ
@given(zips())
def test_damaged_workbooks_are_refused_cleanly(data):
    try:
        reader = formats.XlsxReader(io.BytesIO(data))
        read_all(reader)
        reader.close()
    except FileRejected:
        pass


@pytest.mark.django_db
@FUZZ
@given(
    rows=st.lists(st.lists(cells, min_size=0, max_size=8), max_size=30),
    mode=st.sampled_from(Mode.choices),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
def test_any_rows_import_or_are_reported_never_raise(rows, mode, delimiter, task_storage):
    header = ["sku", "name", "price", "quantity", "active", "created"]
    text = io.StringIO()
    writer = csv.writer(text, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    for row in rows:
        try:
            writer.writerow(row)
        except csv.Error:  # a value the writer cannot quote (a lone NUL): written raw, on purpose
            text.write(delimiter.join(row) + "\n")
    data = text.getvalue().encode("utf-8", "surrogatepass")
    try:
        reader = formats.CsvReader(io.BytesIO(data), delimiter=delimiter)
        importer = Importer(get_spec("catalog.Product"), reader.header, mode=mode, batch_size=7)
        summary = importer.run(reader)
    except FileRejected:
        return
    assert summary.processed <= data.count(b"\n")  # each row handled once: imported, skipped or reported
    assert importer.errors.count >= summary.failed  # every failed row is in the report


# -- expressions --------------------------------------------------------------------------

SCOPE = {"$context": {"n": 3, "s": "ab", "items": [1, 2, 3], "data": {"x": 1.5}}, "$jobs": {}, "$system": {}}
atoms = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.text(alphabet="abc%0123456789d.:>< {}", max_size=12).map(repr),
    st.sampled_from(
        [
            "{{ $context.n }}",
            "{{ $context.s }}",
            "{{ $context.items }}",
            "{{ $context.data }}",
            "True",
            "None",
            "[1, 2]",
            "{'a': 1}",
        ]
    ),
)


def combine(children):
    binary = st.tuples(
        children, st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "==", "<", "and", "or"]), children
    )
    return st.one_of(
        binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(
            st.sampled_from(["len", "str", "int", "float", "abs", "upper", "sum", "max", "round"]), children
        ).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(children, children).map(lambda t: f"[{t[0]} for i in {t[1]}]"),
        st.tuples(children, st.sampled_from(["", ">5", ".2f", "08d", "0100000d", "x"])).map(
            lambda t: "f'{" + t[0] + (":" + t[1] if t[1] else "") + "}'"
        ),
        children.map(lambda c: f"not {c}"),
        children.map(lambda c: f"-{c}"),
    )


expressions = st.recursive(atoms, combine, max_leaves=12)


@FUZZ
@given(expressions)
def test_any_expression_evaluates_or_fails_with_an_expression_error(expression):
    def run():
        with contextlib.suppress(ExpressionError):
            evaluate(expression, SCOPE)

    assert peak_of(run) < 64 * 1024 * 1024


@FUZZ
@given(st.text(max_size=300))
def test_any_text_as_an_expression_fails_cleanly(expression):
    with contextlib.suppress(ExpressionError):
        evaluate(expression, SCOPE)
