"""Imports in-process: formats, encodings, header checks, row errors, duplicate modes, cancel."""

from __future__ import annotations

import csv
import datetime
import io
import zipfile
from decimal import Decimal

import openpyxl
import pytest
from django.utils import timezone

from async_tasks import formats, storage, tasks
from async_tasks.exceptions import FileRejected
from async_tasks.models import AsyncTask
from catalog.models import Order, Product
from tests.conftest import product_csv

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("task_storage")]


def run_import(
    data: bytes, name: str = "products.csv", label: str = "catalog.Product", **options
) -> AsyncTask:
    task = tasks.create_import(None, label, io.BytesIO(data), name=name, dispatch=False, **options)
    tasks.run(task.pk)
    task.refresh_from_db()
    return task


def error_rows(task: AsyncTask) -> list[dict[str, str]]:
    with storage.get_storage().open(task.error_file, "rb") as handle:
        return list(csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8-sig")))


def xlsx(rows: list[list], sheet: str = "Sheet1", extra_sheet: str | None = None) -> bytes:
    book = openpyxl.Workbook()
    if extra_sheet:
        book.active.title = extra_sheet
        book.active.append(["nothing", "here"])
        ws = book.create_sheet(sheet)
    else:
        ws = book.active
        ws.title = sheet
    for row in rows:
        ws.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_a_csv_imports_every_row_with_converted_values():
    task = run_import(product_csv(25))
    assert task.status == "succeeded"
    assert task.summary == {"created": 25, "updated": 0, "skipped": 0, "failed": 0}
    assert (task.done, task.total, task.error_file) == (25, 25, "")
    product = Product.objects.get(sku="P000007")
    assert (product.name, product.price, product.quantity, product.active) == (
        "Product 7",
        Decimal("7.25"),
        7,
        True,
    )
    assert product.created == datetime.date(2024, 5, 1)
    assert task.worker and task.node_name and task.attempts == 1


@pytest.mark.parametrize(
    ("encoding", "delimiter"),
    [("utf-8", ","), ("utf-8-sig", ";"), ("cp1252", "\t"), ("utf-16", "|")],
)
def test_encodings_and_delimiters_are_detected(encoding, delimiter):
    data = (
        delimiter.join(["sku", "name", "price", "quantity", "active", "created"])
        + "\n"
        + delimiter.join(["C-1", "Crème brûlée façon Köln", "4.50", "3", "no", "2024-02-03"])
        + "\n"
        + delimiter.join(["C-2", "Déjà vu à Genève", "1", "2", "yes", "2024-02-04"])
        + "\n"
    ).encode(encoding)
    task = run_import(data)
    assert task.status == "succeeded", task.error
    assert task.summary["created"] == 2
    assert Product.objects.get(sku="C-1").name == "Crème brûlée façon Köln"
    assert Product.objects.get(sku="C-2").active is True


def test_a_chosen_encoding_wins_over_detection():
    data = "sku,name,price\nE-1,Ærø,1\n".encode("latin-1")
    task = run_import(data, encoding="latin-1")
    assert task.status == "succeeded" and Product.objects.get(sku="E-1").name == "Ærø"


def test_a_line_that_is_not_the_files_encoding_is_reported_and_the_rest_imported():
    data = b"sku,name,price\n" + b"".join(f"U-{i},n,1\n".encode() for i in range(20000))
    data += b"U-x,\xff\xfe,1\nU-last,last,1\n"
    task = run_import(data, encoding="utf-8")
    assert task.status == "succeeded", task.error
    assert task.summary == {"created": 20001, "updated": 0, "skipped": 0, "failed": 1}
    assert Product.objects.filter(sku="U-last").exists()  # the rows after it are imported too
    [error] = error_rows(task)
    assert (error["row"], error["column"]) == ("20002", "")
    assert error["message"].startswith("Line 20002 is not valid utf-8")


def test_unknown_columns_fail_up_front_naming_the_allowed_ones():
    task = run_import(b"sku,name,price,colour\nX-1,x,1,red\n")
    assert task.status == "failed"
    assert task.error == "Unknown column(s) 'colour'; allowed: sku, name, price, quantity, active, created."
    assert not Product.objects.exists()


def test_missing_required_columns_fail_up_front():
    task = run_import(b"name,quantity\nx,1\n")
    assert (task.status, task.error) == ("failed", "Missing required column(s): sku, price.")


def test_columns_match_verbose_names_in_any_case_and_order():
    task = run_import(b"PRICE,SKU,Name\n2.5,V-1,Via verbose\n")
    assert task.status == "succeeded" and Product.objects.get(sku="V-1").price == Decimal("2.50")


def test_bad_rows_are_reported_with_row_number_and_good_rows_imported():
    data = (
        b"sku,name,price,quantity,active,created\n"
        b"G-1,Good,1.00,1,true,2024-01-01\n"
        b"B-1,Bad price,abc,1,true,2024-01-01\n"
        b",No sku,1,1,true,2024-01-01\n"
        b"B-3,Too precise,1.234,x,true,2024-01-01\n"
        b"B-4,Negative,-1,1,perhaps,2024-13-01\n"
        b"G-2,Good too,2,,false,\n"
    )
    task = run_import(data)
    assert task.status == "succeeded"
    assert task.summary == {"created": 2, "updated": 0, "skipped": 0, "failed": 4}
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["G-1", "G-2"]
    g2 = Product.objects.get(sku="G-2")
    assert (g2.quantity, g2.active) == (0, False)  # empty cells take the field's default
    errors = error_rows(task)
    assert [(e["row"], e["column"]) for e in errors] == [
        ("3", "price"),
        ("4", "sku"),
        ("5", "price"),
        ("5", "quantity"),
        ("6", "price"),
        ("6", "active"),
        ("6", "created"),
    ]
    assert errors[0]["message"] == "“abc” value must be a decimal number."
    assert errors[0]["sku"] == "B-1" and errors[0]["name"] == "Bad price"  # the original values
    assert errors[2]["message"] == "Ensure that there are no more than 2 decimal places."
    assert errors[4]["message"] == "Ensure this value is greater than or equal to 0."


def test_error_report_values_are_neutralized_as_formulas():
    task = run_import(b'sku,name,price\nF-1,=HYPERLINK("http://x"),oops\n')
    assert error_rows(task)[0]["name"] == '\'=HYPERLINK("http://x")'


def test_a_row_with_too_many_values_is_an_error():
    task = run_import(b"sku,name,price\nW-1,a,1,surplus\nW-2,b,2\n")
    assert task.summary["failed"] == 1 and task.summary["created"] == 1
    assert error_rows(task)[0]["message"] == "The row has 4 values for 3 columns."


@pytest.fixture
def existing():
    Product.objects.create(sku="D-1", name="Old one", price=1, quantity=5)
    Product.objects.create(sku="D-2", name="Old two", price=2, quantity=6, active=False)


DUPLICATES = b"sku,name,price\nD-1,New one,10\nN-1,New,3\nD-2,New two,20\n"


@pytest.mark.usefixtures("existing")
def test_insert_mode_reports_existing_identifiers_as_errors():
    task = run_import(DUPLICATES, mode="insert")
    assert task.summary == {"created": 1, "updated": 0, "skipped": 0, "failed": 2}
    assert [e["message"] for e in error_rows(task)] == [
        "A record with sku 'D-1' already exists.",
        "A record with sku 'D-2' already exists.",
    ]
    assert Product.objects.get(sku="D-1").name == "Old one"


@pytest.mark.usefixtures("existing")
def test_skip_mode_skips_existing_records():
    task = run_import(DUPLICATES, mode="skip")
    assert task.summary == {"created": 1, "updated": 0, "skipped": 2, "failed": 0}
    assert Product.objects.get(sku="D-2").name == "Old two" and Product.objects.filter(sku="N-1").exists()


@pytest.mark.usefixtures("existing")
def test_update_mode_updates_the_columns_in_the_file_and_inserts_new_ones():
    task = run_import(DUPLICATES, mode="update")
    assert task.summary == {"created": 1, "updated": 2, "skipped": 0, "failed": 0}
    d2 = Product.objects.get(sku="D-2")
    assert (d2.name, d2.price, d2.quantity, d2.active) == ("New two", Decimal("20.00"), 6, False)
    assert Product.objects.get(sku="N-1").price == Decimal("3.00")


@pytest.mark.usefixtures("existing")
def test_update_only_mode_skips_new_identifiers():
    task = run_import(DUPLICATES, mode="update_only")
    assert task.summary == {"created": 0, "updated": 2, "skipped": 1, "failed": 0}
    assert not Product.objects.filter(sku="N-1").exists()
    assert Product.objects.get(sku="D-1").name == "New one"


def test_update_only_needs_only_the_identifier_column():
    Product.objects.create(sku="Q-1", name="q", price=1, quantity=1)
    task = run_import(b"sku,quantity\nQ-1,99\n", mode="update_only")
    assert task.status == "succeeded" and Product.objects.get(sku="Q-1").quantity == 99


def test_the_same_identifier_twice_in_a_file():
    data = b"sku,name,price\nT-1,first,1\nT-1,second,2\n"
    task = run_import(data, mode="insert")
    assert task.summary == {"created": 1, "updated": 0, "skipped": 0, "failed": 1}
    task = run_import(data, mode="update")
    assert task.summary == {"created": 0, "updated": 2, "skipped": 0, "failed": 0}
    assert Product.objects.get(sku="T-1").name == "second"  # the last row wins


def test_rows_are_written_in_batches_not_one_query_per_row(settings, django_assert_max_num_queries):
    settings.ASYNC_TASKS_BATCH_SIZE = 500
    task = tasks.create_import(
        None, "catalog.Product", io.BytesIO(product_csv(2000)), name="p.csv", dispatch=False
    )
    # claim + read, then per batch of 500: savepoint, existence query, insert, release, progress.
    with django_assert_max_num_queries(40):
        tasks.run(task.pk)
    assert Product.objects.count() == 2000


def test_a_foreign_key_column_is_checked_per_batch():
    product = Product.objects.create(sku="O-1", name="o", price=1, quantity=1)
    data = f"product,quantity,customer\n{product.pk},2,Ann\n999999,1,Bob\n".encode()
    task = run_import(data, label="catalog.Order")
    assert task.summary == {"created": 1, "updated": 0, "skipped": 0, "failed": 1}
    assert error_rows(task)[0]["message"] == "No product 999999."
    assert Order.objects.get().customer == "Ann"


def test_xlsx_first_sheet_with_native_cell_types():
    data = xlsx(
        [
            ["sku", "name", "price", "quantity", "active", "created"],
            ["X-1", "Excel", 12.5, 3, True, datetime.datetime(2024, 3, 4)],
            ["X-2", "Bad", "twelve", 2.5, False, None],
            [None, None, None, None, None, None],
        ]
    )
    task = run_import(data, name="products.xlsx")
    assert task.status == "succeeded", task.error
    assert task.summary == {"created": 1, "updated": 0, "skipped": 0, "failed": 1}
    x1 = Product.objects.get(sku="X-1")
    assert (x1.price, x1.quantity, x1.active, x1.created) == (
        Decimal("12.50"),
        3,
        True,
        datetime.date(2024, 3, 4),
    )
    assert [(e["row"], e["column"]) for e in error_rows(task)] == [("3", "price"), ("3", "quantity")]


def test_empty_trailing_header_cells_are_ignored():
    data = xlsx(
        [["sku", "name", "price", None, None], ["T-1", "t", 1, None, None], ["T-2", "u", 2, None, "x"]]
    )
    task = run_import(data, name="p.xlsx")
    assert task.status == "succeeded", task.error
    assert task.summary == {"created": 1, "updated": 0, "skipped": 0, "failed": 1}
    assert error_rows(task)[0]["message"] == "The row has 5 values for 3 columns."


def test_xlsx_named_sheet_and_a_missing_one():
    data = xlsx([["sku", "name", "price"], ["S-1", "s", 1]], sheet="Products", extra_sheet="Notes")
    task = run_import(data, name="p.xlsx", sheet="Products")
    assert task.status == "succeeded" and Product.objects.filter(sku="S-1").exists()
    task = run_import(data, name="p.xlsx", sheet="Nope")
    assert (task.status, task.error) == (
        "failed",
        "The workbook has no sheet 'Nope'; its sheets: Notes, Products.",
    )


def test_an_xlsx_zip_bomb_is_refused_before_parsing():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/worksheets/sheet1.xml", b"\0" * (50 * 1024 * 1024))  # 50 MB of zeros
    assert len(out.getvalue()) < 200 * 1024
    task = run_import(out.getvalue(), name="bomb.xlsx")
    assert task.status == "failed"
    assert "refused as a zip bomb" in task.error and "sheet1.xml" in task.error


def test_an_xlsx_that_is_not_a_zip_is_refused():
    task = run_import(b"sku,name\n", name="fake.xlsx")
    assert (task.status, task.error) == ("failed", "The file is not an XLSX workbook (not a zip archive).")


def test_total_unpacked_size_limit(settings):
    settings.ASYNC_TASKS_XLSX_MAX_UNPACKED = 1000
    task = run_import(xlsx([["sku", "name", "price"], ["L-1", "l", 1]]), name="p.xlsx")
    assert task.status == "failed" and "limit 1000" in task.error


def test_options_are_validated_when_the_task_is_created():
    with pytest.raises(FileRejected, match="Unknown mode 'merge'"):
        tasks.create_import(
            None, "catalog.Product", io.BytesIO(b""), name="a.csv", mode="merge", dispatch=False
        )
    with pytest.raises(FileRejected, match="Unknown encoding 'klingon'"):
        tasks.create_import(
            None, "catalog.Product", io.BytesIO(b""), name="a.csv", encoding="klingon", dispatch=False
        )
    with pytest.raises(FileRejected, match="Cannot tell the format"):
        tasks.create_import(None, "catalog.Product", io.BytesIO(b""), name="a.pdf", dispatch=False)
    with pytest.raises(
        Exception, match="may not be imported or exported; allowed: catalog.Product, catalog.Order"
    ):
        tasks.create_import(None, "auth.User", io.BytesIO(b""), name="a.csv", dispatch=False)


def test_cancel_stops_at_the_next_batch_and_keeps_committed_rows(settings, monkeypatch):
    settings.ASYNC_TASKS_BATCH_SIZE = 100
    task = tasks.create_import(
        None, "catalog.Product", io.BytesIO(product_csv(1000)), name="p.csv", dispatch=False
    )
    seen = []

    def cancel_after_three_batches(current):
        seen.append(current.done)
        if len(seen) == 3:
            assert tasks.cancel(current)

    tasks.run(task.pk, on_progress=cancel_after_three_batches)
    task.refresh_from_db()
    assert task.status == "canceled"
    assert task.error == "Canceled; rows written before the cancel stay."
    assert task.summary["created"] == Product.objects.count() == 300
    assert task.finished_at and task.expires_at


def test_canceling_a_queued_task_is_immediate_and_it_never_runs():
    task = tasks.create_import(
        None, "catalog.Product", io.BytesIO(product_csv(3)), name="p.csv", dispatch=False
    )
    assert tasks.cancel(task)
    assert tasks.run(task.pk) == "not queued"
    task.refresh_from_db()
    assert task.status == "canceled" and not Product.objects.exists()
    assert not tasks.cancel(task)  # finished: nothing to cancel


def test_a_second_run_of_the_same_task_does_nothing():
    task = run_import(product_csv(3))
    assert tasks.run(task.pk) == "not queued"
    assert Product.objects.count() == 3


def test_formats_sniff_and_detect():
    assert formats.detect_encoding("é".encode()) == "utf-8"
    assert formats.detect_encoding(b"\xef\xbb\xbfsku") == "utf-8-sig"
    assert formats.sniff_delimiter("a;b;c\n1;2;3\n") == ";"
    assert formats.sniff_delimiter("single\n") == ","
    assert formats.guess_format("X.XLSX") == "xlsx"


def test_a_row_the_database_rejects_is_reported_and_the_rest_of_the_batch_written(monkeypatch):
    # A record written between the existence query and the insert (another import, a user).
    from async_tasks.importer import Importer

    Product.objects.create(sku="R-2", name="there first", price=1, quantity=1)
    monkeypatch.setattr(Importer, "_existing", lambda self, batch: {})
    task = run_import(b"sku,name,price\nR-1,a,1\nR-2,b,2\nR-3,c,3\n")
    assert task.summary == {"created": 2, "updated": 0, "skipped": 0, "failed": 1}
    assert error_rows(task)[0]["row"] == "3"
    assert error_rows(task)[0]["message"].startswith("Rejected by the database:")
    assert Product.objects.get(sku="R-2").name == "there first"


def test_plain_inserts_use_copy_on_postgresql_and_fill_defaults():
    from django.db import connection

    from async_tasks.importer import Importer
    from async_tasks.spec import get_spec

    importer = Importer(get_spec("catalog.Product"), ["sku", "name", "price"])
    assert (importer.copy is not None) == (connection.vendor == "postgresql")
    assert Importer(get_spec("catalog.Product"), ["sku", "name", "price"], fire_workflows=True).copy is None
    run_import(b"sku,name,price,quantity\nDF-1,d,1,\n")
    product = Product.objects.get(sku="DF-1")
    assert (product.quantity, product.active, product.created) == (0, True, timezone.localdate())


def test_imported_rows_fire_collection_workflows_only_when_asked():
    from tests.conftest import build_workflow
    from workflows.models import Execution

    config = {"collection": "catalog.Product", "events": ["created", "updated"], "changed_fields": ["price"]}
    nodes = [{"key": "n", "type": "calculation", "config": {"expression": "{{ $context.data.price }}"}}]
    build_workflow(nodes, trigger_type="collection", trigger_config=config)
    run_import(b"sku,name,price\nW-1,a,1\nW-2,b,2\n")
    assert not Execution.objects.exists()  # bulk writes send no signals by default
    run_import(b"sku,name,price\nW-3,c,3\n", fire_workflows=True)
    run_import(b"sku,price\nW-1,9\n", mode="update_only", fire_workflows=True)
    run_import(b"sku,name\nW-2,renamed\n", mode="update_only", fire_workflows=True)  # price unchanged
    contexts = [e.context for e in Execution.objects.order_by("id")]
    assert [(c["event"], c["data"]["sku"]) for c in contexts] == [("created", "W-3"), ("updated", "W-1")]
    assert contexts[1]["data"]["price"] == 9.0 and contexts[1]["changed"] == ["price"]


def test_one_bad_cell_fails_its_row_not_the_import():
    huge = "x" * 200_000  # over the CSV reader's 131,072-character field limit
    data = (f"sku,name,price\nOK-1,fine,1\nNUL-1,a\x00b,1\nBIG-1,{huge},1\nOK-2,also fine,2\n").encode()
    task = run_import(data)
    assert task.status == "succeeded", task.error
    assert task.summary == {"created": 2, "updated": 0, "skipped": 0, "failed": 2}
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["OK-1", "OK-2"]
    errors = {e["row"]: e["message"] for e in error_rows(task)}
    assert "contains the NUL character" in errors["3"]
    assert "field larger than field limit" in errors["4"]


def test_a_value_the_database_refuses_fails_its_row(monkeypatch):
    # A value the model's validation lets through and the database refuses (a DataError, e.g. a
    # custom field's value out of the column's range): the batch is retried row by row.
    from django.db import DataError

    from async_tasks import importer

    original = importer.Importer._insert

    def refusing(self, rows, outcome):
        if any(row.values.get("sku") == "REFUSED" for row in rows):
            raise DataError("value out of range for the column")
        return original(self, rows, outcome)

    monkeypatch.setattr(importer.Importer, "_insert", refusing)
    task = run_import(b"sku,name,price\nOK,ok,1\nREFUSED,no,1\nOK2,ok,2\n")
    assert task.summary == {"created": 2, "updated": 0, "skipped": 0, "failed": 1}, task.error
    [error] = error_rows(task)
    assert error["row"] == "3" and error["message"].startswith("Rejected by the database: value out of range")


def test_a_header_of_many_unknown_columns_is_a_short_error():
    header = ",".join(["sku", "name", "price", *(f"junk{i}" for i in range(10_000))])
    task = run_import((header + "\nA,b,1\n").encode())
    assert task.status == "failed"
    assert "'junk19' and 9,980 more; allowed:" in task.error and len(task.error) < 1000
    wider = ",".join(["sku", "name", "price", *(f"junk{i}" for i in range(100_000))])
    task = run_import((wider + "\nA,b,1\n").encode())
    assert (task.status, task.error) == ("failed", "The header row has more than 16,384 columns.")


def test_an_unclosed_quote_costs_its_row_not_the_rest_of_the_file():
    good = "".join(f"G{i},good {i},1\n" for i in range(1998))
    task = run_import(f'sku,name,price\nUQ1,"abc,1\n{good}'.encode())
    assert task.summary == {"created": 1998, "updated": 0, "skipped": 0, "failed": 1}
    (error,) = error_rows(task)
    assert error["row"] == "2" and "quote opened in this row (line 2) is never closed" in error["message"]
    assert Product.objects.filter(sku__startswith="G").count() == 1998


def test_a_field_over_the_limit_costs_its_row_and_reading_goes_on(monkeypatch):
    monkeypatch.setattr(csv, "field_size_limit", csv.field_size_limit)  # restored after the test
    csv.field_size_limit(1000)
    middle = '"' + "x\n" * 2000 + '"'  # a quoted value of many lines, over the limit
    task = run_import(f"sku,name,price\nA1,ok,1\nB1,{middle},2\nC1,ok,3\n".encode())
    csv.field_size_limit(formats.MAX_CELL)
    assert Product.objects.filter(sku__in=["A1", "C1"]).count() == 2
    assert task.summary["failed"] >= 1
    assert "field larger than field limit" in error_rows(task)[0]["message"]


def test_a_line_of_too_many_values_is_not_split(monkeypatch):
    monkeypatch.setattr(formats, "MAX_COLUMNS", 50)
    task = run_import(("sku,name,price\nW1," + "1," * 100 + "\nOK2,fine,2\n").encode())
    assert task.summary["created"] == 1 and task.summary["failed"] == 1
    assert error_rows(task)[0]["message"] == "Line 2 has more than 50 values; it was not read."


def test_utf8_with_one_bad_byte_is_read_as_utf8_and_the_line_reported():
    data = "sku,name,price\nC-1,Café,1\nC-2,Crème,2\n".encode() + b"C-3,bad\xe9,3\n"
    task = run_import(data)  # small: the whole file is the detection sample
    assert Product.objects.get(sku="C-1").name == "Café"  # not "CafÃ©"
    assert task.summary["created"] == 2 and task.summary["failed"] == 1
    assert "Line 4 is not valid utf-8" in error_rows(task)[0]["message"]


def test_a_legacy_file_without_utf8_sequences_is_still_cp1252():
    task = run_import("sku,name,price\nC-1,Café,1\n".encode("cp1252"))
    assert Product.objects.get(sku="C-1").name == "Café" and task.status == "succeeded"


@pytest.mark.parametrize("encoding", ["rot13", "zlib_codec", "base64", "idna", "punycode", "unicode_escape"])
def test_only_text_encodings_are_accepted(encoding):
    with pytest.raises(FileRejected, match="not a text encoding a file is written in"):
        tasks.create_import(
            None, "catalog.Product", io.BytesIO(product_csv(1)), name="p.csv", encoding=encoding
        )


def test_unknown_encodings_are_refused():
    with pytest.raises(FileRejected, match="Unknown encoding 'nope'"):
        tasks.create_import(
            None, "catalog.Product", io.BytesIO(product_csv(1)), name="p.csv", encoding="nope"
        )


def test_the_flat_xlsx_reader_gives_openpyxls_rows():
    # formats overrides two openpyxl 3.1 internals (rows read are not kept, shared strings on
    # disk): the rows must be exactly openpyxl's, or a new openpyxl changed what they copy.
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["sku", "name", "price", "when", "flag"])
    sheet.append(["A", "Café ☕", 1.5, datetime.datetime(2024, 5, 1, 8, 30), True])
    sheet.append([None, "", 0, datetime.date(2024, 1, 2), False])
    sheet.cell(row=6, column=3, value=42)  # rows 4 and 5 missing
    sheet.cell(row=7, column=1, value="=A1")  # a formula, read as text (data_only has no value)
    sheet["B8"] = "x" * 5000
    out = io.BytesIO()
    book.save(out)
    plain = openpyxl.load_workbook(io.BytesIO(out.getvalue()), read_only=True, data_only=True)
    expected = list(plain.active.values)
    reader = formats.XlsxReader(io.BytesIO(out.getvalue()))
    assert type(reader._sheet).__name__ == "FlatSheet"
    ours = [reader.header, *(row for _, row in reader)]
    reader.close()
    assert ours == [["" if v is None else v for v in row] for row in expected]
    assert ours[0] == ["sku", "name", "price", "when", "flag"]


