"""Exports in-process: CSV and XLSX, chosen fields, admin changelist filters, formula neutralization."""

from __future__ import annotations

import csv
import datetime
import io
from decimal import Decimal

import openpyxl
import pytest

from async_tasks import exporter, formats, storage, tasks
from async_tasks.exceptions import FileRejected
from async_tasks.models import AsyncTask
from async_tasks.spec import get_spec
from catalog.models import Product

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("task_storage")]


@pytest.fixture
def products():
    Product.objects.bulk_create(
        [
            Product(
                sku="A-1", name="Apple", price=Decimal("1.50"), quantity=3, created=datetime.date(2024, 1, 2)
            ),
            Product(sku="B-2", name="=1+2", price=Decimal("2.00"), quantity=0, active=False),
            Product(sku="C-3", name="-cmd|' /C calc'!A0", price=Decimal("3.25"), quantity=-4),
            Product(sku="D-4", name="@SUM(A1)", price=Decimal("0.00"), quantity=1),
            Product(sku="E-5", name="+44 20 7946", price=Decimal("9.99"), quantity=2),
        ]
    )


def run_export(fmt="csv", fields=None, filters=None, owner=None) -> AsyncTask:
    task = tasks.create_export(
        owner, "catalog.Product", fmt=fmt, fields=fields, filters=filters, dispatch=False
    )
    tasks.run(task.pk)
    task.refresh_from_db()
    return task


def csv_rows(task: AsyncTask) -> list[list[str]]:
    with storage.get_storage().open(task.result_file, "rb") as handle:
        return list(csv.reader(io.TextIOWrapper(handle, encoding="utf-8-sig")))


def xlsx_rows(task: AsyncTask) -> list[tuple]:
    with storage.get_storage().open(task.result_file, "rb") as handle:
        book = openpyxl.load_workbook(handle, read_only=True)
        return list(book.worksheets[0].iter_rows(values_only=True))


@pytest.mark.usefixtures("products")
def test_csv_export_of_all_fields_neutralizes_formulas():
    task = run_export()
    assert (task.status, task.done, task.total, task.summary) == ("succeeded", 5, 5, {"exported": 5})
    rows = csv_rows(task)
    assert rows[0] == ["sku", "name", "price", "quantity", "active", "created"]
    assert rows[1] == ["A-1", "Apple", "1.50", "3", "true", "2024-01-02"]
    assert [r[1] for r in rows[2:]] == ["'=1+2", "'-cmd|' /C calc'!A0", "'@SUM(A1)", "'+44 20 7946"]
    assert rows[3][3] == "-4"  # numbers stay numbers
    assert rows[2][4] == "false"


@pytest.mark.usefixtures("products")
def test_xlsx_export_keeps_native_types_and_writes_text_as_text():
    task = run_export("xlsx", fields=["sku", "name", "price", "active"])
    rows = xlsx_rows(task)
    assert rows[0] == ("sku", "name", "price", "active")
    assert rows[1] == ("A-1", "Apple", 1.5, True)
    # Typed string cells: a spreadsheet never runs them, so they need (and get) no guard.
    assert rows[2][1] == "=1+2" and rows[3][1] == "-cmd|' /C calc'!A0"
    with storage.get_storage().open(task.result_file, "rb") as handle:
        sheet = openpyxl.load_workbook(handle).worksheets[0]
    assert sheet["B3"].value == "=1+2" and sheet["B3"].data_type == "s"  # a string, not a formula
    assert task.result_file.endswith(".xlsx")


