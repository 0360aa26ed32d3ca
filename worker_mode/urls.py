"""Include at the site root: ``path("", include("worker_mode.urls"))``."""

from django.urls import path

from . import metrics, views

app_name = "worker_mode"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
]
