from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("", include("worker_mode.urls")),
    path("", include("workflows.urls")),
    path("", include("async_tasks.urls")),
    path("", include("catalog.urls")),
    path("admin/", admin.site.urls),
    # django-rq's queue views, behind worker_mode's permissions (view_cluster, control_queues).
    path("django-rq/", include("worker_mode.rq_urls")),
]
