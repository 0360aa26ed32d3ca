"""The private storage of uploads, results and error reports (Django's storage API)."""

from __future__ import annotations

import uuid

from django.core.files import File
from django.core.files.storage import Storage, storages

from .conf import conf


def get_storage() -> Storage:
    return storages[conf.ASYNC_TASKS_STORAGE]


def save(folder: str, extension: str, content: File | object) -> str:
    """Save ``content`` under a generated name (never the user's); returns the storage path."""
    name = f"{folder}/{uuid.uuid4().hex}.{extension}"
    if not isinstance(content, File):
        content = File(content, name=name)
    return get_storage().save(name, content)


def delete(*names: str) -> None:
    storage = get_storage()
    for name in names:
        if name:
            storage.delete(name)
