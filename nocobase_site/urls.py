from django.contrib import admin
from django.urls import include, path

from . import views
from .openapi import openapi_json

handler400 = views.bad_request
handler404 = views.not_found
handler500 = views.server_error

urlpatterns = [
    path("", views.home, name="home"),
    path("api/openapi.json", openapi_json, name="openapi"),
    path("", include("worker_mode.urls")),
    path("", include("workflows.urls")),
    path("", include("async_tasks.urls")),
    path("", include("catalog.urls")),
    path("admin/", admin.site.urls),
    # django-rq's queue views, behind worker_mode's permissions (view_cluster, control_queues).
    path("django-rq/", include("worker_mode.rq_urls")),
]
