"""Default values of worker_mode's settings (read through ``worker_mode.conf``)."""

WORKER_MODE = ""
"""Empty: this node serves HTTP requests and processes every registered service."""

WORKER_MODE_EXEMPT_PATHS = ("/healthz", "/readyz")
"""Paths answered even on nodes that do not serve requests; an entry ending in '/' is a prefix."""

WORKER_MODE_PROCESSES = 1
"""Worker processes shared by the served services that have no count of their own."""

WORKER_MODE_SERVICE_PROCESSES: dict[str, int] = {}
"""Dedicated worker processes per service key, e.g. {"workflow:process": 2}."""

WORKER_MODE_SHUTDOWN_GRACE = 25.0
"""Seconds running jobs get to finish after SIGTERM before a cold shutdown (k8s default grace is 30)."""

WORKER_MODE_WORKER_CLASS = "worker_mode.workers.DjangoWorker"
"""The RQ worker class each worker process runs."""

WORKER_MODE_RESTART_LIMIT = 5
"""A worker process that crashes this many times within WORKER_MODE_RESTART_WINDOW fails for good."""

WORKER_MODE_RESTART_WINDOW = 60.0
"""Seconds over which crashes are counted for WORKER_MODE_RESTART_LIMIT."""

WORKER_MODE_NODE_NAME = ""
"""This node's name in logs and job records; empty: the host name."""

WORKER_MODE_GUNICORN_CONFIG = ""
"""Path of the gunicorn config file runnode passes with -c; empty: gunicorn's own default."""

WORKER_MODE_WORKER_NICE = 10
"""Niceness added to worker processes (0-19): on a machine shared with gunicorn, requests go first."""

WORKER_MODE_METRICS_TOKEN = ""
"""Bearer token that may read /metrics (Prometheus); empty: staff sessions only."""

WORKER_MODE_LEASE = 30.0
"""Seconds claimed work is held without renewal; its owner renews every third of it while it runs."""

WORKER_MODE_RECOVERY_INTERVAL = 5.0
"""Seconds between sweeps for claimed work whose owner is gone (lease lapsed, process or node gone)."""

WORKER_MODE_REQUEUE_INTERVAL = 30.0
"""Seconds between checks for queued work whose queue message is gone (Redis flushed or down)."""

WORKER_MODE_DATABASE_WAIT = 60.0
"""Seconds claimed work that lost its database connection waits for the database to answer again;
then the interrupted batch is written again (or the work queued again or ended, by its policy)."""

WORKER_MODE_QUEUED_GRACE = 10.0
"""Queued work this old (seconds) whose message is gone is enqueued again."""

WORKER_MODE_PACING_BUDGET = 0.3
"""Seconds of database time per second the background work of the whole cluster may spend while
request nodes are under full pressure (``budget / pressure`` at less); 0 turns pacing off.
See worker_mode.pacing."""

WORKER_MODE_PACING: dict[str, float] = {}
"""Pacing weight per service key, e.g. {"async-task:process": 0.5, "workflow:process": 0}: a second
of a service's database time costs 1/weight of the budget; 0 opts it out. Keys not listed: 1."""

WORKER_MODE_PACING_ASYNC_COMMIT: tuple[str, ...] = ()
"""Service keys whose jobs, when they start while requests are under pressure, commit without waiting
for PostgreSQL's WAL flush (synchronous_commit off): the requests' commits stop queuing behind a
flush per background transaction. On a database crash the last moments of those commits are lost
and recovery runs that work again. Empty: every commit is durable when it returns."""

REDIS_URL = "redis://127.0.0.1:6379/0"
"""The Redis the automatic RQ_QUEUES use (one queue per registered service key), and presence."""

WORKER_MODE_REDIS_URLS: dict[str, str] = {}
"""A Redis of its own per service key, e.g. {"async-task:process": "redis://redis-b:6379/0"};
keys not listed use REDIS_URL. Presence (who is in the cluster) stays on REDIS_URL."""
