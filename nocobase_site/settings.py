"""Settings of the site. Deployment values come from the environment, with
defaults that are safe on a laptop: SQLite in var/, Redis on localhost,
DEBUG off, every service in one node.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import dj_database_url
import django
from django.core.exceptions import ImproperlyConfigured

from worker_mode.queues import ServiceQueues

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
# Holds the SQLite file and collected static files; SQLite cannot create its directory.
with contextlib.suppress(OSError):
    (VAR_DIR / "static").mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def from_env(name: str, kind: type = str, *, alias: str = "") -> None:
    """Set the app setting ``name`` from the environment variable of the same name (or ``alias``)
    when that is set, and only then: the default stays in the app's ``defaults.py``, in one place.
    A number that is not one is kept as text, and the app's system checks name it."""
    raw = os.environ.get(name, "").strip() or (os.environ.get(alias, "").strip() if alias else "")
    if not raw:
        return
    value: object = raw
    if kind is not str:
        with contextlib.suppress(ValueError):
            value = kind(raw)
    globals()[name] = value


def env_strict(name: str, default, kind: type = int):
    """A number for one of Django's own settings, which no system check reads: a value that is
    not a number stops the process here, with its name."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ImproperlyConfigured(f"{name}={raw!r} is not {what}.") from None


def env_pairs(name: str, example: str) -> dict[str, str]:
    """``"a:b=x,c:d=y"`` -> {"a:b": "x", "c:d": "y"}: a service key, '=', a value (which may hold '=')."""
    pairs: dict[str, str] = {}
    for item in env_list(name, ""):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ImproperlyConfigured(f"{name}: {item!r} is not KEY=VALUE, e.g. {example!r}.")
        if key.strip() in pairs:
            raise ImproperlyConfigured(f"{name}: {key.strip()!r} is given twice.")
        pairs[key.strip()] = value.strip()
    return pairs


def env_weights(name: str) -> dict[str, float | str]:
    """``"async-task:process=0.5,workflow:process=0"`` -> {"async-task:process": 0.5, ...}; a value
    that is not a number is kept as text, for the app's system check to name."""
    weights: dict[str, float | str] = {}
    for key, raw in env_pairs(name, "async-task:process=0.5").items():
        try:
            weights[key] = float(raw)
        except ValueError:
            weights[key] = raw
    return weights


def env_counts(name: str) -> dict[str, int]:
    """``"workflow:process=2,async-task:process=1"`` -> {"workflow:process": 2, ...}."""
    counts = env_pairs(name, "workflow:process=2")
    for key, count in counts.items():
        if not count.isdigit():
            raise ImproperlyConfigured(
                f"{name}: {key}={count!r} is not a whole number, e.g. 'workflow:process=2'."
            )
    return {key: int(count) for key, count in counts.items()}


# The default is for a laptop only: a node serving requests on any other address refuses to start
# with it (nocobase_site.E001). Generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))'
SECRET_KEY = os.environ.get("SECRET_KEY", "django-insecure-laptop-only-set-SECRET_KEY-in-production")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# What this node does: see README "WORKER_MODE". Empty: requests + every service. The app
# settings below are set only when their environment variable is (defaults: the apps' defaults.py).
WORKER_MODE = os.environ.get("WORKER_MODE", "")
from_env("WORKER_MODE_PROCESSES", int)
WORKER_MODE_SERVICE_PROCESSES = env_counts("WORKER_MODE_SERVICE_PROCESSES")
from_env("WORKER_MODE_SHUTDOWN_GRACE", float)
from_env("WORKER_MODE_RESTART_LIMIT", int)
from_env("WORKER_MODE_RESTART_WINDOW", float)
from_env("WORKER_MODE_WORKER_CLASS")
from_env("WORKER_MODE_WORKER_NICE", int)
from_env("WORKER_MODE_METRICS_TOKEN")
from_env("WORKER_MODE_NODE_NAME", alias="NODE_NAME")  # NODE_NAME: the short name, kept working
WORKER_MODE_GUNICORN_CONFIG = str(BASE_DIR / "nocobase_site" / "gunicorn.conf.py")

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# A Redis of its own for some service keys: "async-task:process=redis://redis-b:6379/0".
WORKER_MODE_REDIS_URLS = env_pairs("WORKER_MODE_REDIS_URLS", "async-task:process=redis://redis-b:6379/0")
# One RQ queue per registered service key, on its Redis (computed when read, so keys registered by
# apps are seen). A site may list its own queues instead (worker_mode.E003).
RQ_QUEUES = ServiceQueues()
# django-rq's admin entry asks only for is_staff; worker_mode serves its pages with permissions.
RQ_SHOW_ADMIN_LINK = False
# Django's Tasks API on the service keys' queues: @task(queue_name="workflow:process") runs on the
# nodes serving that key (README "Background work with Django's Tasks API").
TASKS = {"default": {"BACKEND": "worker_mode.tasks.RQBackend"}}

