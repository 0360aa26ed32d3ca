"""ASGI entry point. Any ASGI server refuses to start with a bad WORKER_MODE."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nocobase_site.settings")

application = get_asgi_application()

from worker_mode.startup import validate  # noqa: E402  (needs the apps loaded)

validate()
