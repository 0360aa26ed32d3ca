"""System checks of the async_tasks settings (ids async_tasks.E001, E002, E004, E005; see the README)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.files.storage import InvalidStorageError, storages

from .conf import conf
from .exceptions import NotAllowed
from .spec import _resolve

#: Settings of earlier versions, and what replaced them.
RENAMED = {
    "ASYNC_TASKS_RECOVER_RUNNING": "use ASYNC_TASKS_RECOVERY ('fail' or 'retry')",
    "ASYNC_TASKS_PENDING_GRACE": "use WORKER_MODE_QUEUED_GRACE",
    "ASYNC_TASKS_RECOVERY_INTERVAL": (
        "use WORKER_MODE_RECOVERY_INTERVAL (recovery) or ASYNC_TASKS_CLEANUP_INTERVAL (clean-up)"
    ),
}


@checks.register("async_tasks")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    models = conf.ASYNC_TASKS_MODELS
    if not isinstance(models, dict):
        errors.append(
            checks.Error(
                "ASYNC_TASKS_MODELS must be a dict.",
                hint="{'catalog.Product': {'fields': ['sku', 'name'], 'identifier': 'sku'}}",
                id="async_tasks.E001",
            )
        )
        models = {}
    for label, entry in models.items():
        try:
            if not isinstance(entry, dict):
                raise NotAllowed(f"ASYNC_TASKS_MODELS[{label!r}] must be a dict.")
            _resolve(label, entry)
        except NotAllowed as exc:
            errors.append(
                checks.Error(
                    str(exc)[:200],
                    hint="List fields of the model; the identifier must be a unique one of them.",
                    id="async_tasks.E001",
                )
            )
    try:
        storages[conf.ASYNC_TASKS_STORAGE]
    except InvalidStorageError:
        errors.append(
            checks.Error(
                f"ASYNC_TASKS_STORAGE is {conf.ASYNC_TASKS_STORAGE!r}, not an alias in STORAGES.",
                hint="Add a private storage to STORAGES under that alias (not served by a URL).",
                id="async_tasks.E002",
            )
        )
    # async_tasks.E003 (ASYNC_TASKS_RECOVER_RUNNING) is retired: recovery settings are checked by
    # worker_mode.E011 for every claimed-work model.
    for old, new in RENAMED.items():
        if hasattr(settings, old):
            errors.append(
                checks.Error(
                    f"{old} is no longer read; {new}.",
                    hint="Rename it: the old name is ignored, so its value would not apply.",
                    id="async_tasks.E005",
                )
            )
    for name in (
        "ASYNC_TASKS_MAX_UPLOAD_SIZE",
        "ASYNC_TASKS_XLSX_MAX_UNPACKED",
        "ASYNC_TASKS_XLSX_MAX_RATIO",
        "ASYNC_TASKS_BATCH_SIZE",
        "ASYNC_TASKS_EXPIRY",
        "ASYNC_TASKS_CLEANUP_INTERVAL",
    ):
        value = getattr(conf, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            errors.append(
                checks.Error(f"{name} is {value!r}.", hint="Use a positive number.", id="async_tasks.E004")
            )
    return errors