def test_shared_strings_are_read_from_disk():
    import xlsxwriter  # writes a shared-string table, as Excel does (openpyxl writes inline strings)

    out = io.BytesIO()
    book = xlsxwriter.Workbook(out)
    sheet = book.add_worksheet("Sheet1")
    for number, row in enumerate([["sku", "name", "price"], *([f"S{i}", f"name {i}", 1] for i in range(50))]):
        sheet.write_row(number, 0, row)
    book.close()
    reader = formats.XlsxReader(io.BytesIO(out.getvalue()), sheet="Sheet1")
    assert isinstance(reader._book._disk_strings, formats.DiskStrings)
    assert len(reader._book._disk_strings) >= 100 and reader._book._disk_strings[-1].startswith("name ")
    assert [row[1] for _, row in reader][:2] == ["name 0", "name 1"]
    reader.close()


SST_NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'


def raw_xlsx(sheet_data: str, shared: list[str] | str = "", prolog: str = "") -> bytes:
    """A minimal workbook written by hand: ``sheet_data`` is the XML of the sheet's rows."""
    if isinstance(shared, list):
        shared = "".join(f"<si><t>{text}</t></si>" for text in shared)
    types = (
        '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument'
        '.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType='
        '"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/><Override PartName='
        '"/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml'
        '.sharedStrings+xml"/></Types>'
    )
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", types)
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
            f'relationships"><Relationship Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/>'
            "</Relationships>",
        )
        archive.writestr(
            "xl/workbook.xml",
            f'<?xml version="1.0"?><workbook {SST_NS} xmlns:r="{rel}"><sheets>'
            '<sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>',
        )
        archive.writestr(
            "xl/_rels/workbook.xml.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
            f'relationships"><Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{rel}/sharedStrings" Target="sharedStrings.xml"/>'
            "</Relationships>",
        )
        archive.writestr("xl/sharedStrings.xml", f'<?xml version="1.0"?>{prolog}<sst {SST_NS}>{shared}</sst>')
        archive.writestr(
            "xl/worksheets/sheet1.xml",
            f'<?xml version="1.0"?><worksheet {SST_NS}><sheetData>{sheet_data}</sheetData></worksheet>',
        )
    return out.getvalue()


