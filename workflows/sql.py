"""The engine's job-row INSERT, written out.

Every execution writes its jobs; built through the ORM's query compiler
(``bulk_create``) this costs the worker more CPU than the database spends
running it. So the statement is written once from the model's meta and run
on a plain cursor (standard SQL that PostgreSQL and SQLite 3.35+ accept).
Claiming and finishing the execution are worker_mode's (``claims``), written
out the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from django.db import connections, router
from django.db.models import Model

from .models import Job


def connection_for(model: type[Model]):
    return connections[router.db_for_write(model)]


@cache
def _columns(model: type[Model], vendor: str) -> dict[str, str]:
    quote = connections[router.db_for_write(model)].ops.quote_name
    return {field.name: quote(field.column) for field in model._meta.concrete_fields}


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
