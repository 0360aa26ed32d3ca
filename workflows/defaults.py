"""Default values of the workflows app's settings (read through ``workflows.conf``)."""

WORKFLOWS_COLLECTIONS: tuple[str, ...] = ()
"""Models ("app_label.Model") that workflows may trigger on, query, create, update and delete."""

WORKFLOWS_HTTP_ALLOWED_NETWORKS: tuple[str, ...] = ()
"""Private/loopback addresses or networks HTTP nodes may call anyway, e.g. ("127.0.0.1", "10.0.0.0/8")."""

WORKFLOWS_HTTP_MAX_TIMEOUT = 30.0
"""Upper bound of an HTTP node's timeout, in seconds."""

WORKFLOWS_HTTP_MAX_RESPONSE_BYTES = 1024 * 1024
"""An HTTP node reads at most this much of a response body."""

WORKFLOWS_MAX_RECORDS = 1000
"""At most this many records per query, update or delete node."""

WORKFLOWS_RECOVERY = "retry"
"""An execution whose owner is gone (process, node, lease): "retry" (resume it from its last finished
node) or "fail" (end it as aborted). Shared vocabulary of worker_mode's claimed work."""

WORKFLOWS_MAX_ATTEMPTS = 3
"""Runs cut short (owner gone) after which an execution is aborted instead of resumed again."""

WORKFLOWS_TICK_INTERVAL = 1.0
"""Seconds between checks for due schedules and finished delays."""