def test_shared_strings_read_as_openpyxl_reads_them_and_escapes_as_excel_does():
    from openpyxl.reader.strings import read_string_table

    table = (
        "<si><t>plain</t></si><si><r><t>rich </t></r><r><rPr><b/></rPr><t>text</t></r></si>"
        "<si><t>漢字</t><rPh sb='0' eb='1'><t>かんじ</t></rPh></si><si><t>_x005F_x000D_ kept</t></si>"
        '<si><t xml:space="preserve">  spaced  </t></si><si/>'
    )
    source = f'<?xml version="1.0"?><sst {SST_NS}>{table}</sst>'.encode()
    ours = formats.DiskStrings(io.BytesIO(source))
    assert list(ours) == read_string_table(io.BytesIO(source))
    assert list(ours)[:4] == ["plain", "rich text", "漢字", "_x000D_ kept"]
    ours.close()
    # A character XML cannot carry, as Excel and XlsxWriter escape it (openpyxl leaves it escaped).
    escaped = f"<sst {SST_NS}><si><t>a_x000D_b_x000B_</t></si><si><t>_x005F_x000B_</t></si></sst>".encode()
    ours = formats.DiskStrings(io.BytesIO(escaped))
    assert list(ours) == ["a\rb\x0b", "_x000B_"]
    ours.close()


