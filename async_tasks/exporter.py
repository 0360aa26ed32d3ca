"""Export an allowed model's rows to CSV/XLSX, streamed in chunks: memory stays flat."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import FieldError, SuspiciousOperation, ValidationError
from django.db import models
from django.http import QueryDict
from django.test import RequestFactory

from worker_mode import pacing

from .exceptions import FileRejected
from .formats import CsvWriter, XlsxWriter, neutralize
from .spec import ModelSpec

CHUNK = 2000


def choose_fields(spec: ModelSpec, names: Sequence[str] | None) -> list[models.Field]:
    if not names:
        return list(spec.fields)
    return [spec.field(name) for name in names]


#: Bounds of an export's filters: what a changelist URL carries, not a database's limits
#: (SQLite refuses LIKE patterns over 50,000 bytes with an error).
MAX_FILTERS = 100
MAX_FILTER_VALUE = 1_000


def check_filter_sizes(filters: Sequence[Sequence[str]]) -> None:
    if len(filters) > MAX_FILTERS:
        raise FileRejected(f"{len(filters):,} filters; at most {MAX_FILTERS}.")
    for key, value in filters:
        if len(key) > 100 or len(value) > MAX_FILTER_VALUE:
            shown = key[:40] + ("…" if len(key) > 40 else "")
            raise FileRejected(
                f"The filter {shown!r} is too long: names have at most 100 characters, "
                f"values (the search text too) at most {MAX_FILTER_VALUE:,}."
            )


def filtered_queryset(spec: ModelSpec, filters: Sequence[Sequence[str]] | None, user: Any) -> models.QuerySet:
    """The rows to export: all, or those the model's admin changelist shows for ``filters``.

    ``filters`` are the changelist's query-string pairs (``[["active__exact", "1"], ["q", "x"]]``),
    applied by the registered ModelAdmin itself (list_filter, search, date hierarchy), as ``user``.
    """
    if not filters:
        return spec.model._default_manager.order_by("pk")
    model_admin = admin.site._registry.get(spec.model)
    if model_admin is None:
        raise FileRejected(f"{spec.label} has no admin changelist, so it cannot be exported with filters.")
    query = QueryDict(mutable=True)
    for key, value in filters:
        if key in ("p", "o", "e", "_to_field"):  # pagination, ordering toggles, errors: not filters
            continue
        query.appendlist(str(key), str(value))
    request = RequestFactory().get("/", data=query)
    request.user = user if user is not None else AnonymousUser()
    try:
        changelist = model_admin.get_changelist_instance(request)
        return changelist.get_queryset(request)
    except (IncorrectLookupParameters, SuspiciousOperation, FieldError, ValidationError, ValueError) as exc:
        raise FileRejected(f"Invalid filter for {spec.label}: {exc}.") from None


def _row_function(fields: list[models.Field], fmt: str) -> Callable[[tuple], tuple] | None:
    """What each value needs before writing: formula neutralization for text, true/false for CSV."""
    steps: list[Callable[[Any], Any] | None] = []
    for f in fields:
        if isinstance(f, models.BooleanField) and fmt == "csv":
            steps.append(_csv_bool)
        elif isinstance(f, models.ForeignKey):
            steps.append(None)
        elif f.get_internal_type() in ("CharField", "TextField", "SlugField", "EmailField", "URLField"):
            # CSV: guarded against formulas; XLSX cells are typed strings, never run as formulas.
            steps.append(_text if fmt == "csv" else None)
        elif isinstance(f, models.JSONField | models.UUIDField | models.DurationField):
            steps.append(_as_text if fmt == "csv" else _as_plain_text)
        else:
            steps.append(None)
    if not any(steps):
        return None
    indexed = [(i, step) for i, step in enumerate(steps) if step is not None]

    def convert(row: tuple) -> tuple:
        values = list(row)
        for i, step in indexed:
            value = values[i]
            if value is not None:
                values[i] = step(value)
        return tuple(values)

    return convert


def _csv_bool(value: bool) -> str:
    return "true" if value else "false"


def _text(value: str) -> str:
    return neutralize(value)


def _as_plain_text(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _as_text(value: Any) -> str:
    return neutralize(_as_plain_text(value))


def export(
    queryset: models.QuerySet,
    fields: list[models.Field],
    fmt: str,
    out: IO[bytes],
    *,
    progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
    title: str = "Sheet1",
) -> int:
    """Write ``queryset``'s ``fields`` as ``fmt`` to ``out``; returns the number of rows."""
    writer: CsvWriter | XlsxWriter = CsvWriter(out) if fmt == "csv" else XlsxWriter(out, title=title)
    writer.writerows([[f.name for f in fields]])
    rows: Iterable[tuple] = queryset.values_list(*(f.attname for f in fields)).iterator(chunk_size=chunk)
    convert = _row_function(fields, fmt)
    written = 0
    for block in _chunks(rows, chunk):
        if convert is not None:
            block = list(map(convert, block))
        writer.writerows(block)
        written += len(block)
        if progress is not None:
            progress(written)
    writer.close()
    return written


def _chunks(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    """``rows`` in lists of ``size``. Each list's fetch counts as pacing's database time: the rows
    come from a server-side cursor (on PostgreSQL) whose fetches no execute wrapper sees."""
    iterator = iter(rows)
    while True:
        with pacing.measure():
            block = list(itertools.islice(iterator, size))
        if not block:
            return
        yield block
