"""Peak memory of an XLSX import whose shared strings unpack to far more than the file.

Writes a workbook (straight to the zip, fast) of ``--rows`` products whose names are
shared strings of about 190 characters, then imports it with ``importrecords`` in a fresh
process on a fresh SQLite database and prints the process's peak RSS. ``--plain`` reads
the workbook with openpyxl's own shared-string table (a list in memory) for comparison.

    .venv/bin/python bench/xlsx_memory.py [--rows 900000] [--plain]

``--shape wide-row --cells N`` writes instead one row of N number cells (no dimension record),
``--shape long-string --chars N`` one shared string of N characters: workbooks small on disk
and under the zip-bomb ratio, whose one row or one cell is huge.

    .venv/bin/python bench/xlsx_memory.py --shape wide-row --cells 10000000
    .venv/bin/python bench/xlsx_memory.py --shape long-string --chars 400000000
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent

# The parts of a minimal workbook (long lines: XML as Excel writes it).
CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>
<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>
<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>
</Types>"""
RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>
</Relationships>"""
WORKBOOK = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">
<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>"""
WORKBOOK_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>
<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/>
</Relationships>"""
MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"


def _workbook(path: Path, *, compresslevel: int) -> zipfile.ZipFile:
    """A workbook's zip with its fixed parts written; the caller adds the strings and the sheet."""
    book = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel)
    book.writestr("[Content_Types].xml", CONTENT_TYPES)
    book.writestr("_rels/.rels", RELS)
    book.writestr("xl/workbook.xml", WORKBOOK)
    book.writestr("xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
    return book


def write_workbook(path: Path, rows: int) -> tuple[int, int]:
    """A workbook of ``rows`` products; returns (file size, unpacked size of sharedStrings.xml)."""
    rng = random.Random(7)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(5000)
    ]
    header = ["sku", "name", "price", "quantity"]
    with _workbook(path, compresslevel=1) as book:
        with book.open("xl/sharedStrings.xml", "w") as strings:
            strings.write(f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{MAIN}">'.encode())
            for text in header:
                strings.write(f"<si><t>{text}</t></si>".encode())
            for i in range(rows):
                name = " ".join(rng.choice(words) for _ in range(30))[:190]
                strings.write(f"<si><t>X{i:07d}</t></si><si><t>{escape(name)}</t></si>".encode())
            strings.write(b"</sst>")
        with book.open("xl/worksheets/sheet1.xml", "w") as sheet:
            sheet.write(
                f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{MAIN}">'
                f'<dimension ref="A1:D{rows + 1}"/><sheetData>'.encode()  # as Excel writes it
            )
            sheet.write(
                b'<row r="1">' + b"".join(f'<c t="s"><v>{n}</v></c>'.encode() for n in range(4)) + b"</row>"
            )
            for i in range(rows):
                sku, name = 4 + 2 * i, 5 + 2 * i
                sheet.write(
                    f'<row r="{i + 2}"><c t="s"><v>{sku}</v></c><c t="s"><v>{name}</v></c>'
                    f"<c><v>{i % 100}.5</v></c><c><v>{i % 7}</v></c></row>".encode()
                )
            sheet.write(b"</sheetData></worksheet>")
    with zipfile.ZipFile(path) as book:
        unpacked = book.getinfo("xl/sharedStrings.xml").file_size
    return path.stat().st_size, unpacked


def write_hostile(path: Path, shape: str, size: int) -> tuple[int, int]:
    """One huge row (``wide-row``) or one huge shared string (``long-string``) after a header."""
    rng = random.Random(2)
    header = '<row r="1">' + "".join(
        f'<c t="inlineStr"><is><t>{name}</t></is></c>' for name in ("sku", "name", "price")
    ) + "</row>"  # fmt: skip
    with _workbook(path, compresslevel=9) as book:
        with book.open("xl/sharedStrings.xml", "w") as strings:
            strings.write(f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{MAIN}">'.encode())
            if shape == "long-string":
                strings.write(b"<si><t>")
                block = ("".join(rng.choice("bcdefghijk") for _ in range(8)) + "a" * 992).encode()
                for _ in range(size // len(block)):
                    strings.write(block)
                strings.write(b"</t></si>")
            strings.write(b"</sst>")
        with book.open("xl/worksheets/sheet1.xml", "w") as sheet:
            sheet.write(
                f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{MAIN}"><sheetData>'.encode()
            )
            sheet.write(header.encode())
            if shape == "wide-row":
                sheet.write(b'<row r="2">')
                for _ in range(size // 100_000):
                    sheet.write(
                        b"".join(b"<c><v>%d</v></c>" % rng.randrange(1_000_000) for _ in range(100_000))
                    )
                sheet.write(b"</row>")
            else:
                sheet.write(
                    b'<row r="2"><c t="inlineStr"><is><t>X1</t></is></c><c t="s"><v>0</v></c><c><v>1</v></c></row>'
                )
            sheet.write(b"</sheetData></worksheet>")
    with zipfile.ZipFile(path) as book:
        unpacked = sum(member.file_size for member in book.infolist())
    return path.stat().st_size, unpacked


CHILD = """
import resource, sys, time
import django
django.setup()
from django.conf import settings
# One huge string compresses far better than the zip-bomb ratio allows; the bench measures the
# reader, so that check (which refuses such a file before parsing) is set aside here.
settings.ASYNC_TASKS_XLSX_MAX_RATIO = 10**9
if {plain!r}:
    import openpyxl
    from async_tasks import formats
    formats._open_workbook = lambda raw: openpyxl.load_workbook(raw, read_only=True, data_only=True)
from django.core.management import call_command
started = time.monotonic()
call_command("importrecords", "catalog.Product", {path!r}, verbosity=0)
print(f"{{time.monotonic() - started:.1f}} {{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=900_000)
    parser.add_argument(
        "--plain", action="store_true", help="openpyxl's in-memory shared strings, to compare"
    )
    parser.add_argument("--shape", choices=["products", "wide-row", "long-string"], default="products")
    parser.add_argument("--cells", type=int, default=10_000_000, help="wide-row: cells in the row")
    parser.add_argument("--chars", type=int, default=400_000_000, help="long-string: its characters")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-xlsx-") as tmp:
        folder = Path(tmp)
        path = folder / "big.xlsx"
        started = time.monotonic()
        if args.shape == "products":
            size, unpacked = write_workbook(path, args.rows)
            print(
                f"workbook: {args.rows:,} rows, {size / 1e6:.1f} MB, sharedStrings.xml unpacks to "
                f"{unpacked / 1e6:.1f} MB (ratio {unpacked / size:.1f}); "
                f"written in {time.monotonic() - started:.1f} s"
            )
        else:
            amount = args.cells if args.shape == "wide-row" else args.chars
            size, unpacked = write_hostile(path, args.shape, amount)
            what = "cells in one row" if args.shape == "wide-row" else "characters in one shared string"
            print(
                f"workbook: {amount:,} {what}, {size / 1e6:.1f} MB, unpacks to {unpacked / 1e6:.1f} MB; "
                f"written in {time.monotonic() - started:.1f} s"
            )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "nocobase_site.settings",
            "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            "VAR_DIR": str(folder / "var"),
            "ASYNC_TASKS_DIR": str(folder / "tasks"),
            "PYTHONPATH": str(ROOT),
        }
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, check=True)
        code = CHILD.format(plain=args.plain, path=str(path))
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        seconds, peak = done.stdout.split()[-2:]
        reader = (
            "openpyxl's shared strings in memory" if args.plain else "shared strings on disk (DiskStrings)"
        )
        print(f"import with {reader}: {seconds} s, peak RSS {peak} MB")
        print(f"machine: {os.uname().machine}, {os.cpu_count()} CPUs; SQLite")


if __name__ == "__main__":
    main()
