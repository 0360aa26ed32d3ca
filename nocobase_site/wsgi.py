"""WSGI entry point. Any WSGI server refuses to start with a bad WORKER_MODE."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nocobase_site.settings")

application = get_wsgi_application()

from worker_mode.startup import validate  # noqa: E402  (needs the apps loaded)

validate()