@pytest.mark.usefixtures("products")
def test_an_export_imports_back_unchanged():
    exported = run_export()
    with storage.get_storage().open(exported.result_file, "rb") as handle:
        data = handle.read()
    Product.objects.filter(sku="A-1").update(name="changed", quantity=99)
    again = tasks.create_import(
        None, "catalog.Product", io.BytesIO(data), name="back.csv", mode="update", dispatch=False
    )
    tasks.run(again.pk)
    again.refresh_from_db()
    assert again.summary == {"created": 0, "updated": 5, "skipped": 0, "failed": 0}
    a1 = Product.objects.get(sku="A-1")
    assert (a1.name, a1.quantity) == ("Apple", 3)
    names = dict(Product.objects.values_list("sku", "name"))
    assert names == {"A-1": "Apple", "B-2": "=1+2", "C-3": "-cmd|' /C calc'!A0", "D-4": "@SUM(A1)",
                     "E-5": "+44 20 7946"}  # fmt: skip


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_export_then_import_in_update_mode_changes_nothing(fmt):
    odd = ['=HYPERLINK("http://x")', "-2+3", "+1", "'quoted", "''=twice", "'=once", "@x", "-5"]
    # Whitespace around text is the text's own: kept, also before a formula character.
    odd += ["\t=x", "\r=x", "\n=x", " =x", "\x0b=x", "\xa0=1", "  padded  ", "tab\tinside", "_x000D_ as text"]
    Product.objects.bulk_create(
        Product(sku=text if i % 2 else f"S{i}", name=text, price=Decimal("1.00"), quantity=i)
        for i, text in enumerate(["=F-9", *odd])
    )
    before = sorted(Product.objects.values_list("sku", "name", "price", "quantity", "active"))
    exported = run_export(fmt)
    with storage.get_storage().open(exported.result_file, "rb") as handle:
        data = handle.read()
    again = tasks.create_import(
        None, "catalog.Product", io.BytesIO(data), name=f"back.{fmt}", mode="update", dispatch=False
    )
    tasks.run(again.pk)
    again.refresh_from_db()
    assert again.summary == {"created": 0, "updated": len(before), "skipped": 0, "failed": 0}, again.error
    assert sorted(Product.objects.values_list("sku", "name", "price", "quantity", "active")) == before


@pytest.mark.usefixtures("products")
def test_admin_changelist_filters_and_search_apply(admin_user):
    task = run_export(filters=[["active__exact", "1"], ["q", "A-1"]], owner=admin_user)
    assert [r[0] for r in csv_rows(task)[1:]] == ["A-1"]
    task = run_export(filters=[["active__exact", "0"]], owner=admin_user)
    assert [r[0] for r in csv_rows(task)[1:]] == ["B-2"]


def test_an_invalid_filter_fails_when_the_task_is_created(admin_user):
    with pytest.raises(FileRejected, match="Invalid filter for catalog.Product"):
        tasks.create_export(
            admin_user, "catalog.Product", filters=[["password__startswith", "x"]], dispatch=False
        )
    assert not AsyncTask.objects.exists()


def test_unknown_fields_and_formats_are_refused():
    with pytest.raises(Exception, match="Field 'cost' is not exported from catalog.Product"):
        tasks.create_export(None, "catalog.Product", fields=["cost"], dispatch=False)
    with pytest.raises(FileRejected, match="Unknown format 'pdf'"):
        tasks.create_export(None, "catalog.Product", fmt="pdf", dispatch=False)


def test_the_export_streams_in_chunks(django_assert_max_num_queries):
    Product.objects.bulk_create(
        Product(sku=f"S{i:05d}", name=f"n{i}", price=1, quantity=i) for i in range(5000)
    )
    spec = get_spec("catalog.Product")
    out = io.BytesIO()
    seen = []
    written = exporter.export(
        Product.objects.order_by("pk"), list(spec.fields), "csv", out, progress=seen.append, chunk=1000
    )
    assert written == 5000 and seen == [1000, 2000, 3000, 4000, 5000]
    assert out.getvalue().count(b"\n") == 5001


def test_neutralize():
    assert [formats.neutralize(v) for v in ["=1", "+1", "-1", "@a", "\tx", "\rx", "ok", ""]] == [
        "'=1", "'+1", "'-1", "'@a", "'\tx", "'\rx", "ok", "",
    ]  # fmt: skip


def test_export_filters_are_bounded_before_any_query(admin_user):
    with pytest.raises(FileRejected, match="values \\(the search text too\\) at most 1,000"):
        tasks.create_export(admin_user, "catalog.Product", filters=[["q", "x" * 1_000_000]], dispatch=False)
    with pytest.raises(FileRejected, match="at most 100"):
        tasks.create_export(admin_user, "catalog.Product", filters=[["q", "x"]] * 101, dispatch=False)
    assert not AsyncTask.objects.exists()
    tasks.create_export(admin_user, "catalog.Product", filters=[["q", "x" * 1000]], dispatch=False)