def test_a_huge_xlsx_cell_or_row_is_a_row_error_read_no_further(monkeypatch):
    monkeypatch.setattr(formats, "MAX_COLUMNS", 20)
    header = "<row r='1'>" + "".join(
        f"<c t='inlineStr'><is><t>{name}</t></is></c>" for name in ("sku", "name", "price")
    ) + "</row>"  # fmt: skip
    wide = "<row r='2'>" + "<c><v>1</v></c>" * 5000 + "</row>"
    long_shared = (
        "<row r='3'><c t='inlineStr'><is><t>L1</t></is></c><c t='s'><v>0</v></c><c><v>2</v></c></row>"
    )
    long_inline = (
        "<row r='4'><c t='inlineStr'><is><t>L2</t></is></c>"
        f"<c t='inlineStr'><is><t>{'y' * 300_000}</t></is></c><c><v>2</v></c></row>"
    )
    good = "<row r='5'><c t='inlineStr'><is><t>OK1</t></is></c><c t='s'><v>1</v></c><c><v>3</v></c></row>"
    data = raw_xlsx(header + wide + long_shared + long_inline + good, ["x" * 300_000, "fine"])
    task = run_import(data, name="p.xlsx")
    assert task.summary == {"created": 1, "updated": 0, "skipped": 0, "failed": 3}
    errors = {row["row"]: row["message"] for row in error_rows(task)}
    assert errors["2"] == "The row has more than 20 cells; the rest were not read."
    assert errors["3"] == errors["4"] == f"The value has more than {formats.MAX_CELL:,} characters."
    assert Product.objects.get(sku="OK1").name == "fine"


