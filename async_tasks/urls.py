from django.urls import path

from . import api

app_name = "async_tasks"

urlpatterns = [
    path("api/import/<str:label>", api.start_import, name="import"),
    path("api/import/<str:label>/template", api.template, name="template"),
    path("api/export/<str:label>", api.start_export, name="export"),
    path("api/tasks", api.task_list, name="tasks"),
    path("api/tasks/<int:pk>", api.task_detail, name="task"),
    path("api/tasks/<int:pk>/download", api.task_download, name="download"),
    path("api/tasks/<int:pk>/cancel", api.task_cancel, name="cancel"),
]
