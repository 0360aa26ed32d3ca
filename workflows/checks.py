"""System checks of the workflows app's settings (ids workflows.E001, E003-E005, listed in the README)."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks

from .conf import conf

#: Settings of earlier versions, and what replaced them.
RENAMED = {
    "WORKFLOWS_RECOVER_STARTED": "use WORKFLOWS_RECOVERY ('retry' or 'fail')",
    "WORKFLOWS_LEASE": "use WORKER_MODE_LEASE",
    "WORKFLOWS_RECOVERY_INTERVAL": "use WORKER_MODE_RECOVERY_INTERVAL",
    "WORKFLOWS_QUEUED_GRACE": "use WORKER_MODE_QUEUED_GRACE",
}


@checks.register("workflows")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for label in conf.WORKFLOWS_COLLECTIONS:
        try:
            apps.get_model(label)
        except (LookupError, ValueError):
            errors.append(
                checks.Error(
                    f"WORKFLOWS_COLLECTIONS names {label!r}, which is not an installed model.",
                    hint="Use 'app_label.ModelName' of an installed app, e.g. 'catalog.Order'.",
                    id="workflows.E001",
                )
            )
    # workflows.E002 (WORKFLOWS_RECOVER_STARTED) is retired: recovery settings are checked by
    # worker_mode.E011 for every claimed-work model.
    for item in conf.WORKFLOWS_HTTP_ALLOWED_NETWORKS:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            errors.append(
                checks.Error(
                    f"WORKFLOWS_HTTP_ALLOWED_NETWORKS has {item!r}, not an IP address or network.",
                    hint="Use addresses or CIDR networks such as '127.0.0.1' or '10.0.0.0/8'.",
                    id="workflows.E003",
                )
            )
    for old, new in RENAMED.items():
        if hasattr(settings, old):
            errors.append(
                checks.Error(
                    f"{old} is no longer read; {new}.",
                    hint="Rename it: the old name is ignored, so its value would not apply.",
                    id="workflows.E005",
                )
            )
    for name in ("WORKFLOWS_TICK_INTERVAL", "WORKFLOWS_HTTP_MAX_TIMEOUT"):
        value = getattr(conf, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            errors.append(
                checks.Error(f"{name} is {value!r}.", hint="Use a positive number.", id="workflows.E004")
            )
    for name in ("WORKFLOWS_MAX_RECORDS", "WORKFLOWS_HTTP_MAX_RESPONSE_BYTES"):
        value = getattr(conf, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(
                checks.Error(f"{name} is {value!r}.", hint="Use a whole number >= 1.", id="workflows.E004")
            )
    return errors
