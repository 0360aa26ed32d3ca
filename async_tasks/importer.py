"""Import rows into an allowed model: header check, per-field validation, batched writes.

A bad row never stops the import: it goes to the error report (row number,
column, message, the original values) and the good rows are written, one
transaction per batch, with one existence query per batch for duplicates and
one bulk INSERT (or INSERT ... ON CONFLICT DO UPDATE) per batch.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, models, transaction
from django.db.models.signals import post_save

from worker_mode import pacing
from worker_mode.claims import retry_after_database_loss, transaction_committed, transaction_id

from .exceptions import FileRejected
from .formats import MAX_CELL, RowProblem, _shown
from .spec import ModelSpec

logger = logging.getLogger(__name__)


class Mode:
    INSERT = "insert"  # a row whose identifier exists is an error
    SKIP = "skip"  # ... is skipped
    UPDATE = "update"  # ... updates the record; new identifiers are inserted
    UPDATE_ONLY = "update_only"  # ... updates the record; new identifiers are skipped

    choices = (INSERT, SKIP, UPDATE, UPDATE_ONLY)


#: Unknown columns named in an error at most (a header of a million columns is not a message).
MAX_NAMED = 20

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


@dataclass
class Summary:
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def processed(self) -> int:
        return self.created + self.updated + self.skipped + self.failed

    def as_dict(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "skipped": self.skipped,
            "failed": self.failed,
        }


@dataclass
class _Row:
    number: int
    values: dict[str, Any]
    raw: list[Any]
    key: Any = None


@dataclass
class ErrorReport:
    """Errors as CSV (row, column, message, then the row's original values), spooled to disk."""

    header: list[str]
    file: IO[bytes] = field(default_factory=lambda: _spool())
    count: int = 0

    def __post_init__(self) -> None:
        self._text = io.TextIOWrapper(self.file, encoding="utf-8-sig", newline="")
        self._writer = csv.writer(self._text)
        self._writer.writerow(["row", "column", "message", *self.header])

    def add(self, number: int, column: str, message: str, raw: list[Any]) -> None:
        from .formats import is_number, neutralize

        self.count += 1
        values = (str(v)[:MAX_CELL] for v in raw)  # the report stays readable: a huge cell is cut
        message = message[:MAX_CELL]
        self._writer.writerow(
            [number, column, message, *(v if is_number(v) else neutralize(v) for v in values)]
        )

    def finish(self) -> IO[bytes]:
        self._text.flush()
        self._text.detach()
        self.file.seek(0)
        return self.file


def _spool() -> IO[bytes]:
    import tempfile

    return tempfile.SpooledTemporaryFile(max_size=1024 * 1024)


def _column_map(spec: ModelSpec, header: list[str]) -> list[models.Field]:
    lookup: dict[str, models.Field] = {}
    for f in spec.fields:
        lookup[f.name.lower()] = f
        lookup[str(f.verbose_name).lower()] = f
        lookup[f.attname.lower()] = f
    columns, unknown, seen = [], [], set()
    for title in header:
        name = str(title).strip().lstrip("\ufeff").lower()
        f = lookup.get(name)
        if f is None:
            unknown.append(str(title))
            continue
        if f.name in seen:
            raise FileRejected(f"Column {_shown(title)!r} appears twice in the header.")
        seen.add(f.name)
        columns.append(f)
    if unknown:
        named = ", ".join(repr(u[:100]) for u in unknown[:MAX_NAMED])
        more = f" and {len(unknown) - MAX_NAMED:,} more" if len(unknown) > MAX_NAMED else ""
        raise FileRejected(f"Unknown column(s) {named}{more}; allowed: {spec.field_names}.")
    return columns


def check_header(spec: ModelSpec, header: list[str], mode: str) -> list[models.Field]:
    """The field of each column; FileRejected for unknown, repeated or missing required columns."""
    if not [h for h in header if str(h).strip()]:
        raise FileRejected(f"The file has no header row; expected columns: {spec.field_names}.")
    columns = _column_map(spec, header)
    present = {f.name for f in columns}
    if mode != Mode.INSERT and spec.identifier is None:
        raise FileRejected(f"Mode {_shown(mode)!r} needs an identifier field, and {spec.label} has none.")
    if mode in (Mode.UPDATE, Mode.UPDATE_ONLY) and len(present - {spec.identifier.name}) == 0:
        raise FileRejected("An update needs at least one column besides the identifier.")
    needed = [spec.identifier] if mode == Mode.UPDATE_ONLY else spec.required()
    if spec.identifier is not None and mode != Mode.INSERT and spec.identifier not in needed:
        needed.append(spec.identifier)
    missing = [f.name for f in needed if f.name not in present]
    if missing:
        raise FileRejected(f"Missing required column(s): {', '.join(missing)}.")
    return columns


def _converter(f: models.Field) -> Callable[[Any], Any]:
    """Raw cell -> Python value, validated by the model field itself; ValidationError when bad."""
    if f.null:
        empty: Any = None
    elif f.empty_strings_allowed and f.blank:
        empty = ""
    elif f.has_default():
        empty = _DEFAULT
    else:
        empty = _REQUIRED

    if isinstance(f, models.BooleanField):

        def parse(value: Any) -> Any:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValidationError(f"{_shown(value)!r} is not a boolean; use true/false, yes/no or 1/0.")

    elif isinstance(f, models.ForeignKey):
        target = f.target_field

        def parse(value: Any) -> Any:
            return target.to_python(value)  # existence is checked per batch

    elif isinstance(f, models.IntegerField):
        clean = f.clean

        def parse(value: Any) -> Any:
            if isinstance(value, float) and not value.is_integer():
                raise ValidationError(f"{_shown(value)!r} is not a whole number.")
            return clean(value, None)

    else:
        clean = f.clean

        def parse(value: Any) -> Any:
            return clean(value, None)

    # Text is kept as it is (an export imported again changes nothing, leading spaces and tabs
    # included); numbers, dates, booleans and keys are read without the spaces around them.
    verbatim = isinstance(f, models.CharField | models.TextField) and not f.choices

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            if "\x00" in value:
                raise ValidationError("The value contains the NUL character, which cannot be stored.")
            if len(value) > MAX_CELL:
                raise ValidationError(f"The value has more than {MAX_CELL:,} characters.")
            if not verbatim:
                value = value.strip()
            if value == "":
                if empty is _REQUIRED:
                    raise ValidationError("This field cannot be blank.")
                return empty
        elif value is None:
            return None if empty is _REQUIRED else empty
        return parse(value)

    return convert


_DEFAULT = object()
_REQUIRED = object()


def _messages(exc: ValidationError) -> str:
    return " ".join(str(m) for m in exc.messages)


class Importer:
    """Import ``rows`` (an iterator of (row number, values)) into ``spec``'s model."""

    def __init__(
        self,
        spec: ModelSpec,
        header: list[str],
        *,
        mode: str = Mode.INSERT,
        batch_size: int = 2000,
        fire_workflows: bool = False,
        fence: Callable[[Summary], None] | None = None,
        progress: Callable[[Summary], None] | None = None,
    ) -> None:
        if mode not in Mode.choices:
            raise FileRejected(f"Unknown mode {_shown(mode)!r}; modes: {', '.join(Mode.choices)}.")
        self.spec, self.mode, self.batch_size = spec, mode, batch_size
        # fence(summary): called inside each batch's transaction with the summary it commits
        # (a task records its progress and checks its claim there; raising rolls the batch
        # back). progress(summary): called after each batch has committed.
        self.fire_workflows, self.fence, self.progress = fire_workflows, fence, progress
        self.model = spec.model
        header = ["" if h is None else str(h) for h in header]
        while header and not header[-1].strip():  # spreadsheets often carry empty trailing cells
            header.pop()
        self.header = header
        self.columns = check_header(spec, header, mode)
        self.converters = [(i, f, f.attname, _converter(f)) for i, f in enumerate(self.columns)]
        self.identifier = spec.identifier if spec.identifier in self.columns else None
        self.key_attname = self.identifier.attname if self.identifier is not None else None
        self.update_fields = [f.name for f in self.columns if f is not self.identifier]
        self.foreign_keys = [f for f in self.columns if isinstance(f, models.ForeignKey)]
        self.can_upsert = all(f in self.columns for f in spec.required())
        # Plain inserts on PostgreSQL go through COPY: no model instances, no per-value SQL compiling.
        self.copy = None if fire_workflows else _Copy.plan(self.model)
        self.summary = Summary()
        self.errors = ErrorReport(self.header)
        self._batch: list[_Row] = []
        self._keys: set[Any] = set()
        # The transaction id and outcome of the batch being committed (see _lost_batch).
        self._committing: tuple[int | None, _Outcome] | None = None
        # The size of the next batch: batch_size, or smaller while pacing yields to requests.
        self._size = batch_size

    def run(self, rows: Iterable[tuple[int, list[Any]]]) -> Summary:
        try:
            self._run(rows)
        except FileRejected:
            self.flush()  # the good rows read before the unreadable part are imported too
            raise
        self.flush()
        return self.summary

    def _run(self, rows: Iterable[tuple[int, list[Any]]]) -> None:
        width = len(self.columns)
        converters = self.converters
        for number, raw in rows:
            if isinstance(raw, RowProblem):  # unreadable: reported, and the next row is read
                self._fail(number, "", raw.message, [])
                continue
            if not any(v not in ("", None) for v in raw):
                continue  # blank line
            if len(raw) > width and any(str(v).strip() for v in raw[width:]):
                self._fail(number, "", f"The row has {len(raw)} values for {width} columns.", raw)
                continue
            values: dict[str, Any] = {}
            bad = False
            for i, f, attname, convert in converters:
                try:
                    value = convert(raw[i] if i < len(raw) else "")
                except ValidationError as exc:
                    self._error(number, f.name, _messages(exc), raw, count=not bad)
                    bad = True
                    continue
                except (TypeError, ValueError, ArithmeticError) as exc:
                    self._error(number, f.name, f"Invalid value: {exc}", raw, count=not bad)
                    bad = True
                    continue
                if value is not _DEFAULT:
                    values[attname] = value
            if bad:
                continue
            row = _Row(number, values, raw)
            if self.key_attname is not None:
                row.key = values.get(self.key_attname)
                if row.key in self._keys:  # the same record twice in one batch: write the first first
                    self.flush()
                self._keys.add(row.key)
            self._batch.append(row)
            if len(self._batch) >= self._size:
                self.flush()

    # -- errors -------------------------------------------------------------------------

    def _error(self, number: int, column: str, message: str, raw: list[Any], *, count: bool = True) -> None:
        if count:
            self.summary.failed += 1
        self.errors.add(number, column, message, raw)

    def _fail(self, number: int, column: str, message: str, raw: list[Any]) -> None:
        self._error(number, column, message, raw)

    # -- writing --------------------------------------------------------------------------

    def flush(self) -> None:
        batch, self._batch, self._keys = self._batch, [], set()
        # A batch whose database connection is lost is written again once the database answers,
        # unless its COMMIT reached the server (only the answer was lost): its counts and errors
        # apply once, when it has committed.
        if batch:
            started = time.perf_counter()
            self._record(
                retry_after_database_loss(lambda: self._write_batch(batch), committed=self._lost_batch)
            )
            self._size = pacing.unit_size(len(batch), time.perf_counter() - started, self.batch_size)
        elif self.fence is not None:
            retry_after_database_loss(lambda: self.fence(self.summary))
        if self.progress is not None:
            self.progress(self.summary)

    def _write_batch(self, batch: list[_Row]) -> _Outcome:
        self._committing = None
        batch, refused = self._check_foreign_keys(batch)
        try:
            with transaction.atomic():
                outcome = self._write(batch)
                outcome.errors[:0] = refused
                self._fence(outcome)
                self._committing = (transaction_id(), outcome)
        except (IntegrityError, DataError, RowRefused):
            # Another unique field, a record written meanwhile, a value the database refuses
            # (out of range, too long for its column), a row a receiver of its save refused
            # (a synchronous workflow that rejects it): find the bad rows one by one.
            with transaction.atomic():
                outcome = self._write_one_by_one(batch)
                outcome.errors[:0] = refused
                self._fence(outcome)
                self._committing = (transaction_id(), outcome)
        return outcome

    def _lost_batch(self) -> _Outcome | None:
        """After a lost connection: the batch's outcome if its transaction committed all the same."""
        txid, outcome = self._committing or (None, None)
        return outcome if txid is not None and transaction_committed(txid) else None

    def _fence(self, outcome: _Outcome) -> None:
        if self.fence is not None:
            after = Summary(**self.summary.as_dict())
            after.created += outcome.created
            after.updated += outcome.updated
            after.skipped += outcome.skipped
            after.failed += len(outcome.errors)
            self.fence(after)

    def _record(self, outcome: _Outcome) -> None:
        self.summary.created += outcome.created
        self.summary.updated += outcome.updated
        self.summary.skipped += outcome.skipped
        for row, column, message in outcome.errors:
            self._fail(row.number, column, message, row.raw)

    def _check_foreign_keys(self, batch: list[_Row]) -> tuple[list[_Row], list[tuple[_Row, str, str]]]:
        """The rows whose references exist, and the others with their error."""
        refused: list[tuple[_Row, str, str]] = []
        for f in self.foreign_keys:
            wanted = {row.values.get(f.attname) for row in batch} - {None}
            target = f.remote_field.model._base_manager
            key = f.target_field.attname
            found = set(target.filter(**{f"{key}__in": wanted}).values_list(key, flat=True))
            kept = []
            name = f.remote_field.model._meta.verbose_name
            for row in batch:
                value = row.values.get(f.attname)
                if value is not None and value not in found:
                    refused.append((row, f.name, f"No {name} {_shown(value)!r}."))
                else:
                    kept.append(row)
            batch = kept
        return batch, refused

    def _existing(self, batch: list[_Row]) -> dict[Any, Any]:
        """Identifier -> primary key of the batch's rows that already exist (one query)."""
        if self.key_attname is None:
            return {}
        keys = [row.key for row in batch if row.key is not None]
        found = self.model._base_manager.filter(**{f"{self.key_attname}__in": keys})
        return dict(found.values_list(self.key_attname, "pk"))

    def _write(self, batch: list[_Row]) -> _Outcome:
        """Write ``batch`` (inside the caller's transaction); the counts apply once it commits."""
        existing = self._existing(batch)
        new = [row for row in batch if row.key not in existing] if existing else batch
        old = [row for row in batch if row.key in existing] if existing else []
        outcome = _Outcome()
        if self.mode == Mode.INSERT:
            name = self.identifier.name if self.identifier is not None else ""
            outcome.errors = [
                (row, name, f"A record with {name} {_shown(row.key)!r} already exists.") for row in old
            ]
            self._insert(new, outcome)
        elif self.mode == Mode.SKIP:
            outcome.skipped = len(old)
            self._insert(new, outcome)
        elif self.mode == Mode.UPDATE:
            self._upsert(new, old, outcome)
        elif self.can_upsert:
            outcome.skipped = len(new)
            self._upsert([], old, outcome)
        else:
            outcome.skipped = len(new)
            self._update(old, existing, outcome)
        return outcome

    def _insert(self, rows: list[_Row], outcome: _Outcome) -> None:
        if not rows:
            return
        if self.copy is not None:
            self.copy.write(rows)
            outcome.created = len(rows)
            return
        objs = [self.model(**row.values) for row in rows]
        self.model._base_manager.bulk_create(objs)
        outcome.created = len(objs)
        if self.fire_workflows:
            self._fire(objs, created=True)

    def _upsert(self, new: list[_Row], old: list[_Row], outcome: _Outcome) -> None:
        rows = new + old
        if not rows:
            return
        objs = [self.model(**row.values) for row in rows]
        self.model._base_manager.bulk_create(
            objs,
            update_conflicts=True,
            unique_fields=[self.identifier.name],
            update_fields=self.update_fields,
        )
        outcome.created, outcome.updated = len(new), len(old)
        if self.fire_workflows:
            self._fire(objs[: len(new)], created=True)
            if old:
                keys = [row.key for row in old]
                fresh = self.model._base_manager.filter(**{f"{self.key_attname}__in": keys})
                self._fire(list(fresh), created=False)

    def _update(self, old: list[_Row], pks: dict[Any, Any], outcome: _Outcome) -> None:
        # Some required columns are absent: an INSERT ... ON CONFLICT would trip NOT NULL first.
        if not old:
            return
        objs = [self.model(pk=pks[row.key], **row.values) for row in old]
        self.model._base_manager.bulk_update(objs, self.update_fields)
        outcome.updated = len(objs)
        if self.fire_workflows:
            self._fire(list(self.model._base_manager.filter(pk__in=[o.pk for o in objs])), created=False)

    def _fire(self, objs: list[models.Model], *, created: bool) -> None:
        # Bulk writes send no signals; post_save lets collection-event workflows see the rows.
        fields = None if created else frozenset(self.update_fields)
        for obj in objs:
            if obj.pk is None:
                continue
            obj._state.adding = False
            try:
                post_save.send(
                    sender=self.model,
                    instance=obj,
                    created=created,
                    update_fields=fields,
                    raw=False,
                    using=obj._state.db,
                )
            except (IntegrityError, DataError):
                raise
            except Exception as exc:  # a receiver refused the row, e.g. a sync workflow rejecting it
                raise RowRefused(str(exc)[:500] or type(exc).__name__) from exc

    def _write_one_by_one(self, batch: list[_Row]) -> _Outcome:
        total = _Outcome()
        for row in batch:
            try:
                with transaction.atomic():
                    outcome = self._write([row])
            except (IntegrityError, DataError) as exc:
                outcome = _Outcome(
                    errors=[(row, "", f"Rejected by the database: {str(exc).splitlines()[0][:500]}")]
                )
            except RowRefused as exc:
                outcome = _Outcome(errors=[(row, "", f"Refused when saved: {exc}")])
            total.created += outcome.created
            total.updated += outcome.updated
            total.skipped += outcome.skipped
            total.errors += outcome.errors
        return total


class RowRefused(Exception):
    """A receiver of a row's ``post_save`` (a collection workflow) refused it; the message says why."""


@dataclass
class _Outcome:
    created: int = 0
    updated: int = 0
    skipped: int = 0
    errors: list[tuple[_Row, str, str]] = field(default_factory=list)


#: Field types whose validated Python values psycopg writes as they are (no get_db_prep_save).
_NATIVE = (
    models.CharField,
    models.TextField,
    models.IntegerField,
    models.BooleanField,
    models.DecimalField,
    models.FloatField,
)


class _Copy:
    """Insert rows with PostgreSQL's COPY, for models whose fields need nothing at save time.

    A field with auto_now(_add), a database default, or its own ``pre_save`` (files,
    ...) makes ``plan`` return None, and rows go through ``bulk_create`` instead.
    """

    def __init__(self, model: type[models.Model], fields: list[models.Field]) -> None:
        self.model = model
        self.fields = fields
        # (attname, default, prep): the default (model __init__'s) for a cell or column left out.
        self.steps: list[tuple[str, Any, Any]] = []
        for f in fields:
            prep = None
            if not isinstance(f, _NATIVE) or type(f).get_db_prep_save is not models.Field.get_db_prep_save:
                prep = f.get_db_prep_save
            self.steps.append((f.attname, f._get_default, prep))
        columns = ", ".join(connection_quote(f.column) for f in fields)
        self.sql = f"COPY {connection_quote(model._meta.db_table)} ({columns}) FROM STDIN"

    @classmethod
    def plan(cls, model: type[models.Model]) -> _Copy | None:
        from django.db import connections, router

        if connections[router.db_for_write(model)].vendor != "postgresql":
            return None
        fields = []
        for f in model._meta.concrete_fields:
            if f.primary_key and f.auto_created or isinstance(f, models.AutoField | models.BigAutoField):
                continue
            if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
                return None
            if f.db_default is not models.NOT_PROVIDED:
                return None
            if type(f).pre_save not in (models.Field.pre_save, models.DateField.pre_save):
                return None
            fields.append(f)
        return cls(model, fields)

    def write(self, rows: list[_Row]) -> None:
        from django.db import connections, router

        connection = connections[router.db_for_write(self.model)]
        steps = self.steps
        with (
            pacing.measure(),  # no execute wrapper sees a COPY: count it as the database time it is
            connection.cursor() as cursor,
            connection.wrap_database_errors,
            cursor.cursor.copy(self.sql) as copy,
        ):
            write_row = copy.write_row
            for row in rows:
                values = row.values
                out = []
                for attname, default, prep in steps:
                    value = values.get(attname, _NO_VALUE)
                    if value is _NO_VALUE:
                        value = default()
                    if prep is not None:
                        value = prep(value, connection)
                    out.append(value)
                write_row(out)


_NO_VALUE = object()


def connection_quote(name: str) -> str:
    from django.db import connection

    return connection.ops.quote_name(name)