# Models workflows may trigger on and read/write (the demo collection).
WORKFLOWS_COLLECTIONS = env_list("WORKFLOWS_COLLECTIONS", "catalog.Product,catalog.Order")
# Private addresses HTTP nodes may call; `make run` allows loopback for the demo webhook.
WORKFLOWS_HTTP_ALLOWED_NETWORKS = env_list("WORKFLOWS_HTTP_ALLOWED_NETWORKS", "")


# Claimed work (executions, tasks): README "Claimed work and recovery".
from_env("WORKER_MODE_LEASE", float)
from_env("WORKER_MODE_RECOVERY_INTERVAL", float)
from_env("WORKER_MODE_REQUEUE_INTERVAL", float)
from_env("WORKER_MODE_QUEUED_GRACE", float)
from_env("WORKER_MODE_DATABASE_WAIT", float)
from_env("WORKER_MODE_PACING_BUDGET", float)
WORKER_MODE_PACING = env_weights("WORKER_MODE_PACING")
WORKER_MODE_PACING_ASYNC_COMMIT = env_list("WORKER_MODE_PACING_ASYNC_COMMIT", "")
from_env("WORKFLOWS_RECOVERY")
from_env("WORKFLOWS_MAX_ATTEMPTS", int)
from_env("ASYNC_TASKS_RECOVERY")
from_env("ASYNC_TASKS_MAX_ATTEMPTS", int)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rq",
    "worker_mode",
    "api_tokens",
    "catalog",
    "workflows",
    "async_tasks",
    "nocobase_site",  # the site's own checks (nocobase_site.E001)
]
if django.VERSION < (6, 0):
    INSTALLED_APPS.append("django_tasks")  # the Tasks framework's backport: its checks and log signals

MIDDLEWARE = [
    # First, so that nothing below answers on a node that does not serve requests.
    "worker_mode.middleware.WorkerModeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A NUL in a query string is a 400, not a PostgreSQL error in an admin filter.
    "nocobase_site.middleware.RejectNulMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A synchronous workflow that rejects a write is a 422 naming it, not a bare 500.
    "workflows.middleware.WorkflowRejectionMiddleware",
]

ROOT_URLCONF = "nocobase_site.urls"
WSGI_APPLICATION = "nocobase_site.wsgi.application"
ASGI_APPLICATION = "nocobase_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "nocobase_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_strict("CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database host cut off answers nothing: give up a connection attempt after 10 s, and an open
    # connection whose host stopped answering after about 30 s (TCP keepalives, tcp_user_timeout),
    # not the minutes to hours the OS would wait; health checks, sweeps and waiting work then notice.
    for option, value in {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }.items():
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(option, value)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default must hold concurrent writers (workers, the admin, a cancel mid-import):
    # WAL lets readers run beside the writer, BEGIN IMMEDIATE takes the write lock up front (no
    # "database is locked" when a read transaction turns into a write), and a writer waits up to
    # 20 s for the lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not Django's in-memory default: tests then see connections really close and reopen.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Uploads, exports and error reports of import/export tasks: private (no URL; files leave
    # only through the authenticated download view). In a cluster every node must see the same
    # files: a shared volume here, or an S3-compatible storage (docs/DEPLOYMENT.md).
    "async_tasks": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.environ.get("ASYNC_TASKS_DIR", str(VAR_DIR / "private" / "async_tasks"))},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve admin assets even before collectstatic

DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
# Behind HTTPS (README "Production settings"): redirect plain HTTP, except the probes, which
# orchestrators send over HTTP inside the cluster; HSTS once the whole site is HTTPS.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_strict("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("SECURE_PROXY_SSL_HEADER", False):  # TLS ends at a proxy that sets X-Forwarded-Proto
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"},
    },
    "filters": {
        # A refused request (401/403/404) is one line, not a traceback of the PermissionDenied.
        "refusals_without_traceback": {"()": "nocobase_site.log.RefusalsWithoutTraceback"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["refusals_without_traceback"],
        },
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "worker_mode": {"level": LOG_LEVEL},
        "workflows": {"level": LOG_LEVEL},
        "async_tasks": {"level": LOG_LEVEL},
        "catalog": {"level": LOG_LEVEL},
        "rq.worker": {"level": LOG_LEVEL},
    },
}

# -- imports and exports (async_tasks) ----------------------------------------------------------
ASYNC_TASKS_MODELS = {
    "catalog.Product": {
        "fields": ["sku", "name", "price", "quantity", "active", "created"],
        "identifier": "sku",
    },
    "catalog.Order": {"fields": ["product", "quantity", "customer", "status"]},
}
from_env("ASYNC_TASKS_MAX_UPLOAD_SIZE", int)
from_env("ASYNC_TASKS_BATCH_SIZE", int)
