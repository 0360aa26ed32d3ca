"""Import and export throughput and peak memory, against django-import-export on the same model and file.

On PostgreSQL, with rows generated in the run (``--rows``, default 200,000):

1. Import: a products CSV of N rows (sku, name, price, quantity, active,
   created; one row in 1,000 has an invalid price) is imported into an empty
   table by the async task code path (``tasks.run``: per-field validation by
   the model fields, duplicates checked per batch, COPY per batch,
   error report). django-import-export imports the first M rows
   (``--compare-rows``, default 50,000; its rate does not depend on N) in bulk
   mode with ``clean_model_instances`` (validation) on.
2. Upsert: N rows of which half are existing skus with new values, in mode
   "update" (INSERT ... ON CONFLICT DO UPDATE per batch).
3. Export: all N rows to CSV and to XLSX (streamed, constant-memory workbook);
   XLSX also at M rows beside django-import-export's XLSX export of M rows.
4. Import of the first M rows as an XLSX workbook (typed cells), into an
   emptied table.

Every measurement runs in a fresh Python process, which reports its rate and
its peak RSS (VmHWM) and its RSS after start-up, so memory growth with rows
shows as the difference. Rates are rows over the wall time of the work only
(start-up and the generation of files are not counted).

    .venv/bin/python bench/import_export.py [--rows 200000] [--compare-rows 50000] [--skip-compare]

Needs ``pip install -e '.[bench]'`` (django-import-export) for the comparison
(``make bench-import-export`` does it). DATABASE_URL must point at a
PostgreSQL server (default postgres://postgres@127.0.0.1:5432/postgres); the
run creates and drops its own database ``nocobase_bench_ie`` there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "nocobase_bench_ie"
FIELDS = ["sku", "name", "price", "quantity", "active", "created"]


# -- the parent: files, database, one child process per measurement ------------------------------


def write_csv(
    path: Path, rows: int, *, start: int = 0, existing_half: int | None = None, seed: int = 1
) -> None:
    """``rows`` product rows; with ``existing_half`` the first half reuses skus 0..rows/2 (duplicates)."""
    rng = random.Random(seed)
    words = ["steel", "oak", "blue", "lamp", "chair", "desk", "cable", "mug", "pen", "box"]
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(",".join(FIELDS) + "\n")
        for i in range(rows):
            number = i if existing_half is not None and i < rows // 2 else start + i
            price = "bad" if i % 1000 == 999 else f"{rng.randint(0, 99999) / 100:.2f}"
            name = f"{rng.choice(words)} {rng.choice(words)} {number}"
            active = "true" if i % 7 else "false"
            created = f"2024-0{1 + i % 9}-1{i % 10}"
            out.write(f"P{number:08d},{name},{price},{rng.randint(0, 500)},{active},{created}\n")


def write_xlsx(csv_path: Path, path: Path) -> None:
    """The same rows as an XLSX workbook (typed cells), written in constant memory."""
    import csv
    import datetime
    from decimal import Decimal, InvalidOperation

    import xlsxwriter

    book = xlsxwriter.Workbook(str(path), {"constant_memory": True, "default_date_format": "yyyy-mm-dd"})
    sheet = book.add_worksheet("products")
    with csv_path.open(encoding="utf-8") as source:
        for number, row in enumerate(csv.reader(source)):
            if number:
                with contextlib.suppress(InvalidOperation):  # the invalid price stays text
                    row[2] = Decimal(row[2])
                row[3], row[4] = int(row[3]), row[4] == "true"
                row[5] = datetime.date.fromisoformat(row[5])
            sheet.write_row(number, 0, row)
    book.close()


def database_url(server_url: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{BENCH_DB}"))


def recreate_database(server_url: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")


def drop_database(server_url: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def child(env: dict[str, str], *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def line(label: str, figures: dict) -> str:
    return (
        f"{label:<58} {figures['rate']:>9,.0f} rows/s"
        f"  ({figures['rows']:,} rows in {figures['seconds']:.2f} s)"
        f"  peak RSS {figures['peak_mb']:.0f} MB (after start-up {figures['start_mb']:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--compare-rows", type=int, default=50_000)
    parser.add_argument("--skip-compare", action="store_true", help="Do not run django-import-export.")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        return run_child(*options.child)

    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    recreate_database(server)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ie-"))
    env = {
        **os.environ,
        "DATABASE_URL": database_url(server),
        "ASYNC_TASKS_DIR": str(tmp / "files"),
        "VAR_DIR": str(tmp / "var"),
        "LOG_LEVEL": "WARNING",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # not used: tasks run in-process, nothing is enqueued
        "DJANGO_SETTINGS_MODULE": "nocobase_site.settings",
    }
    n, m = options.rows, min(options.compare_rows, options.rows)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        full, small, upsert = tmp / "full.csv", tmp / "small.csv", tmp / "upsert.csv"
        write_csv(full, n)
        write_csv(small, m)
        write_csv(upsert, n, start=n * 10, existing_half=n, seed=2)
        small_xlsx = tmp / "small.xlsx"
        write_xlsx(small, small_xlsx)
        size_mb = full.stat().st_size / 1e6
        python = platform.python_version()
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {python}; PostgreSQL")
        print(f"rows: {n:,} ({size_mb:.1f} MB CSV; 1 row in 1,000 invalid); comparison rows: {m:,}")
        results = {}
        results["import"] = child(env, "import", str(full))
        print(line("import CSV, validated (async_tasks)", results["import"]), results["import"]["summary"])
        results["upsert"] = child(env, "upsert", str(upsert))
        print(
            line("upsert CSV, 50% existing, mode update (async_tasks)", results["upsert"]),
            results["upsert"]["summary"],
        )
        results["csv"] = child(env, "export", "csv", str(n))
        print(line("export CSV (async_tasks)", results["csv"]))
        results["xlsx"] = child(env, "export", "xlsx", str(n))
        print(line("export XLSX (async_tasks)", results["xlsx"]))
        if not options.skip_compare:
            results["xlsx_m"] = child(env, "export", "xlsx", str(m))
            print(line(f"export XLSX, {m:,} rows (async_tasks)", results["xlsx_m"]))
            results["die_xlsx"] = child(env, "die-export", "xlsx", str(m))
            print(line(f"export XLSX, {m:,} rows (django-import-export)", results["die_xlsx"]))
        # The imports below empty the table first, so they come after the exports.
        results["import_xlsx"] = child(env, "import", str(small_xlsx))
        print(line(f"import XLSX, {m:,} rows, validated (async_tasks)", results["import_xlsx"]))
        if not options.skip_compare:
            results["die_import"] = child(env, "die-import", str(small))
            print(
                line(
                    f"import CSV, {m:,} rows, bulk + validation (django-import-export)", results["die_import"]
                )
            )
        print()
        ours = results["import"]["rate"]
        print(f"import: {ours:,.0f} rows/s (goal >= 25,000)", end="")
        if "die_import" in results:
            print(f"; {ours / results['die_import']['rate']:.1f}x django-import-export", end="")
        print(f"; peak RSS {results['import']['peak_mb']:.0f} MB (goal < 200 MB)")
        print(f"upsert 50% duplicates: {results['upsert']['rate']:,.0f} rows/s (goal >= 15,000)")
        print(f"export CSV: {results['csv']['rate']:,.0f} rows/s (goal >= 150,000)")
        if "die_xlsx" in results:
            ratio = results["xlsx_m"]["rate"] / results["die_xlsx"]["rate"]
            print(f"export XLSX: {ratio:.1f}x django-import-export at {m:,} rows (goal >= 2x)")
    finally:
        drop_database(server)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


# -- a child: one measurement ------------------------------------------------------------------


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for entry in status:
            if entry.startswith(field + ":"):
                return int(entry.split()[1]) / 1024
    return 0.0


def run_child(kind: str, *args: str) -> None:
    # This file's own folder comes first on sys.path, and its name would hide the real import_export.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection

    from catalog.models import Product

    start_mb = _rss_mb("VmRSS")
    summary: dict = {}
    if kind in ("import", "upsert", "die-import"):
        path = Path(args[0])
        if kind != "upsert":
            with connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {Product._meta.db_table} RESTART IDENTITY CASCADE")
        began = time.perf_counter()
        if kind == "die-import":
            rows, summary = _die_import(path)
        else:
            from async_tasks import tasks

            with path.open("rb") as upload:
                task = tasks.create_import(
                    None, "catalog.Product", upload, name=path.name, dispatch=False,
                    mode="update" if kind == "upsert" else "insert",
                )  # fmt: skip
            began = time.perf_counter()  # the upload's copy into storage is the request node's part
            tasks.run(task.pk)
            task.refresh_from_db()
            assert task.status == "succeeded", task.error
            rows, summary = task.done, task.summary
    else:
        fmt, count = args[0], int(args[1])
        began = time.perf_counter()
        if kind == "die-export":
            rows = _die_export(fmt, count)
        else:
            from async_tasks import tasks

            filters = [] if count >= Product.objects.count() else [["id__lte", str(_nth_id(count))]]
            task = tasks.create_export(None, "catalog.Product", fmt=fmt, filters=filters, dispatch=False)
            tasks.run(task.pk)
            task.refresh_from_db()
            assert task.status == "succeeded", task.error
            rows = task.done
    seconds = time.perf_counter() - began
    print(
        json.dumps(
            {
                "rows": rows,
                "seconds": seconds,
                "rate": rows / seconds,
                "peak_mb": _rss_mb("VmHWM"),
                "start_mb": start_mb,
                "summary": summary,
            }
        )
    )


def _nth_id(count: int) -> int:
    from catalog.models import Product

    return Product.objects.order_by("pk").values_list("pk", flat=True)[count - 1]


def _resource():
    from import_export import resources

    from catalog.models import Product

    class ProductResource(resources.ModelResource):
        class Meta:
            model = Product
            fields = FIELDS
            import_id_fields = ["sku"]
            use_bulk = True
            batch_size = 2000
            clean_model_instances = True
            skip_diff = True

    return ProductResource()


def _die_import(path: Path) -> tuple[int, dict]:
    import tablib

    dataset = tablib.Dataset().load(path.read_text(encoding="utf-8"), format="csv")
    result = _resource().import_data(dataset, dry_run=False, raise_errors=False, use_transactions=True)
    totals = dict(result.totals)
    return len(dataset), {
        "new": totals.get("new", 0),
        "invalid": len(result.invalid_rows),
        "error": totals.get("error", 0),
    }


def _die_export(fmt: str, count: int) -> int:
    from catalog.models import Product

    dataset = _resource().export(Product.objects.filter(pk__lte=_nth_id(count)).order_by("pk"))
    data = dataset.export(fmt)
    with tempfile.TemporaryFile() as out:
        out.write(data if isinstance(data, bytes) else data.encode())
    return len(dataset)


if __name__ == "__main__":
    main()
