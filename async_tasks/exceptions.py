"""Errors of the async_tasks app; each message says what was wrong and what is allowed."""

from __future__ import annotations


class AsyncTaskError(Exception):
    """Base class."""


class NotAllowed(AsyncTaskError):
    """A model or field that ASYNC_TASKS_MODELS does not allow."""


class FileRejected(AsyncTaskError):
    """An upload that cannot be read: bad format, encoding, size, header, or a zip bomb."""


class Canceled(AsyncTaskError):
    """The task was canceled; raised between batches."""
