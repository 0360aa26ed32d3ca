"""The engine's three hot-path statements, written out.

Every execution claims its row, writes its jobs and finishes its row. Built
through the ORM's query compiler, each of these costs the worker more CPU
than the database spends running it, and with several workers sharing a
machine with the database that CPU is the limit on executions per second.
So these statements are written once from the models' meta (table and column
names, each field's own value preparation) and run on a plain cursor. They
are standard SQL that PostgreSQL and SQLite (3.35+, for RETURNING) accept.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from functools import cache
from typing import Any

from django.db import connections, router
from django.db.models import Model

from .models import Execution, Job


def connection_for(model: type[Model]):
    return connections[router.db_for_write(model)]


@cache
def _columns(model: type[Model], vendor: str) -> dict[str, str]:
    quote = connections[router.db_for_write(model)].ops.quote_name
    return {field.name: quote(field.column) for field in model._meta.concrete_fields}


@cache
def _claim_sql(vendor: str) -> str:
    connection = connection_for(Execution)
    c = _columns(Execution, vendor)
    return (
        f"UPDATE {connection.ops.quote_name(Execution._meta.db_table)} SET {c['status']} = %s, "
        f"{c['worker']} = %s, {c['node_name']} = %s, {c['started_at']} = COALESCE({c['started_at']}, %s), "
        f"{c['lease_expires_at']} = %s, {c['attempts']} = {c['attempts']} + 1, {c['run_after']} = NULL "
        f"WHERE {c['id']} = %s AND {c['status']} = %s "
        f"AND ({c['run_after']} IS NULL OR {c['run_after']} <= %s) "
        f"RETURNING {', '.join(c.values())}"
    )


def claim(
    execution_id: int, *, worker: str, node_name: str, now: datetime.datetime, lease_until: datetime.datetime
) -> Execution | None:
    """queued -> started, in one round trip that also returns the row; None if it was not queued."""
    connection = connection_for(Execution)
    adapt = connection.ops.adapt_datetimefield_value
    params = [
        Execution.Status.STARTED,
        worker,
        node_name,
        adapt(now),
        adapt(lease_until),
        execution_id,
        Execution.Status.QUEUED,
        adapt(now),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        return None
    fields = Execution._meta.concrete_fields
    values = []
    for field, value in zip(fields, row, strict=True):
        column, converters = _converters(field, connection.vendor)
        for converter in converters:
            value = converter(value, column, connection)
        values.append(value)
    return Execution.from_db(connection.alias, [f.attname for f in fields], values)


@cache
def _converters(field, vendor: str) -> tuple[Any, tuple]:
    """The column and what the ORM applies to its values read from ``vendor`` (e.g. JSON text -> value)."""
    connection = connection_for(Execution)
    column = field.get_col(field.model._meta.db_table)
    return column, (*connection.ops.get_db_converters(column), *field.get_db_converters(connection))


@cache
def _finish_sql(vendor: str) -> str:
    connection = connection_for(Execution)
    c = _columns(Execution, vendor)
    return (
        f"UPDATE {connection.ops.quote_name(Execution._meta.db_table)} SET {c['status']} = %s, "
        f"{c['error']} = %s, {c['finished_at']} = %s, {c['lease_expires_at']} = NULL "
        f"WHERE {c['id']} = %s AND {c['status']} = %s AND {c['worker']} = %s"
    )


def finish(execution_id: int, *, worker: str, status: str, error: str, now: datetime.datetime) -> int:
    """started (by ``worker``) -> ``status``; 0 when the execution is no longer this worker's."""
    connection = connection_for(Execution)
    params = [
        status,
        error,
        connection.ops.adapt_datetimefield_value(now),
        execution_id,
        Execution.Status.STARTED,
        worker,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_finish_sql(connection.vendor), params)
        return cursor.rowcount


def insert_jobs(jobs: Sequence[Job]) -> None:
    """One multi-row INSERT ... RETURNING id; sets each job's pk, as bulk_create does."""
    if not jobs:
        return
    connection = connection_for(Job)
    fields = [f for f in Job._meta.concrete_fields if not f.primary_key]
    c = _columns(Job, connection.vendor)
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {connection.ops.quote_name(Job._meta.db_table)} "
        f"({', '.join(c[f.name] for f in fields)}) VALUES {', '.join([row] * len(jobs))} "
        f"RETURNING {c['id']}"
    )
    params: list[Any] = []
    for job in jobs:
        params.extend(f.get_db_prep_save(f.pre_save(job, True), connection) for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = [r[0] for r in cursor.fetchall()]
    for job, pk in zip(jobs, ids, strict=True):
        job.pk = pk
        job._state.adding = False
        job._state.db = connection.alias