def test_xlsx_entity_declarations_are_refused():
    laughs = '<!DOCTYPE sst [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    data = raw_xlsx("<row r='1'><c t='s'><v>0</v></c></row>", "<si><t>&b;</t></si>", prolog=laughs)
    task = run_import(data, name="p.xlsx")
    assert task.status == "failed" and "declares XML entities" in task.error


def test_messages_quote_what_a_user_gave_within_bounds():
    from async_tasks.exceptions import NotAllowed

    for options in ({"encoding": "x" * 5000}, {"mode": "m" * 100_000}):
        with pytest.raises(FileRejected) as raised:
            tasks.create_import(None, "catalog.Product", io.BytesIO(b"sku\n"), name="p.csv", dispatch=False,
                                **options)  # fmt: skip
        assert len(str(raised.value)) < 300
    with pytest.raises(FileRejected, match="The delimiter must be one character"):
        tasks.create_import(None, "catalog.Product", io.BytesIO(b"sku\n"), name="p.csv", delimiter="\x00",
                            dispatch=False)  # fmt: skip
    with pytest.raises(NotAllowed) as raised:
        tasks.create_export(None, "catalog.Product", fields=["f" * 100_000], dispatch=False)
    assert len(str(raised.value)) < 300
    task = run_import(("sku,name,price," + "c" * 100_000 + "\nA,b,1,2\n").encode())
    assert task.status == "failed" and len(task.error) < 400
